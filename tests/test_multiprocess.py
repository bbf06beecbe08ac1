"""Cross-process behaviour, with real processes started by fork and by spawn."""
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import apccache
from helpers.children import run_processes

CONTEXTS = ["fork", "spawn"]


def _store_in_child(name, key, value):
    with apccache.Cache.attach(name) as c:
        c.store(key, value)


def _inc_many(name, n, barrier):
    c = apccache.Cache.attach(name)
    barrier.wait()
    for _ in range(n):
        c.inc("counter")
    c.close()


def _add_race(name, who, barrier, results):
    c = apccache.Cache.attach(name)
    barrier.wait()
    results.put((who, c.add("prize", who)))
    c.close()


def _entry_race(name, barrier, results):
    c = apccache.Cache.attach(name)
    barrier.wait()

    def gen(key):
        c.inc("generator-runs")
        time.sleep(0.3)
        return f"made by {os.getpid()}"

    results.put(c.entry("slow", gen))
    c.close()


@pytest.mark.parametrize("method", CONTEXTS)
def test_a_value_stored_in_a_child_is_seen_by_the_parent(segments, method):
    c = segments(size=1 << 20)
    p = mp.get_context(method).Process(target=_store_in_child, args=(c.name, "k", {"from": "child"}))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    assert c.fetch("k") == {"from": "child"}


@pytest.mark.parametrize("method", CONTEXTS)
def test_concurrent_inc_from_several_processes_sums_exactly(segments, method):
    c = segments(size=1 << 20)
    ctx = mp.get_context(method)
    barrier = ctx.Barrier(4)
    ps = [ctx.Process(target=_inc_many, args=(c.name, 2500, barrier)) for _ in range(4)]
    run_processes(ps, 60)
    assert c.fetch("counter") == 10000
    assert c.check() == []


@pytest.mark.parametrize("method", CONTEXTS)
def test_concurrent_add_has_exactly_one_winner(segments, method):
    c = segments(size=1 << 20)
    ctx = mp.get_context(method)
    barrier = ctx.Barrier(6)
    results = ctx.Queue()
    ps = [ctx.Process(target=_add_race, args=(c.name, i, barrier, results)) for i in range(6)]
    for p in ps:
        p.start()
    got = [results.get(timeout=60) for _ in ps]
    for p in ps:
        p.join(30)
    winners = [who for who, won in got if won]
    assert len(winners) == 1
    assert c.fetch("prize") == winners[0]


@pytest.mark.parametrize("method", CONTEXTS)
def test_entry_race_runs_the_generator_once(segments, method):
    c = segments(size=1 << 20)
    ctx = mp.get_context(method)
    barrier = ctx.Barrier(4)
    results = ctx.Queue()
    ps = [ctx.Process(target=_entry_race, args=(c.name, barrier, results)) for _ in range(4)]
    for p in ps:
        p.start()
    values = [results.get(timeout=60) for _ in ps]
    for p in ps:
        p.join(30)
    assert c.fetch("generator-runs") == 1
    assert len(set(values)) == 1
    assert c.info()["entries_in_progress"] == 0


def _generating_child(name):
    """A process stuck inside entry("k")'s generator; it says "generating"."""
    code = textwrap.dedent(f"""
        import time, apccache
        c = apccache.Cache.attach({name!r})
        def gen(k):
            print("generating", flush=True)
            time.sleep(60)
        c.entry("k", gen)
    """)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def test_entry_is_taken_over_when_the_generating_process_dies(segments):
    c = segments(size=1 << 20)
    child = _generating_child(c.name)
    try:
        assert child.stdout.readline().strip() == "generating"
        assert c.info()["entries_in_progress"] == 1
        child.send_signal(signal.SIGKILL)  # not reaped yet: a zombie is dead too
        t0 = time.monotonic()
        assert c.entry("k", lambda k: "taken over") == "taken over"
        assert time.monotonic() - t0 < 5
    finally:
        child.kill()
        child.wait()
    assert c.info()["entries_in_progress"] == 0


def test_recover_releases_an_entry_in_progress(segments):
    c = segments(size=1 << 20)
    child = _generating_child(c.name)
    assert child.stdout.readline().strip() == "generating"
    child.kill()
    child.wait()
    assert c.info()["entries_in_progress"] == 1
    assert c.recover(child.pid) == 1
    assert c.info()["entries_in_progress"] == 0
    assert c.recover(child.pid) == 0


def _fork_child_uses_handle(c, q):
    c.store("from-child", os.getpid())
    q.put(c.fetch("from-parent"))


def test_a_handle_inherited_through_fork_keeps_working(segments):
    c = segments(size=1 << 20)
    c.store("from-parent", "hello")
    c.fetch("from-parent")  # the parent's per-thread buffer exists before the fork
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_fork_child_uses_handle, args=(c, q))
    p.start()
    assert q.get(timeout=30) == "hello"
    p.join(30)
    assert p.exitcode == 0
    assert c.fetch("from-child") == p.pid


def test_exiting_attached_processes_never_unlink_the_segment(segments):
    """Python 3.11's resource tracker would unlink a segment when any
    attaching process exits; ours must not."""
    c = segments(size=1 << 20)
    for method in CONTEXTS:
        p = mp.get_context(method).Process(target=_store_in_child, args=(c.name, method, 1))
        p.start()
        p.join(30)
    code = f"import apccache; apccache.Cache.attach({c.name!r}).store('py', 1)"
    subprocess.run([sys.executable, "-c", code], check=True)
    time.sleep(0.2)
    assert os.path.exists(f"/dev/shm/{c.name}")
    other = apccache.Cache.attach(c.name)
    assert other.fetch_many(["fork", "spawn", "py"]) == {"fork": 1, "spawn": 1, "py": 1}
    other.close()


def test_a_creator_process_exiting_does_not_unlink_either(tmp_path):
    from helpers.segments import segment_name

    name = segment_name("creator")
    code = f"import apccache; apccache.Cache.create({name!r}, size=1 << 20).store('k', 1)"
    try:
        subprocess.run([sys.executable, "-c", code], check=True)
        c = apccache.Cache.attach(name)
        assert c.fetch("k") == 1
        c.close()
    finally:
        if os.path.exists(f"/dev/shm/{name}"):
            os.unlink(f"/dev/shm/{name}")


def _pin_and_die(c, q):
    from apccache import _bindings as B

    ref = B.ffi.new("apc_ref *")
    r = B.lib.apc_fetch_ref(c._segment.ptr, 0, b"large", 5, 0, ref)
    q.put(r >= 0 and ref.rec >= 0)  # a large value's pin is on record
    q.close()
    q.join_thread()
    os._exit(0)  # leave without unpinning


def test_a_forked_child_records_its_own_pid_for_its_pins(segments):
    c = segments(size=1 << 20)
    c.store("large", b"L" * 50_000)
    c.fetch("large")  # the parent's engine state exists before the fork
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_pin_and_die, args=(c, q))
    p.start()
    assert q.get(timeout=30) is True
    p.join(30)
    assert c.info()["pins"] == 1
    assert c.recover(os.getpid()) == 0  # not the parent's
    assert c.recover(p.pid) == 1
    assert c.key_info("large")["refs"] == 0
