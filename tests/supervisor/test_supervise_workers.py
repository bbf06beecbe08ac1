"""Proofs 1-4: pools boot and share the cache; crashes, job errors and crash loops."""

import os
import signal
import time

from helpers.children import alive, wait_until
from helpers.supervisors import config

from apccache.supervisor import ExitCode


def test_two_pools_boot_with_their_counts_and_share_values(supervise):
    """Two pools start with the configured counts; a value one worker stores is read by another."""
    run = supervise(config({
        "alpha": 'target = "sup_workers:sharer"\nworkers = 2',
        "beta": 'target = "sup_workers:sharer"\nworkers = 3',
    }))
    board = run.wait_ready({"alpha": 2, "beta": 3})
    assert board["pools"]["alpha"]["workers"] == 2
    assert board["pools"]["beta"]["workers"] == 3
    pids = {w["pid"] for w in board["workers"]}
    assert len(pids) == 5
    assert set(run.attach().keys()) >= set()  # the segment is readable from outside

    def cross_reads():
        reads = [e for e in run.events("read") if e["writer"] != e["pid"]]
        return reads if any(e["pool"] != e["writer_pool"] for e in reads) else None

    reads = wait_until(cross_reads, 10, "a worker reading another pool's value", describe=run.describe)
    assert all(e["writer"] in pids and e["pid"] in pids for e in reads)
    run.signal(signal.SIGTERM)
    assert run.wait_exit(15) == ExitCode.OK


def test_sigkilled_worker_is_replaced_counted_and_cache_survives(supervise):
    """SIGKILL a worker: a new pid in its slot within 1 s, one crash counted, cached values kept."""
    run = supervise(config({"web": 'target = "sup_workers:steady"\nworkers = 2'}))
    board = run.wait_ready({"web": 2})
    cache = run.attach()
    cache.store("survivor", {"value": 42})
    victim = next(w for w in board["workers"] if w["worker_id"] == 0)
    os.kill(victim["pid"], signal.SIGKILL)
    killed_at = time.monotonic()

    def forked():
        ws = [w for w in run.board()["workers"] if w["worker_id"] == 0 and w["pid"] not in (0, victim["pid"])]
        return ws or None

    wait_until(forked, 1.0, "a new pid in worker 0's slot within 1 s", interval=0.005, describe=run.describe)
    assert time.monotonic() - killed_at <= 1.0

    def replaced():
        ws = [w for w in run.workers("web") if w["worker_id"] == 0]
        return ws if ws and ws[0]["pid"] != victim["pid"] else None

    new = wait_until(replaced, 5, "the replacement ready", interval=0.01, describe=run.describe)
    assert new[0]["restarts"] == 1
    assert "SIGKILL" in (new[0]["last_exit"] or "")
    pool = wait_until(lambda: run.board()["pools"]["web"]["crashes"] == 1 and run.board()["pools"]["web"],
                      3, "the crash counted")
    assert pool["crashes"] == 1
    assert cache.fetch("survivor") == {"value": 42}
    assert "worker 0 (pid %d) of pool web was killed by SIGKILL" % victim["pid"] in run.log()
    run.signal(signal.SIGTERM)
    assert run.wait_exit(15) == ExitCode.OK


def test_job_error_keeps_the_process_and_os_exit_is_a_crash_with_lost_job(supervise):
    """A raising job: same pid carries on, job_errors counted.  os._exit(1) in a job: crash, job lost."""
    run = supervise(config({
        "errors": 'target = "sup_workers:raiser"\nworkers = 1',
        "exits": 'target = "sup_workers:exiter"\nworkers = 1\nrestart_backoff = [0.1, 1]',
    }))
    board = run.wait_ready({"errors": 1, "exits": 1})
    raiser_pid = next(w["pid"] for w in board["workers"] if w["pool"] == "errors")

    def three_errors():
        p = run.board()["pools"]["errors"]
        return p if p["job_errors"] >= 3 else None

    pool = wait_until(three_errors, 10, "three job errors", describe=run.describe)
    assert pool["crashes"] == 0
    assert {e["pid"] for e in run.events("job", pool="errors")} == {raiser_pid}
    assert [w["pid"] for w in run.workers("errors")] == [raiser_pid]
    assert "raised Traceback" in run.log() or "ValueError: a job error on purpose" in run.log()

    def exit_counted():
        p = run.board()["pools"]["exits"]
        return p if p["crashes"] == 1 and p["lost_jobs"] == 1 else None

    pool = wait_until(exit_counted, 10, "the os._exit crash counted", describe=run.describe)
    assert pool["job_errors"] == 0
    exiting = run.events("exiting")
    assert len(exiting) == 1
    log = run.log()
    lost = f"worker 0 (pid {exiting[0]['pid']}) of pool exits crashed: it exited with code 1; its job 'doomed' is lost"
    assert log.count(lost) == 1, log
    wait_until(lambda: [w for w in run.workers("exits") if w["pid"] != exiting[0]["pid"]], 5,
               "the exits worker replaced", describe=run.describe)
    run.signal(signal.SIGTERM)
    assert run.wait_exit(15) == ExitCode.OK


def test_import_failure_backs_off_then_marks_the_pool_failed(supervise):
    """A target that cannot be imported: restarts spaced by the backoff, pool failed, exit non-zero."""
    run = supervise(config({
        "good": 'target = "sup_workers:steady"\nworkers = 1',
        "broken": 'target = "sup_no_such_module:run"\nworkers = 1\nrestart_backoff = [0.2, 0.8]\n'
                  'max_crashes = 4',
    }))
    code = run.wait_exit(20)
    assert code == ExitCode.POOL_FAILED
    log = run.log()
    assert "pool broken failed: 4 crashes within 60 s (max_crashes = 4)" in log
    assert "could not load its target 'sup_no_such_module:run'" in log
    assert "ModuleNotFoundError" in log
    # The restarts were spaced by the announced, growing backoff.
    import re

    stamps = []
    delays = []
    for line in log.splitlines():
        m = re.match(r"(\d+-\d+-\d+ \d+:\d+:\d+),(\d+) .*of pool broken failed to start", line)
        if m:
            t = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
            stamps.append(t)
            d = re.search(r"restarting it in ([\d.]+) s", line)
            if d:
                delays.append(float(d.group(1)))
    assert len(stamps) == 4, log
    assert len(delays) == 3
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    for gap, delay in zip(gaps, delays):
        assert gap >= delay - 0.05, (gaps, delays)
    assert 0.2 <= delays[0] <= 0.25 and delays[1] >= 0.3 and delays[2] >= 0.6, delays
    assert gaps[2] > gaps[0]
    # The healthy pool was stopped with the supervisor and nothing was left behind.
    assert not any(alive(pid) for pid in run.seen_pids)
