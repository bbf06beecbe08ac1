"""A writer stopped while it holds a lock stalls nobody for long.

A child process with the debug engine and ``APCCACHE_FAULT=stop:<point>``
SIGSTOPs itself at a fault point inside a lock-holding operation (clear,
store_many, eviction, compaction, a store, a delete, an inc).  While it is
stopped:

- readers in this process get every fetch answered (the value from before
  the write, or a miss) within 50 ms;
- a writer that needs a lock the stopped one holds (every lock, for clear,
  eviction and compaction; its key's stripe, for a keyed write) waits at
  most its handle's lock_timeout and then gets CacheBusyError naming the
  stopped process; a keyed write to another stripe does not wait at all;

and after SIGCONT the stopped writer finishes, and the segment is sound.
"""
import gc
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import apccache
from helpers.children import wait_stopped
from helpers.segments import SETUP_FILL, SETUP_FRAGMENT


LOCK_TIMEOUT = 0.3
READ_BOUND = 0.050


# name -> (fault point, setup run here, operation run by the child that
# stops, the key it holds the stripe of when stopped, or None: every lock)
SCENARIOS = {
    "clear": ("clear.mid", "", "c.clear()", None),
    "store_many": ("store.after_publish", "",
                   "c.store_many({f'm{i}': b'm' * 100 for i in range(20)})", "m0"),
    "store_many, allocating": ("store.after_alloc", "",
                               "c.store_many({f'm{i}': b'm' * 100 for i in range(20)})", "m0"),
    "eviction": ("evict.after_remove", SETUP_FILL,
                 "[c.store(f'more{j}', b'm' * 3000) for j in range(100)]", None),
    "compaction, before a move": ("compact.before_move", SETUP_FRAGMENT,
                                  "c.store('big', b'B' * 200_000)", None),
    "compaction, mid move": ("compact.mid_move", SETUP_FRAGMENT, "c.store('big', b'B' * 200_000)", None),
    "delete": ("delete.after_unlink", "", "c.delete('victim')", "victim"),
    "inc": ("inc.in_place", "c.store('n', 41)", "c.inc('n')", "n"),
    "the allocator lock": ("alloc.locked", "", "c.store('fresh', b'x' * 500)", None),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_a_stopped_writer_stalls_readers_briefly_and_writers_until_lock_timeout(segments, scenario):
    point, setup, op, held = SCENARIOS[scenario]
    c = segments(size=2 << 20, lock_timeout=LOCK_TIMEOUT)
    expected = {}
    for i in range(200):
        expected[f"k{i}"] = b"v" * (i * 3)
        c.store(f"k{i}", expected[f"k{i}"])
    c.store("victim", b"old" * 100)
    exec(textwrap.dedent(setup), {"c": c})
    assert c.check() == []

    code = f"import apccache\nc = apccache.Cache.attach({c.name!r})\n{op}\nprint('finished')\n"
    env = dict(os.environ, APCCACHE_DEBUG="1", APCCACHE_FAULT=f"stop:{point}")
    p = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert wait_stopped(p), f"the child never stopped at {point}: {p.communicate(timeout=10)}"

        # Readers: every key, several times over; each answer is the
        # value from before the write or a miss, within the bound.  (The
        # collector is off meanwhile: a full collection of the test
        # process's objects is not the engine's time.)
        times, wrong = [], []
        gc.disable()
        try:
            for rnd in range(3):
                for k, want in expected.items():
                    t0 = time.perf_counter()
                    got = c.fetch(k)
                    times.append((time.perf_counter() - t0, rnd, k, got is None))
                    if got is not None and got != want:
                        wrong.append(k)
        finally:
            gc.enable()
        assert not wrong, f"readers got wrong values for {wrong[:5]}"
        times.sort(reverse=True)
        slowest = ", ".join(f"{k} (round {r}, {'miss' if m else 'hit'}) {dt * 1000:.1f} ms"
                            for dt, r, k, m in times[:5])
        assert times[0][0] < READ_BOUND, f"fetches behind a stopped writer took up to: {slowest}"

        # A writer of the stripe it holds: CacheBusyError naming the
        # stopped process, after lock_timeout (not much sooner, not much
        # later).
        blocked = held or "blocked"
        t0 = time.monotonic()
        with pytest.raises(apccache.CacheBusyError) as ei:
            c.store(blocked, b"x")
        waited = time.monotonic() - t0
        assert ei.value.pid == p.pid
        assert LOCK_TIMEOUT * 0.9 <= waited < LOCK_TIMEOUT + 1.0, f"waited {waited:.3f} s"
        if held:
            # ... and of another stripe: no wait.
            free = next(f"f{i}" for i in range(1000) if c._stripe_of(f"f{i}") != c._stripe_of(held))
            t0 = time.monotonic()
            c.store(free, b"f")
            assert time.monotonic() - t0 < LOCK_TIMEOUT / 2
            assert c.fetch(free) == b"f"
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGCONT)
        out, err = p.communicate(timeout=30)
    assert p.returncode == 0 and "finished" in out, err

    # Everyone goes on.
    c.store("after", b"a")
    assert c.fetch("after") == b"a"
    assert c.check() == []
