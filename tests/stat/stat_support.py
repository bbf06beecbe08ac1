"""Fixtures for apcstat's tests: segments named apctest-stat-..., unlinked
after every test whatever happens, and ways to run apcstat."""
import os
import subprocess
import sys
import time
import uuid

import pytest

import apccache

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def stat_name(tag="s"):
    return f"apctest-stat-{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def env(**extra):
    e = dict(os.environ)
    e.pop("NO_COLOR", None)
    e.pop("APCCACHE_FAULT", None)
    e["COLUMNS"] = "100"
    e["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in e.get("PYTHONPATH", "").split(os.pathsep) if p])
    e.update(extra)
    return e


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


class Clock:
    """A clock the test moves by hand, starting ten minutes ago (so that
    apcstat, which judges expiry by the real clock, sees the same entries)."""

    def __init__(self):
        self.now = int(time.time()) - 600

    def __call__(self):
        return self.now


@pytest.fixture
def segments():
    """make(**create kwargs) -> Cache; every segment is unlinked at the end."""
    made = []

    def make(tag="s", **kwargs):
        c = apccache.Cache.create(stat_name(tag), **kwargs)
        made.append(c)
        return c

    try:
        yield make
    finally:
        for c in made:
            try:
                c.unlink()
            finally:
                c.close()


@pytest.fixture
def raw_path():
    """A path under /dev/shm for a hand-made file, removed at the end."""
    paths = []

    def make(tag="raw"):
        p = os.path.join("/dev/shm", stat_name(tag))
        paths.append(p)
        return p

    try:
        yield make
    finally:
        for p in paths:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass


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
    clock = Clock()
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
