"""Children for the tests: the environment a child Python needs to import
this checkout, code run in a fresh interpreter, a group of multiprocessing
children run to their end, code run as another user, waiting for what a
child does, what /proc says of a child, and a free port for a server."""
import json
import os
import socket
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


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on (for a server child)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------ /proc


def proc_state(pid):
    """The state letter of *pid* in /proc (R, S, T, Z...), None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except OSError:
        return None


def alive(pid):
    """True if *pid* exists and is neither a zombie nor dead."""
    return proc_state(pid) not in (None, "Z", "X")


def children_of(pid):
    """The live pids whose parent is *pid*, sorted, from /proc, leaving out the multiprocessing
    resource tracker that Python's shared_memory starts beside the creator."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(b")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] not in (b"Z", b"X"):
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if b"multiprocessing.resource_tracker" in f.read():
                        continue
            except OSError:
                continue
            out.append(int(entry))
    return sorted(out)


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_stopped(p, timeout=20.0):
    """Wait until the Popen *p* is stopped (state T): True, or False if it
    exited or did not stop within *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.poll() is not None:
            return False
        if proc_state(p.pid) == "T":
            return True
        time.sleep(0.005)
    return False


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
