"""apccache: an APC-style shared-memory cache for Python worker processes.

>>> import apccache
>>> cache = apccache.Cache.create("myapp", size=64 * 1024 * 1024)   # doctest: +SKIP
>>> other = apccache.Cache.attach("myapp")                          # doctest: +SKIP
"""
from .cache import MAX_TTL, Cache
from .errors import (
    CacheBusyError,
    CacheClosedError,
    CacheError,
    CacheFullError,
    CacheLockError,
    CorruptSegmentError,
    IncompatibleSegmentError,
    UntrustedSegmentError,
)
from .serializers import JSONSerializer, PickleSerializer

__version__ = "0.1.0"

__all__ = [
    "Cache",
    "CacheBusyError",
    "CacheClosedError",
    "CacheError",
    "CacheFullError",
    "CacheLockError",
    "CorruptSegmentError",
    "IncompatibleSegmentError",
    "JobTimeLimitExceeded",
    "JSONSerializer",
    "MAX_TTL",
    "PickleSerializer",
    "UntrustedSegmentError",
]


def __getattr__(name):
    # The supervisor's exception, without importing the supervisor package
    # into every process that only uses the cache.
    if name == "JobTimeLimitExceeded":
        from .supervisor.errors import JobTimeLimitExceeded

        return JobTimeLimitExceeded
    raise AttributeError(f"module 'apccache' has no attribute {name!r}")
