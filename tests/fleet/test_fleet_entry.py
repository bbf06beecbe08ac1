"""entry(): computed once across the fleet (a Redis lock with a token and a
lease) and once per host (one process per host waits on Redis); a holder
that dies is taken over when its lease runs out."""

import json
import os
import subprocess
import sys

from fleet_support import wait_for

HERE = os.path.dirname(os.path.abspath(__file__))


def spawn(mode, host, url, namespace, go, lease=30.0):
    return subprocess.Popen([sys.executable, os.path.join(HERE, "fleet_child.py"), mode, host.name, url,
                             namespace, str(go), str(lease)], stdout=subprocess.PIPE)


def test_entry_runs_the_generator_once_across_hosts_and_processes(hosts, redis_server, rclient, namespace,
                                                                   tmp_path):
    hs = hosts(2)
    go = tmp_path / "go"
    procs = [spawn("entry", h, redis_server.url, namespace, go) for h in hs for _ in range(3)]
    try:
        go.touch()
        outs = [p.communicate(timeout=60)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0] * 6
    outs = [json.loads(o) for o in outs]
    values = [o["value"] for o in outs]
    assert len({v["built_by"] for v in values}) == 1
    # per host, one process at a time waits on Redis (the others wait on the
    # host's own Cache.entry): those waits never overlap
    # (a host whose processes started after the value was stored never waits)
    assert any(o["waits"] for o in outs)
    for i in range(2):
        waits = sorted(w for o in outs[3 * i: 3 * i + 3] for w in o["waits"])
        for (s1, e1), (s2, e2) in zip(waits, waits[1:]):
            assert s2 >= e1, f"two processes of host {i} waited on Redis at once: {waits}"
    assert int(rclient.get(f"{namespace}-calls")) == 1
    assert hs[0].fc.fetch("report") == values[0]
    assert rclient.ttl(f"{namespace}:report") > 50
    rclient.delete(f"{namespace}-calls")


def test_a_dead_holder_is_taken_over_after_its_lease(hosts, redis_server, rclient, namespace, tmp_path):
    a, b = hosts(2)
    go = tmp_path / "go"
    go.touch()
    dying = spawn("entry-die", a, redis_server.url, namespace, go, lease=1.0)
    assert dying.stdout.readline().strip() == b"generating"
    dying.wait(10)
    lock = f"{namespace}\x00lock:report".encode()
    assert rclient.exists(lock)                     # it died holding the lease
    calls = []
    value = b.fc.entry("report", lambda key: calls.append(key) or "rebuilt", ttl=60)
    assert value == "rebuilt" and calls == ["report"]
    assert not rclient.exists(lock)
    # host a's own waiters are not stuck on the dead process either
    assert a.fc.entry("report", lambda key: "again") == "rebuilt"
    rclient.delete(f"{namespace}-calls")


def test_a_generator_that_raises_stores_nothing_and_frees_the_lock(hosts, rclient, namespace):
    (h,) = hosts(1)

    def boom(key):
        raise RuntimeError("no")

    try:
        h.fc.entry("x", boom)
    except RuntimeError:
        pass
    else:
        raise AssertionError("the generator's exception did not propagate")
    assert h.fc.fetch("x") is None
    assert not rclient.exists(f"{namespace}\x00lock:x".encode())
    assert h.fc.entry("x", lambda key: 5) == 5
    wait_for(lambda: h.fc.fetch("x") == 5, what="the stored value")
