"""What happens when the listener or Redis fails: readers stop trusting the
near copies within max_lag, a reconnect starts a new epoch before copies are
trusted again, and an unreachable Redis raises FleetUnavailableError unless
stale_if_error allows a copy."""

import signal
import time

import pytest

from apccache.fleet import FleetUnavailableError
from fleet_support import Proxy, wait_for, wait_synced, wait_trusted


def test_sigterm_stops_the_listener_and_trust_at_once(hosts):
    (h,) = hosts(1, max_lag=5.0)
    assert h.fc.status()["trusted"]
    assert h.listener.stop(signal.SIGTERM) == 0
    assert h.fc.status()["trusted"] is False      # not 5 s later
    assert h.fc.status()["heartbeat_age"] is None
    assert "tracking" in h.listener.log()


def test_a_killed_listener_is_distrusted_within_max_lag_and_a_new_one_starts_a_new_epoch(hosts):
    a, b = hosts(2)
    a.fc.store("k", "v1")
    assert b.fc.fetch("k") == "v1" and b.fc.fetch("k") == "v1"
    old_epoch = b.fc.status()["epoch"]
    b.listener.signal(signal.SIGKILL)
    b.listener.proc.wait()
    killed = time.monotonic()
    a.fc.store("k", "v2")                          # b's invalidation is lost
    wait_trusted(b.fc, trusted=False)
    assert time.monotonic() - killed <= 0.05 + 0.2   # max_lag, plus scheduling slack
    assert b.fc.fetch("k") == "v2"                 # from Redis
    # b's copy of v1 is still filed under the old epoch with a current
    # generation; a new listener must never let it be served.
    b.fc.cache.store(b.fc._layout.value_key(old_epoch, b.cache.fetch(b.fc._layout.gen_key(b"k")), b"k"), "v1")
    b.listener.start()
    wait_trusted(b.fc)
    assert b.fc.status()["epoch"] != old_epoch
    assert b.fc.fetch("k") == "v2"
    assert b.fleet().fetch("k") == "v2"
    # and the old epoch's copies are dropped from the segment
    wait_for(lambda: not [k for k in b.cache.keys() if isinstance(k, str) and f"\x00v{old_epoch:x}:" in k],
             what="the old epoch's copies to be dropped")


def test_a_stopped_listener_handles_what_it_missed_before_trust_returns(hosts):
    a, b = hosts(2)
    a.fc.store("k", "v1")
    assert b.fc.fetch("k") == "v1" and b.fc.fetch("k") == "v1"
    epoch = b.fc.status()["epoch"]
    b.listener.signal(signal.SIGSTOP)
    try:
        a.fc.store("k", "v2")
        wait_trusted(b.fc, trusted=False)
        time.sleep(0.5)
    finally:
        b.listener.signal(signal.SIGCONT)
    wait_trusted(b.fc)
    assert b.fc.status()["epoch"] == epoch        # same connection: nothing was lost
    assert b.fc.fetch("k") == "v2"                # the queued push was handled first


def test_a_silently_cut_connection_is_detected_and_replaced(hosts, redis_server):
    proxy = Proxy(redis_server.port)
    try:
        (a,) = hosts(1)
        (b,) = hosts(1, url=proxy.url, listener_args=["--dead-after", "0.5"])
        b.fc = b.fleet(url=redis_server.url)        # b's workers reach Redis directly
        wait_trusted(b.fc)
        a.fc.store("k", "v1")
        assert b.fc.fetch("k") == "v1" and b.fc.fetch("k") == "v1"
        epoch = b.fc.status()["epoch"]
        proxy.cut()
        a.fc.store("k", "v2")                       # b's listener never hears of it
        wait_trusted(b.fc, trusted=False)
        time.sleep(b.fc.status()["max_lag"] + 0.01)  # a PONG read late cannot reopen it now
        assert b.fc.fetch("k") == "v2"
        time.sleep(1.0)                              # past dead_after: it gives the connection up
        proxy.heal()
        wait_trusted(b.fc)
        assert b.fc.status()["epoch"] != epoch
        assert b.fc.fetch("k") == "v2"
        assert "did not answer PING" in b.listener.log()
    finally:
        proxy.close()


@pytest.mark.parametrize("keep_data", [False, True], ids=["without-data", "with-data"])
def test_redis_restarted(hosts, own_redis, keep_data):
    a, b = hosts(2, url=own_redis.url)
    a.fc.store("k", "v1")
    assert b.fc.fetch("k") == "v1" and b.fc.fetch("k") == "v1"
    epoch = b.fc.status()["epoch"]
    own_redis.restart(keep_data=keep_data)
    wait_trusted(b.fc)
    wait_for(lambda: b.fc.status()["epoch"] != epoch, what="a new epoch")
    if keep_data:
        assert b.fc.fetch("k") == "v1"
        a.fc.store("k", "v2")
        wait_for(lambda: b.fc.fetch("k") == "v2", timeout=0.5, what="b to see the write after the restart")
    else:
        assert b.fc.fetch("k") is None              # b's copy of v1 is not served


def test_redis_down_writes_raise_and_reads_raise_unless_stale_allowed(hosts, own_redis):
    (h,) = hosts(1, url=own_redis.url)
    h.fc.store("k", {"v": 1})
    wait_synced(h.fc)
    assert h.fc.fetch("k") == {"v": 1}
    lenient = h.fleet(stale_if_error=30)
    own_redis.stop()
    with pytest.raises(FleetUnavailableError, match="unreachable"):
        h.fc.store("k", 2)
    with pytest.raises(FleetUnavailableError):
        h.fc.inc("n")
    with pytest.raises(ConnectionError):            # it is a ConnectionError too
        h.fc.delete("k")
    wait_trusted(h.fc, trusted=False)
    # A PONG sent before the stop may still be written by a listener that
    # was slow to run: it reopens the window until max_lag after that PING.
    # Past max_lag after the stop, nothing can.
    time.sleep(h.fc.status()["max_lag"] + 0.01)
    with pytest.raises(FleetUnavailableError, match="stale_if_error"):
        h.fc.fetch("k")
    assert lenient.fetch("k") == {"v": 1}           # the near copy, within 30 s
    assert h.fc.fetch("k", stale_if_error=30) == {"v": 1}
    with pytest.raises(FleetUnavailableError, match="no copy"):
        lenient.fetch("never-cached")
    with pytest.raises(FleetUnavailableError, match="no copy"):
        h.fc.fetch("k", stale_if_error=0)          # the copy is older than that
