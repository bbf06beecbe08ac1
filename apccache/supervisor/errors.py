"""Exceptions of the supervisor.

``JobTimeLimitExceeded`` is raised inside a worker's job when the job runs past
its time limit.  The others describe a bad configuration or a scoreboard that
cannot be read.
"""

__all__ = ["JobTimeLimitExceeded", "ConfigError", "ScoreboardError"]


class JobTimeLimitExceeded(BaseException):
    """A job ran past its time limit (PHP's "Maximum execution time exceeded").

    Raised in the job's own code by the worker's interval timer, ``limit``
    seconds after the job started or after the last ``ctx.set_time_limit()``
    call.  Like ``KeyboardInterrupt`` it derives from ``BaseException``, so a
    generic ``except Exception:`` in the job does not swallow it; cleanup in
    ``finally:`` blocks and ``with`` statements still runs.  ``ctx.job()``
    catches it, logs it and counts it; the worker then carries on with its next
    job.  A job that catches it anyway and keeps running is killed by the
    supervisor ``hard_kill_after`` seconds later.

    The timer is never delivered while the worker is inside a call into the
    cache engine: it is held back until that call returns.
    """

    def __init__(self, limit, job=None):
        self.limit = limit
        self.job = job
        name = f"job {job!r}" if job else "the job"
        super().__init__(
            f"{name} exceeded its {_fmt_seconds(limit)} time limit; "
            "call ctx.set_time_limit(seconds) inside the job to allow it longer"
        )

    def __reduce__(self):
        return (type(self), (self.limit, self.job))


class ConfigError(ValueError):
    """The supervisor's configuration is invalid; the message names the key."""


class ScoreboardError(ValueError):
    """The scoreboard region of a segment holds something this version cannot read."""


def _fmt_seconds(seconds):
    if seconds == int(seconds):
        return f"{int(seconds)} s"
    return f"{seconds:g} s"
