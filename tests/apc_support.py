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
