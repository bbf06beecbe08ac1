"""Proofs 5-6: rotation after max_jobs (with jitter, one worker at a time) and past memory_limit."""

import signal

from helpers.children import wait_until
from helpers.supervisors import config

from apccache.supervisor import ExitCode


def test_max_jobs_with_jitter_rotates_each_worker_in_range_one_at_a_time(supervise):
    """Every worker rotates after 10..10+jitter jobs; rotations of one pool never overlap."""
    run = supervise(config({
        "rot": 'target = "sup_workers:steady"\nworkers = 3\nmax_jobs = 10\nmax_jobs_jitter = 5\n'
               'env = { JOB_SECONDS = "0.02", IDLE_SECONDS = "0.005" }',
    }))
    run.wait_ready({"rot": 3})

    def enough():
        """Every slot rotated twice, and every rotated worker's replacement is ready."""
        exits = run.events("exit", pool="rot")
        readies = run.events("ready", pool="rot")
        per_slot = {wid: sum(1 for e in exits if e["wid"] == wid) for wid in range(3)}
        replaced = all(sum(1 for r in readies if r["wid"] == wid) > n for wid, n in per_slot.items())
        return exits if min(per_slot.values()) >= 2 and replaced else None

    wait_until(enough, 30, "two rotations of every worker, each replaced", interval=0.005,
               describe=run.describe)
    run.signal(signal.SIGTERM)
    assert run.wait_exit(15) == ExitCode.OK

    log = run.log()
    exits = run.events("exit", pool="rot")
    readies = run.events("ready", pool="rot")
    rotated = [e for e in exits if f"(pid {e['pid']}) of pool rot rotated after" in log]
    assert len(rotated) >= 6
    for e in rotated:
        assert 10 <= e["jobs"] <= 15, e
    # Each rotation is away from serving from the moment the old worker stops
    # (its exit event) until its replacement in the same slot is ready.
    intervals = []
    for e in rotated:
        later = [r for r in readies if r["wid"] == e["wid"] and r["t"] > e["t"]]
        if later:
            intervals.append((e["t"], min(r["t"] for r in later), e["pid"]))
    intervals.sort()
    assert len(intervals) >= 6
    for (s1, e1, p1), (s2, e2, p2) in zip(intervals, intervals[1:]):
        assert s2 >= e1, f"rotations of pids {p1} and {p2} overlapped: {intervals}"
    board_pools = [line for line in log.splitlines() if "rotated after" in line]
    assert board_pools


def test_memory_limit_rotates_after_the_crossing_job_but_not_for_shared_reads(supervise):
    """A worker growing past memory_limit rotates after that job; reading a big cached value does not count."""
    run = supervise(config({
        "hog": 'target = "sup_workers:memory_hog"\nworkers = 1\nmemory_limit = "64M"\n'
               'env = { CHUNK_MIB = "8" }',
        "reader": 'target = "sup_workers:big_reader"\nworkers = 1\nmemory_limit = "32M"\n'
                  'env = { BIG_KEY = "big" }',
    }, size="128M"))
    cache = run.attach()
    cache.store("big", b"\x07" * (48 << 20))
    board = run.wait_ready({"hog": 1, "reader": 1})
    reader_pid = next(w["pid"] for w in board["workers"] if w["pool"] == "reader")

    first_hog = wait_until(lambda: run.events("exit", pool="hog"), 20, "the hog worker rotating",
                           describe=run.describe)[0]
    done = run.events("job_done", pid=first_hog["pid"])
    crossing = [i for i, e in enumerate(done, 1) if e["private"] > 64 << 20]
    assert crossing, done
    assert first_hog["jobs"] == crossing[0], (first_hog, done)
    wait_until(lambda: [w for w in run.workers("hog") if w["pid"] != first_hog["pid"]], 10,
               "the hog's replacement", describe=run.describe)
    assert run.board()["pools"]["hog"]["rotations"] >= 1
    assert f"(pid {first_hog['pid']}) of pool hog rotated at" in run.log()

    reads = wait_until(lambda: [e for e in run.events("job_done", pid=reader_pid) if e["size"]]
                       if len([e for e in run.events("job_done", pid=reader_pid) if e["size"]]) >= 5 else None,
                       20, "five reads of the big value", describe=run.describe)
    assert all(e["size"] == 48 << 20 for e in reads)
    # Its resident set includes the shared pages (far above 32M), its private memory does not.
    assert max(e["rss"] for e in reads) > 48 << 20
    assert all(e["private"] < 32 << 20 for e in reads), reads
    b = run.board()
    assert b["pools"]["reader"]["rotations"] == 0
    assert [w["pid"] for w in b["workers"] if w["pool"] == "reader"] == [reader_pid]
    run.signal(signal.SIGTERM)
    assert run.wait_exit(15) == ExitCode.OK
