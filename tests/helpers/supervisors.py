"""Supervisors for the tests: ``python -m apccache supervise`` as a child.

``supervise(config)`` (a fixture) starts it in its own session, with the
segment name, the events file and the folder of the test worker module
(tests/supervisor/sup_workers.py) filled in, and returns a :class:`Run`
that reads the scoreboard, the events and the log.  Whatever happens in the
test, the fixture kills the session's processes (by their pids) and unlinks
the segment.
"""

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from helpers.children import alive, child_env, wait_until
from helpers.segments import segment_name, unlink_name

# The folder of the worker module the configs name (python_path).
WORKERS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "supervisor")


class Run:
    """One supervisor subprocess and the ways to observe it."""

    def __init__(self, tmp_path, name, config_text, args=(), env=None):
        self.tmp_path = tmp_path
        self.name = name
        self.events_path = str(tmp_path / "events.jsonl")
        self.log_path = str(tmp_path / "supervisor.log")
        self.config_path = str(tmp_path / "supervisor.toml")
        self.write_config(config_text)
        self.cache = None
        self.seen_pids = set()
        env = child_env({"EVENTS": self.events_path, **(env or {})}, drop=("APCCACHE_FAULT",))
        self.log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "apccache", "supervise", self.config_path, "--log-level", "debug", *args],
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=str(tmp_path),
            env=env,
        )
        self.pid = self.proc.pid

    def write_config(self, text):
        text = text.replace("@NAME@", self.name).replace("@HERE@", WORKERS)
        tmp = self.config_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.config_path)

    # -- observing ------------------------------------------------------------

    def attach(self):
        import apccache

        if self.cache is None:
            # A list around the handle: an empty Cache is falsy (it has __len__).
            self.cache = wait_until(lambda: self._try_attach(apccache), 15, f"segment {self.name}",
                                    describe=self.log)[0]
        return self.cache

    def _try_attach(self, apccache):
        if self.proc.poll() is not None:
            raise AssertionError(f"the supervisor exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return [apccache.Cache.attach(self.name)]
        except (FileNotFoundError, apccache.CacheError):
            return None

    def board(self):
        """The scoreboard of this run's supervisor; None until it has written it.

        A segment left under the same name by an earlier supervisor is not this
        run's: the handle is dropped and attached again on the next call.
        """
        from apccache.supervisor import scoreboard

        b = scoreboard.read(self.attach())
        if b is not None and b["master_pid"] != self.pid:
            self.cache.close()
            self.cache = None
            return None
        if b:
            self.seen_pids.update(w["pid"] for w in b["workers"] if w["pid"] > 0)
        return b

    def workers(self, pool=None, states=("idle", "busy")):
        b = self.board()
        if not b:
            return []
        return [w for w in b["workers"] if (pool is None or w["pool"] == pool) and w["state"] in states]

    def wait_ready(self, counts, timeout=20, generation=None):
        """Wait until each pool in *counts* has exactly that many ready workers (of *generation*)."""

        def check():
            b = self.board()
            if not b or b["state"] not in ("running", "reloading"):
                return None
            for pool, n in counts.items():
                ws = [w for w in b["workers"] if w["pool"] == pool]
                ready = [w for w in ws if w["state"] in ("idle", "busy")]
                if generation is not None:
                    ready = [w for w in ready if w["generation"] == generation]
                    if len(ws) != n:
                        return None
                if len(ready) != n:
                    return None
            return b

        return wait_until(check, timeout, f"ready workers {counts}", describe=self.describe)

    def events(self, kind=None, **match):
        try:
            with open(self.events_path) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            if not line.strip():
                continue
            e = json.loads(line)
            if kind is not None and e["kind"] != kind:
                continue
            if all(e.get(k) == v for k, v in match.items()):
                out.append(e)
        return out

    def log(self):
        self.log_file.flush()
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def describe(self):
        try:
            b = self.board()
        except Exception as e:  # pragma: no cover - diagnostics only
            b = f"(scoreboard unreadable: {e})"
        return f"--- scoreboard ---\n{json.dumps(b, indent=1, default=str)}\n--- log ---\n{self.log()[-6000:]}"

    def wait_log(self, pattern, timeout=10):
        rx = re.compile(pattern)
        return wait_until(lambda: rx.search(self.log()), timeout, f"log line /{pattern}/", describe=self.describe)

    # -- driving ---------------------------------------------------------------

    def signal(self, sig):
        os.kill(self.pid, sig)

    def wait_exit(self, timeout):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the supervisor did not exit within {timeout} s\n{self.describe()}") from None

    # -- cleanup ---------------------------------------------------------------

    def cleanup(self):
        try:
            if self.proc.poll() is None:
                try:
                    self.board()
                except Exception:
                    pass
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(10)
            for pid in self.seen_pids:
                if alive(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        finally:
            if self.cache is not None:
                try:
                    self.cache.close()
                except Exception:
                    pass
                self.cache = None
            self.log_file.close()
            unlink_name(self.name)



def config(pools, cache_extra="", supervisor_extra="", init="", size="16M", stop_timeout=10):
    """A config text for *pools* ({name: "key = value lines"}), using the test worker module."""
    text = f"""
[supervisor]
python_path = ["@HERE@"]
stop_timeout = {stop_timeout}
{supervisor_extra}

[cache]
name = "@NAME@"
size = "{size}"
{cache_extra}
"""
    if init:
        text += f"\n[init]\n{init}\n"
    for name, body in pools.items():
        text += f"\n[pools.{name}]\n{body}\n"
    return text


@pytest.fixture
def supervise(tmp_path_factory):
    """Start supervisors: ``supervise(config_text, args=(), env=None)`` -> Run; all are cleaned up."""
    runs = []

    def start(config_text, args=(), env=None, name=None):
        tmp = tmp_path_factory.mktemp("sup")
        name = name or segment_name("sup")
        run = Run(tmp, name, config_text, args, env)
        runs.append(run)
        return run

    try:
        yield start
    finally:
        errors = []
        for run in runs:
            try:
                run.cleanup()
            except Exception as e:  # pragma: no cover
                errors.append(e)
        if errors:
            raise errors[0]
