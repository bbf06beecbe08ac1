"""The master process: owns the cache segment and keeps pools of workers running.

The shape is gunicorn's arbiter.  Signal handlers do nothing but append the
signal to a queue; ``signal.set_wakeup_fd`` writes a byte to a self-pipe so
the main loop wakes at once.

START-UP

    ``run()`` reads the config and installs the signal handlers, then
    ``start_up()`` takes six named steps, each a method, before anything
    forks a worker; the first two may end the run with an exit code::

        start_cache()      # create the segment, or take over one a dead supervisor left
        run_init()         # run the [init] command to its end
        start_opcode()     # serve the workers' imports from the segment ([opcode])
        start_pools()      # the config's pools, as generation 1
        start_fleet()      # the [fleet] table's invalidation listener
        announce()         # say what runs and where to watch it

THE LOOP

    Six named steps, each a method, until the last worker of a stop has
    exited::

        while True:
            wait_for_wakeup()      # sleep on the self-pipe, at most LOOP_INTERVAL
            handle_signals()       # act on the queued signals, coalescing bursts
            reap_workers()         # waitpid every exited worker and report it in words
            if stopping and no worker is left: break
            check_deadlines()      # job time limits, start timeouts, stop timeout
            maintain_workers()     # fork and retire to match the wanted generation
            publish()              # write pool records and the heartbeat

    ``reap_workers`` asks ``exits.classify_exit()`` what each exit means (a
    pure function: see exits.py) and applies its answer.
    ``maintain_workers`` forks with ``spawn()``, which hands the child a
    ``worker.WorkerSpec``, and restarts the fleet listener when it is down.

GENERATIONS

    Every SIGHUP re-reads the config and starts a new generation
    (``begin_reload``).  For each worker slot (pool, worker_id) the master
    forks a process of the new generation next to the old one and retires
    the old one (SIGTERM: finish the job in flight, then exit) only when the
    new one reports ready, so the number of ready workers never drops.  A
    reload that arrives while another is in progress supersedes it
    (``supersede_reload``): new-generation processes that are not yet ready
    are stopped, ready ones serve until their own replacement is ready.  So
    a burst of 50 SIGHUPs converges on the last generation.  When every slot
    of the new generation is ready the reload is complete
    (``finish_reload``).  If a process of the new generation fails before
    it is ready (an import error, a crash, ``start_timeout``), the reload
    fails (``fail_reload``): the new generation is stopped and the old one
    keeps (or goes back to) serving.

CRASHES

    A worker that dies while the master wanted it running is a crash: it is
    reported once, with the job it was in as lost, the engine's recovery API
    releases what the dead pid held in the cache, and the slot restarts after
    the pool's backoff.  ``max_crashes`` crashes within ``crash_window``
    seconds mark the pool failed and stop the supervisor with
    ``ExitCode.POOL_FAILED``.

STOPPING

    A stop is always the same sequence: SIGTERM, a wait, then SIGKILL for
    whatever is still running.  Workers get it over loop passes: ``retire``
    sends SIGTERM (the job in flight finishes) and ``check_deadlines`` sends
    SIGKILL once ``stop_timeout`` has passed; a second SIGTERM/SIGINT, or a
    SIGQUIT, skips the wait.  The init command's process group gets it in one
    call (``_stop_group``) when it runs past ``init.timeout`` or a stop
    arrives while it runs.

WHAT IT DOES NOT DO

    It owns no jobs and no sockets: each worker reads its own job source.  It
    never re-executes itself, so the segment (and everything cached in it)
    survives every reload.  Changes to ``[cache]`` and ``[init]`` take effect
    only on a restart.
"""

import collections
import dataclasses
import enum
import fcntl
import logging
import os
import select
import signal
import subprocess
import sys
import termios
import time
import traceback
from typing import Optional

from .._units import format_size
from . import config as _config
from . import policy
from . import scoreboard as sb
from . import worker as _worker
from .errors import ConfigError
from .exits import Kill, KillReason, Then, classify_exit, signame
from .exits import secs as _secs
from .scoreboard import PoolState, ReloadOutcome, SupervisorState

__all__ = ["Supervisor", "ExitCode"]

log = logging.getLogger("apccache.supervisor")

#: Seconds the main loop sleeps at most between passes when no signal arrives.
LOOP_INTERVAL = 0.1
#: Seconds a pool's rotation token may look lost before the master restores it.
TOKEN_GRACE = 2.0


class ExitCode(enum.IntEnum):
    """Exit codes of ``apccache supervise``.

    With ``[init] fail_on_error`` the supervisor exits with the init
    command's own code instead (128 + N when a signal N killed it), so those
    numbers may also come from the command; the log says which.
    """

    OK = 0               #: stopped on request (SIGTERM, SIGINT, --duration)
    ERROR = 1            #: an unexpected error in the supervisor itself
    USAGE = 2            #: bad command line
    POOL_FAILED = 3      #: a pool hit max_crashes within crash_window
    CACHE_ERROR = 4      #: the segment could not be created (in use, no memory, ...)
    CONFIG_ERROR = 78    #: the configuration is invalid (EX_CONFIG)
    INIT_TIMEOUT = 124   #: the init command ran past init.timeout (as timeout(1))
    # A second SIGTERM/SIGINT, or a SIGQUIT, stops at once and exits 128 + that signal's number.


_HANDLED = (
    signal.SIGHUP,
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGCHLD,
)


@dataclasses.dataclass
class Proc:
    """One worker process, as the master tracks it."""

    pid: int
    pool: str
    worker_id: int
    generation: int
    record: int
    forked: float
    ready: float = 0.0               # monotonic time it reported ready, 0 = not yet
    retiring: str = ""               # why the master asked it to stop, "" = not asked
    kill: Optional[Kill] = None      # why the master SIGKILLed it, None = it did not
    last: dict = dataclasses.field(default_factory=dict)  # last scoreboard copy

    def label(self):
        return f"worker {self.worker_id} (pid {self.pid}) of pool {self.pool}"


@dataclasses.dataclass
class Slot:
    """The history of one (pool, worker_id) across its processes."""

    streak: policy.Streak = dataclasses.field(default_factory=policy.Streak)
    restarts: int = 0
    last_exit: str = ""
    not_before: float = 0.0          # monotonic: backoff after a crash
    replacing: bool = False          # the next process replaces one that exited
    token_owed: bool = False         # put the rotation token back when a successor is ready

    def note_exit(self, report):
        """What an exit that is not a crash (an ``exits.ExitReport``) changes in the slot."""
        if report.last_exit is not None:
            self.last_exit = report.last_exit
        if report.clean:
            self.streak.clean_exit()
        if report.owes_token:
            self.token_owed = True
        if report.then in (Then.REPLACE, Then.REPLACE_NOW):
            self.replacing = True
        if report.then is Then.REPLACE_NOW:
            self.not_before = 0.0  # no backoff left over from an earlier crash


class Pool:
    """A pool's runtime state in the master."""

    def __init__(self, cfg, index):
        self.cfg = cfg
        self.index = index
        self.desired = cfg.workers
        self.crashes = policy.CrashWindow(cfg.max_crashes, cfg.crash_window)
        self.counters = dict.fromkeys(sb.POOL_COUNTERS, 0)
        self.dead_totals = {"jobs": 0, "job_errors": 0, "time_limits": 0}
        self.slots = collections.defaultdict(Slot)
        self.failed = False
        self.removed = False
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.write(w, b"r")
        self.token_r, self.token_w = r, w
        self.token_missing_since = 0.0

    def set_config(self, cfg):
        self.cfg = cfg
        self.desired = cfg.workers
        self.crashes.max_crashes = cfg.max_crashes
        self.crashes.window = cfg.crash_window

    def close(self):
        for fd in (self.token_r, self.token_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def token_available(self):
        buf = bytearray(4)
        try:
            fcntl.ioctl(self.token_r, termios.FIONREAD, buf)
        except OSError:
            return True
        return int.from_bytes(buf, sys.byteorder) > 0

    def return_token(self):
        if not self.token_available():
            os.write(self.token_w, b"r")


@dataclasses.dataclass
class Reload:
    generation: int
    previous_config: object
    previous_generation: int
    started: float


class Supervisor:
    """Run the pools of a config until stopped; ``run()`` returns an ExitCode (or int)."""

    def __init__(self, config_path, *, duration=None, keep_cache=None, clock=time.monotonic):
        self.config_path = os.fspath(config_path)
        self.duration = duration
        self.keep_cache = keep_cache
        self.clock = clock
        self.config = None
        self.cache = None
        self.board = None
        self.pools = {}
        self.procs = {}
        self.generation = 0
        self.next_generation = 1
        self.reload = None
        self.last_reload = ReloadOutcome.NONE
        self.reload_generation = 0
        self.stopping = False
        self.stop_deadline = 0.0
        self.exit_code = ExitCode.OK
        self.started_wall = time.time()
        self.started = 0.0
        self.signals = []
        self.wake_r = self.wake_w = -1
        self.pid = os.getpid()
        self.warned_full = False
        self.fleet = None  # the [fleet] listener service, if configured

    # -- entry point ----------------------------------------------------------

    def run(self):
        """Start up, supervise until stopped, clean up; return the exit code."""
        code = self.load_config()
        if code is not None:
            return code
        self.install_signals()
        try:
            try:
                code = self.start_up()
                if code is not None:
                    return code
                self.main_loop()
                return self.exit_code
            finally:
                self.shutdown()
        except Exception:
            log.critical("the supervisor failed:\n%s", traceback.format_exc().rstrip())
            self.kill_all("the supervisor failed")
            return ExitCode.ERROR
        finally:
            self.restore_signals()

    def main_loop(self):
        """Run the loop's named steps until the last worker of a stop has exited."""
        self.started = self.clock()
        while True:
            self.wait_for_wakeup()
            self.handle_signals()
            self.reap_workers()
            if self.stopping and not self.procs:
                break
            self.check_deadlines()
            self.maintain_workers()
            self.publish()

    # -- start-up -------------------------------------------------------------

    def load_config(self):
        """Read the config file (with --keep-cache applied); an exit code if it is invalid."""
        try:
            self.config = _config.load(self.config_path)
        except ConfigError as e:
            log.error("%s", e)
            return ExitCode.CONFIG_ERROR
        if self.keep_cache is not None:
            self.config = dataclasses.replace(
                self.config, cache=dataclasses.replace(self.config.cache, keep=self.keep_cache))
        return None

    def install_signals(self):
        """Queue signals from handlers and wake the loop through a self-pipe."""
        self.wake_r, self.wake_w = os.pipe()
        for fd in (self.wake_r, self.wake_w):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        self._previous_handlers = {}
        for sig in _HANDLED:
            self._previous_handlers[sig] = signal.signal(sig, self._on_signal)

    def restore_signals(self):
        """Put back the handlers run() replaced and close the self-pipe."""
        try:
            signal.set_wakeup_fd(-1)
        except ValueError:
            pass
        for sig, handler in getattr(self, "_previous_handlers", {}).items():
            try:
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
            except (ValueError, TypeError):
                pass
        for fd in (self.wake_r, self.wake_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.wake_r = self.wake_w = -1

    def _on_signal(self, signum, frame):
        self.signals.append(signum)

    def start_up(self):
        """The start-up steps, in order (see START-UP); an exit code if one ends the run."""
        code = self.start_cache()
        if code is None:
            code = self.run_init()
        if code is not None:
            return code
        self.start_opcode()
        self.start_pools()
        self.start_fleet()
        self.announce()
        return None

    def start_cache(self):
        """Create the segment before any fork; return an exit code if that fails."""
        import apccache

        c = self.config.cache
        kwargs = {"size": c.size, "slots": c.slots, "ttl": c.ttl, "gc_ttl": c.gc_ttl}
        try:
            self.cache = apccache.Cache.create(c.name, **kwargs)
        except FileExistsError:
            code = self._take_over_existing(apccache, c, kwargs)
            if code is not None:
                return code
        except Exception as e:
            log.error("cannot create the cache segment %r (%s): %s", c.name,
                      format_size(c.size, trim=True), e)
            return ExitCode.CACHE_ERROR
        self.board = sb.Board(self.cache)
        self.board.initialise(self.pid, self.started_wall)
        return None

    def _take_over_existing(self, apccache, c, kwargs):
        """The segment exists: reuse or replace it if a dead supervisor left it; else an exit code."""
        try:
            old = apccache.Cache.attach(c.name)
        except apccache.UntrustedSegmentError as e:
            # Someone else made the name first, or it is writable by others:
            # neither reused (its values would be unpickled in every worker)
            # nor removed (it may be another program's, or evidence).
            log.error("refusing to take over the existing cache segment %r: %s. The supervisor neither "
                      "uses nor removes it; check who made it, remove /dev/shm/%s, and start again (or "
                      "choose another [cache] name)", c.name, e, c.name)
            return ExitCode.CACHE_ERROR
        except Exception as e:
            log.error("the cache segment %r already exists and cannot be attached (%s); remove "
                      "/dev/shm/%s or choose another [cache] name", c.name, e, c.name)
            return ExitCode.CACHE_ERROR
        try:
            board = sb.Board(old)
            owner = board.header_master_pid()
        except Exception:
            owner = 0
        if not owner:
            old.close()
            log.error("the cache segment %r already exists and no supervisor owns it: another program "
                      "may be using it; remove /dev/shm/%s or choose another [cache] name", c.name, c.name)
            return ExitCode.CACHE_ERROR
        if owner != self.pid and sb.pid_alive(owner):
            old.close()
            log.error("the cache segment %r is in use by supervisor pid %d; stop it (kill -TERM %d) or "
                      "choose another [cache] name", c.name, owner, owner)
            return ExitCode.CACHE_ERROR
        if c.keep:
            log.info("reusing the cache segment %r left by supervisor pid %d, which is no longer running "
                     "(keep = true)", c.name, owner)
            self.cache = old
        else:
            log.warning("removing the stale cache segment %r left by supervisor pid %d, which is no longer "
                        "running", c.name, owner)
            try:
                old.unlink()
            finally:
                old.close()
            try:
                self.cache = apccache.Cache.create(c.name, **kwargs)
            except Exception as e:
                log.error("cannot create the cache segment %r: %s", c.name, e)
                return ExitCode.CACHE_ERROR
        return None

    def run_init(self):
        """Run [init] before anything forks; return an exit code if start-up must stop."""
        init = self.config.init
        if init is None:
            return None
        cmd = [sys.executable if arg == "{python}" else arg for arg in init.command]
        env = self._init_env()
        log.info("running the init command %s (timeout %s)", _shell(cmd), _secs(init.timeout))
        try:
            proc = subprocess.Popen(cmd, cwd=self.config.base_dir, env=env, start_new_session=True)
        except OSError as e:
            return self._init_failed(f"the init command {_shell(cmd)} could not start: {e.strerror or e}", 127)
        stopped = self._wait_for_init(proc, init.timeout)
        if stopped == "signal":
            return ExitCode.OK
        if stopped == "timeout":
            return self._init_failed(
                f"the init command {_shell(cmd)} did not finish within init.timeout "
                f"({_secs(init.timeout)}) and was killed", ExitCode.INIT_TIMEOUT)
        rc = proc.returncode
        if rc == 0:
            log.info("the init command succeeded")
            return None
        if rc < 0:
            return self._init_failed(f"the init command {_shell(cmd)} was killed by {signame(-rc)}", 128 - rc)
        return self._init_failed(f"the init command {_shell(cmd)} exited with code {rc}", rc)

    def _init_env(self):
        """The init command's environment: it imports what the workers import."""
        env = dict(os.environ, APCCACHE_NAME=self.config.cache.name)
        # python_path first, then the apccache this supervisor runs.
        import apccache

        paths = list(self.config.supervisor.python_path)
        paths.append(os.path.dirname(os.path.dirname(os.path.abspath(apccache.__file__))))
        paths += [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        return env

    def _wait_for_init(self, proc, timeout):
        """Wait for the init command to exit; stop it at *timeout* or on a stop signal.

        Returns None when it exited by itself, else why it was stopped:
        "timeout" or "signal" (SIGTERM, SIGINT, SIGQUIT: the supervisor exits).
        """
        deadline = self.clock() + timeout
        while proc.poll() is None:
            remaining = deadline - self.clock()
            if remaining <= 0:
                _stop_group(proc, 1.0)
                return "timeout"
            self.wait_for_wakeup(min(remaining, LOOP_INTERVAL))
            queued, self.signals = self.signals, []
            stop = [s for s in queued if s in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)]
            # Keep the others (SIGHUP, SIGTTIN, ...) for the main loop.
            self.signals[:0] = [s for s in queued if s != signal.SIGCHLD and s not in stop]
            if stop:
                log.info("%s during the init command: stopping it and exiting", signame(stop[0]))
                _stop_group(proc, 2.0)
                return "signal"
        return None

    def _init_failed(self, message, code):
        if self.config.init.fail_on_error:
            log.error("%s; start-up stopped (fail_on_error = true), exiting with code %d", message, int(code))
            return int(code)
        log.warning("%s; starting the workers anyway (fail_on_error = false)", message)
        return None

    def start_opcode(self):
        """Serve the workers' imports from the segment if [opcode] is enabled (before any fork)."""
        if not self.config.opcode.enabled:
            return
        from apccache import opcode

        summary = opcode.setup_for_supervisor(self.cache, self.config.opcode.table(),
                                              base_dir=self.config.base_dir)
        log.info("opcode cache on (%s mode): warmed %d files, %d stored, %d already there, %d skipped",
                 summary["mode"], summary["files"], summary["stored"], summary["present"], summary["skipped"])
        for err in summary["errors"][:5]:
            log.warning("opcode warm: %s", err)

    def start_pools(self):
        """Create the pools of the config as generation 1 (maintain_workers forks them)."""
        self.generation = self.next_generation
        self.next_generation += 1
        for i, pcfg in enumerate(self.config.pools):
            self.pools[pcfg.name] = Pool(pcfg, i)
        self.write_header(state=SupervisorState.RUNNING)

    def start_fleet(self):
        """Start the [fleet] table's invalidation listener, if there is one."""
        if self.config.fleet is None:
            return
        from ..fleet.service import ListenerService

        self.fleet = ListenerService(self.config.fleet.table(), self.config.cache.name)
        self.fleet.start()

    def announce(self):
        """Say what runs and where to watch it."""
        c = self.config.cache
        pools = ", ".join(f"{p.name} ({p.workers} worker{'s' if p.workers != 1 else ''})"
                          for p in self.config.pools)
        log.info("supervisor pid %d serving cache %r (%s) with pools %s", self.pid, c.name,
                 format_size(c.size, trim=True), pools)
        log.info("watch it with: apccache status %s   (or: apcstat %s)", c.name, c.name)
        log.info("reload with: kill -HUP %d; stop with Ctrl-C or: kill -TERM %d%s", self.pid, self.pid,
                 f"; stopping by itself after {_secs(self.duration)}" if self.duration else "")

    # -- the loop's steps -----------------------------------------------------

    def wait_for_wakeup(self, timeout=LOOP_INTERVAL):
        """Sleep until a signal arrives or *timeout* passes; drain the self-pipe."""
        if not self.signals:
            try:
                select.select([self.wake_r], [], [], timeout)
            except InterruptedError:
                pass
        try:
            while os.read(self.wake_r, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def handle_signals(self):
        """Act on queued signals; a burst of SIGHUPs makes one reload."""
        queued, self.signals = self.signals, []
        if self.duration and not self.stopping and self.clock() - self.started >= self.duration:
            log.info("ran for %s (--duration): stopping gracefully", _secs(self.duration))
            self.begin_stop(ExitCode.OK)
        reload = False
        for sig in queued:
            if sig == signal.SIGCHLD:
                continue
            if sig in (signal.SIGTERM, signal.SIGINT):
                if self.stopping:
                    self.stop_now(sig)
                else:
                    log.info("%s: stopping gracefully (a second one stops at once; stop_timeout %s)",
                             signame(sig), _secs(self.config.supervisor.stop_timeout))
                    self.begin_stop(ExitCode.OK)
            elif sig == signal.SIGQUIT:
                self.stop_now(sig)
            elif sig == signal.SIGHUP:
                reload = True
            elif sig in (signal.SIGTTIN, signal.SIGTTOU):
                self.resize(+1 if sig == signal.SIGTTIN else -1)
        if reload and not self.stopping:
            self.begin_reload()

    def reap_workers(self):
        """Collect every exited worker, report how it ended, and release what it held."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            proc = self.procs.pop(pid, None)
            if proc is None:
                if self.fleet is not None:
                    self.fleet.exited(pid, status)
                continue
            self.worker_exited(proc, status)

    def check_deadlines(self):
        """SIGKILL jobs past time limit + hard_kill_after, stuck starts, and a stop past stop_timeout."""
        now = self.clock()
        if self.stopping and now >= self.stop_deadline:
            for proc in list(self.procs.values()):
                if not proc.kill:
                    self.kill(proc, Kill(KillReason.STOP_TIMEOUT, self.config.supervisor.stop_timeout))
            return
        for proc in list(self.procs.values()):
            if proc.kill:
                continue
            rec = self.board.record(proc.record)
            if rec is None:
                continue
            proc.last = rec
            if not proc.ready:
                if rec["ready_at"] or rec["state"] in ("idle", "busy"):
                    proc.ready = now
                    self.worker_ready(proc)
                elif now - proc.forked > self.config.supervisor.start_timeout:
                    self.kill(proc, Kill(KillReason.START_TIMEOUT, self.config.supervisor.start_timeout))
                continue
            if rec["state"] == "busy" and rec["job_deadline"]:
                pool = self.pools.get(proc.pool)
                grace = pool.cfg.hard_kill_after if pool else 5.0
                # The worker publishes its deadline on CLOCK_MONOTONIC, shared by all processes.
                if time.monotonic() > rec["job_deadline"] + grace:
                    ran = time.time() - rec["job_started"] if rec["job_started"] else 0.0
                    self.kill(proc, Kill(KillReason.TIME_LIMIT, rec["time_limit"] or 0.0, rec["job"], ran, grace))

    def maintain_workers(self):
        """Fork what the wanted generation lacks; retire what it has replaced; restart the fleet listener."""
        if self.stopping:
            return
        now = self.clock()
        by_slot = collections.defaultdict(list)
        for proc in self.procs.values():
            by_slot[(proc.pool, proc.worker_id)].append(proc)
        complete = True
        for name, pool in self.pools.items():
            if pool.removed or pool.failed:
                continue
            for wid in range(pool.desired):
                procs = by_slot.get((name, wid), [])
                current = [p for p in procs if p.generation == self.generation and not p.retiring]
                if not current:
                    complete = False
                    slot = pool.slots[wid]
                    if now >= slot.not_before:
                        self.spawn(pool, wid)
                    continue
                ready = [p for p in current if p.ready]
                if not ready:
                    complete = False
                    continue
                for p in procs:
                    if p not in current and not p.retiring:
                        self.retire(p, f"replaced by generation {self.generation}"
                                    if p.generation != self.generation else "replaced")
                slot = pool.slots[wid]
                if slot.token_owed:
                    slot.token_owed = False
                    pool.return_token()
            # Slots beyond the wanted count (SIGTTOU, a smaller reload).
            for (pname, wid), procs in by_slot.items():
                if pname == name and wid >= pool.desired:
                    for p in procs:
                        if not p.retiring and (self.reload is None or p.generation == self.generation):
                            self.retire(p, "the pool shrank")
            for wid, slot in pool.slots.items():
                if wid >= pool.desired and slot.token_owed:
                    slot.token_owed = False
                    pool.return_token()
            self.check_token(pool, now)
        if self.reload and complete:
            self.finish_reload()
        if self.reload is None:
            for name, pool in list(self.pools.items()):
                if pool.removed:
                    for p in self.procs.values():
                        if p.pool == name and not p.retiring:
                            self.retire(p, "its pool was removed by a reload")
                    if not any(p.pool == name for p in self.procs.values()):
                        self.board.clear_pool(pool.index)
                        pool.close()
                        del self.pools[name]
        if self.fleet is not None:
            self.fleet.maintain()

    def publish(self):
        """Write the pool records and the header heartbeat."""
        ready = collections.Counter()
        live = {name: dict.fromkeys(("jobs", "job_errors", "time_limits"), 0) for name in self.pools}
        for proc in self.procs.values():
            rec = proc.last
            if not rec:
                continue
            if proc.ready and rec.get("state") in ("idle", "busy"):
                ready[proc.pool] += 1
            if proc.pool in live:
                for k in live[proc.pool]:
                    live[proc.pool][k] += rec.get(k, 0)
        for name, pool in self.pools.items():
            counters = dict(pool.counters)
            for k, v in pool.dead_totals.items():
                counters[k] = v + live[name][k]
            state = PoolState.FAILED if pool.failed else PoolState.REMOVED if pool.removed else PoolState.RUNNING
            self.board.write_pool(pool.index, name, state, pool.desired, self.generation, ready[name], counters)
        self.write_header()

    def write_header(self, state=None):
        if state is None:
            state = (SupervisorState.STOPPING if self.stopping else SupervisorState.RELOADING if self.reload
                     else SupervisorState.RUNNING)
        self.board.write_header(self.pid, self.started_wall, self.generation, state, self.last_reload,
                                self.reload_generation)

    # -- spawning -------------------------------------------------------------

    def spawn(self, pool, wid):
        """Fork one worker of the wanted generation for slot (pool, wid)."""
        index = self._free_record()
        if index is None:
            return None
        spec = self.worker_spec(pool, wid, index)
        self._claim_record(pool, wid, spec)
        try:
            pid = _fork_worker(spec)
        except OSError as e:
            self.board.release_record(index)
            log.error("cannot fork a worker for pool %s: %s; retrying in 1 s", pool.cfg.name, e.strerror)
            pool.slots[wid].not_before = self.clock() + 1.0
            return None
        self.board.set_pid(index, pid)
        proc = Proc(pid=pid, pool=pool.cfg.name, worker_id=wid, generation=self.generation, record=index,
                    forked=self.clock())
        self.procs[pid] = proc
        log.debug("started %s, generation %d", proc.label(), self.generation)
        return proc

    def _free_record(self):
        """A free scoreboard record for the next worker, or None (said once) while all are in use."""
        index = self.board.free_record()
        if index is None:
            if not self.warned_full:
                log.warning("the scoreboard has no free record (%d in use); waiting for workers to exit "
                            "before starting more", sb.WORKER_COUNT)
                self.warned_full = True
            return None
        self.warned_full = False
        return index

    def worker_spec(self, pool, wid, index):
        """What the worker for slot (pool, wid), in scoreboard record *index*, needs to run."""
        cfg = pool.cfg
        # The child keeps its own pool's token pipe (read end) and nothing
        # else the master holds open.
        close_fds = [self.wake_r, self.wake_w]
        for p in self.pools.values():
            close_fds.append(p.token_w)
            if p.token_r != pool.token_r:
                close_fds.append(p.token_r)
        return _worker.WorkerSpec(
            pool=cfg.name,
            worker_id=wid,
            generation=self.generation,
            record=index,
            master_pid=self.pid,
            cache=self.cache,
            target=cfg.target,
            token_fd=pool.token_r if cfg.max_jobs or cfg.memory_limit else None,
            rotate_at=policy.rotation_point(cfg.max_jobs, cfg.max_jobs_jitter),
            rotate_cap=policy.rotation_cap(cfg.max_jobs, cfg.max_jobs_jitter),
            memory_limit=cfg.memory_limit,
            job_time_limit=cfg.job_time_limit,
            env=tuple(cfg.env),
            python_path=tuple(self.config.supervisor.python_path),
            close_fds=tuple(close_fds),
        )

    def _claim_record(self, pool, wid, spec):
        """Fill the new worker's scoreboard record with its slot's history; count a restart."""
        slot = pool.slots[wid]
        if slot.replacing:
            slot.restarts += 1
            pool.counters["restarts"] += 1
            slot.replacing = False
        self.board.claim_record(spec.record, pool.index, wid, spec.generation, slot.restarts, spec.rotate_at,
                                spec.rotate_cap, slot.last_exit)

    def worker_ready(self, proc):
        """A process reported ready; say so when it replaces or reloads."""
        if proc.generation != 1 or proc.last.get("restarts"):
            log.info("%s is ready (generation %d)", proc.label(), proc.generation)

    # -- exits ----------------------------------------------------------------

    def worker_exited(self, proc, status):
        """Report one reaped worker in words, count it, recover its cache state, plan its slot."""
        now = self.clock()
        pool = self.pools.get(proc.pool)
        rec = self.settle_record(proc, pool)
        slot = pool.slots[proc.worker_id] if pool is not None else Slot()
        if rec.get("rotating") and pool is not None:
            slot.token_owed = True
        report = classify_exit(os.waitstatus_to_exitcode(status), proc, rec, pool.cfg if pool else None)
        if report.then is Then.CRASH:
            self._crash(pool, slot, proc, report, now)
            return
        log.log(report.level, "%s", report.message)
        self._count(pool, *report.counters)
        slot.note_exit(report)

    def settle_record(self, proc, pool):
        """Take a reaped worker's last record, free it, bank its totals, release its cache holds."""
        rec = self.board.record(proc.record) or proc.last or {}
        self.board.release_record(proc.record)
        if pool is not None:
            for k in pool.dead_totals:
                pool.dead_totals[k] += rec.get(k, 0)
        self.recover(proc)
        return rec

    def _count(self, pool, *names):
        if pool is not None:
            for n in names:
                pool.counters[n] += 1

    def _crash(self, pool, slot, proc, report, now):
        """Count a crash, plan the slot's restart with backoff, and notice a crash loop."""
        msg = report.message
        slot.last_exit = report.last_exit
        if pool is None:
            log.error("%s", msg)
            return
        if self.reload and proc.generation == self.generation and not proc.ready:
            log.error("%s", msg)
            self.fail_reload(msg)
            return
        self._count(pool, *report.counters)
        uptime = (now - proc.ready) if proc.ready else 0.0
        n = slot.streak.crashed(uptime)
        delay = policy.backoff_delay(n, *pool.cfg.restart_backoff)
        slot.not_before = now + delay
        slot.replacing = True
        count = pool.crashes.record(now)
        if pool.crashes.failed(now):
            log.error("%s", msg)
            log.critical("pool %s failed: %d crashes within %s (max_crashes = %d); stopping the supervisor",
                         pool.cfg.name, count, _secs(pool.cfg.crash_window), pool.cfg.max_crashes)
            pool.failed = True
            self.begin_stop(ExitCode.POOL_FAILED)
            return
        log.error("%s; restarting it in %.2f s (crash %d in a row, %d within %s)", msg, delay, n, count,
                  _secs(pool.cfg.crash_window))

    def recover(self, proc):
        """Release what a dead worker still held in the cache (pins, an entry() in progress)."""
        try:
            released = self.cache.recover(proc.pid)
        except Exception as e:
            log.error("could not release the cache state of %s: %s", proc.label(), e)
            return
        if released:
            log.warning("released %d cache hold%s left by %s", released, "" if released == 1 else "s",
                        proc.label())

    # -- signalling one worker ------------------------------------------------

    def retire(self, proc, why):
        """Ask *proc* to finish its job and exit (SIGTERM)."""
        proc.retiring = why
        self.send(proc, signal.SIGTERM)

    def kill(self, proc, why):
        """SIGKILL *proc* and remember why (a ``Kill``), for the exit report."""
        proc.kill = why
        if why.reason is KillReason.TIME_LIMIT:
            log.warning("%s: job %r has run %s, past its %s time limit and hard_kill_after (%s); sending "
                        "SIGKILL", proc.label(), why.job, _secs(why.ran), _secs(why.limit), _secs(why.grace))
        self.send(proc, signal.SIGKILL)

    def send(self, proc, sig):
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass

    # -- pool size and the rotation token -------------------------------------

    def resize(self, delta):
        """SIGTTIN / SIGTTOU: one worker more or less in each pool (never fewer than one)."""
        if self.stopping:
            return
        for name, pool in self.pools.items():
            if pool.removed:
                continue
            new = pool.desired + delta
            if new < 1:
                log.info("pool %s already runs a single worker; SIGTTOU leaves it at 1", name)
                continue
            if delta > 0 and sum(p.desired for p in self.pools.values()) + delta > _config.MAX_WORKERS:
                log.warning("pool %s: SIGTTIN ignored, the pools would run more than %d workers", name,
                            _config.MAX_WORKERS)
                continue
            pool.desired = new
            log.info("%s: pool %s now runs %d worker%s", "SIGTTIN" if delta > 0 else "SIGTTOU", name, new,
                     "" if new == 1 else "s")

    def check_token(self, pool, now):
        """Restore a rotation token whose holder died before it could say it held it."""
        if pool.token_available() or any(s.token_owed for s in pool.slots.values()):
            pool.token_missing_since = 0.0
            return
        holders = [p for p in self.procs.values() if p.pool == pool.cfg.name and p.last.get("rotating")]
        if holders:
            pool.token_missing_since = 0.0
            return
        if not pool.token_missing_since:
            pool.token_missing_since = now
        elif now - pool.token_missing_since > TOKEN_GRACE:
            log.warning("pool %s: the rotation token was lost with a worker; restoring it", pool.cfg.name)
            pool.return_token()
            pool.token_missing_since = 0.0

    # -- reloads --------------------------------------------------------------

    def begin_reload(self):
        """SIGHUP: re-read the config and start a new generation beside the serving one."""
        try:
            new = _config.load(self.config_path)
        except ConfigError as e:
            self.last_reload = ReloadOutcome.FAILED
            log.error("reload failed: %s; generation %d keeps serving", e, self.generation)
            return
        if new.cache != self.config.cache:
            log.warning("reload: [cache] changed but the segment is kept as it is; restart the supervisor to "
                        "apply it")
        new = dataclasses.replace(new, cache=self.config.cache, init=self.config.init)
        if self.reload is None:
            self.reload = Reload(generation=0, previous_config=self.config, previous_generation=self.generation,
                                 started=self.clock())
        else:
            self.supersede_reload()
        self.generation = self.next_generation
        self.next_generation += 1
        self.reload.generation = self.generation
        self.reload_generation = self.generation
        self.config = new
        self.apply_pools(new)
        log.info("SIGHUP: reloading %s as generation %d", self.config_path, self.generation)

    def supersede_reload(self):
        """A reload arrived during a reload: stop the new generation's processes not yet ready."""
        superseded = self.generation
        for p in list(self.procs.values()):
            if p.generation == superseded and not p.ready and not p.retiring:
                self.retire(p, f"generation {superseded} was superseded")

    def apply_pools(self, cfg):
        """Make the pool table match *cfg*: update, add, and mark removed pools."""
        names = {p.name for p in cfg.pools}
        used = {p.index for p in self.pools.values()}
        for pcfg in cfg.pools:
            pool = self.pools.get(pcfg.name)
            if pool is None:
                index = next(i for i in range(sb.POOL_COUNT) if i not in used)
                used.add(index)
                self.pools[pcfg.name] = Pool(pcfg, index)
            else:
                pool.set_config(pcfg)
                pool.removed = False
        for name, pool in self.pools.items():
            if name not in names:
                pool.removed = True

    def finish_reload(self):
        """Every slot of the new generation is ready: the reload succeeded."""
        log.info("reload complete: generation %d is serving (%d workers)", self.generation,
                 sum(1 for p in self.procs.values() if p.generation == self.generation and p.ready))
        self.reload = None
        self.last_reload = ReloadOutcome.SUCCEEDED

    def fail_reload(self, why):
        """A process of the new generation failed to start: go back to the previous generation."""
        r = self.reload
        failed = self.generation
        self.reload = None
        self.last_reload = ReloadOutcome.FAILED
        self.config = r.previous_config
        self.generation = r.previous_generation
        self.apply_pools(self.config)
        for p in list(self.procs.values()):
            if p.generation == failed and not p.retiring:
                self.retire(p, f"generation {failed} failed to start")
        log.error("reload to generation %d failed (%s); generation %d keeps serving", failed, why,
                  self.generation)

    # -- stopping -------------------------------------------------------------

    def begin_stop(self, code):
        """Graceful stop: every worker finishes its job and exits; SIGKILL after stop_timeout."""
        if self.stopping:
            return
        self.stopping = True
        self.exit_code = code
        self.stop_deadline = self.clock() + self.config.supervisor.stop_timeout
        self.reload = None
        if self.fleet is not None:
            self.fleet.terminate()
        for proc in list(self.procs.values()):
            if not proc.retiring:
                self.retire(proc, "the supervisor is stopping")
        self.write_header(state=SupervisorState.STOPPING)

    def stop_now(self, sig):
        """A second SIGTERM/SIGINT or a SIGQUIT: SIGKILL every worker and exit."""
        log.warning("%s: stopping at once, killing %d worker%s", signame(sig), len(self.procs),
                    "" if len(self.procs) == 1 else "s")
        if not self.stopping:
            self.begin_stop(ExitCode.OK)
        self.exit_code = 128 + sig
        for proc in list(self.procs.values()):
            if not proc.kill:
                self.kill(proc, Kill(KillReason.NOW))

    def kill_all(self, why):
        """SIGKILL and reap every worker (the master is going down on an error)."""
        for proc in list(self.procs.values()):
            self.send(proc, signal.SIGKILL)
        for pid in list(self.procs):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            self.procs.pop(pid, None)

    def shutdown(self):
        """Make sure no worker is left, then close (and unless keep, unlink) the segment."""
        if self.procs:
            self.kill_all("shutdown")
        if self.fleet is not None:
            self.fleet.stop()
        for pool in self.pools.values():
            pool.close()
        if self.cache is None:
            return
        keep = self.config.cache.keep
        try:
            if self.board is not None:
                self.board.write_header(self.pid, self.started_wall, self.generation,
                                        SupervisorState.FAILED if self.exit_code == ExitCode.POOL_FAILED
                                        else SupervisorState.STOPPED,
                                        self.last_reload, self.reload_generation)
            if not keep:
                self.cache.unlink()
        finally:
            self.board = None
            self.cache.close()
            self.cache = None
        if keep:
            log.info("kept the cache segment %r (keep = true)", self.config.cache.name)
        else:
            log.info("removed the cache segment %r", self.config.cache.name)

def _killpg(pid, sig):
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _fork_worker(spec):
    """Fork a process that runs the worker of *spec*; its pid in the master (OSError if fork fails).

    The signals the master handles are blocked across the fork, so that the
    child never runs the master's handlers before it has set its own.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED + (signal.SIGALRM,))
    try:
        pid = os.fork()
        if pid == 0:
            _worker.run_forked(spec)  # never returns
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    return pid


def _stop_group(proc, grace):
    """The stop sequence for a child's process group: SIGTERM, *grace* seconds, SIGKILL; reaped."""
    _killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        _killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _shell(cmd):
    import shlex

    return shlex.join(cmd)

