"""Proof 7: the two-phase job time limit (JobTimeLimitExceeded, set_time_limit, hard kill)."""

import re
import signal
import time

from helpers.children import wait_until
from helpers.supervisors import config

from apccache.supervisor import ExitCode


def _log_time(line):
    m = re.match(r"(\d+-\d+-\d+ \d+:\d+:\d+),(\d+) ", line)
    return time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000


def test_time_limit_raises_resets_and_hard_kills(supervise):
    """1 s limit: a 10 s sleep gets JobTimeLimitExceeded at ~1 s; set_time_limit(3) at 0.8 s moves it to
    ~3.8 s; a job with SIGALRM blocked is SIGKILLed hard_kill_after later and replaced."""
    pool = 'target = "sup_workers:time_limited"\nworkers = 1\njob_time_limit = 1\nhard_kill_after = 1\n'
    run = supervise(config({
        "sleeper": pool + 'env = { MODE = "sleep" }',
        "extender": pool + 'env = { MODE = "extend" }',
        "blocked": pool + 'env = { MODE = "blocked" }',
    }))
    board = run.wait_ready({"sleeper": 1, "extender": 1, "blocked": 1})
    pids = {w["pool"]: w["pid"] for w in board["workers"]}

    sleep_hit = wait_until(lambda: run.events("time_limit", pool="sleeper"), 10, "the sleeper's time limit",
                           describe=run.describe)[0]
    assert 0.9 <= sleep_hit["elapsed"] <= 1.6, sleep_hit
    assert "exceeded its 1 s time limit" in sleep_hit["message"]

    killed = run.wait_log(r"worker 0 \(pid %d\) of pool blocked was killed by SIGKILL after exceeding its 1 s "
                          r"job time limit" % pids["blocked"], timeout=10)
    line = next(ln for ln in run.log().splitlines() if killed.group(0) in ln)
    blocked_start = run.events("job_start", pool="blocked")[0]
    assert 1.9 <= _log_time(line) - blocked_start["t"] <= 3.2, (line, blocked_start)
    assert "the job is lost" in line

    ext_hit = wait_until(lambda: run.events("time_limit", pool="extender"), 10, "the extender's time limit",
                         describe=run.describe)[0]
    assert 3.7 <= ext_hit["elapsed"] <= 4.5, ext_hit
    assert "exceeded its 3 s time limit" in ext_hit["message"]

    def settled():
        b = run.board()
        ws = {w["pool"]: w for w in b["workers"] if w["state"] in ("idle", "busy")}
        if len(ws) == 3 and ws["blocked"]["pid"] != pids["blocked"] and b["pools"]["extender"]["time_limits"]:
            return b
        return None

    b = wait_until(settled, 10, "the blocked worker replaced", describe=run.describe)
    ws = {w["pool"]: w for w in b["workers"]}
    # The soft limit is a job error in the same process; the hard kill replaced the process.
    assert ws["sleeper"]["pid"] == pids["sleeper"] and ws["extender"]["pid"] == pids["extender"]
    assert b["pools"]["sleeper"]["time_limits"] == 1 and b["pools"]["sleeper"]["job_errors"] == 1
    assert b["pools"]["sleeper"]["crashes"] == 0
    assert b["pools"]["blocked"]["time_limit_kills"] == 1 and b["pools"]["blocked"]["lost_jobs"] == 1
    assert b["pools"]["blocked"]["crashes"] == 0
    assert not run.events("job_end", pool="blocked")
    run.signal(signal.SIGTERM)
    assert run.wait_exit(15) == ExitCode.OK
