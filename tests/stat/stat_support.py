"""Fixtures for apcstat's tests: segments named apctest-stat-..., unlinked
after every test whatever happens (tests/helpers/segments.py), and ways to
run apcstat."""
import subprocess
import sys
import time

import pytest

from helpers.children import ROOT, child_env
from helpers.segments import FakeClock, Segments, shm_path


def env(**extra):
    """The environment of an apcstat child: no colour switch, no fault, 100 columns unless told."""
    return child_env({"COLUMNS": "100", **extra}, drop=("NO_COLOR", "APCCACHE_FAULT"))


def apcstat(*args, timeout=30, **kw):
    """Run ``python -m apccache.stat ARGS`` as a subprocess; CompletedProcess with text output."""
    return subprocess.run([sys.executable, "-m", "apccache.stat", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env(**kw.pop("env", {})), **kw)


def run_main(args):
    """apcstat's main() in this process: (exit status, stdout, stderr)."""
    import contextlib
    import io

    import apccache.stat

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = apccache.stat.main(list(args))
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def segments():
    """make(tag=None, **create kwargs) -> Cache; every segment is unlinked at the end."""
    with Segments("stat") as make:
        yield make


@pytest.fixture
def raw_path(shm_names):
    """make(tag) -> a path under /dev/shm for a hand-made file, removed at the end."""
    return lambda tag="raw": shm_path(shm_names(f"stat-{tag}"))


# The populated cache: (key, value, ttl, clock offset of the store, fetches).
ENTRIES = [
    ("alpha", b"a" * 10, 0, 0, 5),
    ("beta", "b" * 500, 3600, 10, 3),
    ("gamma", 7, 7200, 20, 1),
    ("delta", b"d" * 3000, 1800, 30, 2),
    ("epsilon", {"x": 1}, 0, 40, 0),
    ("zeta", 1.5, 0, 50, 0),
]
MISSES = 3


@pytest.fixture
def populated(segments):
    """A cache with six entries of every kind, distinct hits, sizes, times and
    ttls, 11 hits and 3 misses; the counters are exactly known."""
    # A clock the test moves by hand, starting ten minutes ago (so that
    # apcstat, which judges expiry by the real clock, sees the same entries).
    clock = FakeClock(int(time.time()) - 600)
    base = clock.now
    c = segments("pop", size=2 << 20, clock=clock)
    for key, value, ttl, at, _ in ENTRIES:
        clock.now = base + at
        assert c.store(key, value, ttl=ttl)
    for i, (key, _, _, _, fetches) in enumerate(ENTRIES):
        clock.now = base + 100 + i * 7
        for _ in range(fetches):
            c.fetch(key)
    clock.now = base + 200
    for _ in range(MISSES):
        assert c.fetch("nope") is None
    clock.now = base + 210
    c.inc("gamma")  # gamma's mtime moves past its ctime
    return c
