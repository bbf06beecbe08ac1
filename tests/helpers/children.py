"""Children for the tests: the environment a child Python needs to import
this checkout, code run in a fresh interpreter, code run as another user,
and waiting for what a child does."""
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def child_env(extra=None, drop=()):
    """os.environ with this checkout first on PYTHONPATH, the variables in
    *drop* removed, and those of the dict *extra* set."""
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in e.get("PYTHONPATH", "").split(os.pathsep) if p])
    for name in drop:
        e.pop(name, None)
    e.update(extra or {})
    return e


def run_py(code, *args, env=None, check=True, timeout=60):
    """Run code in a fresh interpreter (PYTHONDONTWRITEBYTECODE=1, no
    APCCACHE_OPCODE); returns the JSON its last stdout line holds (or the
    CompletedProcess if check is False)."""
    import apccache.opcode

    e = child_env({"PYTHONDONTWRITEBYTECODE": "1", **(env or {})}, drop=(apccache.opcode.ENV_VAR,))
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], env=e,
                       capture_output=True, text=True, timeout=timeout)
    if not check:
        return p
    assert p.returncode == 0, f"child failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def run_processes(procs, timeout):
    """Start the multiprocessing processes, then wait up to *timeout*
    seconds for each in turn: every one must have exited with 0."""
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
        assert p.exitcode == 0


def wait_until(predicate, timeout, what, interval=0.02, describe=None):
    """Poll *predicate* until it returns a true value, and return that; fail
    after *timeout* seconds (with describe() in the message, if given)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{describe()}" if describe else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{extra}")
        time.sleep(interval)


# ------------------------------------------------------ another user

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a segment as another user")


class Marker:
    """Unpickling this creates the file at path: proof that code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "x"))


def as_nobody(fn, gid=NOBODY):
    """Run fn() in a forked child that has dropped to uid 65534 (and gid,
    65534 unless given); its exit status is 0 if fn returned, 1 if it
    raised."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(NOBODY)
            fn()
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)
