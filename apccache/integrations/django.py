"""A Django cache backend in the shared segment.

.. code-block:: python

    CACHES = {"default": {
        "BACKEND": "apccache.integrations.django.ApcCache",
        "LOCATION": "myapp",                 # the segment's name
        "TIMEOUT": 300,
        "OPTIONS": {"size": "256M", "create": True, "serializer": None},
    }}

Every worker process of the host that uses the same LOCATION shares one
cache.  The first to start creates the segment, the others attach it
(``Cache.open``: race-free); ``"create": False`` only attaches, and fails
with an error naming the segments that exist.  ``serializer``: None (pickle,
with bytes, str, int, float, bool and None stored natively) or an object or
dotted path with ``dumps``/``loads`` (``apccache.JSONSerializer``).  Any
other OPTIONS are passed to ``Cache.create``.

Django's semantics: ``timeout=None`` never expires, ``0`` or less expires at
once (the key is deleted), floats are accepted and rounded up to whole
seconds; entries expire between their timeout and one second later.
``incr``/``decr`` are atomic across processes (a compare-and-swap) and raise
ValueError for a missing key; ``touch`` is one atomic engine operation.
``clear()`` empties the whole segment (every KEY_PREFIX and VERSION), as it
does for Redis.  The MAX_ENTRIES and CULL_FREQUENCY options do not apply: the
engine evicts the least recently read entries by memory when it is full.  A
value that can never fit (larger than the segment) is not stored and its
key is deleted, as memcached does; set_many() returns such keys.

``close()``, which Django calls after every request, does nothing: the
handle stays open for the process's life.  The async methods (``aget``,
``aset``, ...) call the engine directly rather than through a thread:
each operation takes a microsecond or two and never waits on another
process for long.
"""
import math

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache

from ..errors import CacheFullError
from ._common import load_object, parse_size, shared_handle

__all__ = ["ApcCache"]

_MISSING = object()
_INT64 = (-(1 << 63), (1 << 63) - 1)


class ApcCache(BaseCache):
    def __init__(self, location, params):
        super().__init__(params)
        if not isinstance(location, str) or not location:
            raise ValueError("the apccache backend's LOCATION is the segment name (a non-empty str)")
        options = dict(params.get("OPTIONS") or {})
        size = parse_size(options.pop("size", 64 << 20))
        create = options.pop("create", True)
        serializer = options.pop("serializer", None)
        for ignored in ("MAX_ENTRIES", "CULL_FREQUENCY"):
            options.pop(ignored, None)
        self._cache = shared_handle(location, size, create, load_object(serializer), **options)

    # --------------------------------------------------------- helpers

    def _ttl(self, timeout):
        """The engine ttl for a Django timeout; None: expire at once."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if timeout is None:
            return 0
        if timeout <= 0:
            return None
        return max(1, math.ceil(timeout))

    # ------------------------------------------------------------- sync

    def add(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        key = self.make_and_validate_key(key, version=version)
        ttl = self._ttl(timeout)
        if ttl is None:
            return not self._cache.exists(key)
        try:
            return self._cache.add(key, value, ttl)
        except CacheFullError:
            return False

    def get(self, key, default=None, version=None):
        key = self.make_and_validate_key(key, version=version)
        return self._cache.fetch(key, default)

    def set(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        key = self.make_and_validate_key(key, version=version)
        self._set(key, value, self._ttl(timeout))

    def _set(self, key, value, ttl):
        if ttl is None:
            self._cache.delete(key)
            return True
        try:
            return self._cache.store(key, value, ttl)
        except CacheFullError:
            self._cache.delete(key)  # never serve the value this set replaced
            return False

    def touch(self, key, timeout=DEFAULT_TIMEOUT, version=None):
        key = self.make_and_validate_key(key, version=version)
        ttl = self._ttl(timeout)
        if ttl is None:
            return self._cache.delete(key)
        return self._cache.touch(key, ttl)

    def delete(self, key, version=None):
        key = self.make_and_validate_key(key, version=version)
        return self._cache.delete(key)

    def has_key(self, key, version=None):
        key = self.make_and_validate_key(key, version=version)
        return self._cache.exists(key)

    def get_many(self, keys, version=None):
        made = {self.make_and_validate_key(k, version=version): k for k in keys}
        found = self._cache.fetch_many(list(made))
        return {made[k]: v for k, v in found.items()}

    def set_many(self, data, timeout=DEFAULT_TIMEOUT, version=None):
        ttl = self._ttl(timeout)
        failed = []
        for k, v in data.items():
            if not self._set(self.make_and_validate_key(k, version=version), v, ttl):
                failed.append(k)
        return failed

    def delete_many(self, keys, version=None):
        self._cache.delete_many([self.make_and_validate_key(k, version=version) for k in keys])

    def incr(self, key, delta=1, version=None):
        key = self.make_and_validate_key(key, version=version)
        c = self._cache
        while True:
            value = c.fetch(key, _MISSING)
            if value is _MISSING:
                raise ValueError(f"Key '{key}' not found")
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"cannot incr/decr key '{key}': its value is a {type(value).__name__}")
            new = value + delta
            if _INT64[0] <= value <= _INT64[1] and _INT64[0] <= new <= _INT64[1]:
                if c.cas(key, value, new):
                    return new
                continue  # changed (or gone) meanwhile: read it again
            # beyond int64 (stored pickled): no atomic path; keep its time left
            info = c.key_info(key)
            left = 0
            if info and info["ttl"]:
                left = max(1, info["creation_time"] + info["ttl"] - c.now())
            c.store(key, new, left)
            return new

    def decr(self, key, delta=1, version=None):
        return self.incr(key, -delta, version=version)

    def clear(self):
        self._cache.clear()

    def close(self, **kwargs):
        pass

    # ------------------------------------------------------------ async
    # Each is the sync method, called directly: an engine operation takes
    # about a microsecond, far less than a hop to a thread.

    async def aadd(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        return self.add(key, value, timeout, version)

    async def aget(self, key, default=None, version=None):
        return self.get(key, default, version)

    async def aset(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        return self.set(key, value, timeout, version)

    async def atouch(self, key, timeout=DEFAULT_TIMEOUT, version=None):
        return self.touch(key, timeout, version)

    async def adelete(self, key, version=None):
        return self.delete(key, version)

    async def ahas_key(self, key, version=None):
        return self.has_key(key, version)

    async def aget_many(self, keys, version=None):
        return self.get_many(keys, version)

    async def aset_many(self, data, timeout=DEFAULT_TIMEOUT, version=None):
        return self.set_many(data, timeout, version)

    async def adelete_many(self, keys, version=None):
        return self.delete_many(keys, version)

    async def aincr(self, key, delta=1, version=None):
        return self.incr(key, delta, version)

    async def adecr(self, key, delta=1, version=None):
        return self.decr(key, delta, version)

    async def aget_or_set(self, key, default, timeout=DEFAULT_TIMEOUT, version=None):
        return self.get_or_set(key, default, timeout, version)

    async def aincr_version(self, key, delta=1, version=None):
        return self.incr_version(key, delta, version)

    async def adecr_version(self, key, delta=1, version=None):
        return self.decr_version(key, delta, version)

    async def aclear(self):
        return self.clear()

    async def aclose(self, **kwargs):
        pass

