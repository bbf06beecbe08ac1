"""apccache: an APC-style shared-memory cache for Python worker processes.

>>> import apccache
>>> cache = apccache.Cache.create("myapp", size=64 * 1024 * 1024)   # doctest: +SKIP
>>> other = apccache.Cache.attach("myapp")                          # doctest: +SKIP
"""
from .cache import Cache
from .errors import (
    CacheError,
    CacheFullError,
    CacheLockError,
    CorruptSegmentError,
    IncompatibleSegmentError,
)
from .serializers import JSONSerializer, PickleSerializer
from .supervisor.errors import JobTimeLimitExceeded

__version__ = "0.1.0"

__all__ = [
    "Cache",
    "CacheError",
    "CacheFullError",
    "CacheLockError",
    "CorruptSegmentError",
    "IncompatibleSegmentError",
    "JobTimeLimitExceeded",
    "JSONSerializer",
    "PickleSerializer",
]
