"""Segments for the tests: every one has a unique name and is gone at the
end of its test, even when the test fails.

A name is ``apctest-<tag>-<pid>-<random>``: unique across the processes of
a run and across runs side by side, and easy to trace to its test if one is
ever left in /dev/shm.
"""
import os
import uuid

import pytest

import apccache

SHM = "/dev/shm"


def segment_name(tag="t"):
    return f"apctest-{tag}-{os.getpid()}-{uuid.uuid4().hex[:10]}"


def shm_path(name):
    return os.path.join(SHM, name)


def unlink_name(name):
    """Remove /dev/shm/<name> if it is there."""
    try:
        os.unlink(shm_path(name))
    except FileNotFoundError:
        pass


class FakeClock:
    """A clock the test moves by hand (whole seconds)."""

    def __init__(self, start=1_000_000):
        self.now = start

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


class Segments:
    """``make(tag=None, name=None, **create kwargs)`` -> a new Cache, named
    ``apctest-<prefix>[-<tag>]-...`` unless a name is given; create kwargs
    default to the ones given here.  Used as a context manager, every cache
    made is unlinked and closed at the end."""

    def __init__(self, prefix="t", **defaults):
        self.prefix = prefix
        self.defaults = defaults
        self.made = []

    def __call__(self, tag=None, *, name=None, **kwargs):
        name = name or segment_name(self.prefix if tag is None else f"{self.prefix}-{tag}")
        c = apccache.Cache.create(name, **{**self.defaults, **kwargs})
        self.made.append(c)
        return c

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for c in self.made:
            try:
                c.unlink()
            finally:
                c.close()


# ----------------------------------------------------------------- fixtures


@pytest.fixture
def segments():
    """Call it with create() arguments; every segment is unlinked at the end."""
    with Segments() as make:
        yield make


@pytest.fixture
def cache(segments):
    return segments(size=4 << 20)


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def ccache(segments, clock):
    """A cache on a fake clock."""
    return segments(size=4 << 20, clock=clock)


@pytest.fixture
def shm_names():
    """``shm_names(tag="raw")`` -> a new name for a segment or a file under
    /dev/shm that the test makes itself; each is removed at the end,
    whoever made it."""
    names = []

    def make(tag="raw"):
        names.append(segment_name(tag))
        return names[-1]

    try:
        yield make
    finally:
        for name in names:
            unlink_name(name)


@pytest.fixture
def shm_name(shm_names):
    """One name from shm_names."""
    return shm_names()


# ------------------------------------------------ segments nearly full

# Setups run (with c, a Cache) before a fault point is armed: a cache
# nearly full (stores then evict), and one whose free space is split up
# (stores then compact).
SETUP_FILL = """
i = 0
while c.sma_info(limited=True)["avail_mem"] > 30_000:
    c.store(f"fill{i}", b"f" * 3000); i += 1
"""
SETUP_FRAGMENT = """
i = 0
while c.sma_info(limited=True)["avail_mem"] > 10_000:
    c.store(f"frag{i}", b"f" * 3000); i += 1
for j in range(0, i, 2):
    c.delete(f"frag{j}")
"""
