"""Crash safety: a process SIGKILLed at the worst instruction inside the
engine leaves a segment that every other process can keep using.

Each scenario runs the operation in a child with the debug engine and one
fault point armed (APCCACHE_FAULT), so the child kills itself exactly there,
holding whatever it holds.  Meanwhile another process keeps working on the
cache.  Afterwards: the next operation from another process completes within
1 s, check() is clean, and once everything is deleted every byte of the arena
is free again (nothing leaked)."""
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import apccache
from helpers.segments import SETUP_FILL, SETUP_FRAGMENT


# point -> (setup run in the parent, operation run in the dying child).
# 'victim' holds b'old' * 100: a store of another size builds a new slot,
# one of the same size rewrites the entry in place.
SCENARIOS = {
    "store.after_alloc": ("", "c.store('victim', b'new' * 120)"),
    "store.after_publish": ("", "c.store('victim', b'new' * 120)"),
    "store.in_place": ("", "c.store('victim', b'new' * 100)"),
    "store.in_place_published": ("", "c.store('victim', b'new' * 100)"),
    "alloc.mid_split": ("", "c.store('fresh', b'x' * 500)"),
    "remove.after_unlink": ("", "c.delete('victim')"),
    "delete.after_unlink": ("", "c.delete('victim')"),
    # a deleted slot is freed by its stripe's next allocation
    "free.before_coalesce": ("", "c.delete('victim'); c.store('victim', b'n')"),
    # a block only the big free block can hold: cut from its front, so its neighbour is free
    "free.mid_coalesce": ("", "c.store('t', b't' * 500_000); c.delete('t'); c.store('t', b'u')"),
    "inc.in_place": ("c.store('n', 41)", "c.inc('n')"),
    # inside the allocator lock (with a block just taken), and between two
    # of a stripe's counters
    "alloc.locked": ("", "c.store('fresh', b'x' * 500)"),
    "store.mid_count": ("", "c.store('fresh', b'x' * 500)"),
    # a slot parked on its stripe's pending list, and the list freed when full
    "retire.parked": ("", "c.store('victim', b'new' * 120)"),
    # a parked block of the right size taken for a store, before it leaves the list
    "reuse.claimed": ("", "c.store('victim', b'new' * 120); c.store('victim', b'old' * 100)"),
    "drain.locked": ("[c.store(f'p{i}', b'p') for i in range(4000)]",
                     "s = c._stripe_of('victim')\n"
                     "[c.delete(k) for k in (f'p{i}' for i in range(4000)) if c._stripe_of(k) == s]"),
    "clear.mid": ("", "c.clear()"),
    "evict.after_remove": (SETUP_FILL, "[c.store(f'more{j}', b'm' * 3000) for j in range(100)]"),
    "evict.before_compact": (SETUP_FRAGMENT, "c.store('big', b'B' * 200_000)"),
    "compact.before_move": (SETUP_FRAGMENT, "c.store('big', b'B' * 200_000)"),
    "compact.mid_move": (SETUP_FRAGMENT, "c.store('big', b'B' * 200_000)"),
    "compact.after_move": (SETUP_FRAGMENT, "c.store('big', b'B' * 200_000)"),
    # a reader in its hit log: noting a hit, and folding a full log (a
    # key read again at once gets a record, and is then read without a pin)
    "hits.note": ("", "[c.fetch('victim') for _ in range(4)]"),
    "hits.fold": ("", "[c.fetch(f'k{i}') for i in range(100) for _ in range(3)]"),
    "hits.fold_added": ("", "[c.fetch(f'k{i}') for i in range(100) for _ in range(3)]"),
}


def run_dying(name, op, point):
    code = f"import apccache\nc = apccache.Cache.attach({name!r})\n{op}\nprint('survived')\n"
    env = dict(os.environ, APCCACHE_DEBUG="1", APCCACHE_FAULT=point)
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    return p


def _keep_working(name, stop_at, q, allocate=True):
    """Another process using the cache all along; reports its slowest op."""
    c = apccache.Cache.attach(name)
    c.inc("bg-counter")
    worst, n, errors = 0.0, 0, []
    while time.time() < stop_at:
        t0 = time.monotonic()
        try:
            if allocate:
                c.store(f"bg{n % 50}", b"b" * (n % 700))
            c.fetch(f"bg{(n * 7) % 50}")
            c.inc("bg-counter")
        except apccache.CacheFullError:
            pass
        except Exception as e:
            errors.append(repr(e))
        worst = max(worst, time.monotonic() - t0)
        n += 1
    q.put((worst, n, errors))
    c.close()


@pytest.mark.parametrize("point", sorted(SCENARIOS))
def test_a_writer_killed_at_a_fault_point_leaves_a_usable_segment(segments, point):
    setup, op = SCENARIOS[point]
    c = segments(size=2 << 20)
    for i in range(200):
        c.store(f"k{i}", b"v" * (i * 3))
    c.store("victim", b"old" * 100)
    exec(textwrap.dedent(setup), {"c": c})
    assert c.check() == []

    ctx = mp.get_context("fork")
    q = ctx.Queue()
    # free.mid_coalesce needs the block after the child's to stay free, and
    # the points on the way from a stripe's pending list a list that nobody
    # else's allocation empties first, so there the other process only
    # reads and increments in place.
    allocate = point not in ("free.mid_coalesce", "free.before_coalesce", "drain.locked",
                             "reuse.claimed")
    bg = ctx.Process(target=_keep_working, args=(c.name, time.time() + 1.5, q, allocate))
    bg.start()
    time.sleep(0.3)
    p = run_dying(c.name, op, point)
    assert p.returncode == -signal.SIGKILL, f"the fault point was not reached:\n{p.stdout}{p.stderr}"

    # The next operation completes at once.  Whether its entry is still
    # there for the fetch is not asserted while the other process works:
    # its stores may evict it (atime has one-second resolution, and the
    # cache is full), and a read that meets its write waits only 10 ms.
    t0 = time.monotonic()
    c.store("after", b"a")
    c.fetch("after")
    assert time.monotonic() - t0 < 1.0
    worst, n, errors = q.get(timeout=30)
    bg.join(30)
    assert errors == []
    assert n > 10 and worst < 1.0, f"another process stalled for {worst:.2f} s"
    c.store("after", b"a")
    assert c.fetch("after") == b"a"

    assert c.check() == []
    for k in list(c.keys()):
        c.delete(k)
    assert c.check() == []
    s = c.sma_info()
    assert c.info()["gc_entries"] == 0
    assert s["avail_mem"] == s["seg_size"], "memory leaked by the crash was never reclaimed"


def test_a_writer_killed_between_two_moves_of_a_compaction_loses_no_entry(segments):
    """A used block has no footer: the repair accepts it only if the next
    block's PREV_USED bit says it is used.  So each move of a compaction
    leaves the space behind it tagged free and the next block told: killed
    after a move, the repair keeps every entry, the moved one included."""
    c = segments(size=2 << 20)
    for i in range(200):
        c.store(f"k{i}", b"v" * (i * 3))
    exec(textwrap.dedent(SETUP_FRAGMENT), {"c": c})
    before = {k: c.fetch(k) for k in c.keys()}
    compactions = c.info()["compactions"]
    p = run_dying(c.name, "c.store('big', b'B' * 200_000)", "compact.after_move")
    assert p.returncode == -signal.SIGKILL, f"the fault point was not reached:\n{p.stdout}{p.stderr}"
    assert c.info()["compactions"] == compactions + 1
    c.store("after", b"a")  # takes the lock over and repairs
    assert c.info()["repairs"] >= 1
    assert c.check() == []
    assert {k: c.fetch(k) for k in before} == before
    assert c.fetch("after") == b"a"


def test_a_writer_killed_mid_compaction_is_repaired_by_the_first_reader(segments):
    """Compaction holds every lock with every stripe odd.  A reader that
    comes first takes the dead writer's stripe over, finds the allocator's
    lock orphaned too, and runs the whole repair itself: it neither waits
    for a writer to come nor trusts a stripe the dead left half moved."""
    c = segments(size=2 << 20)
    for i in range(200):
        c.store(f"k{i}", b"v" * (i * 3))
    exec(textwrap.dedent(SETUP_FRAGMENT), {"c": c})
    before = {k: c.fetch(k) for k in c.keys()}
    p = run_dying(c.name, "c.store('big', b'B' * 200_000)", "compact.mid_move")
    assert p.returncode == -signal.SIGKILL, f"the fault point was not reached:\n{p.stdout}{p.stderr}"
    t0 = time.monotonic()
    got = {k: c.fetch(k) for k in before}
    assert time.monotonic() - t0 < 2.0
    assert all(v is None or v == before[k] for k, v in got.items())  # lost, never wrong
    assert c.info(limited=True)["repairs"] >= 1  # no writer came: a reader repaired
    assert c.check() == []


def test_a_writer_killed_holding_the_allocator_lock_owes_a_whole_repair(segments):
    c = segments(size=1 << 20)
    c.store("keep", b"k" * 100)
    # a counter in another stripe than the dead writer's (whose lock, taken
    # over, would need the allocator's to finish its intent)
    n = next(k for k in (f"n{i}" for i in range(1000)) if c._stripe_of(k) != c._stripe_of("fresh"))
    c.store(n, 1)
    p = run_dying(c.name, "c.store('fresh', b'x' * 500)", "alloc.locked")
    assert p.returncode == -signal.SIGKILL
    assert c.fetch("keep") == b"k" * 100  # readers take no lock
    c.inc(n)  # in place: its stripe only, no allocation, no repair
    assert c.info(limited=True)["repairs"] == 0
    c.store("other", b"o" * 100)  # allocates: alock is taken over, the repair runs
    i = c.info(limited=True)
    assert i["repairs"] == 1 and i["lock_steals"] >= 1
    assert c.fetch("other") == b"o" * 100 and c.fetch("keep") == b"k" * 100
    assert c.check() == []
    s = c.sma_info()
    assert s["seg_size"] - s["avail_mem"] == c.info()["mem_size"]


def test_a_writer_killed_between_its_stripes_counters_is_recounted(segments):
    c = segments(size=1 << 20)
    p = run_dying(c.name, "c.store('fresh', b'x' * 500)", "store.mid_count")
    assert p.returncode == -signal.SIGKILL
    c.store("fresh", b"y" * 10)  # the same stripe: taken over, recounted
    i = c.info()
    assert i["num_entries"] == 1 and i["repairs"] == 0
    assert c.check() == []


def test_a_dead_writers_stripe_is_rescued_by_a_reader_and_its_seq_made_even(segments):
    c = segments(size=1 << 20)
    c.store("victim", b"x" * 100)
    p = run_dying(c.name, "c.delete('victim')", "delete.after_unlink")  # dies with the stripe odd
    assert p.returncode == -signal.SIGKILL
    t0 = time.monotonic()
    assert c.fetch("victim") is None  # a reader first: it must not spin forever
    assert time.monotonic() - t0 < 0.5
    i = c.info(limited=True)
    # the reader took the dead writer's stripe over and finished its delete:
    # no whole repair, and no read was given up
    assert i["lock_steals"] == 1 and i["repairs"] == 0 and i["waited_reads"] == 0
    s = c.sma_info()
    assert s["avail_mem"] == s["seg_size"]  # the unlinked slot was freed
    c.store("victim", b"y")
    assert c.fetch("victim") == b"y"
    assert c.check() == []


def test_a_dead_writers_replaced_slot_is_freed_by_the_stripes_next_writer(segments):
    c = segments(size=1 << 20)
    c.store("victim", b"x" * 100)
    p = run_dying(c.name, "c.store('victim', b'y' * 200)", "store.after_publish")
    assert p.returncode == -signal.SIGKILL
    assert c.fetch("victim") == b"y" * 200  # published before it died
    c.store("victim", b"z")  # the same stripe: taken over; the old slot is freed
    i = c.info()
    assert i["lock_steals"] == 1 and i["repairs"] == 0
    s = c.sma_info()
    assert s["seg_size"] - s["avail_mem"] == i["mem_size"]
    assert c.check() == []


def test_a_reader_killed_while_pinning_is_reclaimed_after_gc_ttl(segments):
    from helpers.segments import FakeClock

    clock = FakeClock()
    c = segments(size=1 << 20, gc_ttl=60, clock=clock)
    c.store("pinned", b"p" * 50_000)
    p = run_dying(c.name, "c.fetch('pinned')", "fetch.pinned")
    assert p.returncode == -signal.SIGKILL
    assert c.key_info("pinned")["refs"] == 1
    assert c.fetch("pinned") == b"p" * 50_000  # still served
    assert c.delete("pinned")
    i = c.info()
    assert i["gc_entries"] == 1 and i["deleted_list"][0]["refs"] == 1
    assert c.check() == []
    clock.advance(30)
    c.store("tick", 1)
    assert c.info()["gc_entries"] == 1  # not yet: gc_ttl is 60 s
    clock.advance(31)
    c.store("tick", 2)
    assert c.info()["gc_entries"] == 0
    c.delete("tick")
    s = c.sma_info()
    assert s["avail_mem"] == s["seg_size"]
    assert c.check() == []


def test_recover_releases_the_recorded_pin_of_a_dead_reader(segments):
    c = segments(size=1 << 20)
    big = b"L" * 100_000
    c.store("large", big)
    code = textwrap.dedent(f"""
        import os, sys, apccache
        from apccache import _bindings as B
        c = apccache.Cache.attach({c.name!r})
        ref = B.ffi.new("apc_ref *")
        k = b"large"
        r = B.lib.apc_fetch_ref(c._segment.ptr, 0, k, len(k), 0, ref)
        assert r >= 0 and ref.rec >= 0, (r, ref.rec)  # a large value's pin is on record
        print(os.getpid(), flush=True)
        os.kill(os.getpid(), 9)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    pid = int(p.stdout.split()[0])
    assert c.key_info("large")["refs"] >= 1
    assert c.recover(pid) == 1
    assert c.info()["pins"] == 0
    assert c.key_info("large")["refs"] == 0
    assert c.delete("large")
    assert c.info()["gc_entries"] == 0  # freed at once: nothing pins it now
    assert c.check() == []
