"""What a worker's exit means: ``classify_exit()``, pure, so its tests need no process.

When the master reaps a worker it knows three things: the exit status, what
it had itself done to the process (asked it to stop, and why; killed it,
and why; seen it ready, and when), and the last copy of the worker's
scoreboard record (busy or idle, in which job, the intent the worker wrote
on its way out).  ``classify_exit`` turns those into an ``ExitReport``:
what happened (``ExitKind``), the line the log gets, the pool counters it
moves, the slot's ``last_exit`` in words, and what the master does next
(``Then``).  The master applies the report; nothing here reads a clock,
touches a process or writes a log.

The questions are asked in this order, and the first answer wins::

    did the master SIGKILL it?        time limit, stop timeout, immediate
                                      stop, start timeout
    did it rotate?                    exit 0 with a rotation intent, even
                                      if a SIGTERM from a stop crossed it
    had the master asked it to stop?  a retirement: not a crash, whatever
                                      the code (a lost job is still counted)
    did it ever become ready?         if not, it failed to start: a crash
    did something else stop it?       exit 0 after a SIGTERM the master did
                                      not send: replaced, not a crash
    otherwise                         a crash, said in words by its code

A crash is only classified here; the arbiter decides what it costs (the
slot's backoff, the pool's crash window, a failed reload).
"""

import dataclasses
import enum
import logging
import signal
from typing import Optional

from .._units import format_mib
from . import scoreboard as sb
from . import worker as _worker

__all__ = ["KillReason", "Kill", "ExitKind", "Then", "ExitReport", "classify_exit", "signame"]

_SIGNAMES = {getattr(signal, n): n for n in dir(signal) if n.startswith("SIG") and not n.startswith("SIG_")}
_SIGNAL_HINTS = {
    signal.SIGKILL: "; out of memory? (see dmesg) or killed by hand",
    signal.SIGSEGV: " (segmentation fault)",
    signal.SIGBUS: " (bus error)",
    signal.SIGABRT: " (aborted)",
    signal.SIGFPE: " (arithmetic fault)",
}
_ROTATE_JOBS = sb.INTENTS[sb.Intent.ROTATE_JOBS]
_ROTATE_MEMORY = sb.INTENTS[sb.Intent.ROTATE_MEMORY]
_STOP_REQUESTED = sb.INTENTS[sb.Intent.STOP]


def signame(num):
    """"SIGTERM" for 15; "signal 99" for a number with no name."""
    return _SIGNAMES.get(num, f"signal {num}")


def secs(s):
    """Seconds as the supervisor's messages say them: "10 s", "2.5 s"."""
    s = float(s)
    return f"{int(s)} s" if s == int(s) else f"{s:.1f} s"


class KillReason(enum.Enum):
    """Why the master sent a worker SIGKILL."""

    TIME_LIMIT = "time_limit"        # busy past its job's time limit plus hard_kill_after
    START_TIMEOUT = "start_timeout"  # not ready within start_timeout
    STOP_TIMEOUT = "stop_timeout"    # still running when a graceful stop passed stop_timeout
    NOW = "now"                      # an immediate stop (a second SIGTERM/SIGINT, SIGQUIT)


@dataclasses.dataclass(frozen=True)
class Kill:
    """A SIGKILL the master sent, remembered for the exit report.

    ``limit`` is the limit the worker passed: its job's time limit, the
    start_timeout or the stop_timeout.  A time-limit kill also carries the
    job's name, how long it had run and the hard_kill_after it was given.
    """

    reason: KillReason
    limit: float = 0.0
    job: str = ""
    ran: float = 0.0
    grace: float = 0.0


class ExitKind(enum.Enum):
    """What happened to a worker, as ``classify_exit`` names it."""

    TIME_LIMIT_KILLED = "killed past its job time limit"
    STOP_TIMEOUT_KILLED = "killed past stop_timeout"
    STOPPED_AT_ONCE = "killed by an immediate stop"
    START_TIMEOUT = "killed past start_timeout"
    ROTATED = "rotated"
    STOPPED = "stopped when asked"
    FAILED_TO_START = "failed to start"
    STOPPED_OUTSIDE = "stopped by a signal from outside"
    CRASHED = "crashed"


class Then(enum.Enum):
    """What the master does with the worker's slot."""

    LEAVE = "leave"              # nothing now: a stop or a replacement is already under way
    REPLACE = "replace"          # start a successor, counted as a restart
    REPLACE_NOW = "replace now"  # the same, and any crash backoff left on the slot is dropped
    CRASH = "crash"              # a crash: count it, back off, maybe fail the pool or the reload


@dataclasses.dataclass(frozen=True)
class ExitReport:
    """One reaped worker, in words and in what it changes."""

    kind: ExitKind
    then: Then
    level: int                   # the logging level of ``message``
    message: str                 # the log line, starting with the worker's label
    counters: tuple = ()         # pool counters to add one to (for a crash: once it counts as one)
    last_exit: Optional[str] = None  # the slot's history in words; None leaves it as it was
    clean: bool = False          # an orderly exit: the slot's crash streak ends
    owes_token: bool = False     # the slot owes its pool's rotation token back


def classify_exit(code, proc, record, pool_cfg=None):
    """Say what the exit of *proc* means and what the master does next.

    *code* is ``os.waitstatus_to_exitcode()`` of its status (minus the
    signal's number when a signal killed it).  *proc* is what the master
    knew (``label()``, ``ready``, ``retiring``, ``kill``: see
    ``arbiter.Proc``), *record* the last copy of its scoreboard record as a
    dict ({} if it never wrote one), *pool_cfg* its pool's config (None if
    the pool is gone).  Returns an ``ExitReport``; changes nothing.
    """
    w = _Facts(code, proc, record)
    if proc.kill:
        return _killed(w, proc.kill)
    if code == 0 and w.intent in (_ROTATE_JOBS, _ROTATE_MEMORY):
        return _rotated(w, pool_cfg)
    if proc.retiring:
        return _retired(w, proc)
    if code == _worker.EXIT_BOOT_FAILED or not (proc.ready or record.get("ready_at")):
        return _crash(w, ExitKind.FAILED_TO_START, f"failed to start: {record.get('note') or w.how}")
    if code == 0 and w.intent == _STOP_REQUESTED:
        return ExitReport(ExitKind.STOPPED_OUTSIDE, Then.REPLACE, logging.WARNING,
                          f"{w.label} stopped on a signal the supervisor did not send; starting another",
                          last_exit="stopped by an outside signal")
    return _crash(w, ExitKind.CRASHED, _crash_words(w), lost_job=w.busy)


class _Facts:
    """The reaped worker's status and record, read once."""

    def __init__(self, code, proc, record):
        self.code = code
        self.label = proc.label()
        self.how = f"was killed by {signame(-code)}" if code < 0 else f"exited with code {code}"
        self.jobs = record.get("jobs", 0)
        self.busy = record.get("state") == sb.STATES[sb.BUSY]
        self.lost = f"; its job {record.get('job')!r} is lost" if self.busy else ""
        self.intent = record.get("intent")
        self.record = record


def _killed(w, kill):
    if kill.reason is KillReason.TIME_LIMIT:
        limit = secs(kill.limit)
        return ExitReport(
            ExitKind.TIME_LIMIT_KILLED, Then.REPLACE_NOW, logging.ERROR,
            f"{w.label} was killed by SIGKILL after exceeding its {limit} job time limit "
            f"(job {kill.job!r} ran {secs(kill.ran)}; hard_kill_after {secs(kill.grace)}); the job is lost",
            counters=("time_limit_kills", "lost_jobs"),
            last_exit=f"killed after exceeding its {limit} job time limit")
    if kill.reason is KillReason.STOP_TIMEOUT:
        return ExitReport(
            ExitKind.STOP_TIMEOUT_KILLED, Then.LEAVE, logging.WARNING,
            f"{w.label} was killed by SIGKILL: it did not stop within stop_timeout ({secs(kill.limit)}){w.lost}",
            counters=("lost_jobs",) if w.busy else ())
    if kill.reason is KillReason.NOW:
        return ExitReport(ExitKind.STOPPED_AT_ONCE, Then.LEAVE, logging.INFO,
                          f"{w.label} {w.how} (immediate stop){w.lost}")
    return _crash(w, ExitKind.START_TIMEOUT,
                  f"did not become ready within start_timeout ({secs(kill.limit)}) and was killed")


def _rotated(w, cfg):
    rec = w.record
    if w.intent == _ROTATE_JOBS:
        why = (f"after {w.jobs} jobs (max_jobs {cfg.max_jobs if cfg else '?'}, its rotation point "
               f"{rec.get('rotate_at')})")
    else:
        why = (f"at {format_mib(rec.get('memory'))} of private memory (memory_limit "
               f"{format_mib(cfg.memory_limit if cfg else 0)}), after {w.jobs} jobs")
    return ExitReport(ExitKind.ROTATED, Then.REPLACE, logging.INFO, f"{w.label} rotated {why}",
                      counters=("rotations",), last_exit=f"rotated {why}", clean=True, owes_token=True)


def _retired(w, proc):
    counters = ()
    if w.code == 0:
        level = logging.INFO
        message = f"{w.label} stopped after {w.jobs} job{'' if w.jobs == 1 else 's'} ({proc.retiring})"
    elif w.code == _worker.EXIT_BOOT_FAILED and not proc.ready:
        level = logging.INFO
        message = f"{w.label} failed to start as well ({proc.retiring})"
    else:
        level = logging.WARNING
        message = f"{w.label} {w.how} while stopping ({proc.retiring}){w.lost}"
        counters = ("lost_jobs",) if w.busy else ()
    return ExitReport(ExitKind.STOPPED, Then.LEAVE, level, message, counters=counters,
                      last_exit=f"stopped after {w.jobs} jobs ({proc.retiring})", clean=True)


def _crash_words(w):
    """How a worker that was serving ended, after its label."""
    if w.code == _worker.EXIT_TARGET_RETURNED:
        return ("crashed: its target returned although the supervisor did not ask it to stop "
                "(loop while ctx.running)")
    if w.code == _worker.EXIT_TARGET_RAISED:
        where = "inside" if w.busy else "outside"
        return f"crashed: its target raised {w.record.get('note') or 'an exception'} {where} a job{w.lost}"
    if w.code < 0:
        return f"{w.how}{_SIGNAL_HINTS.get(-w.code, '')}{w.lost}"
    return f"crashed: it {w.how}{w.lost}"


def _crash(w, kind, what, lost_job=False):
    """A crash: *what* happened, in words that follow the worker's label."""
    return ExitReport(kind, Then.CRASH, logging.ERROR, f"{w.label} {what}",
                      counters=("crashes", "lost_jobs") if lost_job else ("crashes",), last_exit=what[:72])
