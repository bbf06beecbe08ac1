"""classify_exit: what each way a worker can end means, without forking a process.

Each test builds what the master knew (a Proc, the worker's last scoreboard
record, its pool's config) and checks the report: the kind, the log line, the
counters, the slot's history and what happens next.  The supervise_* tests
show the same answers end to end with real processes.
"""

import logging
import signal

import pytest

from apccache.supervisor import scoreboard as sb
from apccache.supervisor import worker
from apccache.supervisor.arbiter import Proc, Slot
from apccache.supervisor.config import PoolConfig
from apccache.supervisor.exits import ExitKind, Kill, KillReason, Then, classify_exit

LABEL = "worker 2 (pid 4242) of pool web"
POOL = PoolConfig(name="web", target="m:f", max_jobs=100, memory_limit=64 << 20)


def proc(**known):
    """What the master knew of the process: ready (monotonic time, 0 = never), retiring, kill."""
    return Proc(pid=4242, pool="web", worker_id=2, generation=1, record=0, forked=1.0, **known)


def record(state="idle", **fields):
    """The worker's last scoreboard record, as Board.record() returns it."""
    rec = {"state": state, "intent": None, "jobs": 7, "job": None, "note": None, "ready_at": 1000.0,
           "rotating": False, "rotate_at": 0, "memory": None}
    rec.update(fields)
    return rec


BUSY = {"state": "busy", "job": "resize"}


def test_a_time_limit_kill_loses_the_job_and_replaces_the_worker_at_once():
    kill = Kill(KillReason.TIME_LIMIT, limit=2.0, job="resize", ran=7.25, grace=5.0)
    r = classify_exit(-signal.SIGKILL, proc(ready=5.0, kill=kill), record(**BUSY), POOL)
    assert r.kind is ExitKind.TIME_LIMIT_KILLED and r.then is Then.REPLACE_NOW and r.level == logging.ERROR
    assert r.message == (f"{LABEL} was killed by SIGKILL after exceeding its 2 s job time limit "
                         "(job 'resize' ran 7.2 s; hard_kill_after 5 s); the job is lost")
    assert r.counters == ("time_limit_kills", "lost_jobs")
    assert r.last_exit == "killed after exceeding its 2 s job time limit"
    assert not r.clean


@pytest.mark.parametrize("rec, lost, counters", [
    (record(**BUSY), "; its job 'resize' is lost", ("lost_jobs",)),
    (record(), "", ()),
])
def test_a_stop_timeout_kill_counts_the_job_only_if_one_was_running(rec, lost, counters):
    kill = Kill(KillReason.STOP_TIMEOUT, limit=10)
    r = classify_exit(-signal.SIGKILL, proc(ready=5.0, retiring="the supervisor is stopping", kill=kill), rec)
    assert r.kind is ExitKind.STOP_TIMEOUT_KILLED and r.then is Then.LEAVE and r.level == logging.WARNING
    assert r.message == f"{LABEL} was killed by SIGKILL: it did not stop within stop_timeout (10 s){lost}"
    assert r.counters == counters and r.last_exit is None


def test_an_immediate_stop_is_said_but_not_counted():
    r = classify_exit(-signal.SIGKILL, proc(ready=5.0, kill=Kill(KillReason.NOW)), record(**BUSY))
    assert r.kind is ExitKind.STOPPED_AT_ONCE and r.then is Then.LEAVE and r.level == logging.INFO
    assert r.message == f"{LABEL} was killed by SIGKILL (immediate stop); its job 'resize' is lost"
    assert r.counters == () and r.last_exit is None


def test_a_start_timeout_is_a_crash_of_a_worker_that_never_served():
    r = classify_exit(-signal.SIGKILL, proc(kill=Kill(KillReason.START_TIMEOUT, 30)), record("starting", ready_at=None))
    assert r.kind is ExitKind.START_TIMEOUT and r.then is Then.CRASH and r.level == logging.ERROR
    assert r.message == f"{LABEL} did not become ready within start_timeout (30 s) and was killed"
    assert r.counters == ("crashes",)
    assert r.last_exit == "did not become ready within start_timeout (30 s) and was killed"


def test_a_kill_is_reported_whatever_the_status_says():
    """The master's own SIGKILL explains the exit even when the process exited first."""
    r = classify_exit(0, proc(ready=5.0, kill=Kill(KillReason.NOW)), record(intent="stop requested"))
    assert r.kind is ExitKind.STOPPED_AT_ONCE and r.message == f"{LABEL} exited with code 0 (immediate stop)"


def test_a_rotation_after_max_jobs_is_clean_replaced_and_owes_the_token():
    rec = record(intent="rotate (max_jobs)", jobs=103, rotate_at=103, rotating=True)
    r = classify_exit(0, proc(ready=5.0), rec, POOL)
    assert r.kind is ExitKind.ROTATED and r.then is Then.REPLACE and r.level == logging.INFO
    assert r.message == f"{LABEL} rotated after 103 jobs (max_jobs 100, its rotation point 103)"
    assert r.counters == ("rotations",) and r.clean and r.owes_token
    assert r.last_exit == "rotated after 103 jobs (max_jobs 100, its rotation point 103)"


def test_a_rotation_on_memory_names_the_memory_and_the_limit():
    rec = record(intent="rotate (memory_limit)", jobs=12, memory=(80 << 20) + (1 << 19))
    r = classify_exit(0, proc(ready=5.0), rec, POOL)
    assert r.message == f"{LABEL} rotated at 80.5 MiB of private memory (memory_limit 64.0 MiB), after 12 jobs"


def test_a_rotation_of_a_pool_a_reload_removed_still_reads():
    r = classify_exit(0, proc(ready=5.0), record(intent="rotate (max_jobs)", rotate_at=9), None)
    assert r.kind is ExitKind.ROTATED and "(max_jobs ?, its rotation point 9)" in r.message


def test_a_rotation_that_a_stop_crossed_is_still_a_rotation():
    """The worker left on its own before the master's SIGTERM reached it: its intent says so."""
    r = classify_exit(0, proc(ready=5.0, retiring="replaced by generation 2"), record(intent="rotate (max_jobs)"), POOL)
    assert r.kind is ExitKind.ROTATED and r.owes_token


@pytest.mark.parametrize("code, ready, rec, level, said, counters", [
    (0, 5.0, record(jobs=1), logging.INFO, "stopped after 1 job (replaced)", ()),
    (0, 5.0, record(), logging.INFO, "stopped after 7 jobs (replaced)", ()),
    (worker.EXIT_BOOT_FAILED, 0.0, record("stopping", ready_at=None), logging.INFO,
     "failed to start as well (replaced)", ()),
    (-signal.SIGSEGV, 5.0, record(**BUSY), logging.WARNING,
     "was killed by SIGSEGV while stopping (replaced); its job 'resize' is lost", ("lost_jobs",)),
    (worker.EXIT_TARGET_RAISED, 5.0, record(), logging.WARNING, "exited with code 4 while stopping (replaced)", ()),
])
def test_a_worker_asked_to_stop_is_never_a_crash(code, ready, rec, level, said, counters):
    r = classify_exit(code, proc(ready=ready, retiring="replaced"), rec, POOL)
    assert r.kind is ExitKind.STOPPED and r.then is Then.LEAVE and r.clean
    assert r.level == level and r.message == f"{LABEL} {said}" and r.counters == counters
    assert r.last_exit == f"stopped after {rec['jobs']} jobs (replaced)"


@pytest.mark.parametrize("code, rec, said", [
    (worker.EXIT_BOOT_FAILED, record("stopping", ready_at=None, note="cannot load m:f: ImportError: no m"),
     "failed to start: cannot load m:f: ImportError: no m"),
    (-signal.SIGKILL, record("starting", ready_at=None), "failed to start: was killed by SIGKILL"),
    (1, record("starting", ready_at=None), "failed to start: exited with code 1"),
])
def test_a_worker_that_never_became_ready_failed_to_start(code, rec, said):
    r = classify_exit(code, proc(), rec, POOL)
    assert r.kind is ExitKind.FAILED_TO_START and r.then is Then.CRASH
    assert r.message == f"{LABEL} {said}" and r.counters == ("crashes",) and r.last_exit == said


def test_ready_in_the_record_counts_though_the_master_had_not_seen_it():
    r = classify_exit(1, proc(ready=0.0), record(ready_at=1000.0), POOL)
    assert r.kind is ExitKind.CRASHED


def test_a_stop_the_master_did_not_send_replaces_the_worker_without_a_crash():
    r = classify_exit(0, proc(ready=5.0), record(intent="stop requested"), POOL)
    assert r.kind is ExitKind.STOPPED_OUTSIDE and r.then is Then.REPLACE and r.level == logging.WARNING
    assert r.message == f"{LABEL} stopped on a signal the supervisor did not send; starting another"
    assert r.last_exit == "stopped by an outside signal" and r.counters == () and not r.clean


@pytest.mark.parametrize("code, rec, said, counters", [
    (worker.EXIT_TARGET_RETURNED, record(intent="target returned"),
     "crashed: its target returned although the supervisor did not ask it to stop (loop while ctx.running)",
     ("crashes",)),
    (worker.EXIT_TARGET_RAISED, record(**BUSY, note="KeyError: 'x'"),
     "crashed: its target raised KeyError: 'x' inside a job; its job 'resize' is lost", ("crashes", "lost_jobs")),
    (worker.EXIT_TARGET_RAISED, record(), "crashed: its target raised an exception outside a job", ("crashes",)),
    (-signal.SIGKILL, record(**BUSY),
     "was killed by SIGKILL; out of memory? (see dmesg) or killed by hand; its job 'resize' is lost",
     ("crashes", "lost_jobs")),
    (-signal.SIGSEGV, record(), "was killed by SIGSEGV (segmentation fault)", ("crashes",)),
    (-signal.SIGUSR1, record(), "was killed by SIGUSR1", ("crashes",)),
    (-99, record(), "was killed by signal 99", ("crashes",)),
    (0, record(), "crashed: it exited with code 0", ("crashes",)),
    (17, record(**BUSY), "crashed: it exited with code 17; its job 'resize' is lost", ("crashes", "lost_jobs")),
])
def test_every_other_end_of_a_serving_worker_is_a_crash_said_by_its_code(code, rec, said, counters):
    r = classify_exit(code, proc(ready=5.0), rec, POOL)
    assert r.kind is ExitKind.CRASHED and r.then is Then.CRASH and r.level == logging.ERROR
    assert r.message == f"{LABEL} {said}" and r.counters == counters
    assert r.last_exit == said[:72]


def test_a_worker_with_no_record_is_classified_from_what_the_master_knew():
    r = classify_exit(-signal.SIGKILL, proc(ready=5.0), {}, POOL)
    assert r.kind is ExitKind.CRASHED and r.counters == ("crashes",)
    r = classify_exit(-signal.SIGKILL, proc(), {}, POOL)
    assert r.kind is ExitKind.FAILED_TO_START


def test_classifying_changes_nothing():
    p = proc(ready=5.0, retiring="replaced")
    rec = record(**BUSY)
    before = (repr(p), dict(rec))
    classify_exit(-signal.SIGTERM, p, rec, POOL)
    assert (repr(p), rec) == before


def test_the_words_of_the_record_are_the_scoreboard_s_own():
    """The intents and states the classifier compares with are the ones read() writes."""
    assert sb.INTENTS[sb.Intent.ROTATE_JOBS] == "rotate (max_jobs)"
    assert sb.INTENTS[sb.Intent.ROTATE_MEMORY] == "rotate (memory_limit)"
    assert sb.INTENTS[sb.Intent.STOP] == "stop requested"
    assert sb.STATES[sb.BUSY] == "busy"


# ---------------------------------------------------------------- what the slot keeps


def test_a_slot_notes_a_rotation_as_clean_with_the_token_owed():
    slot = Slot(not_before=99.0)
    slot.streak.crashed(0.0)
    slot.note_exit(classify_exit(0, proc(ready=5.0), record(intent="rotate (max_jobs)"), POOL))
    assert slot.replacing and slot.token_owed and slot.last_exit.startswith("rotated after 7 jobs")
    assert slot.streak.crashed(0.0) == 1, "the rotation ended the crash streak"
    assert slot.not_before == 99.0


def test_a_slot_forgets_its_backoff_after_a_time_limit_kill():
    slot = Slot(not_before=99.0)
    kill = Kill(KillReason.TIME_LIMIT, 1.0, "j", 7.0, 5.0)
    slot.note_exit(classify_exit(-signal.SIGKILL, proc(ready=5.0, kill=kill), record(**BUSY), POOL))
    assert slot.replacing and slot.not_before == 0.0 and not slot.token_owed


def test_a_slot_keeps_its_history_through_an_immediate_stop():
    slot = Slot(last_exit="rotated after 3 jobs")
    slot.note_exit(classify_exit(-signal.SIGKILL, proc(ready=5.0, kill=Kill(KillReason.NOW)), record(), POOL))
    assert slot.last_exit == "rotated after 3 jobs" and not slot.replacing
