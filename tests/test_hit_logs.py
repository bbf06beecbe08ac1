"""An entry's hit count is exact, and a read of a small value writes no
line that another process reads: the reader notes the hit in a log of its
own (hits.c), and the count of an entry is its own plus its records in
every process's log.  These tests read counts from another process than
the one that read the entries, with the records folded and not, across
compaction, rewrites and kills."""
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import apccache
from apccache import _bindings as B
from helpers.segments import SETUP_FRAGMENT

LOG = 64  # records per hit log (APC_HITLOG_N)


def hits(c, key):
    return c.key_info(key)["hits"]


def listed_hits(c):
    return {e["key"]: e["hits"] for e in c.info()["entries"]}


def _in_child(fn, *args):
    ctx = mp.get_context("fork")
    p = ctx.Process(target=fn, args=args)
    p.start()
    p.join(60)
    assert p.exitcode == 0


def _fetch(name, keys, times):
    c = apccache.Cache.attach(name)
    for k in keys:
        for _ in range(times):
            assert c.fetch(k) is not None
    c.close()


def test_hits_still_in_a_readers_log_count_for_every_process(segments):
    c = segments(size=1 << 20)
    c.store("k", b"v" * 10)
    c.fetch("k")  # this second's access time is written: the next reads peek
    _in_child(_fetch, c.name, ["k"], 10)
    # the child's ten hits sit in one record of its log, never folded
    assert hits(c, "k") == 11
    assert listed_hits(c)["k"] == 11


def test_repeated_hits_of_one_entry_share_a_record(segments):
    c = segments(size=1 << 20)
    c.store("k", b"v")
    B.lib.apc_hits_fold(c._segment.ptr)
    for _ in range(100):
        c.fetch("k")
    assert B.lib.apc_hits_fold(c._segment.ptr) <= 2  # one, or two across a second's tick
    assert hits(c, "k") == 100
    assert B.lib.apc_hits_fold(c._segment.ptr) == 0


def test_a_log_that_fills_is_folded_and_every_count_stays_exact(segments):
    c = segments(size=4 << 20)
    keys = [f"key{i}" for i in range(5 * LOG)]
    for k in keys:
        c.store(k, k.encode() * 3)
    _in_child(_fetch, c.name, keys, 3)
    _in_child(_fetch, c.name, keys[: LOG // 2], 4)
    got = listed_hits(c)
    for i, k in enumerate(keys):
        want = 3 + (4 if i < LOG // 2 else 0)
        assert hits(c, k) == want
        assert got[k] == want


def _hammer(name, keys, rounds, q):
    c = apccache.Cache.attach(name)
    n = 0
    for r in range(rounds):
        for k in keys:
            if c.fetch(k) is not None:
                n += 1
    q.put(n)
    c.close()


def test_concurrent_readers_and_folds_never_show_a_count_twice(segments):
    c = segments(size=4 << 20)
    keys = [f"key{i}" for i in range(150)]
    for k in keys:
        c.store(k, b"x" * 40)
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(c.name, keys, 60, q)) for _ in range(2)]
    for p in procs:
        p.start()
    # while they read (and fold), the total never goes down nor past the
    # reads made so far
    last = 0
    while any(p.is_alive() for p in procs):
        total = sum(listed_hits(c).values())
        assert total >= last
        assert total <= 2 * 60 * len(keys)
        last = total
    reads = q.get(timeout=30) + q.get(timeout=30)
    for p in procs:
        p.join(30)
    assert reads == 2 * 60 * len(keys)
    assert sum(hits(c, k) for k in keys) == reads
    assert sum(listed_hits(c).values()) == reads


def test_threads_that_find_the_log_taken_count_in_the_entry(segments):
    # apc_fetch through cffi lets the GIL go: threads of one process meet
    # at their log's lock, and whoever finds it taken counts in the entry
    c = segments(size=1 << 20)
    c.store("k", b"v" * 20)
    ptr, lib, ffi = c._segment.ptr, B.lib, B.ffi

    def reader():
        buf = ffi.new("char[]", 64)
        for _ in range(3000):
            assert lib.apc_fetch(ptr, 0, b"k", 1, 0, buf, 64) >= 0

    ts = [threading.Thread(target=reader) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert hits(c, "k") == 4 * 3000


def test_a_rewritten_or_replaced_entry_starts_again_from_zero(segments):
    c = segments(size=1 << 20)
    c.store("same", b"a" * 50)
    c.store("other", b"a" * 50)
    for _ in range(5):
        c.fetch("same")
        c.fetch("other")
    c.store("same", b"b" * 50)  # rewritten in place: a new version
    c.store("other", b"b" * 500)  # a new slot
    assert hits(c, "same") == 0 and hits(c, "other") == 0
    c.fetch("same")
    c.fetch("other")
    assert hits(c, "same") == 1 and hits(c, "other") == 1
    B.lib.apc_hits_fold(c._segment.ptr)
    assert hits(c, "same") == 1 and hits(c, "other") == 1


def test_compaction_keeps_the_counts_of_the_entries_it_moves(segments):
    c = segments(size=1 << 20)
    ns = {"c": c}
    exec(SETUP_FRAGMENT, ns)  # every other entry deleted: free space in holes
    kept = [f"frag{j}" for j in range(1, ns["i"], 2)]
    # the child's third read of each is noted in its log: the last of
    # those records are still there when the entries move
    _in_child(_fetch, c.name, kept, 3)
    for k in kept:
        c.fetch(k)
    c.store("big", b"B" * (c.sma_info()["seg_size"] // 4))
    assert c.info()["compactions"] >= 1
    assert all(hits(c, k) == 4 for k in kept)
    assert c.check() == []


def _dying(name, point, code):
    env = dict(os.environ, APCCACHE_DEBUG="1", APCCACHE_FAULT=point)
    prog = f"import apccache\nc = apccache.Cache.attach({name!r})\n{code}\nprint('survived')\n"
    return subprocess.run([sys.executable, "-c", prog], env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("point", ["hits.fold", "hits.fold_added"])
def test_a_reader_killed_in_a_fold_loses_at_most_one_record_and_never_counts_twice(segments, point):
    c = segments(size=4 << 20)
    keys = [f"key{i}" for i in range(LOG + 10)]
    for k in keys:
        c.store(k, b"y" * 30)
        c.fetch(k)
    # Each key three times: the second read gives it a record, the third
    # is noted there.  The log fills at the 65th key's record, and its
    # fold dies: at the first record, before or after adding it.
    p = _dying(c.name, point, "[c.fetch(k) for k in %r for _ in range(3)]" % (keys,))
    assert p.returncode == -signal.SIGKILL, p.stdout + p.stderr
    t0 = time.monotonic()
    counts = {k: hits(c, k) for k in keys}  # a reader finishes the dead fold
    assert time.monotonic() - t0 < 1.0
    most = {k: 1 + (3 if i < LOG else 2 if i == LOG else 0) for i, k in enumerate(keys)}
    assert all(counts[k] <= most[k] for k in keys), (counts, most)
    assert sum(most[k] - counts[k] for k in keys) <= 1  # the record the fold was at
    for k in keys:
        c.fetch(k)
    assert all(hits(c, k) == counts[k] + 1 for k in keys)
    assert c.check() == []


def test_a_reader_killed_holding_its_log_leaves_every_count_readable(segments):
    c = segments(size=1 << 20)
    c.store("k", b"z" * 30)
    c.fetch("k")
    # the child's first read makes the entry a candidate, its second gives
    # it a record, and a later one reads it without a pin and dies noting it
    p = _dying(c.name, "hits.note", "[c.fetch('k') for _ in range(4)]")
    assert p.returncode == -signal.SIGKILL, p.stdout + p.stderr
    t0 = time.monotonic()
    before = hits(c, "k")
    assert 3 <= before <= 4
    for _ in range(3):
        c.fetch("k")
    assert time.monotonic() - t0 < 1.0
    assert hits(c, "k") == before + 3
    assert c.check() == []


def test_a_reader_stopped_in_a_fold_stalls_the_counts_briefly_and_nothing_else(segments):
    from helpers.children import wait_stopped

    c = segments(size=4 << 20)
    keys = [f"key{i}" for i in range(LOG + 10)]
    for k in keys:
        c.store(k, b"s" * 30)
    code = (f"import apccache\nc = apccache.Cache.attach({c.name!r})\n"
            f"[c.fetch(k) for k in {keys!r} for _ in range(2)]\nprint('finished')\n")
    env = dict(os.environ, APCCACHE_DEBUG="1", APCCACHE_FAULT="stop:hits.fold")
    p = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert wait_stopped(p), p.communicate(timeout=10)
        t0 = time.monotonic()
        assert all(c.fetch(k) == b"s" * 30 for k in keys)
        assert time.monotonic() - t0 < 0.05 * len(keys)
        t0 = time.monotonic()
        assert all(hits(c, k) >= 1 for k in keys[:5])  # each waits once, then reads through
        assert time.monotonic() - t0 < 0.5
        t0 = time.monotonic()
        assert len(c.info()["entries"]) == len(keys)  # the walk waits for the log once
        assert time.monotonic() - t0 < 0.5
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGCONT)
        out, err = p.communicate(timeout=30)
    assert p.returncode == 0 and "finished" in out, err
    # one read each here, two in the child: its fold went on from where it stopped
    assert {k: hits(c, k) for k in keys} == {k: 3 for k in keys}
    assert c.check() == []


def _off(name):
    return B.lib.apc_layout_offset(name.encode())


def test_scribbled_hit_logs_neither_crash_hang_nor_change_a_value(segments):
    import random
    import struct

    from test_damage import in_child

    c = segments(size=1 << 20)
    for i in range(100):
        c.store(f"k{i}", b"v" * (20 + i))
    base, size = _off("hdr.hitlogs"), _off("sizeof.apc_hitlog")
    rng = random.Random(7)

    def scribble_then_use():
        for j in range(64):
            log = base + j * size
            c._mv[log:log + size] = bytes(rng.getrandbits(8) for _ in range(size))
        # a live "holder" that never lets go, a fold forever in progress, and
        # records naming real entries' offsets with versions they never had
        struct.pack_into("<qQII", c._mv, base, 1, 3, 64, 5)
        recs = base + _off("hitlog.rec")
        for i, e in enumerate(c.records()[:64]):
            struct.pack_into("<QII", c._mv, recs + 16 * i, e[0].offset, 0xDEADBEEF, 1000)
        t0 = time.monotonic()
        for i in range(100):
            for _ in range(3):
                assert c.fetch(f"k{i}") == b"v" * (20 + i)
        assert all(c.key_info(f"k{i}")["hits"] < 1000 for i in range(100))
        assert len(c.info()["entries"]) == 100
        c.store("big", b"B" * 400_000)  # compaction, which folds every log
        c.delete("big")
        assert all(c.fetch(f"k{i}") == b"v" * (20 + i) for i in range(100))
        c.clear()
        assert time.monotonic() - t0 < 3.0
        assert c.check() == []

    assert in_child(scribble_then_use, timeout=20) == ""


def test_recover_finishes_the_fold_a_dead_reader_was_in(segments):
    import struct

    c = segments(size=4 << 20)
    keys = [f"key{i}" for i in range(LOG + 10)]
    for k in keys:
        c.store(k, b"r" * 30)
    env = dict(os.environ, APCCACHE_DEBUG="1", APCCACHE_FAULT="hits.fold_added")
    code = (f"import apccache\nc = apccache.Cache.attach({c.name!r})\n"
            f"[c.fetch(k) for k in {keys!r} for _ in range(3)]\n")
    p = subprocess.Popen([sys.executable, "-c", code], env=env)
    assert p.wait(60) == -signal.SIGKILL
    base, size = _off("hdr.hitlogs"), _off("sizeof.apc_hitlog")
    held = [j for j in range(64) if struct.unpack_from("<q", c._mv, base + j * size)[0] == p.pid]
    assert len(held) == 1  # it died holding its log, in a fold (seq odd)
    seq = struct.unpack_from("<Q", c._mv, base + held[0] * size + _off("hitlog.seq"))[0]
    assert seq % 2 == 1
    assert c.recover(p.pid) >= 1
    log = base + held[0] * size
    assert struct.unpack_from("<q", c._mv, log)[0] == 0
    assert struct.unpack_from("<Q", c._mv, log + _off("hitlog.seq"))[0] % 2 == 0
    # the record it had added is not added again
    assert sum(hits(c, k) for k in keys) <= 3 * LOG + 2
    assert c.check() == []
