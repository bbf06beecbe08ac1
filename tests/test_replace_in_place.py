"""A store that replaces an entry with one of the same block size rewrites
the entry where it is (csrc/api.c, replace_in_place_kl): the entry is new in
every way a reader can see (value, type, times, TTL, a hit count of 0), no
reader ever sees half of it, and an entry a reader holds is left alone (the
store builds a new slot, as for any other size)."""
import multiprocessing as mp
import os
import signal
import time

import pytest

import apccache
from apccache import _bindings as B

from helpers.segments import FakeClock
from test_crash import run_dying


def slot_of(cache, key):
    (rec,) = [r for r, k in cache.records() if k == key.encode()]
    return rec


def test_a_same_size_store_rewrites_the_entry_where_it_is(segments):
    clock = FakeClock()
    c = segments(size=1 << 20, clock=clock)
    c.store("k", b"a" * 40, ttl=100)
    for _ in range(3):
        c.fetch("k")
    before = slot_of(c, "k")
    clock.advance(7)
    c.store("k", b"b" * 40, ttl=50)
    after = slot_of(c, "k")
    assert after.offset == before.offset
    assert c.fetch("k") == b"b" * 40
    assert (after.hits, after.ttl) == (0, 50)
    assert after.ctime == after.mtime == after.atime == before.ctime + 7
    i = c.info()
    assert (i["num_entries"], i["num_inserts"]) == (1, 2)
    assert c.check() == []


@pytest.mark.parametrize("first, second", [
    (b"x" * 24, "y" * 24),       # bytes to str: the same layout
    (1.5, b"12345678"),          # a float is 8 bytes
    (True, None),                # no value bytes at all
])
def test_a_new_type_of_the_same_size_is_rewritten_in_place(segments, first, second):
    c = segments(size=1 << 20)
    c.store("k", first)
    at = slot_of(c, "k").offset
    c.store("k", second)
    assert slot_of(c, "k").offset == at
    assert c.fetch("k") == second
    assert c.check() == []


@pytest.mark.parametrize("first, second", [
    (b"x" * 40, b"y" * 400),     # another block size
    (b"12345678", 7),            # an int's value lives in a word of its own
    (b"x" * 2000, b"y" * 2000),  # over 1 KiB: copied outside the stripe's odd section
])
def test_other_replaces_build_a_new_slot(segments, first, second):
    c = segments(size=1 << 20)
    c.store("k", first)
    at = slot_of(c, "k").offset
    c.store("k", second)
    assert slot_of(c, "k").offset != at
    assert c.fetch("k") == second
    assert c.check() == []


def test_with_checksums_the_rewritten_entry_checks(segments):
    c = segments(size=1 << 20, checksums=True)
    c.store("k", b"a" * 40)
    at = slot_of(c, "k").offset
    c.store("k", b"b" * 40)
    assert slot_of(c, "k").offset == at
    assert c.fetch("k") == b"b" * 40
    assert c.info()["corrupt_reads"] == 0
    assert c.check() == []


def test_an_entry_a_reader_holds_is_not_rewritten(segments):
    c = segments(size=1 << 20)
    c.store("k", b"a" * 40)
    at = slot_of(c, "k").offset
    ref = B.ffi.new("apc_ref *")
    seg = c._segment.ptr
    assert B.lib.apc_fetch_ref(seg, 0, b"k", 1, 0, ref) >= 0  # a reader's pin
    try:
        c.store("k", b"b" * 40)
        assert bytes(B.ffi.buffer(ref.ptr, ref.len)) == b"a" * 40  # what it holds is untouched
    finally:
        B.lib.apc_ref_release(seg, ref)
    assert slot_of(c, "k").offset != at
    assert c.fetch("k") == b"b" * 40
    assert c.check() == []


def test_an_expired_entry_is_rewritten_and_counted_as_expired(segments):
    clock = FakeClock()
    c = segments(size=1 << 20, clock=clock)
    c.store("k", b"a" * 40, ttl=5)
    at = slot_of(c, "k").offset
    clock.advance(10)
    assert c.fetch("k") is None
    assert c.add("k", b"b" * 40)  # an expired entry does not block add
    assert slot_of(c, "k").offset == at
    assert c.fetch("k") == b"b" * 40
    assert c.info()["expired"] == 1
    assert c.check() == []


def _rewrite(name, keys, stop_at, q):
    c = apccache.Cache.attach(name)
    n = 0
    while time.time() < stop_at:
        for k in keys:
            c.store(k, bytes([n % 251]) * 64)
            c.store(k + "s", chr(0x41 + n % 26) * 64)
        n += 1
    q.put(n)
    c.close()


def _read(name, keys, stop_at, q):
    c = apccache.Cache.attach(name)
    n, torn = 0, []
    while time.time() < stop_at:
        for k in keys:
            v, s = c.fetch(k), c.fetch(k + "s")
            if len(set(v)) != 1 or len(v) != 64 or len(set(s)) != 1 or len(s) != 64:
                torn.append((v, s))
            n += 1
    q.put((n, torn[:3]))
    c.close()


@pytest.mark.parametrize("checksums", [False, True])
def test_readers_never_see_half_of_a_rewrite(segments, checksums):
    c = segments(size=1 << 20, checksums=checksums)
    keys = [f"k{i}" for i in range(8)]
    for k in keys:
        c.store(k, b"\0" * 64)
        c.store(k + "s", "A" * 64)
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    stop_at = time.time() + 1.0
    procs = [ctx.Process(target=_rewrite, args=(c.name, keys, stop_at, q))]
    procs += [ctx.Process(target=_read, args=(c.name, keys, stop_at, q)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [q.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(30)
    reads = [g for g in got if isinstance(g, tuple)]
    writes = [g for g in got if isinstance(g, int)]
    assert writes[0] > 10 and all(n > 100 for n, _ in reads)
    assert [t for _, t in reads] == [[], []]
    assert c.info()["corrupt_reads"] == 0
    assert c.check() == []


# A writer killed in the middle of a rewrite: its entry is gone (it may be
# half written), whoever comes next, and nothing leaks.
NEXT = {
    "a write on the same stripe": lambda c: c.store("victim", b"z"),
    "a read of the entry": lambda c: c.fetch("victim"),
    "check(), which repairs first": lambda c: c.check(),
}


@pytest.mark.parametrize("first", sorted(NEXT))
def test_a_writer_killed_mid_rewrite_leaves_no_half_entry(segments, first):
    c = segments(size=1 << 20)
    c.store("victim", b"old" * 100)
    for i in range(50):
        c.store(f"k{i}", b"v" * i)
    p = run_dying(c.name, "c.store('victim', b'new' * 100)", "store.in_place")
    assert p.returncode == -signal.SIGKILL
    t0 = time.monotonic()
    NEXT[first](c)
    assert time.monotonic() - t0 < 1.0
    assert c.fetch("victim") in (None, b"z")
    assert c.check() == []
    assert all(c.fetch(f"k{i}") == b"v" * i for i in range(50))
    assert len(c) == 50 + (c.fetch("victim") is not None)
    for k in list(c.keys()):
        c.delete(k)
    s = c.sma_info()
    assert s["avail_mem"] == s["seg_size"]
    assert c.check() == []


def test_a_writer_killed_after_publishing_a_rewrite_leaves_the_new_entry(segments):
    c = segments(size=1 << 20)
    c.store("victim", b"old" * 100)
    p = run_dying(c.name, "c.store('victim', b'new' * 100)", "store.in_place_published")
    assert p.returncode == -signal.SIGKILL
    assert c.fetch("victim") == b"new" * 100
    c.store("victim", b"z")  # the same stripe: taken over, the entry kept
    assert c.fetch("victim") == b"z"
    i = c.info()
    assert i["lock_steals"] == 1 and i["repairs"] == 0 and i["num_entries"] == 1
    assert c.check() == []
    c.delete("victim")
    s = c.sma_info()
    assert s["avail_mem"] == s["seg_size"]
