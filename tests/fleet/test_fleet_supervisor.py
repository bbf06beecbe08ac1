"""The supervisor's built-in listener service ([fleet] table): started with
the pools, restarted when it dies (under a new epoch), stopped with the
master; and the table's validation."""

import os
import signal

import pytest

import apccache
from helpers.children import wait_until
from helpers.segments import segment_name, shm_path
from apccache.supervisor.config import parse
from apccache.supervisor.errors import ConfigError
from fleet_support import wait_for, wait_trusted

HERE = os.path.dirname(os.path.abspath(__file__))


def _config(name, url, namespace, extra=""):
    return f"""
[supervisor]
python_path = ["{HERE}"]
stop_timeout = 5

[cache]
name = "{name}"
size = "8M"

[fleet]
redis = "{url}"
namespace = "{namespace}"
{extra}

[pools.idle]
target = "fleet_workers:idle"
workers = 1
"""


@pytest.fixture
def supervisor(supervise, redis_server, namespace):
    """start() -> a Run of a supervisor whose [fleet] table names the module's Redis, once its segment exists."""
    def start():
        name = segment_name("fsup")
        run = supervise(_config(name, redis_server.url, namespace), name=name)
        wait_until(lambda: os.path.exists(shm_path(name)), 20, "the segment", describe=run.log)
        return run

    return start


def test_the_supervisor_runs_and_restarts_the_listener(supervisor, redis_server, namespace):
    from apccache.fleet import FleetCache

    run = supervisor()
    master, name = run.proc, run.name
    cache = apccache.Cache.attach(name)
    try:
        fc = FleetCache(cache, redis_server.url, namespace)
        wait_trusted(fc, timeout=20)
        first = fc.status()
        assert first["pid"] not in (master.pid, os.getpid())
        fc.store("k", "v1")
        assert fc.fetch("k") == "v1"
        os.kill(first["pid"], signal.SIGKILL)
        wait_for(lambda: fc.status()["pid"] not in (first["pid"], None) and fc.status()["trusted"],
                 timeout=20, what="a restarted listener")
        assert fc.status()["epoch"] != first["epoch"]
        assert fc.fetch("k") == "v1"
        listener = fc.status()["pid"]
        os.kill(master.pid, signal.SIGTERM)
        assert master.wait(30) == 0
        with pytest.raises(ProcessLookupError):
            os.kill(listener, 0)
    finally:
        cache.close()
    log = run.log()
    assert "fleet listener" in log and "restarting in" in log


@pytest.mark.parametrize("table, message", [
    ('namespace = "a"', "fleet.redis must be a non-empty string"),
    ('redis = "http://x"\nnamespace = "a"', "redis:// URL"),
    ('redis = "redis://x:1"\nnamespace = "a:b"', "must not contain ':'"),
    ('redis = "redis://x:1"\nnamespace = "a"\nmax_lag = 0', "fleet.max_lag must be a number of seconds > 0"),
    ('redis = "redis://x:1"\nnamespace = "a"\nmax_lag = 0.01', "ping_interval must be below"),
    ('redis = "redis://x:1"\nnamespace = "a"\nmaxlag = 1', "unknown key fleet.maxlag"),
])
def test_bad_fleet_tables_are_refused(table, message):
    import tomllib

    data = tomllib.loads(f'[cache]\nname = "x"\n[pools.p]\ntarget = "a:b"\n[fleet]\n{table}\n')
    with pytest.raises(ConfigError, match=message):
        parse(data)


def test_a_good_fleet_table():
    import tomllib

    data = tomllib.loads('[cache]\nname = "x"\n[pools.p]\ntarget = "a:b"\n'
                         '[fleet]\nredis = "redis://10.0.0.5:6379/0"\nnamespace = "myapp"\nmax_lag = 0.1\n')
    cfg = parse(data)
    assert cfg.fleet.table() == {"redis": "redis://10.0.0.5:6379/0", "namespace": "myapp", "max_lag": 0.1,
                                 "ping_interval": 0.01, "dead_after": 1.0}
    assert parse(tomllib.loads('[cache]\nname = "x"\n[pools.p]\ntarget = "a:b"\n')).fleet is None
