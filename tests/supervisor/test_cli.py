"""The apccache command: supervise --check / --duration, status, the example config, stale segments."""

import json
import os
import re
import signal
import subprocess
import sys

import apccache
from apccache.cli import main
from apccache.supervisor import ExitCode, scoreboard
from helpers.children import ROOT, wait_until
from helpers.supervisors import WORKERS, config

EXAMPLES = os.path.join(ROOT, "examples")
STEADY = {"web": 'target = "sup_workers:steady"\nworkers = 2'}


def test_check_validates_without_starting(tmp_path, capsys):
    good = tmp_path / "good.toml"
    good.write_text(config(STEADY).replace("@NAME@", "x").replace("@HERE@", WORKERS))
    assert main(["supervise", str(good), "--check"]) == ExitCode.OK
    assert "ok: cache 'x', pools web (2)" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('[cache]\nname = "x"\n[pools.p]\ntarget = "m:f"\nworkers = 0\n')
    assert main(["supervise", str(bad), "--check"]) == ExitCode.CONFIG_ERROR
    assert "pools.p.workers must be an integer from 1 to 96 (got 0)" in capsys.readouterr().err


def test_a_bad_config_exits_78_and_bad_options_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[cache\n")
    r = subprocess.run([sys.executable, "-m", "apccache", "supervise", str(bad)], capture_output=True, text=True,
                       timeout=30, cwd=ROOT)
    assert r.returncode == ExitCode.CONFIG_ERROR == 78
    assert "not valid TOML" in r.stderr
    r = subprocess.run([sys.executable, "-m", "apccache", "supervise", str(bad), "--duration", "-1"],
                       capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == ExitCode.USAGE == 2
    assert "must be a number of seconds > 0" in r.stderr


def test_the_example_runs_for_a_duration_and_stops_cleanly(tmp_path, shm_name):
    """`apccache supervise examples/supervisor.toml --duration N` runs all pools, says where to watch, exits 0."""
    text = open(os.path.join(EXAMPLES, "supervisor.toml")).read()
    text = text.replace('name = "apccache-example"', f'name = "{shm_name}"')
    text = text.replace('python_path = ["."]', f'python_path = ["{EXAMPLES}"]')
    text = text.replace('"preflight.py"', f'"{os.path.join(EXAMPLES, "preflight.py")}"')
    cfg = tmp_path / "supervisor.toml"
    cfg.write_text(text)
    proc = subprocess.Popen([sys.executable, "-m", "apccache", "supervise", str(cfg), "--duration", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out
    assert f"watch it with: apccache status {shm_name}" in out
    assert "preflight: segment" in out and "seeded" in out
    assert "ran for 3 s (--duration): stopping gracefully" in out
    for pool in ("compute", "render", "report"):
        assert f"of pool {pool} stopped after" in out
    assert "Traceback" not in out
    assert not os.path.exists(f"/dev/shm/{shm_name}")


def test_status_prints_the_scoreboard_as_text_and_json(supervise, capsys):
    run = supervise(config(STEADY))
    run.wait_ready({"web": 2})
    wait_until(lambda: run.board()["pools"]["web"]["ready"] == 2, 5, "the pool record updated")
    assert main(["status", run.name]) == 0
    text = capsys.readouterr().out
    assert "Supervisor of" in text and "Pool web" in text and "Workers: 2 ready of 2" in text
    assert re.search(r"web\s+0\s+\d+\s+1\s+(idle|busy)", text)
    assert main(["status", run.name, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["pools"]["web"]["workers"] == 2 and len(data["workers"]) == 2
    assert main(["status", "apctest-no-such-segment"]) == 1
    assert "no segment named" in capsys.readouterr().err
    run.signal(signal.SIGTERM)
    assert run.wait_exit(15) == ExitCode.OK


def test_ctrl_c_to_the_whole_process_group_stops_gracefully(supervise):
    """SIGINT to every process (a terminal's Ctrl-C): jobs finish, the supervisor exits 0."""
    run = supervise(config(STEADY))
    run.wait_ready({"web": 2})
    os.killpg(run.pid, signal.SIGINT)
    assert run.wait_exit(15) == ExitCode.OK
    log = run.log()
    assert "SIGINT: stopping gracefully" in log
    assert "crashed" not in log and "did not send" not in log


def test_a_segment_left_by_a_killed_supervisor_is_replaced_or_kept(supervise):
    """After a SIGKILLed master: a new supervisor removes the stale segment, or reuses it with keep = true;
    a segment whose supervisor is alive is refused."""
    first = supervise(config(STEADY))
    first.wait_ready({"web": 2})
    first.attach().store("old", "value")
    busy = supervise(config(STEADY), name=first.name)
    assert busy.wait_exit(15) == ExitCode.CACHE_ERROR
    assert f"is in use by supervisor pid {first.pid}" in busy.log()
    os.kill(first.pid, signal.SIGKILL)
    first.wait_exit(10)
    wait_until(lambda: not any(os.path.exists(f"/proc/{p}") and
                               open(f"/proc/{p}/stat").read().split(")")[-1].split()[0] != "Z"
                               for p in first.seen_pids), 5, "the first workers gone")

    kept = supervise(config(STEADY, cache_extra="keep = true"), name=first.name)
    kept.wait_ready({"web": 2})
    assert kept.attach().fetch("old") == "value"
    assert f"reusing the cache segment '{first.name}' left by supervisor pid {first.pid}" in kept.log()
    kept.signal(signal.SIGKILL)
    kept.wait_exit(10)
    wait_until(lambda: not [w for w in scoreboard.read(kept.attach())["workers"]
                            if os.path.exists(f"/proc/{w['pid']}")
                            and open(f"/proc/{w['pid']}/stat").read().split(")")[-1].split()[0] != "Z"],
               5, "the kept workers gone")

    fresh = supervise(config(STEADY), name=first.name)
    fresh.wait_ready({"web": 2})
    assert "removing the stale cache segment" in fresh.log()
    assert fresh.attach().fetch("old") is None
    fresh.signal(signal.SIGTERM)
    assert fresh.wait_exit(15) == ExitCode.OK
    assert not os.path.exists(f"/dev/shm/{first.name}")


def test_keep_cache_leaves_the_segment_and_its_contents(supervise):
    run = supervise(config(STEADY), args=("--keep-cache",))
    run.wait_ready({"web": 2})
    run.attach().store("stays", 1)
    run.signal(signal.SIGTERM)
    assert run.wait_exit(15) == ExitCode.OK
    assert "kept the cache segment" in run.log()
    other = apccache.Cache.attach(run.name)
    try:
        assert other.fetch("stays") == 1
        assert scoreboard.read(other)["state"] == "stopped"
    finally:
        other.close()
