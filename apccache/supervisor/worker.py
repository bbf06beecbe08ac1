"""The worker side: the context a target receives, and the forked process's main.

A worker is a function ``target(ctx)`` that loops over its own job source and
marks each job with ``ctx.job()``::

    def run(ctx):
        while ctx.running:
            item = next_item(timeout=1)        # poll with a timeout, so that
            if item is None:                   # ctx.running is checked often
                continue
            with ctx.job("resize"):
                ctx.set_time_limit(10)
                ctx.cache.store(item.key, resize(item))

THE TIME LIMIT

    ``ctx.job()`` arms a one-shot ``ITIMER_REAL`` interval timer for the
    pool's ``job_time_limit``; its SIGALRM handler raises
    ``JobTimeLimitExceeded`` in the job's code.  ``ctx.set_time_limit(s)``
    restarts the count from now, as PHP's ``set_time_limit()`` does.  The
    deadline is also published in the scoreboard, and the master SIGKILLs a
    worker still busy ``hard_kill_after`` seconds past it: that covers a job
    stuck in C code, one that blocks SIGALRM, and one that swallows the
    exception.

WHAT IF THE TIMER FIRES INSIDE THE CACHE

    ``ctx.cache`` is the shared ``apccache.Cache`` behind a thin guard that
    counts calls in progress.  A timer that fires during one only marks itself
    pending; the exception is raised when the outermost cache call returns, so
    a job is never interrupted half way through an engine operation.  The
    generator passed to ``entry()`` is the job's own code again, so the timer
    is live while it runs.

ROTATION

    After each job the worker checks its rotation point (``max_jobs`` plus its
    own jitter) and, when ``memory_limit`` is set, its private memory.  When it
    is due it tries to take its pool's rotation token, a byte in a pipe shared
    by the pool; holding it, ``ctx.running`` turns False and the worker exits
    after the job it is in.  Without it the worker keeps serving, but it never
    starts a job past ``max_jobs + max_jobs_jitter``: there ``ctx.running``
    waits for the token.  The master puts the byte back once the replacement
    reports ready, so at most one worker per pool is away at a time.

STOPPING

    SIGTERM and SIGINT only turn ``ctx.running`` False: the job in flight
    finishes.  The process also asks the kernel for SIGKILL when the master
    dies (``PR_SET_PDEATHSIG``) and checks the master's pid in
    ``ctx.running``, so no worker outlives its supervisor.

Worker exit codes (seen by the master, logged in words): 0 clean exit, 3
failed to start (import error), 4 the target raised, 5 the target returned
although nobody asked it to stop, 6 the master is gone.
"""

import ctypes
import dataclasses
import errno
import importlib
import logging
import os
import random
import select
import signal
import sys
import time
import traceback
from typing import Optional

from .._units import format_mib
from . import memory as _memory
from . import policy
from . import scoreboard as sb
from .errors import JobTimeLimitExceeded

__all__ = ["WorkerContext", "WorkerSpec", "EXIT_CLEAN", "EXIT_BOOT_FAILED", "EXIT_TARGET_RAISED",
           "EXIT_TARGET_RETURNED", "EXIT_ORPHANED"]

EXIT_CLEAN = 0
EXIT_BOOT_FAILED = 3
EXIT_TARGET_RAISED = 4
EXIT_TARGET_RETURNED = 5
EXIT_ORPHANED = 6

#: Seconds between memory samples of an idle worker (a busy one samples after each job).
MEMORY_SAMPLE_INTERVAL = 1.0
_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15


class WorkerContext:
    """What a worker's target gets: the shared cache, its identity, and job control.

    Attributes: ``cache`` (the shared ``apccache.Cache``), ``pool`` (its pool's
    name), ``worker_id`` (slot number in the pool, kept by replacements),
    ``generation`` (bumped by every reload), ``log`` (a ``logging.Logger``).
    """

    def __init__(self, *, cache, pool, worker_id, generation, record, token_fd, master_pid,
                 rotate_at, rotate_cap, memory_limit, job_time_limit, log=None, clock=time.monotonic):
        self.pool = pool
        self.worker_id = worker_id
        self.generation = generation
        self.log = log or logging.getLogger(f"apccache.worker.{pool}.{worker_id}")
        self._raw_cache = cache
        self.cache = _guard(cache, self)
        self._record = record
        self._token_fd = token_fd
        self._master_pid = master_pid
        self._rotate_at = rotate_at
        self._rotate_cap = rotate_cap
        self._memory_limit = memory_limit
        self._default_limit = float(job_time_limit)
        self._clock = clock
        self._stop = False
        self._due = None          # rotation reason once due
        self._leaving = False     # ctx.running has returned False for good
        self._in_job = False
        self._job_name = None
        self._limit = 0.0
        self._deadline = 0.0
        self._alarm_raised = False
        self._engine_depth = 0
        self._alarm_pending = False
        self._last_memory = 0.0

    # -- what the target uses -------------------------------------------------

    @property
    def running(self):
        """False once the worker should leave its loop (stop, reload, rotation, master gone)."""
        if self._leaving:
            return False
        if self._stop:
            return self._leave(sb.Intent.STOP)
        if self._master_pid and os.getppid() != self._master_pid:
            self._stop = True
            return self._leave(sb.Intent.ORPHANED)
        if self._due:
            must_wait = bool(self._rotate_cap) and self._record.jobs >= self._rotate_cap
            if self._take_token(wait=must_wait):
                return self._leave(sb.Intent.ROTATE_JOBS if self._due == "max_jobs" else sb.Intent.ROTATE_MEMORY,
                                   rotating=True)
            if self._stop:
                return self._leave(sb.Intent.STOP)
        return True

    @property
    def jobs_done(self):
        """Jobs this worker process has finished, whatever their outcome."""
        return self._record.jobs

    def job(self, name="job"):
        """Context manager marking one job: counted, timed, errors logged and swallowed.

        An exception from the job is a job error: it is logged with its
        traceback and counted, and the ``with`` block ends normally so the
        worker carries on.  ``JobTimeLimitExceeded`` is counted as a time limit
        (and a job error).  ``SystemExit`` and ``KeyboardInterrupt`` pass through
        and end the worker, which the supervisor reports as a crash with the job
        lost.
        """
        if not isinstance(name, str):
            raise TypeError(f"a job name must be a str (got {type(name).__name__})")
        return _Job(self, name)

    def set_time_limit(self, seconds):
        """Restart the job's time limit from now with *seconds* (0 = no limit), like PHP's.

        Outside a job it sets the limit the following jobs of this worker
        start with.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
            raise ValueError(f"set_time_limit() needs a number of seconds >= 0 (got {seconds!r})")
        seconds = float(seconds)
        if not self._in_job:
            self._default_limit = seconds
            return
        self._limit = seconds
        self._alarm_raised = False
        self._arm(seconds)
        self._record.time_limit = seconds
        self._record.job_deadline = self._deadline
        self._record.flush()

    # -- internals ------------------------------------------------------------

    def _leave(self, intent, rotating=False):
        self._leaving = True
        rec = self._record
        rec.state = sb.STOPPING
        rec.intent = intent
        rec.rotating = 1 if rotating else 0
        rec.flush()
        return False

    def _take_token(self, wait):
        fd = self._token_fd
        if fd is None:
            return True
        while True:
            try:
                if os.read(fd, 1):
                    return True
            except BlockingIOError:
                pass
            except OSError:
                return True
            if not wait or self._stop:
                return False
            try:
                select.select([fd], [], [], 0.2)
            except InterruptedError:
                pass
            if self._master_pid and os.getppid() != self._master_pid:
                self._stop = True
                return False

    def _arm(self, seconds):
        if seconds > 0:
            self._deadline = self._clock() + seconds
            signal.setitimer(signal.ITIMER_REAL, seconds)
        else:
            self._deadline = 0.0
            signal.setitimer(signal.ITIMER_REAL, 0)

    def _on_alarm(self, signum, frame):
        if not self._in_job or self._alarm_raised or not self._deadline:
            return
        remaining = self._deadline - self._clock()
        if remaining > 0.001:
            signal.setitimer(signal.ITIMER_REAL, remaining)
            return
        if self._engine_depth:
            self._alarm_pending = True
            return
        self._alarm_raised = True
        raise JobTimeLimitExceeded(self._limit, self._job_name)

    def _deliver_pending(self):
        if self._alarm_pending and not self._engine_depth:
            self._alarm_pending = False
            if self._in_job and not self._alarm_raised and self._deadline:
                self._alarm_raised = True
                raise JobTimeLimitExceeded(self._limit, self._job_name)

    def _on_stop_signal(self, signum, frame):
        self._stop = True

    def _sample_memory(self, force):
        now = self._clock()
        if not force and now - self._last_memory < MEMORY_SAMPLE_INTERVAL:
            return None
        self._last_memory = now
        usage = _memory.read()
        if usage is not None:
            self._record.memory = usage.private
            self._record.rss = usage.rss
            return usage.private
        return None

    def _job_done(self, outcome):
        rec = self._record
        rec.jobs += 1
        if outcome in ("error", "time_limit"):
            rec.job_errors += 1
        if outcome == "time_limit":
            rec.time_limits += 1
        rec.state = sb.IDLE
        rec.job = ""
        rec.job_started = 0.0
        rec.job_deadline = 0.0
        rec.time_limit = 0.0
        mem = self._sample_memory(force=bool(self._memory_limit))
        if not self._due:
            self._due = policy.rotation_reason(rec.jobs, self._rotate_at, mem, self._memory_limit)
            if self._due:
                if self._due == "max_jobs":
                    why = f"after {rec.jobs} jobs (max_jobs reached)"
                else:
                    why = f"at {format_mib(mem)} of private memory (memory_limit {format_mib(self._memory_limit)})"
                self.log.info("worker %d (pid %d) of pool %s is due for rotation %s",
                              self.worker_id, os.getpid(), self.pool, why)
        rec.flush()


class _Job:
    __slots__ = ("ctx", "name")

    def __init__(self, ctx, name):
        self.ctx = ctx
        self.name = name

    def __enter__(self):
        ctx = self.ctx
        if ctx._in_job:
            raise RuntimeError(f"ctx.job({self.name!r}) inside job {ctx._job_name!r}: jobs cannot be nested")
        ctx._in_job = True
        ctx._job_name = self.name
        ctx._limit = ctx._default_limit
        ctx._alarm_raised = False
        ctx._alarm_pending = False
        rec = ctx._record
        rec.state = sb.BUSY
        rec.job = self.name
        rec.job_started = time.time()
        ctx._arm(ctx._limit)
        rec.time_limit = ctx._limit
        rec.job_deadline = ctx._deadline
        rec.flush()
        return ctx

    def __exit__(self, exc_type, exc, tb):
        ctx = self.ctx
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
        finally:
            ctx._in_job = False
            ctx._deadline = 0.0
            ctx._alarm_pending = False
        pid = os.getpid()
        if exc_type is None:
            ctx._job_done("ok")
            return False
        if issubclass(exc_type, JobTimeLimitExceeded):
            ctx.log.error("worker %d (pid %d) of pool %s: job %r was stopped by its %s time limit",
                          ctx.worker_id, pid, ctx.pool, self.name, _secs(ctx._limit))
            ctx._job_done("time_limit")
            return True
        if issubclass(exc_type, Exception):
            ctx.log.error("worker %d (pid %d) of pool %s: job %r raised %s",
                          ctx.worker_id, pid, ctx.pool, self.name,
                          "".join(traceback.format_exception(exc_type, exc, tb)).rstrip())
            ctx._job_done("error")
            return True
        # SystemExit, KeyboardInterrupt, ...: the worker ends inside a job.
        return False


def _guard(cache, ctx):
    """Wrap *cache* so that a time limit firing inside a call is raised after it returns."""
    if cache is None:
        return None
    return _GuardedCache(cache, ctx)


class _GuardedCache:
    """The shared cache as a job sees it: every method call shields the time limit.

    Behaves as the wrapped ``apccache.Cache`` (attributes, methods, the
    mapping protocol); ``unwrapped`` is the cache itself.
    """

    __slots__ = ("_cache", "_ctx", "_wrapped")

    def __init__(self, cache, ctx):
        object.__setattr__(self, "_cache", cache)
        object.__setattr__(self, "_ctx", ctx)
        object.__setattr__(self, "_wrapped", {})

    @property
    def unwrapped(self):
        return self._cache

    def __getattr__(self, name):
        value = getattr(self._cache, name)
        if not callable(value) or name.startswith("__"):
            return value
        wrapped = self._wrapped.get(name)
        if wrapped is None or wrapped[0] is not value:
            fn = _shield(value, self._ctx, wraps_generator=(name == "entry"))
            self._wrapped[name] = wrapped = (value, fn)
        return wrapped[1]

    def __setattr__(self, name, value):
        setattr(self._cache, name, value)

    def __repr__(self):
        return repr(self._cache)

    def __dir__(self):
        return dir(self._cache)

    def _call(self, name, *args):
        return self.__getattr__(name)(*args)

    def __getitem__(self, key):
        return _shield(self._cache.__getitem__, self._ctx)(key)

    def __setitem__(self, key, value):
        return _shield(self._cache.__setitem__, self._ctx)(key, value)

    def __delitem__(self, key):
        return _shield(self._cache.__delitem__, self._ctx)(key)

    def __contains__(self, key):
        return _shield(self._cache.__contains__, self._ctx)(key)

    def __len__(self):
        return _shield(self._cache.__len__, self._ctx)()

    def __iter__(self):
        return iter(_shield(lambda: list(iter(self._cache)), self._ctx)())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _shield(fn, ctx, wraps_generator=False):
    def shielded(*args, **kwargs):
        if wraps_generator:
            args, kwargs = _wrap_generator(args, kwargs, ctx)
        ctx._engine_depth += 1
        try:
            return fn(*args, **kwargs)
        finally:
            ctx._engine_depth -= 1
            if ctx._alarm_pending and not ctx._engine_depth:
                ctx._deliver_pending()

    shielded.__name__ = getattr(fn, "__name__", "call")
    shielded.__doc__ = getattr(fn, "__doc__", None)
    return shielded


def _wrap_generator(args, kwargs, ctx):
    """Make entry()'s generator run with the time limit live (it is the job's own code)."""
    if "generator" in kwargs:
        kwargs = dict(kwargs, generator=_unshield(kwargs["generator"], ctx))
    elif len(args) >= 2 and callable(args[1]):
        args = (args[0], _unshield(args[1], ctx)) + tuple(args[2:])
    return args, kwargs


def _unshield(fn, ctx):
    def unshielded(*args, **kwargs):
        depth = ctx._engine_depth
        ctx._engine_depth = 0
        try:
            ctx._deliver_pending()
            return fn(*args, **kwargs)
        finally:
            ctx._engine_depth = depth

    return unshielded


# -- the forked process -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs, built by the master before the fork."""

    pool: str
    worker_id: int
    generation: int
    record: int                  # its scoreboard record
    master_pid: int
    cache: object                # the master's apccache.Cache, mapped before the fork
    target: str                  # "module:function"
    token_fd: Optional[int]      # its pool's rotation token; None when the pool never rotates
    rotate_at: int               # see policy.rotation_point
    rotate_cap: int              # see policy.rotation_cap
    memory_limit: int            # bytes of private memory, 0 = none
    job_time_limit: float        # seconds, 0 = none
    env: tuple = ()              # (name, value) pairs set in os.environ
    python_path: tuple = ()      # put in front of sys.path
    close_fds: tuple = ()        # the master's descriptors the child closes first


def run_forked(spec):
    """The whole life of a freshly forked worker: run it, flush, ``os._exit`` with its code.

    Never returns, whatever is raised: the child must not unwind into the
    master's stack.
    """
    code = EXIT_BOOT_FAILED
    try:
        code = main(spec)
    except BaseException:
        try:
            traceback.print_exc()
        except BaseException:
            pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            pass
        os._exit(code)


def main(spec):
    """Run one worker process to its end and return its exit code (never raises).

    Called in the child right after ``os.fork()`` (by ``run_forked``, which
    passes the code to ``os._exit``) with the master's ``WorkerSpec``.
    """
    log = logging.getLogger(f"apccache.worker.{spec.pool}.{spec.worker_id}")
    stop = {"requested": False}

    def early_stop(signum, frame):
        stop["requested"] = True

    try:
        _reset_process(spec, early_stop)
    except Exception:
        log.exception("worker setup failed")
        return EXIT_BOOT_FAILED
    if os.getppid() != spec.master_pid:
        return EXIT_ORPHANED

    # The segment the master mapped before forking: every worker shares
    # that one mapping, as PHP-FPM's children share APC's.
    record = sb.WorkerRecord(spec.cache, spec.record)
    record.set_pid(os.getpid())
    record.flush()

    target = _load_target(spec, record, log)
    if target is None:
        return EXIT_BOOT_FAILED
    ctx = _ready(spec, record, log, stop)
    return _serve(ctx, target, record, log)


def _load_target(spec, record, log):
    """Import the pool's target; None (and the reason in the record) if that fails."""
    try:
        modname, _, funcname = spec.target.partition(":")
        target = importlib.import_module(modname)
        for part in funcname.split("."):
            target = getattr(target, part)
        if not callable(target):
            raise TypeError(f"{spec.target} is {type(target).__name__}, not a function")
        return target
    except BaseException as e:
        brief = f"{type(e).__name__}: {e}"
        log.error("worker %d (pid %d) of pool %s could not load its target %r:\n%s",
                  spec.worker_id, os.getpid(), spec.pool, spec.target,
                  "".join(traceback.format_exception(type(e), e, e.__traceback__)).rstrip())
        record.state = sb.STOPPING
        record.intent = sb.Intent.BOOT
        record.note = f"cannot load {spec.target}: {brief}"
        record.flush()
        return None


def _ready(spec, record, log, stop):
    """Build the target's context, take over the stop and alarm signals, and report ready.

    *stop* is the flag the early handler sets: read again once the context's
    own handler is in place, so that a SIGTERM in between is not lost.
    """
    ctx = WorkerContext(
        cache=spec.cache,
        pool=spec.pool,
        worker_id=spec.worker_id,
        generation=spec.generation,
        record=record,
        token_fd=spec.token_fd,
        master_pid=spec.master_pid,
        rotate_at=spec.rotate_at,
        rotate_cap=spec.rotate_cap,
        memory_limit=spec.memory_limit,
        job_time_limit=spec.job_time_limit,
        log=log,
    )
    ctx._stop = stop["requested"]
    signal.signal(signal.SIGTERM, ctx._on_stop_signal)
    signal.signal(signal.SIGINT, ctx._on_stop_signal)
    signal.signal(signal.SIGALRM, ctx._on_alarm)
    if stop["requested"]:
        ctx._stop = True
    record.state = sb.IDLE
    record.ready_at = time.time()
    ctx._sample_memory(force=True)
    record.flush()
    return ctx


def _serve(ctx, target, record, log):
    """Run the target until it returns or raises; return the process's exit code."""
    try:
        target(ctx)
    except BaseException as e:
        if ctx._in_job:
            where = f"in job {ctx._job_name!r}"
        else:
            where = "outside a job"
        log.error("worker %d (pid %d) of pool %s: its target raised %s:\n%s", ctx.worker_id, os.getpid(),
                  ctx.pool, where,
                  "".join(traceback.format_exception(type(e), e, e.__traceback__)).rstrip())
        if not ctx._in_job:
            record.state = sb.STOPPING
        record.intent = sb.Intent.RAISED
        record.note = f"{type(e).__name__}: {e}"
        record.flush()
        return EXIT_TARGET_RAISED
    if not ctx._leaving and not ctx._stop:
        record.state = sb.STOPPING
        record.intent = sb.Intent.RETURNED
        record.flush()
        return EXIT_TARGET_RETURNED
    if record.intent == sb.Intent.ORPHANED:
        return EXIT_ORPHANED
    if not ctx._leaving:
        ctx._leave(sb.Intent.STOP)
    return EXIT_CLEAN


def _reset_process(spec, on_stop):
    """Undo what the child inherited from the master and set up the worker's own process."""
    signal.set_wakeup_fd(-1)
    for fd in spec.close_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    for sig in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    _set_parent_death_signal()
    _set_process_name(f"apc:{spec.pool}:{spec.worker_id}")
    random.seed()
    for key, value in spec.env:
        os.environ[key] = value
    for path in reversed(spec.python_path):
        if path not in sys.path:
            sys.path.insert(0, path)


def _set_parent_death_signal():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    except (OSError, AttributeError) as e:
        if getattr(e, "errno", None) not in (None, errno.EINVAL):
            logging.getLogger("apccache.worker").warning(
                "cannot ask for SIGKILL on the master's death (%s); workers notice it in ctx.running", e)


def _set_process_name(name):
    """Name the process in ps -o comm / top (at most 15 bytes), e.g. "apc:images:3"."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _secs(s):
    return f"{int(s)} s" if s == int(s) else f"{s:g} s"
