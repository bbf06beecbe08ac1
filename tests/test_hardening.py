"""The promise under attack: a lock word that lies, a holder that stalls, a
file truncated under us, value bytes that were changed, a handle closed
while it is used.  Each case ends in a clear error or a counted miss, and
the process lives."""
import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import apccache
from apccache import CacheBusyError, CacheClosedError
from apccache._bindings import LAYOUT
from helpers.children import wait_stopped

WORD = LAYOUT["alock_off"]  # the allocator lock's futex word, then its owner record


def _slot_of(c, key):
    (off,) = [r[9] for r, k in c.records() if k == key.encode()]
    return off


def _value_of(c, key):
    """Where the value of a (non-int) entry starts: after the slot, its
    checksum word (checksums on), and its key, unpadded."""
    sum_word = 8 if c.info(limited=True)["checksums"] else 0
    return _slot_of(c, key) + LAYOUT["slot_size"] + sum_word + len(key.encode())


def _run(code, timeout=60, **env):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **env})


# ------------------------------------------------------------- the lock word


def test_a_lock_word_naming_no_thread_is_taken_over_not_waited_on(segments):
    c = segments(size=1 << 20, lock_timeout=30)
    c.store("k", 1)
    struct.pack_into("<I", c._mv, WORD, 0x3FFFFFF0)  # a tid no thread has
    t0 = time.monotonic()
    c.store("k", "two")  # a new slot: the allocator's lock
    assert time.monotonic() - t0 < 1.0
    assert c.fetch("k") == "two"
    assert c.info(limited=True)["lock_steals"] == 1
    assert c.check() == []


@pytest.mark.parametrize("word", [0x80000000, 0x40000000, 0xFFFFFFFF])
def test_a_lock_word_that_is_garbage_is_taken_over(segments, word):
    c = segments(size=1 << 20, lock_timeout=30)
    struct.pack_into("<I", c._mv, WORD, word)
    t0 = time.monotonic()
    c.store("k", b"v")
    assert time.monotonic() - t0 < 1.0
    assert c.fetch("k") == b"v" and c.check() == []


def test_a_lock_word_naming_this_very_thread_is_garbage(segments):
    # The engine never takes the lock twice, so a word naming the caller
    # cannot be a real holder.
    c = segments(size=1 << 20, lock_timeout=30)
    struct.pack_into("<I", c._mv, WORD, threading.get_native_id())
    t0 = time.monotonic()
    c.store("k", b"v")
    assert time.monotonic() - t0 < 1.0
    assert c.fetch("k") == b"v" and c.info(limited=True)["lock_steals"] == 1


def test_a_lock_word_naming_a_live_stranger_waits_the_timeout_then_is_taken_over(segments):
    # A live process that does not map this segment cannot hold its lock.
    c = segments(size=1 << 20, lock_timeout=0.3)
    stranger = subprocess.Popen(["sleep", "30"])
    try:
        struct.pack_into("<I", c._mv, WORD, stranger.pid)
        t0 = time.monotonic()
        c.store("k", b"v")
        assert 0.25 < time.monotonic() - t0 < 2.0
    finally:
        stranger.kill()
        stranger.wait()
    assert c.fetch("k") == b"v"
    assert c.info(limited=True)["lock_steals"] == 1


def test_a_writer_killed_holding_its_stripe_is_repaired_by_the_stripes_next_writer(segments):
    c = segments(size=1 << 20)
    c.store("keep", b"x")
    p = _run(f"""
        import apccache
        c = apccache.Cache.attach({c.name!r})
        c.store("k", b"y" * 100)
    """, APCCACHE_DEBUG="1", APCCACHE_FAULT="store.after_alloc")
    assert p.returncode == -signal.SIGKILL, p.stderr
    t0 = time.monotonic()
    c.store("k", 1)  # the same key: the same stripe's lock
    assert time.monotonic() - t0 < 1.0
    assert c.fetch("keep") == b"x" and c.fetch("k") == 1
    info = c.info(limited=True)
    assert info["lock_steals"] == 1
    assert info["repairs"] == 0  # only what the stripe's lock guards was redone
    s = c.sma_info()
    assert s["seg_size"] - s["avail_mem"] == c.info()["mem_size"]  # its block was freed
    assert c.check() == []


def test_a_writer_killed_holding_its_stripe_holds_up_no_other_stripe(segments):
    c = segments(size=1 << 20, lock_timeout=30)
    p = _run(f"""
        import apccache
        c = apccache.Cache.attach({c.name!r})
        c.store("k", b"y" * 100)
    """, APCCACHE_DEBUG="1", APCCACHE_FAULT="store.after_alloc")
    assert p.returncode == -signal.SIGKILL, p.stderr
    others = [f"o{i}" for i in range(200) if c._stripe_of(f"o{i}") != c._stripe_of("k")]
    t0 = time.monotonic()
    for key in others:
        c.store(key, key)
    assert time.monotonic() - t0 < 1.0
    assert all(c.fetch(key) == key for key in others)
    assert c.info(limited=True)["lock_steals"] == 0  # nobody needed the dead writer's lock
    assert c.check() == []  # which takes every lock: the dead one too, and repairs
    assert c.info(limited=True)["lock_steals"] == 1


STALLER = """
    import apccache, sys
    c = apccache.Cache.attach({name!r})
    print("ready", flush=True)
    c.store("held", b"z" * 100)   # stops inside, holding its key's stripe lock
    print("done", flush=True)
"""


@pytest.fixture
def stalled(segments):
    """A child stopped inside store() while it holds its key's stripe lock."""
    c = segments(size=1 << 20, lock_timeout=0.3)
    c.store("k", b"before")
    env = {**os.environ, "APCCACHE_DEBUG": "1", "APCCACHE_FAULT": "stop:store.after_alloc"}
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(STALLER.format(name=c.name))],
                         stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout.readline().strip() == "ready"
    if not wait_stopped(p, 10):
        p.kill()
        pytest.fail("the child never stopped")
    try:
        yield c, p
    finally:
        p.send_signal(signal.SIGCONT)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def test_a_writer_waits_for_a_stopped_holder_only_up_to_lock_timeout(stalled):
    c, p = stalled
    t0 = time.monotonic()
    with pytest.raises(CacheBusyError) as e:
        c.store("held", b"after")  # the stopped writer's key: its stripe's lock
    waited = time.monotonic() - t0
    assert 0.25 < waited < 2.0
    assert e.value.pid == p.pid and str(p.pid) in str(e.value)
    assert isinstance(e.value, TimeoutError)
    assert c.fetch("held") is None  # the failed write changed nothing
    p.send_signal(signal.SIGCONT)
    assert p.stdout.readline().strip() == "done"
    assert c.store("held", b"after") and c.fetch("held") == b"after"
    assert c.fetch("k") == b"before"
    assert c.check() == []


def test_writers_of_other_stripes_do_not_wait_for_a_stopped_holder(stalled):
    c, p = stalled
    held = c._stripe_of("held")
    others = [f"o{i}" for i in range(100) if c._stripe_of(f"o{i}") != held]
    counters = [f"n{i}" for i in range(100) if c._stripe_of(f"n{i}") != held]
    t0 = time.monotonic()
    for key in others:
        c.store(key, key)
    for key in counters:
        c.inc(key)
        c.delete(key)
    assert time.monotonic() - t0 < 0.25  # less than lock_timeout: none of them waited it out
    assert all(c.fetch(key) == key for key in others)


def test_readers_do_not_wait_for_a_stopped_writer(stalled):
    c, p = stalled
    worst = 0.0
    for _ in range(200):
        t0 = time.monotonic()
        assert c.fetch("k") == b"before"
        assert c.exists("k")
        worst = max(worst, time.monotonic() - t0)
    assert worst < 0.05


def test_readers_take_a_miss_from_a_stripe_left_odd_by_a_stopped_writer(segments):
    env = {**os.environ, "APCCACHE_DEBUG": "1", "APCCACHE_FAULT": "stop:clear.mid"}
    c = segments(size=1 << 20)
    for i in range(50):
        c.store(f"k{i}", i)
    p = subprocess.Popen([sys.executable, "-c", f"import apccache; apccache.Cache.attach({c.name!r}).clear()"],
                         env=env)
    try:
        wait_stopped(p, 10)
        ticks = [0]
        stop = threading.Event()

        def other_thread():
            while not stop.is_set():
                ticks[0] += 1

        def pace():
            """The thread's ticks per second with the GIL to itself."""
            n0, t0 = ticks[0], time.monotonic()
            time.sleep(0.3)
            return (ticks[0] - n0) / (time.monotonic() - t0)

        t = threading.Thread(target=other_thread)
        t.start()
        worst, seen = 0.0, 0
        try:
            before = pace()
            n0, start = ticks[0], time.monotonic()
            for i in range(50):
                t0 = time.monotonic()
                v = c.fetch(f"k{i}")
                worst = max(worst, time.monotonic() - t0)
                seen += v is not None
            n1, end = ticks[0], time.monotonic()
            # its pace before and after, so that a machine that got busier
            # or quieter meanwhile does not decide it
            ran = (n1 - n0) / ((before + pace()) / 2 * (end - start))
        finally:
            stop.set()
            t.join()
        assert worst < 0.05  # the bound: 10 ms of waiting, then a miss
        assert seen == 0  # clear() holds every stripe odd: each read is a miss
        assert c.info(limited=True)["waited_reads"] >= 50
        assert ran > 0.7, ran  # the waits let the GIL go: the other thread ran on
    finally:
        p.send_signal(signal.SIGCONT)
        p.wait(10)
    assert c.fetch("k1") is None and c.check() == []


# ---------------------------------------------------------------- truncation


def test_truncating_an_attached_segment_is_an_error_not_a_signal(segments):
    c = segments(size=1 << 20)
    code = f"""
        import faulthandler, os, apccache
        from apccache import CorruptSegmentError
        faulthandler.enable()  # another SIGBUS handler: it gets what is not ours
        c = apccache.Cache.attach({c.name!r})
        for i in range(200):
            c.store(f"k{{i}}", os.urandom(2000))
        os.truncate("/dev/shm/{c.name}", 8192)
        errors = set()
        for op in ("fetch", "store", "info", "keys", "delete", "inc", "aux"):
            try:
                if op == "fetch": [c.fetch(f"k{{i}}") for i in range(200)]
                elif op == "store": c.store("x", os.urandom(3000))
                elif op == "info": c.info()
                elif op == "keys": list(c.keys())
                elif op == "delete": c.delete("k5")
                elif op == "inc": c.inc("n")
                elif op == "aux": bytes(c.aux[-16:])
                errors.add(op + ":ok")
            except CorruptSegmentError as e:
                assert "truncated" in str(e), e
                errors.add(op + ":truncated")
        print(sorted(errors))
        print(c.check())
        c.close()
    """
    p = _run(code)
    assert p.returncode == 0, p.stderr
    assert "fetch:truncated" in p.stdout and "store:truncated" in p.stdout
    assert "truncated" in p.stdout.splitlines()[1]


def test_check_reports_a_truncated_file_before_reading_it(segments):
    c = segments(size=1 << 20)
    other = apccache.Cache.attach(c.name)
    try:
        os.truncate(f"/dev/shm/{c.name}", 1 << 19)
        (line,) = other.check()
        assert "truncated" in line
    finally:
        other.close()


# ----------------------------------------------------------------- checksums


@pytest.mark.parametrize("value", [b"v" * 10, "text" * 300, 12345, 2.5, b"x" * 100_000, {"a": 1}])
def test_with_checksums_a_changed_value_is_a_counted_miss_then_dropped(segments, value):
    c = segments(size=1 << 20, checksums=True)
    c.store("k", value)
    c.store("other", b"o")
    assert c.fetch("k") == value
    off = _slot_of(c, "k")
    if isinstance(value, int):
        pos = off + LAYOUT["slot_ival_off"]
    else:
        pos = _value_of(c, "k")  # the first value byte
    c._mv[pos] ^= 0x20
    assert c.fetch("k") is None and c.fetch("k", "d") == "d"
    assert "k" in c  # exists() does not read the value
    assert c.info(limited=True)["corrupt_reads"] == 2
    assert any("checksum" in p for p in c.check())
    c.store("another", 1)  # the next writer repairs: the bad entry goes
    assert "k" not in c and c.fetch("other") == b"o"
    assert c.check() == []


def test_without_checksums_a_changed_value_is_returned_as_it_now_is(segments):
    c = segments(size=1 << 20)
    c.store("k", b"abc")
    c._mv[_value_of(c, "k")] = ord("X")
    assert c.fetch("k") == b"Xbc"  # documented: only checksums catch this


def test_checksums_follow_inc_and_cas(segments):
    c = segments(size=1 << 20, checksums=True)
    assert c.inc("n", 5) == 5 and c.inc("n") == 6 and c.dec("n", 2) == 4
    assert c.cas("n", 4, 40) and c.fetch("n") == 40
    assert c.info(limited=True)["corrupt_reads"] == 0 and c.check() == []


def test_checksums_hold_under_concurrent_inc(segments):
    c = segments(size=1 << 20, checksums=True)
    c.store("n", 0)
    stop = threading.Event()

    def bump():
        other = apccache.Cache.attach(c.name)
        while not stop.is_set():
            other.inc("n")
        other.close()

    t = threading.Thread(target=bump)
    t.start()
    try:
        last = 0
        for _ in range(20000):
            v = c.fetch("n")
            assert v is not None and v >= last
            last = v
    finally:
        stop.set()
        t.join()
    assert c.info(limited=True)["corrupt_reads"] == 0


@pytest.mark.parametrize("fast", [True, False])
def test_bytes_that_do_not_decode_as_their_tag_are_a_counted_miss(segments, fast, monkeypatch):
    c = segments(size=1 << 20)
    if not fast:
        c = apccache.Cache.attach(c.name, clock=time.time)  # a clock: the Python path
    c.store("s", "héllo")
    c.store("f", 1.5)
    base = c._mv
    s_off = _value_of(c, "s")
    base[s_off + 1 : s_off + 3] = b"\xff\xfe"  # not UTF-8 any more
    f_off = _slot_of(c, "f") + LAYOUT["slot_val_len_off"]
    struct.pack_into("<I", base, f_off, 4)  # a float of 4 bytes (val_len is 32 bits)
    assert c.fetch("s") is None and c.fetch("f", 0) == 0
    assert c.info(limited=True)["corrupt_reads"] == 2
    if not fast:
        c.close()


# -------------------------------------------------------------------- close


def test_a_generator_that_closes_its_handle_gives_its_key_up(segments):
    c = segments(size=1 << 20)
    h = apccache.Cache.attach(c.name)
    seen = {}

    def gen(key):
        h.close()
        # Another process (here: handle) may generate the key at once.
        t0 = time.monotonic()
        seen["other"] = c.entry(key, lambda k: "theirs")
        seen["waited"] = time.monotonic() - t0
        return "mine"

    with pytest.raises(CacheClosedError):
        h.entry("k", gen)
    assert seen["other"] == "theirs" and seen["waited"] < 0.5
    assert c.info()["entries_in_progress"] == 0


def test_every_call_on_a_closed_handle_raises_the_same_error(segments):
    c = segments(size=1 << 20)
    h = apccache.Cache.attach(c.name)
    h.close()
    for call in (lambda: h.fetch("k"), lambda: h.store("k", 1), lambda: h.store("k", b"v"),
                 lambda: h.inc("k"), lambda: h.delete("k"), lambda: h.exists("k"),
                 lambda: h.info(), lambda: h.check(), lambda: h.aux):
        with pytest.raises(CacheClosedError, match="closed"):
            call()
    h.close()  # idempotent


def test_close_waits_for_a_copy_in_flight(segments):
    c = segments(size=16 << 20)
    big = os.urandom(8 << 20)
    c.store("big", big)
    h = apccache.Cache.attach(c.name)
    results = []

    def reader():
        try:
            while True:
                results.append(h.fetch("big") == big)
        except CacheClosedError:
            results.append("closed")

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    h.close()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert results.count("closed") == 3 and all(r is True for r in results if r != "closed")


# ------------------------------------------------------------- pin versions


def test_compaction_across_the_pin_version_wrap_keeps_every_entry_readable(segments):
    c = segments(size=1 << 20)
    code = f"""
        import apccache
        from apccache import _bindings as B
        c = apccache.Cache.attach({c.name!r})
        arena = c.sma_info()["seg_size"]
        n = 0
        while c.sma_info(limited=True)["avail_mem"] > 8_000:
            c.store(f"k{{n}}", b"x" * 4000)
            n += 1
        for i in range(0, n, 2):
            c.delete(f"k{{i}}")
        assert B.lib.apc_debug_set_version(c._segment.ptr, 0xFFFFFFFF - 5) == 0
        c.store("big", b"B" * (arena // 4))   # compacts: every move takes a version
        assert c.info()["compactions"] >= 1
        missing = [i for i in range(1, n, 2) if c.fetch(f"k{{i}}") != b"x" * 4000]
        print(missing, c.info(limited=True)["corrupt_reads"], c.check())
    """
    p = _run(code, APCCACHE_DEBUG="1")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split("\n")[0] == "[] 0 []"


def test_an_entry_holder_whose_pid_now_names_another_process_is_taken_over(segments):
    """A pid reused by another process is not the generator that died: the
    record's start time tells them apart."""
    c = segments(size=1 << 20)
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time, apccache
        c = apccache.Cache.attach({c.name!r})
        c.entry("k", lambda key: time.sleep(60) or "theirs")
    """)])
    try:
        deadline = time.monotonic() + 20
        while c.info()["entries_in_progress"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # As if the generator had died and its pid been given to p: the
        # record's start time is no longer p's.
        for i in range(256):
            rec = LAYOUT["elocks_off"] + i * LAYOUT["elock_size"]
            if struct.unpack_from("<q", c._mv, rec + LAYOUT["elock_pid_off"])[0] == p.pid:
                start = rec + LAYOUT["elock_start_off"]
                struct.pack_into("<Q", c._mv, start, struct.unpack_from("<Q", c._mv, start)[0] - 1)
                break
        else:
            pytest.fail("no entry() record for the child")
        t0 = time.monotonic()
        assert c.entry("k", lambda key: "mine") == "mine"
        assert time.monotonic() - t0 < 2.0
    finally:
        p.kill()
        p.wait()


@pytest.mark.parametrize("path", ["fast", "python"])
def test_a_large_value_is_one_hit_on_either_path(segments, path):
    c = segments(size=4 << 20)
    c.store("big", b"b" * 100_000)
    h = c if path == "fast" else apccache.Cache.attach(c.name, clock=time.time)
    try:
        before = c.info(limited=True)["num_hits"]
        assert h.fetch("big") == b"b" * 100_000
        assert c.info(limited=True)["num_hits"] == before + 1
        assert c.key_info("big")["hits"] == 1
    finally:
        if h is not c:
            h.close()
