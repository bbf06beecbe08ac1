"""A cachelib backend in the shared segment (and so a Flask-Caching one:
see ``apccache.integrations.flask``).

.. code-block:: python

    from apccache.integrations.cachelib import ApcCache

    cache = ApcCache("myapp", size="64M", default_timeout=300, key_prefix="app:")
    cache.set("answer", 42)
    cache.inc("hits")          # atomic across processes

Every process of the host that opens the same name shares the cache; the
first creates the segment, the others attach it (``Cache.open``: race-free;
``create=False`` only attaches).

cachelib's semantics: ``timeout=None`` uses ``default_timeout``, ``0`` never
expires, a negative timeout expires at once; ``datetime.timedelta`` and
(deprecated) float timeouts are rounded up to whole seconds.  ``inc``/``dec``
are one atomic engine operation (a missing key starts at 0).  ``clear()``
removes the keys under ``key_prefix`` when there is one, else empties the
segment, as cachelib's RedisCache does.

Serialization follows cachelib's protocol: an instance's ``serializer``
attribute (an object with ``dumps``/``loads``) is used for every value but
ints, which stay native so that ``inc`` works on them.  With the default,
``serializer = None``, values use apccache's own encoding: bytes, str, int,
float, bool and None natively, anything else pickled.
"""
import datetime as dt
import re
from typing import Any, Optional, Union

from cachelib.base import BaseCache

from ..errors import CacheFullError
from ..cache import Cache
from ._common import parse_size, shared_handle

__all__ = ["ApcCache"]

_MISSING = object()


class ApcCache(BaseCache):
    serializer = None  # None: apccache's own encoding; else cachelib's dumps/loads

    def __init__(self, name: str, *, size: Union[int, str] = 64 << 20, create: bool = True,
                 default_timeout: Union[int, dt.timedelta] = 300, key_prefix: Optional[str] = "",
                 ignore_delete_many_errors: bool = True, **options: Any) -> None:
        BaseCache.__init__(self, default_timeout, ignore_delete_many_errors=ignore_delete_many_errors)
        self.key_prefix = key_prefix or ""
        self._cache = shared_handle(name, parse_size(size), create, **options)

    # ------------------------------------------------------------ helpers

    def _key(self, key):
        if callable(key):
            key = key()
        return self.key_prefix + key

    def _ttl(self, timeout):
        """The engine ttl; None: expires at once."""
        t = self._normalize_timeout(timeout)
        return None if t < 0 else t

    def _dumps(self, value):
        ser = self.serializer
        if ser is None or type(value) is int:
            return value
        return ser.dumps(value)

    def _loads(self, value):
        ser = self.serializer
        if ser is None or type(value) is not bytes:
            return value
        return ser.loads(value)

    # ---------------------------------------------------------------- API

    def get(self, key):
        value = self._cache.fetch(self._key(key), _MISSING)
        return None if value is _MISSING else self._loads(value)

    def delete(self, key):
        return self._cache.delete(self._key(key))

    def get_many(self, *keys):
        return [self.get(k) for k in keys]

    def get_dict(self, *keys):
        return dict(zip(keys, self.get_many(*keys)))

    def set(self, key, value, timeout=None):
        k, ttl = self._key(key), self._ttl(timeout)
        if ttl is None:
            self._cache.delete(k)
            return True
        try:
            return self._cache.store(k, self._dumps(value), ttl)
        except CacheFullError:
            self._cache.delete(k)
            return False

    def add(self, key, value, timeout=None):
        k, ttl = self._key(key), self._ttl(timeout)
        if ttl is None:
            return not self._cache.exists(k)
        try:
            return self._cache.add(k, self._dumps(value), ttl)
        except CacheFullError:
            return False

    def set_many(self, mapping, timeout=None):
        return [k for k, v in mapping.items() if self.set(k, v, timeout)]

    def has(self, key):
        return self._cache.exists(self._key(key))

    def clear(self):
        if not self.key_prefix:
            self._cache.clear()
            return True
        pattern = re.compile("^" + re.escape(self.key_prefix))
        self._cache.delete_many(list(self._cache.keys(pattern)))
        return True

    def inc(self, key, delta=1):
        ttl = self._ttl(None) or 0
        return self._cache.inc(self._key(key), delta, ttl)

    def dec(self, key, delta=1):
        return self.inc(key, -delta)

    @property
    def handle(self) -> "Cache":
        """The underlying ``apccache.Cache``."""
        return self._cache
