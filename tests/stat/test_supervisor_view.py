"""apcstat against a segment that a running `apccache supervise` populated:
its pools and workers are listed from the scoreboard."""
import json
import os
import signal
import subprocess
import sys
import time

from prometheus_client.parser import text_string_to_metric_families

import apccache
from apccache.supervisor import scoreboard
from stat_support import apcstat, env
from helpers.segments import segment_name

WORKERS = '''
import time


def work(ctx):
    n = 0
    while ctx.running:
        with ctx.job("tick"):
            n += 1
            ctx.cache.store(f"tick:{ctx.worker_id}", n)
            ctx.cache.fetch("tick:0")
        time.sleep(0.02)
'''

CONFIG = '''
[supervisor]
python_path = ["{here}"]
stop_timeout = 5

[cache]
name = "{name}"
size = "4M"

[pools.web]
target = "apcstat_workers:work"
workers = 2
'''


def wait_for_workers(name, proc, n, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the supervisor exited with {proc.returncode}")
        try:
            with apccache.Cache.attach(name, timeout=0.1) as c:
                board = scoreboard.read(c)
        except (FileNotFoundError, apccache.CacheError):
            board = None
        if board and board["master_pid"] == proc.pid:
            ready = [w for w in board["workers"] if w["state"] in ("idle", "busy") and w["jobs"] > 0]
            if len(ready) == n:
                return board
        time.sleep(0.1)
    raise AssertionError(f"{n} workers did not come up within {timeout} s")


def test_the_supervisors_pools_and_workers_are_listed(tmp_path):
    name = segment_name("stat-sup")
    (tmp_path / "apcstat_workers.py").write_text(WORKERS)
    cfg = tmp_path / "supervisor.toml"
    cfg.write_text(CONFIG.format(here=tmp_path, name=name))
    log = open(tmp_path / "supervisor.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "apccache", "supervise", str(cfg)], stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(tmp_path),
                            env=env(), start_new_session=True)
    try:
        board = wait_for_workers(name, proc, 2)
        r = apcstat(name, "--json")
        assert r.returncode == 0, r.stderr
        sv = json.loads(r.stdout)["supervisor"]
        assert sv["master_pid"] == proc.pid and sv["master_alive"] is True and sv["state"] == "running"
        (pool,) = sv["pools"]
        assert (pool["name"], pool["workers"], pool["state"]) == ("web", 2, "running")
        workers = [w for w in sv["workers"] if w["state"] in ("idle", "busy")]
        assert sorted(w["worker_id"] for w in workers) == [0, 1]
        assert {w["pid"] for w in workers} == {w["pid"] for w in board["workers"] if w["state"] in ("idle", "busy")}
        for w in workers:
            assert w["pool"] == "web" and w["pid"] > 0 and w["generation"] == 1 and w["jobs"] > 0
            assert w["restarts"] == 0
            assert w["memory"] is None or w["memory"] > 0
            if w["state"] == "busy":
                assert w["job"] == "tick" and w["job_runtime"] >= 0
        human = apcstat(name).stdout
        assert "\nSupervisor\n" in human and "\n  Workers\n" in human
        assert any(line.split()[:2] == [str(workers[0]["pid"]), "web"] for line in human.splitlines())
        fams = {f.name: f for f in text_string_to_metric_families(apcstat(name, "--prometheus").stdout)}
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
        assert samples[("apccache_pool_workers", (("pool", "web"), ("segment", name)))] == 2
        assert samples[("apccache_supervisor_up", (("segment", name),))] == 1
        assert apcstat(name, "check").returncode == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
        try:
            os.unlink(f"/dev/shm/{name}")
        except FileNotFoundError:
            pass
