"""A prefork process manager whose workers share one apccache segment.

It plays the part PHP-FPM plays for APC: the master creates the cache before
it forks, so every worker shares it, and the cache outlives every worker
crash, rotation and reload.  Run it with ``apccache supervise CONFIG``; the
configuration format is documented in :mod:`apccache.supervisor.config`, the
master in :mod:`apccache.supervisor.arbiter`, the worker's ``ctx`` in
:mod:`apccache.supervisor.worker`, the shared-memory scoreboard in
:mod:`apccache.supervisor.scoreboard`.

A worker is a function named ``"package.module:function"``::

    def run(ctx):
        while ctx.running:
            item = next_item(timeout=1)
            if item is None:
                continue
            with ctx.job("resize"):
                ctx.set_time_limit(10)
                ctx.cache.store(item.key, resize(item))
"""

from .errors import ConfigError, JobTimeLimitExceeded, ScoreboardError

__all__ = [
    "Supervisor",
    "ExitCode",
    "Config",
    "load_config",
    "ConfigError",
    "JobTimeLimitExceeded",
    "ScoreboardError",
    "WorkerContext",
    "scoreboard",
    "read_scoreboard",
]

# The rest is imported on first use, so that ``import apccache`` (which
# re-exports JobTimeLimitExceeded) does not load the process manager.
_LAZY = {
    "Supervisor": ("arbiter", "Supervisor"),
    "ExitCode": ("arbiter", "ExitCode"),
    "Config": ("config", "Config"),
    "load_config": ("config", "load"),
    "WorkerContext": ("worker", "WorkerContext"),
}


def __getattr__(name):
    import importlib

    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
        globals()[name] = value
        return value
    if name in ("scoreboard", "arbiter", "config", "policy", "worker", "memory", "errors"):
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def read_scoreboard(cache):
    """The supervisor's pools and workers in *cache*, as ``scoreboard.read`` returns them."""
    from . import scoreboard

    return scoreboard.read(cache)
