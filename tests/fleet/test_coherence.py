"""The coherence checker on three simulated hosts (three segments, each with
its own listener and worker), one redis-server, and a writer that bypasses
apccache; once without faults, then under each fault.  No read that began
more than the bound after a write's acknowledgement may return an older
version.

The fault runs are marked ``fleet_fault``; with CI set they run shortened
(the SIGSTOP lasts 2 s instead of 5 s), and say so in their output."""

import os
import signal
import time

import pytest

from checker import Run, describe
from fleet_support import Proxy, wait_trusted

BOUND = 0.05          # the listeners' max_lag: the guarantee under test
IN_CI = bool(os.environ.get("CI"))
DURATION = 3.0 if IN_CI else 5.0


@pytest.fixture
def fleet(hosts, tmp_path, namespace):
    """Three hosts on one Redis; the third one's listener goes through a
    proxy the test can cut (its worker reaches Redis directly)."""
    made = {}

    def make(redis_url, redis_port):
        proxy = made["proxy"] = Proxy(redis_port)
        hs = hosts(2, url=redis_url)
        (third,) = hosts(1, url=proxy.url, wait=False, listener_args=["--dead-after", "0.5"])
        third.fc = third.fleet(url=redis_url)
        wait_trusted(third.fc)
        hs.append(third)
        return hs, proxy

    try:
        yield make
    finally:
        if "proxy" in made:
            made["proxy"].close()


def run_checker(hosts, url, namespace, tmp_path, name, fault=None, duration=DURATION):
    run = Run(hosts, url, namespace, tmp_path, duration).start()
    if fault is not None:
        fault(run)
    results = run.finish()
    a = run.analyse(results, BOUND)
    print("\n" + describe(name, a))
    assert a["reads"] > 200, f"too few reads to judge: {a}"
    assert not a["violations"], "\n".join(a["violations"][:20])
    return a


def test_no_faults(fleet, own_redis, namespace, tmp_path):
    hs, proxy = fleet(own_redis.url, own_redis.port)
    a = run_checker(hs, own_redis.url, namespace, tmp_path, "no faults")
    assert a["errors"] == 0
    assert a["lag_p99"] < BOUND


@pytest.mark.fleet_fault
def test_listener_killed_and_restarted(fleet, own_redis, namespace, tmp_path):
    hs, proxy = fleet(own_redis.url, own_redis.port)

    def fault(run):
        run.sleep_until(1.0)
        hs[0].listener.signal(signal.SIGKILL)
        hs[0].listener.proc.wait()
        run.sleep_until(1.8)
        hs[0].listener.start()

    run_checker(hs, own_redis.url, namespace, tmp_path, "listener SIGKILLed, restarted 0.8 s later", fault)


@pytest.mark.fleet_fault
def test_listener_stopped(fleet, own_redis, namespace, tmp_path):
    stop_for = 2.0 if IN_CI else 5.0
    hs, proxy = fleet(own_redis.url, own_redis.port)

    def fault(run):
        run.sleep_until(0.5)
        hs[1].listener.signal(signal.SIGSTOP)
        run.sleep_until(0.5 + stop_for)
        hs[1].listener.signal(signal.SIGCONT)

    if IN_CI:
        print(f"\n(CI: SIGSTOP shortened to {stop_for} s)")
    run_checker(hs, own_redis.url, namespace, tmp_path, f"listener SIGSTOPped for {stop_for} s", fault,
                duration=stop_for + 1.5)


@pytest.mark.fleet_fault
def test_listener_connection_cut(fleet, own_redis, namespace, tmp_path):
    hs, proxy = fleet(own_redis.url, own_redis.port)
    proxy_epoch = hs[2].fc.status()["epoch"]

    def fault(run):
        run.sleep_until(0.5)
        proxy.cut()
        run.sleep_until(1.8)
        proxy.heal()

    run_checker(hs, own_redis.url, namespace, tmp_path, "listener's connection cut for 1.3 s", fault)
    assert hs[2].fc.status()["epoch"] != proxy_epoch   # it reconnected


@pytest.mark.fleet_fault
@pytest.mark.parametrize("keep_data", [True, False], ids=["with-data", "without-data"])
def test_redis_restarted(fleet, own_redis, namespace, tmp_path, keep_data):
    hs, proxy = fleet(own_redis.url, own_redis.port)

    def fault(run):
        run.sleep_until(1.0)
        if not keep_data:
            run.losses.append(time.monotonic())
        own_redis.restart(keep_data=keep_data)

    what = "with its data" if keep_data else "without its data"
    run_checker(hs, own_redis.url, namespace, tmp_path, f"Redis restarted {what}", fault)


def test_the_checker_flags_a_stale_read_and_not_a_fresh_one():
    """The judge itself: a read older than a write acknowledged more than the
    bound before it began is a violation; within the bound it is not; a write
    that raised obliges nobody; a data loss makes absence the newest state."""
    from checker import analyse

    host0 = {"host": 0, "errors": 0, "writes": [["k", 1, 0.0, 1.0], ["k", 2, 2.0, 3.0], ["k", 3, 4.0, None]],
             "reads": [["k", 1, 3.01, 3.02],     # 10 ms after v2's ack: allowed
                       ["k", 2, 9.0, 9.1]]}      # v3 never acknowledged: allowed
    host1 = {"host": 1, "errors": 0, "writes": [],
             "reads": [["k", 1, 3.2, 3.3],       # 200 ms after v2's ack: a violation
                       ["k", None, 0.5, 0.6]]}   # before v1's ack: allowed
    a = analyse([host0, host1], [], [], 0.05)
    assert len(a["violations"]) == 1 and "host 1 read k=1" in a["violations"][0]
    assert a["stale"] == 2
    lost = {"host": 0, "errors": 0, "writes": [["k", 1, 0.0, 1.0]],
            "reads": [["k", None, 6.0, 6.1], ["k", 1, 7.0, 7.1]]}
    a = analyse([lost], [], [5.0], 0.05)
    assert len(a["violations"]) == 1 and "k=1" in a["violations"][0]
