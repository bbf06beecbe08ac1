"""Shared fixtures: every segment a test makes has a unique name and is
unlinked afterwards, even when the test fails."""
import os
import uuid

import pytest

import apccache


def segment_name(tag="t"):
    return f"apctest-{tag}-{os.getpid()}-{uuid.uuid4().hex[:10]}"


class FakeClock:
    """A clock the test moves by hand (whole seconds)."""

    def __init__(self, start=1_000_000):
        self.now = start

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


@pytest.fixture
def segments():
    """Call it with create() arguments; every segment is unlinked at the end."""
    made = []

    def make(**kwargs):
        name = kwargs.pop("name", None) or segment_name()
        c = apccache.Cache.create(name, **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        c.unlink()
        c.close()


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
