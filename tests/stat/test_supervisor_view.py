"""apcstat against a segment that a running `apccache supervise` populated:
its pools and workers are listed from the scoreboard."""
import json
import signal

from prometheus_client.parser import text_string_to_metric_families

from helpers.children import wait_until
from stat_support import apcstat

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


def ready_board(run, n):
    """The scoreboard of run's supervisor once n workers are ready and have done a job, else None."""
    board = run.board()
    if board:
        ready = [w for w in board["workers"] if w["state"] in ("idle", "busy") and w["jobs"] > 0]
        if len(ready) == n:
            return board
    return None


def test_the_supervisors_pools_and_workers_are_listed(supervise, tmp_path):
    (tmp_path / "apcstat_workers.py").write_text(WORKERS)
    run = supervise(CONFIG.format(here=tmp_path, name="@NAME@"))
    name, proc = run.name, run.proc
    board = wait_until(lambda: ready_board(run, 2), 20, "2 workers", interval=0.1, describe=run.describe)
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
