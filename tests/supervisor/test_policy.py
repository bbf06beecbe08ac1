"""The pure policies: backoff, crash windows, streaks and rotation, with injected clocks and chance."""

import random

import pytest

from apccache.supervisor import policy


class FixedRng:
    """A random source that returns chosen values."""

    def __init__(self, uniform=1.0, randint=None):
        self.u = uniform
        self.r = randint

    def uniform(self, a, b):
        return a + (b - a) * self.u

    def randint(self, a, b):
        return b if self.r is None else self.r


def test_backoff_doubles_from_min_up_to_max():
    """Without jitter (the middle of the spread) the n-th crash waits min * 2**(n-1), capped at max."""
    rng = FixedRng(uniform=0.5)  # factor 1.0
    delays = [policy.backoff_delay(n, 0.1, 30, rng) for n in range(1, 12)]
    assert delays[:5] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6])
    assert delays[-1] == 30
    assert delays == sorted(delays)


def test_backoff_jitter_stays_within_min_and_max():
    """Jitter spreads each delay by [0.75, 1.25) but never below min or above max."""
    rng = random.Random(1)
    for n in range(1, 40):
        for _ in range(50):
            d = policy.backoff_delay(n, 0.1, 30, rng)
            base = min(30, 0.1 * 2 ** (n - 1))
            assert 0.1 <= d <= 30
            assert base * 0.75 - 1e-9 <= d <= base * 1.25 + 1e-9 or d in (0.1, 30)
    spread = {round(policy.backoff_delay(4, 0.1, 30, rng), 6) for _ in range(50)}
    assert len(spread) > 10  # really random


def test_backoff_of_no_crash_is_zero_and_huge_streaks_do_not_overflow():
    assert policy.backoff_delay(0, 1, 2) == 0.0
    assert policy.backoff_delay(10_000, 0.1, 5, FixedRng()) == 5


def test_crash_window_counts_only_the_last_window_with_an_injected_clock():
    """max_crashes within crash_window seconds fails the pool; older crashes fall out."""
    w = policy.CrashWindow(max_crashes=3, window=60)
    assert w.record(0) == 1
    assert w.record(30) == 2
    assert not w.failed(30)
    assert w.record(61) == 2  # the crash at 0 is out of the window
    assert not w.failed(61)
    assert w.record(62) == 3
    assert w.failed(62)
    assert w.count(200) == 0 and not w.failed(200)


def test_streak_is_forgiven_after_a_stable_run():
    s = policy.Streak(stable_after=10)
    assert s.crashed(uptime=0) == 1
    assert s.crashed(uptime=3) == 2
    assert s.crashed(uptime=10) == 1
    s.clean_exit()
    assert s.crashed(uptime=0) == 1


def test_rotation_point_draws_max_jobs_plus_jitter():
    """Each worker's rotation point is max_jobs + randint(0, jitter); 0 means never."""
    assert policy.rotation_point(0, 0) == 0
    assert policy.rotation_point(10, 0) == 10
    assert policy.rotation_point(10, 5, FixedRng(randint=3)) == 13
    rng = random.Random(7)
    points = {policy.rotation_point(10, 5, rng) for _ in range(500)}
    assert points == set(range(10, 16))
    assert policy.rotation_cap(10, 5) == 15 and policy.rotation_cap(0, 0) == 0


def test_rotation_reason_after_a_job():
    """Due after its point in jobs, or when private memory is above the limit; otherwise not."""
    assert policy.rotation_reason(9, 10, None, 0) is None
    assert policy.rotation_reason(10, 10, None, 0) == "max_jobs"
    assert policy.rotation_reason(3, 0, 100, 0) is None
    assert policy.rotation_reason(3, 0, 100, 200) is None
    assert policy.rotation_reason(3, 0, 201, 200) == "memory_limit"
    assert policy.rotation_reason(3, 0, None, 200) is None
    assert policy.rotation_reason(12, 10, 500, 200) == "max_jobs"
