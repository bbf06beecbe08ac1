"""Fixtures for the fleet tests: a redis-server per test module, hosts
(segment + listener) that are always torn down, and FleetCaches on them."""

import uuid

import pytest

import apccache
from helpers.segments import segment_name
from fleet_support import Listener, RedisServer, need_redis, wait_trusted


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """One redis-server on a free loopback port for the module's tests."""
    need_redis()
    srv = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of the test's own (one it may stop, restart or cut off)."""
    srv = RedisServer(tmp_path / "own").start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def namespace(redis_server):
    return f"t{uuid.uuid4().hex[:10]}"


class Host:
    """A simulated host: its own segment and its own listener process."""

    def __init__(self, url, namespace, logdir, max_lag=0.05, listener_args=()):
        self.name = segment_name("fleet")
        self.cache = apccache.Cache.create(self.name, size=8 << 20)
        self.url = url
        self.namespace = namespace
        self.listener = Listener(self.name, url, namespace, logdir, max_lag=max_lag, extra=listener_args)
        self.fleets = []

    def start(self):
        self.listener.start()
        return self

    def fleet(self, url=None, **kwargs):
        from apccache.fleet import FleetCache

        fc = FleetCache(self.cache, url or self.url, self.namespace, **kwargs)
        self.fleets.append(fc)
        return fc

    def close(self):
        self.listener.stop()
        for fc in self.fleets:
            try:
                fc.redis.close()
            except Exception:
                pass
        self.cache.unlink()
        self.cache.close()


@pytest.fixture
def hosts(redis_server, namespace, tmp_path):
    """``hosts(n, **kw)`` -> n started hosts sharing one Redis and namespace,
    each with a trusted FleetCache as ``host.fc``."""
    made = []

    def make(n=1, url=None, wait=True, fleet_kwargs=None, **kwargs):
        out = []
        for _ in range(n):
            h = Host(url or redis_server.url, namespace, tmp_path, **kwargs)
            made.append(h)
            h.start()
            h.fc = h.fleet(**(fleet_kwargs or {}))
            out.append(h)
        if wait:
            for h in out:
                wait_trusted(h.fc)
        return out

    try:
        yield make
    finally:
        for h in made:
            h.close()


@pytest.fixture
def rclient(redis_server):
    """A plain redis-py client: a writer that bypasses apccache."""
    import redis

    r = redis.Redis(port=redis_server.port)
    try:
        yield r
    finally:
        r.close()


def pytest_configure(config):
    config.addinivalue_line("markers", "fleet_fault: a coherence run under a fault (shortened when CI is set)")
