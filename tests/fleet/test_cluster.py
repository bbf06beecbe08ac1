"""The fleet tier on a 3-node Redis Cluster started by the test: one tracking
connection per primary, invalidations from every node, and the coherence
checker while slots (with their keys) migrate between nodes."""

import os
import threading
import time

import pytest

from checker import Run, describe
from fleet_support import RedisClusterServers, need_redis, wait_for, wait_synced

BOUND = 0.05
IN_CI = bool(os.environ.get("CI"))
SLOTS = 1000 if IN_CI else 2000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    need_redis()
    c = RedisClusterServers(tmp_path_factory.mktemp("cluster"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def test_the_listener_tracks_every_primary(hosts, cluster):
    a, b = hosts(2, url=cluster.url, fleet_kwargs={"cluster": True})
    keys = [f"k{i}" for i in range(30)]          # spread over the three nodes' slots
    a.fc.store_many({k: 1 for k in keys})
    wait_synced(b.fc)                            # b has handled those writes' pushes
    assert b.fc.fetch_many(keys) == {k: 1 for k in keys}
    before = _evalsha_calls(cluster)
    assert b.fc.fetch_many(keys) == {k: 1 for k in keys}   # near copies
    assert _evalsha_calls(cluster) == before
    for k in keys:
        a.fc.store(k, 2)
    wait_for(lambda: b.fc.fetch_many(keys) == {k: 2 for k in keys}, timeout=1.0,
             what="b to see writes on every node")
    assert "127.0.0.1:%d" % cluster.nodes[2].port in b.listener.log()
    assert b.fc.inc("n") == 1 and b.fc.entry("e", lambda k: "built") == "built"
    assert a.fc.clear() == 32


def test_coherence_while_slots_migrate(hosts, cluster, namespace, tmp_path):
    hs = hosts(3, url=cluster.url, fleet_kwargs={"cluster": True})
    # The run lasts until the migration has ended and 0.5 s more (at most 90 s).
    duration = 90.0
    run = Run(hs, cluster.url, namespace, tmp_path, duration, cluster=True).start()
    errors = []
    moved = []

    def migrate():
        try:
            run.sleep_until(0.5)
            cluster.reshard(0, 1, SLOTS)
            cluster.reshard(1, 0, SLOTS)
            moved.append(time.monotonic() - run.started)
            time.sleep(0.5)
        except Exception as e:  # reported below, after the workers are collected
            errors.append(e)
        finally:
            run.stop()

    t = threading.Thread(target=migrate)
    t.start()
    results = run.finish()
    t.join(120)
    assert not errors, errors
    assert moved and moved[0] < duration, f"the migration ended {moved} s into a {duration} s run"
    a = run.analyse(results, BOUND)
    print("\n" + describe(f"cluster, {SLOTS} slots migrated there and back in {moved[0]:.1f} s", a))
    assert a["reads"] > 200
    assert not a["violations"], "\n".join(a["violations"][:20])


def _evalsha_calls(cluster):
    import redis

    n = 0
    for node in cluster.nodes:
        r = redis.Redis(port=node.port)
        n += r.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
        r.close()
    return n


def test_a_new_primary_is_tracked_before_slots_move_to_it(hosts, cluster):
    from fleet_support import add_cluster_node

    a, b = hosts(2, url=cluster.url, fleet_kwargs={"cluster": True})
    epoch = b.fc.status()["epoch"]
    new = add_cluster_node(cluster)
    port = cluster.nodes[new].port
    wait_for(lambda: f"127.0.0.1:{port}" in b.listener.log() and b.fc.status()["trusted"]
             and b.fc.status()["epoch"] != epoch, timeout=20, what="b's listener to track the new primary")
    cluster.reshard(0, new, 3000)
    keys = [f"k{i}" for i in range(40)]
    a.fc.store_many({k: 1 for k in keys})
    wait_synced(b.fc)
    assert b.fc.fetch_many(keys) == {k: 1 for k in keys}
    a.fc.store_many({k: 2 for k in keys})           # some of them now live on the new node
    wait_for(lambda: b.fc.fetch_many(keys) == {k: 2 for k in keys}, timeout=1.0,
             what="b to see writes on the new primary")
