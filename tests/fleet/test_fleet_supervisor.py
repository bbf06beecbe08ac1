"""The supervisor's built-in listener service ([fleet] table): started with
the pools, restarted when it dies (under a new epoch), stopped with the
master; and the table's validation."""

import os
import signal
import subprocess
import sys
import time

import pytest

import apccache
from helpers.segments import segment_name
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
def supervisor(tmp_path, redis_server, namespace):
    procs = []

    def start():
        name = segment_name("fsup")
        cfg = tmp_path / "sup.toml"
        cfg.write_text(_config(name, redis_server.url, namespace))
        log = open(tmp_path / "sup.log", "wb")
        p = subprocess.Popen([sys.executable, "-m", "apccache", "supervise", str(cfg)], stdout=log, stderr=log)
        procs.append((p, name, log))
        wait_for(lambda: os.path.exists(f"/dev/shm/{name}"), timeout=20, what="the segment")
        return p, name

    try:
        yield start
    finally:
        for p, name, log in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
            log.close()
            try:
                os.unlink(f"/dev/shm/{name}")
            except FileNotFoundError:
                pass


def test_the_supervisor_runs_and_restarts_the_listener(supervisor, redis_server, namespace, tmp_path):
    from apccache.fleet import FleetCache

    master, name = supervisor()
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
    log = (tmp_path / "sup.log").read_text()
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
