"""The supervisor's decisions that do not need a process: pure and clock-injected.

Everything here takes ``now`` or a clock and a random source as arguments, so
the tests drive time and chance without sleeping.

BACKOFF

    The n-th consecutive crash of one worker slot waits
    ``min * 2**(n-1)`` seconds, capped at ``max``, then spread by a random
    factor in [0.75, 1.25) and clamped to [min, max] so that a pool whose
    workers all crash at once does not restart them in lock step.  A worker
    that stays up for ``STABLE_AFTER`` seconds clears its slot's streak.

CRASH LOOP

    A pool is failed once ``max_crashes`` crashes fall within the last
    ``crash_window`` seconds.  Rotations, requested stops and time-limit kills
    are not crashes.

ROTATION

    Each worker draws its own rotation point ``max_jobs + randint(0, jitter)``
    when it is forked.  Reaching it makes the worker *due*: it rotates as soon
    as its pool's rotation token is free (one rotation per pool at a time).
    It keeps serving while another worker rotates, but it never starts a job
    past ``max_jobs + jitter``: there it waits for the token.  A worker whose
    private memory is above ``memory_limit`` after a job is due at once.
"""

import collections
import random

__all__ = [
    "STABLE_AFTER",
    "backoff_delay",
    "CrashWindow",
    "Streak",
    "rotation_point",
    "rotation_cap",
    "rotation_reason",
]

#: Seconds a worker must stay up before its slot's crash streak is forgotten.
STABLE_AFTER = 10.0


def backoff_delay(n, lo, hi, rng=random):
    """Seconds to wait before restarting after the n-th consecutive crash (n >= 1)."""
    if n < 1:
        return 0.0
    base = min(hi, lo * (2.0 ** min(n - 1, 60)))
    return min(hi, max(lo, base * rng.uniform(0.75, 1.25)))


class CrashWindow:
    """Crash timestamps of one pool; says when they make a crash loop."""

    def __init__(self, max_crashes, window):
        self.max_crashes = max_crashes
        self.window = window
        self._times = collections.deque()

    def record(self, now):
        """Record one crash at *now*; return the number of crashes within the window."""
        self._times.append(now)
        return self.count(now)

    def count(self, now):
        """Return how many recorded crashes fall within the window ending at *now*."""
        while self._times and self._times[0] <= now - self.window:
            self._times.popleft()
        return len(self._times)

    def failed(self, now):
        """True when the crashes within the window have reached max_crashes."""
        return self.count(now) >= self.max_crashes


class Streak:
    """Consecutive crashes of one worker slot, forgiven after a stable run."""

    def __init__(self, stable_after=STABLE_AFTER):
        self.stable_after = stable_after
        self.crashes = 0

    def crashed(self, uptime):
        """Record a crash after *uptime* seconds of ready service; return the streak length."""
        if uptime >= self.stable_after:
            self.crashes = 0
        self.crashes += 1
        return self.crashes

    def clean_exit(self):
        """A clean exit (rotation, stop) ends the streak."""
        self.crashes = 0


def rotation_point(max_jobs, jitter, rng=random):
    """Jobs after which a new worker becomes due for rotation; 0 means never."""
    if max_jobs <= 0:
        return 0
    return max_jobs + (rng.randint(0, jitter) if jitter > 0 else 0)


def rotation_cap(max_jobs, jitter):
    """Jobs after which a due worker starts no further job; 0 means no cap."""
    return max_jobs + jitter if max_jobs > 0 else 0


def rotation_reason(jobs_done, point, memory, memory_limit):
    """Why a worker is due for rotation after a job ("max_jobs", "memory_limit"), or None."""
    if point and jobs_done >= point:
        return "max_jobs"
    if memory_limit and memory is not None and memory > memory_limit:
        return "memory_limit"
    return None
