"""Proofs 9-11 and 13: SIGHUP reloads, bursts of SIGHUP, SIGTERM stops, SIGTTIN/SIGTTOU, master death."""

import os
import signal
import time

from helpers.children import alive, children_of, fd_count, wait_until
from helpers.supervisors import config

from apccache.supervisor import ExitCode

STEADY = 'target = "sup_workers:steady"\n'


def _zombies(pid):
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] == b"Z":
                out.append(int(entry))
    return out


def test_sighup_reloads_gracefully_and_a_broken_reload_keeps_the_old_generation(supervise):
    """SIGHUP with a 3 s job in flight: the job completes, every pid is new, the cache keeps its contents,
    ready workers never drop to zero.  SIGHUP with a broken target: the old generation keeps serving."""
    pools = {"web": STEADY + 'workers = 2\nenv = { LONG_JOB_KEY = "long", LONG_JOB_SECONDS = "3" }'}
    run = supervise(config(pools))
    board = run.wait_ready({"web": 2})
    old_pids = {w["pid"] for w in board["workers"]}
    cache = run.attach()
    cache.store("kept", "across reloads")
    cache.store("long:web:0", 1)
    wait_until(lambda: run.events("job_start", job="long"), 5, "the long job starting", describe=run.describe)

    run.signal(signal.SIGHUP)
    min_ready = 2
    deadline = time.monotonic() + 20
    while True:
        b = run.board()
        ready = [w for w in b["workers"] if w["state"] in ("idle", "busy")]
        min_ready = min(min_ready, len(ready))
        ws = b["workers"]
        if (b["last_reload"] == "succeeded" and len(ws) == 2 and all(w["generation"] == b["generation"] for w in ws)
                and not {w["pid"] for w in ws} & old_pids and len(ready) == 2):
            break
        assert time.monotonic() < deadline, run.describe()
        time.sleep(0.01)
    assert min_ready >= 1
    assert b["generation"] == 2
    ends = run.events("job_end", job="long")
    assert len(ends) == 1 and ends[0]["pid"] in old_pids
    assert ends[0]["t"] - run.events("job_start", job="long")[0]["t"] >= 2.9
    assert cache.fetch("kept") == "across reloads"
    new_pids = {w["pid"] for w in ws}

    # A reload whose new target cannot be imported leaves generation 2 serving.
    run.write_config(config({"web": 'target = "sup_no_such_module:run"\nworkers = 2'}))
    jobs_before = run.board()["pools"]["web"]["jobs"]
    run.signal(signal.SIGHUP)
    run.wait_log(r"reload to generation 3 failed \(worker \d \(pid \d+\) of pool web failed to start: cannot load "
                 r"sup_no_such_module:run: ModuleNotFoundError.*\); generation 2 keeps serving")

    def settled():
        b = run.board()
        ws = b["workers"]
        if b["last_reload"] == "failed" and len(ws) == 2 and {w["pid"] for w in ws} == new_pids:
            return b
        return None

    b = wait_until(settled, 10, "the failed generation gone", describe=run.describe)
    assert b["generation"] == 2
    wait_until(lambda: run.board()["pools"]["web"]["jobs"] > jobs_before + 5, 5, "generation 2 still serving")
    assert b["pools"]["web"]["crashes"] == 0
    run.signal(signal.SIGTERM)
    assert run.wait_exit(15) == ExitCode.OK


def test_a_burst_of_50_sighups_converges_without_leaks(supervise):
    """50 SIGHUPs within a second end in one generation, the right counts, no stray processes or fds."""
    run = supervise(config({"a": STEADY + "workers = 2", "b": STEADY + "workers = 1"}))
    board = run.wait_ready({"a": 2, "b": 1})
    time.sleep(0.2)
    fds_before = fd_count(run.pid)
    first = {w["pid"] for w in board["workers"]}
    for _ in range(50):
        run.signal(signal.SIGHUP)
        time.sleep(0.018)

    def converged():
        b = run.board()
        ws = b["workers"]
        if b["state"] != "running" or b["last_reload"] != "succeeded":
            return None
        if any(w["generation"] != b["generation"] or w["state"] not in ("idle", "busy") for w in ws):
            return None
        if sorted(w["pool"] for w in ws) != ["a", "a", "b"]:
            return None
        if set(children_of(run.pid)) != {w["pid"] for w in ws}:
            return None
        return b

    b = wait_until(converged, 30, "one generation after the burst", interval=0.05, describe=run.describe)
    assert b["generation"] > 1
    assert not {w["pid"] for w in b["workers"]} & first
    assert sorted(w["worker_id"] for w in b["workers"] if w["pool"] == "a") == [0, 1]
    time.sleep(0.3)
    assert set(children_of(run.pid)) == {w["pid"] for w in b["workers"]}
    assert _zombies(run.pid) == []
    assert fd_count(run.pid) == fds_before
    assert not any(alive(p) for p in run.seen_pids - {w["pid"] for w in b["workers"]})
    run.signal(signal.SIGTERM)
    assert run.wait_exit(15) == ExitCode.OK


def test_sigterm_waits_for_the_job_in_flight(supervise):
    """SIGTERM with a 2 s job in flight: the job completes, then the supervisor exits 0 and unlinks."""
    run = supervise(config({"web": STEADY + 'workers = 2\nenv = { LONG_JOB_KEY = "long", LONG_JOB_SECONDS = "2" }'}))
    run.wait_ready({"web": 2})
    run.attach().store("long:web:1", 1)
    start = wait_until(lambda: run.events("job_start", job="long"), 5, "the long job starting")[0]
    run.signal(signal.SIGTERM)
    assert run.wait_exit(15) == ExitCode.OK
    exited = time.time()
    ends = run.events("job_end", job="long")
    assert len(ends) == 1 and ends[0]["t"] - start["t"] >= 1.9
    assert exited >= ends[0]["t"]
    assert "lost" not in run.log()
    assert not os.path.exists(f"/dev/shm/{run.name}")


def test_sigterm_kills_a_job_ignoring_it_at_stop_timeout(supervise):
    """A job that does not finish is SIGKILLed stop_timeout after SIGTERM; the supervisor still exits 0."""
    run = supervise(config({"web": STEADY + 'workers = 1\nenv = { LONG_JOB_KEY = "long", LONG_JOB_SECONDS = "30" }'},
                           stop_timeout=1))
    run.wait_ready({"web": 1})
    run.attach().store("long:web:0", 1)
    wait_until(lambda: run.events("job_start", job="long"), 5, "the long job starting")
    pid = run.workers("web")[0]["pid"]
    t0 = time.monotonic()
    run.signal(signal.SIGTERM)
    assert run.wait_exit(15) == ExitCode.OK
    took = time.monotonic() - t0
    assert 0.9 <= took <= 4.0, took
    assert (f"worker 0 (pid {pid}) of pool web was killed by SIGKILL: it did not stop within stop_timeout (1 s); "
            "its job 'long' is lost") in run.log()


def test_a_second_sigterm_stops_at_once(supervise):
    """SIGTERM then SIGTERM: workers are SIGKILLed without waiting for stop_timeout; exit 128 + SIGTERM."""
    run = supervise(config({"web": STEADY + 'workers = 2\nenv = { LONG_JOB_KEY = "long", LONG_JOB_SECONDS = "30" }'},
                           stop_timeout=60))
    run.wait_ready({"web": 2})
    run.attach().store("long:web:0", 1)
    wait_until(lambda: run.events("job_start", job="long"), 5, "the long job starting")
    run.signal(signal.SIGTERM)
    time.sleep(0.3)
    t0 = time.monotonic()
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 128 + signal.SIGTERM
    assert time.monotonic() - t0 < 3
    assert not any(alive(p) for p in run.seen_pids)
    assert not os.path.exists(f"/dev/shm/{run.name}")


def test_sigttin_and_sigttou_add_and_remove_a_worker_per_pool(supervise):
    """SIGTTIN starts one more worker in every pool; SIGTTOU retires the highest-numbered one."""
    run = supervise(config({"a": STEADY + "workers = 1", "b": STEADY + "workers = 2"}))
    run.wait_ready({"a": 1, "b": 2})
    run.signal(signal.SIGTTIN)
    b = run.wait_ready({"a": 2, "b": 3})
    assert b["pools"]["b"]["workers"] == 3
    run.signal(signal.SIGTTOU)
    run.signal(signal.SIGTTOU)
    time.sleep(0.3)
    run.signal(signal.SIGTTOU)

    def shrunk():
        b = run.board()
        ws = b["workers"]
        if sorted((w["pool"], w["worker_id"]) for w in ws) == [("a", 0), ("b", 0)]:
            return b
        return None

    b = wait_until(shrunk, 10, "pools shrunk to one worker each", describe=run.describe)
    assert b["pools"]["a"]["workers"] == 1 and b["pools"]["b"]["workers"] == 1
    assert "pool a already runs a single worker" in run.log()
    run.signal(signal.SIGTERM)
    assert run.wait_exit(15) == ExitCode.OK


def test_workers_exit_when_the_master_is_sigkilled(supervise):
    """SIGKILL the master: every worker is gone within 2 s."""
    run = supervise(config({"a": STEADY + "workers = 3", "b": STEADY + "workers = 1"}))
    board = run.wait_ready({"a": 3, "b": 1})
    pids = [w["pid"] for w in board["workers"]]
    os.kill(run.pid, signal.SIGKILL)
    t0 = time.monotonic()
    wait_until(lambda: not any(alive(p) for p in pids), 2.0, "all workers gone", interval=0.01)
    assert time.monotonic() - t0 <= 2.0
