"""A corrupted or foreign segment gives a clear Python error, never a crash."""
import os
import struct

import pytest

import apccache
from apccache import CorruptSegmentError, IncompatibleSegmentError

from apccache import _bindings as B
from apccache._bindings import LAYOUT
from helpers.segments import segment_name


def _raw(name, size, data=b""):
    fd = os.open(f"/dev/shm/{name}", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, size)
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)


@pytest.fixture
def raw_name(shm_names):
    return shm_names("raw")


def test_a_foreign_segment_is_refused_by_magic(raw_name):
    _raw(raw_name, 1 << 20, b"NOTAPC!!" + b"\x01" * 100)
    with pytest.raises(IncompatibleSegmentError, match="not an apccache segment"):
        apccache.Cache.attach(raw_name)


def test_an_empty_segment_is_refused(raw_name):
    _raw(raw_name, 0)
    with pytest.raises((CorruptSegmentError, IncompatibleSegmentError)):
        apccache.Cache.attach(raw_name)


def test_a_never_initialised_segment_is_refused_after_a_short_wait(raw_name):
    _raw(raw_name, 1 << 20)
    with pytest.raises(IncompatibleSegmentError, match="never finished"):
        apccache.Cache.attach(raw_name, timeout=0.1)


def test_another_layout_version_is_refused_with_what_to_do(segments):
    c = segments(size=1 << 20)
    c.store("k", 1)
    c._mv[8:12] = struct.pack("<I", 999)
    with pytest.raises(IncompatibleSegmentError, match="layout version 999.*recreate"):
        apccache.Cache.attach(c.name)


def test_a_truncated_segment_is_refused(segments):
    c = segments(size=2 << 20)
    os.truncate(f"/dev/shm/{c.name}", 1 << 20)
    with pytest.raises(CorruptSegmentError, match="truncated"):
        apccache.Cache.attach(c.name)


def _slot_offsets(c):
    return [r[9] for r, _ in c.records()]


NEXT_OFF = LAYOUT["slot_next_off"]


def test_a_chain_pointing_outside_the_arena_is_a_counted_miss_then_repaired(segments):
    c = segments(size=1 << 20)
    c.store("k", b"v")
    (off,) = _slot_offsets(c)
    c._mv[off + NEXT_OFF : off + NEXT_OFF + 8] = struct.pack("<Q", 1 << 40)
    for i in range(5000):  # some key lands in the same bucket chain
        assert c.fetch(f"other{i}") is None
        if c.info(limited=True)["corrupt_reads"]:
            break
    assert c.info(limited=True)["corrupt_reads"] >= 1
    problems = c.check()  # reports, before any writer repairs
    assert any("not a used block" in p for p in problems), problems
    c.store("after", b"x")  # the next writer repairs
    assert c.check() == []
    assert c.fetch("k") == b"v" and c.fetch("after") == b"x"


def test_a_chain_cycle_is_capped(segments):
    c = segments(size=1 << 20, slots=1)  # one bucket: every key in one chain
    c.store("a", 1)
    c.store("b", 2)
    offs = _slot_offsets(c)
    for off in offs:  # every slot links to the first: a cycle
        c._mv[off + NEXT_OFF : off + NEXT_OFF + 8] = struct.pack("<Q", offs[0])
    assert c.fetch("missing") is None
    assert c.info(limited=True)["corrupt_reads"] == 1
    assert any("cycle" in p for p in c.check())
    c.store("c", 3)  # the next writer repairs
    assert c.check() == []
    assert c.fetch("c") == 3


def test_check_names_a_slot_in_the_wrong_bucket(segments):
    c = segments(size=1 << 20, slots=7)
    c.store("k", 1)
    (off,) = _slot_offsets(c)
    # The bucket is the key's full XXH3-64 (the slot keeps 32 bits of it):
    # move the slot to the next bucket instead.
    buckets = struct.unpack_from("<Q", c._mv, B.lib.apc_layout_offset(b"hdr.geom"))[0]
    (i,) = [i for i in range(7) if struct.unpack_from("<Q", c._mv, buckets + 8 * i)[0] == off]
    struct.pack_into("<Q", c._mv, buckets + 8 * i, 0)
    struct.pack_into("<Q", c._mv, buckets + 8 * ((i + 1) % 7), off)
    assert any("hashes to bucket" in p for p in c.check())


def test_check_names_a_slot_whose_hash_is_not_its_keys(segments):
    c = segments(size=1 << 20, slots=7)
    c.store("k", 1)
    (off,) = _slot_offsets(c)
    at = off + LAYOUT["slot_hash_off"]
    h = struct.unpack_from("<I", c._mv, at)[0]
    struct.pack_into("<I", c._mv, at, (h + 1) % (1 << 32))
    assert c.fetch("k") is None  # a reader compares the hash first: a miss
    assert any("is not its key's" in p for p in c.check())
    struct.pack_into("<Q", c._mv, B.lib.apc_layout_offset(b"hdr.repair_due"), 1)
    c.store("other", 2)  # a repair drops the entry
    assert c.check() == [] and c.fetch("other") == 2 and c.fetch("k") is None


def test_check_reports_broken_block_tags(segments):
    c = segments(size=1 << 20)
    c.store("k", b"v" * 100)
    (off,) = _slot_offsets(c)
    c._mv[off - 8 : off] = struct.pack("<Q", 12345 | 1)
    problems = c.check()
    assert problems and any("block" in p for p in problems)


def test_a_sound_segment_checks_clean(segments):
    c = segments(size=1 << 20)
    for i in range(100):
        c.store(f"k{i}", b"x" * i)
    for i in range(0, 100, 3):
        c.delete(f"k{i}")
    assert c.check() == []


FUZZ = r"""
import os, random, sys, apccache
from apccache import CacheError
seed, name = int(sys.argv[1]), sys.argv[2]
rnd = random.Random(seed)
c = apccache.Cache.create(name, size=1 << 20, slots=64)
try:
    for i in range(300):
        c.store(f"k{i}", os.urandom(rnd.randrange(0, 3000)))
    for i in range(0, 300, 3):
        c.delete(f"k{i}")
    start = c.sma_info()["block_lists"] and 0
    mv = c._mv
    lo = 0 if seed % 4 == 0 else 4096 + 65536  # sometimes the header too
    for _ in range(rnd.choice([1, 5, 50])):
        pos = rnd.randrange(lo, len(mv) - 8)
        mv[pos : pos + 8] = os.urandom(8)
    outcomes = set()
    for i in range(400):
        op = rnd.choice("fsdiakc")
        k = f"k{rnd.randrange(400)}"
        try:
            if op == "f": c.fetch(k)
            elif op == "s": c.store(k, os.urandom(rnd.randrange(0, 5000)))
            elif op == "d": c.delete(k)
            elif op == "i": c.inc("n")
            elif op == "a": c.add(k, 1)
            elif op == "k": list(c.keys())
            elif op == "c": c.check()
            outcomes.add("ok")
        except (CacheError, TypeError, OverflowError, ValueError) as e:
            outcomes.add(type(e).__name__)
    print(sorted(outcomes))
finally:
    c.unlink()
"""


@pytest.mark.parametrize("seed", range(24))
def test_random_corruption_never_crashes_the_process(seed):
    import subprocess
    import sys

    name = segment_name("fuzz")
    try:
        p = subprocess.run([sys.executable, "-c", FUZZ, str(seed), name], capture_output=True,
                           text=True, timeout=60)
    finally:
        if os.path.exists(f"/dev/shm/{name}"):
            os.unlink(f"/dev/shm/{name}")
    assert p.returncode == 0, f"seed {seed}: exit {p.returncode}\n{p.stderr[-2000:]}"
