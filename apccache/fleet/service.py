"""The supervisor's built-in listener service (the ``[fleet]`` table).

The master runs ``apccache fleet listen`` for its segment as a child process
of its own, outside the pools: it starts after the segment exists, is
restarted with backoff whenever it exits (a new listener starts a new epoch,
so nothing it missed is trusted), gets SIGTERM on a graceful stop (its last
act makes every worker stop trusting the near copies), and dies with the
master (``PR_SET_PDEATHSIG``).  The master reaps every child itself, so this
class never waits on its process: the arbiter hands it the exit status.
"""

import ctypes
import logging
import os
import signal
import sys
import time

__all__ = ["ListenerService", "parse_supervisor_config"]

log = logging.getLogger("apccache.supervisor")

_DEFAULTS = {"max_lag": 0.05, "ping_interval": 0.01, "dead_after": 1.0}
_KEYS = ("redis", "namespace", *_DEFAULTS)


def parse_supervisor_config(table):
    """Validate a ``[fleet]`` table; None when absent.  ValueError names the
    key, the rule and what was given."""
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ValueError(f"fleet must be a table ([fleet]), not {type(table).__name__}")
    for k in table:
        if k not in _KEYS:
            raise ValueError(f"unknown key fleet.{k}; known keys: {', '.join(_KEYS)}")
    out = {}
    for k in ("redis", "namespace"):
        v = table.get(k)
        if not isinstance(v, str) or not v:
            raise ValueError(f"fleet.{k} must be a non-empty string (got {v!r})")
        out[k] = v
    if not out["redis"].startswith("redis://"):
        raise ValueError(f"fleet.redis must be a redis:// URL (got {out['redis']!r})")
    if ":" in out["namespace"]:
        raise ValueError(f"fleet.namespace must not contain ':' (got {out['namespace']!r})")
    for k, default in _DEFAULTS.items():
        v = table.get(k, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf"):
            raise ValueError(f"fleet.{k} must be a number of seconds > 0 (got {v!r})")
        out[k] = float(v)
    if out["ping_interval"] >= out["max_lag"]:
        raise ValueError(f"fleet.ping_interval must be below fleet.max_lag "
                         f"(got {out['ping_interval']:g} and {out['max_lag']:g})")
    return out


class ListenerService:
    """One listener child process for ``segment``, kept running."""

    BACKOFF = (0.1, 10.0)

    def __init__(self, cfg, segment):
        self.cfg = cfg
        self.segment = segment
        self.pid = None
        self.restarts = 0
        self.next_start = 0.0
        self.backoff = self.BACKOFF[0]
        self.started_at = 0.0
        self.stopping = False

    def argv(self):
        c = self.cfg
        return [sys.executable, "-m", "apccache", "fleet", "listen", self.segment, "--redis", c["redis"],
                "--namespace", c["namespace"], "--max-lag", repr(c["max_lag"]),
                "--ping-interval", repr(c["ping_interval"]), "--dead-after", repr(c["dead_after"])]

    def start(self):
        """Fork and exec the listener."""
        argv = self.argv()
        pid = os.fork()
        if pid == 0:  # the child: die with the master, then become the listener
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
                for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                    signal.signal(s, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, [])
                os.execv(argv[0], argv)
            finally:
                os._exit(127)
        self.pid = pid
        self.started_at = time.monotonic()
        log.info("fleet listener started (pid %d) for namespace %r on %s", pid, self.cfg["namespace"],
                 self.cfg["redis"])

    def exited(self, pid, status):
        """The master reaped pid: True if it was the listener (then a restart
        is scheduled unless stopping)."""
        if pid != self.pid:
            return False
        self.pid = None
        if os.WIFSIGNALED(status):
            how = f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
        else:
            how = f"exited with code {os.WEXITSTATUS(status)}"
        if self.stopping:
            log.info("fleet listener %d %s", pid, how)
            return True
        if time.monotonic() - self.started_at > 30:
            self.backoff = self.BACKOFF[0]
        self.next_start = time.monotonic() + self.backoff
        log.warning("fleet listener %d %s; restarting in %.1f s (near copies are not trusted meanwhile)",
                    pid, how, self.backoff)
        self.backoff = min(self.backoff * 2, self.BACKOFF[1])
        return True

    def maintain(self):
        """Restart the listener when it is down and its backoff has passed."""
        if self.pid is None and not self.stopping and time.monotonic() >= self.next_start:
            self.restarts += 1
            self.start()

    def terminate(self):
        """Graceful stop: SIGTERM (the listener zeroes the heartbeat and exits)."""
        self.stopping = True
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop(self, timeout=2.0):
        """SIGTERM, wait up to timeout, then SIGKILL; reaps it."""
        self.terminate()
        if self.pid is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.pid = None
                return
            if pid:
                self.exited(pid, status)
                return
            time.sleep(0.01)
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        self.pid = None
