"""Proof 8: a worker SIGKILLed inside the engine leaves every other worker and the segment sound."""

import signal

import pytest
from helpers.children import wait_until
from helpers.supervisors import config

from apccache.supervisor import ExitCode

FAULT_POINTS = ("store.after_alloc", "store.after_publish", "delete.after_unlink")


def test_worker_killed_inside_the_cache_does_not_stall_others(supervise):
    """For each fault point: the faulty worker dies inside the engine, the others' next operations take
    < 1 s, and check() reports nothing."""
    from apccache import _bindings

    if not hasattr(_bindings.lib, "apc_fault_arm"):
        pytest.fail("the engine has no fault injection")
    pools = {"users": 'target = "sup_workers:cache_user"\nworkers = 2'}
    for i, point in enumerate(FAULT_POINTS):
        pools[f"faulty{i}"] = (f'target = "sup_workers:faulty"\nworkers = 1\nrestart_backoff = [0.1, 1]\n'
                               f'env = {{ FAULT_POINT = "{point}" }}')
    run = supervise(config(pools), env={"APCCACHE_DEBUG": "1"})
    run.wait_ready({"users": 2, **{f"faulty{i}": 1 for i in range(len(FAULT_POINTS))}})
    first = [f"faulty{i}" for i in range(len(FAULT_POINTS))]

    def all_died():
        b = run.board()
        if all(b["pools"][p]["crashes"] == 1 for p in first):
            return b
        return None

    wait_until(all_died, 15, "every faulty worker dying inside the engine", describe=run.describe)
    assert not run.events("survived"), "a fault point did not fire"
    armed = run.events("arming")
    assert sorted(e["point"] for e in armed) == sorted(FAULT_POINTS)
    log = run.log()
    for e in armed:
        assert f"worker 0 (pid {e['pid']}) of pool {e['pool']} was killed by SIGKILL" in log
    last_death = max(e["t"] for e in armed)

    def users_went_on():
        ops = [e for e in run.events("ops", pool="users") if e["t"] > last_death + 0.5]
        return ops if len({e["pid"] for e in ops}) == 2 else None

    wait_until(users_went_on, 10, "both users working after the faults", describe=run.describe)
    ops = run.events("ops", pool="users")
    slowest = max(e["slowest"] for e in ops)
    assert slowest < 1.0, f"a cache operation took {slowest:.3f} s"
    problems = run.attach().check()
    assert problems == [], problems
    b = run.board()
    assert b["pools"]["users"]["crashes"] == 0
    # The faulty pools were restarted and do not arm again.
    wait_until(lambda: all(len([w for w in run.workers(p)]) == 1 for p in first), 10, "faulty pools restarted")
    run.signal(signal.SIGTERM)
    assert run.wait_exit(15) == ExitCode.OK
