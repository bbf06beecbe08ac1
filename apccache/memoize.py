"""``Cache.memoize``: a function's results cached across processes.

>>> import apccache, os
>>> c = apccache.Cache.create(f"doctest-memo-{os.getpid()}", size=1 << 20)
>>> @c.memoize(ttl=60)
... def square(n):
...     return n * n
>>> square(4), square(4)
(16, 16)
>>> square.cache_info()
CacheInfo(hits=1, misses=1, maxsize=None, currsize=1)
>>> square.cache_clear(); square.cache_info().currsize
0
>>> c.unlink(); c.close()

- A result is computed once across all processes: a miss goes through
  ``entry()`` (``aentry()`` for an ``async def`` function), so processes
  racing on the same arguments wait for one computation, and take it over
  if the computing process dies.  Coroutine functions are awaited and their
  result stored; waiting never blocks the event loop.
- The key is ``apccache:memo:<namespace>:<generation>:<arguments>``.  The
  namespace defaults to the function's module and qualified name.  The
  arguments are encoded canonically, the same bytes in every process
  (never ``hash()``, which differs per process): None, bool, int, float,
  complex, str, bytes, and tuples, lists, dicts, sets and frozensets of
  them (dicts and sets in sorted order); any other object by its pickle,
  so it must pickle the same in every process (for methods, whose first
  argument is the instance, pass ``key=``).  Long encodings are replaced by
  their BLAKE2b digest.  ``key=callable`` replaces all of that: it gets the
  call's arguments and returns the key's last part (str or bytes).
- ``f.cache_clear()`` bumps the namespace's generation: every process stops
  seeing the old entries at once, in O(1); they age out by ttl or LRU.  It
  also resets the counters.
- ``f.cache_info()``: hits and misses summed over every process (two
  shared counters), and ``currsize``, the live entries of the current
  generation (counted by a scan of the keys: O(entries)).
"""
import functools
import hashlib
import inspect
import pickle
import re
import struct
from collections import namedtuple
from typing import TYPE_CHECKING, Callable, Optional, Union

if TYPE_CHECKING:
    from .cache import Cache

__all__ = ["CacheInfo", "memoize"]

CacheInfo = namedtuple("CacheInfo", ["hits", "misses", "maxsize", "currsize"])

_PREFIX = "apccache:memo:"
_DIGEST_OVER = 96


def _enc(obj, out):
    t = type(obj)
    if obj is None:
        out.append(b"N")
    elif t is bool:
        out.append(b"T" if obj else b"F")
    elif t is int:
        out.append(b"i%d;" % obj)
    elif t is float:
        out.append(b"f" + obj.hex().encode() + b";")
    elif t is complex:
        out.append(b"c" + obj.real.hex().encode() + b"," + obj.imag.hex().encode() + b";")
    elif t is str:
        b = obj.encode("utf-8", "surrogatepass")
        out.append(b"s%d:" % len(b) + b)
    elif t is bytes:
        out.append(b"b%d:" % len(obj) + obj)
    elif t is tuple or t is list:
        out.append(b"(" if t is tuple else b"[")
        for x in obj:
            _enc(x, out)
        out.append(b")")
    elif t is dict:
        items = sorted((_canon(k), _canon(v)) for k, v in obj.items())
        out.append(b"{%d:" % len(items) + b"".join(k + v for k, v in items) + b"}")
    elif t is set or t is frozenset:
        items = sorted(_canon(x) for x in obj)
        out.append(b"<%d:" % len(items) + b"".join(items) + b">")
    else:
        b = pickle.dumps(obj, protocol=4)
        out.append(b"p%d:" % len(b) + b)


def _canon(obj):
    out = []
    _enc(obj, out)
    return b"".join(out)


def args_key(args: tuple, kwargs: dict) -> str:
    """The canonical, process-independent encoding of a call's arguments,
    as text for the key (hex digest when long)."""
    b = _canon((args, kwargs))  # kwargs: a dict, so encoded in sorted order
    if len(b) > _DIGEST_OVER or not _printable(b):
        return "h" + hashlib.blake2b(b, digest_size=20).hexdigest()
    return b.decode("ascii")


def _printable(b):
    return all(32 <= c < 127 for c in b)


def memoize(cache: "Cache", ttl: int = 0, *, key: Optional[Callable[..., Union[str, bytes]]] = None,
            namespace: Optional[str] = None) -> Callable[[Callable], Callable]:
    from .cache import _check_ttl

    ttl = _check_ttl(ttl)
    if key is not None and not callable(key):
        raise TypeError("key must be a callable taking the function's arguments")

    def decorate(fn):
        ns = namespace if namespace is not None else f"{fn.__module__}.{fn.__qualname__}"
        prefix = _PREFIX + ns
        gen_key, hits_key, misses_key = prefix + ":gen", prefix + ":hits", prefix + ":misses"

        def make_key(args, kwargs):
            gen = cache.fetch(gen_key, 0)
            if key is None:
                part = args_key(args, kwargs)
            else:
                part = key(*args, **kwargs)
                if isinstance(part, bytes):
                    part = "b" + part.hex()
                elif not isinstance(part, str):
                    raise TypeError(f"the key callable returned a {type(part).__name__}, not str or bytes")
            return f"{prefix}:{gen}:{part}"

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def wrapper(*args, **kwargs):
                ran = False

                async def generate(_):
                    nonlocal ran
                    ran = True
                    return await fn(*args, **kwargs)

                value = await cache.aentry(make_key(args, kwargs), generate, ttl)
                cache.inc(misses_key if ran else hits_key)
                return value

        else:

            @functools.wraps(fn)
            def wrapper(*args, **kwargs):
                ran = False

                def generate(_):
                    nonlocal ran
                    ran = True
                    return fn(*args, **kwargs)

                value = cache.entry(make_key(args, kwargs), generate, ttl)
                cache.inc(misses_key if ran else hits_key)
                return value

        def cache_clear():
            """Forget every result of this function, in every process."""
            cache.inc(gen_key)
            cache.delete_many([hits_key, misses_key])

        def cache_info():
            gen = cache.fetch(gen_key, 0)
            current = re.compile("^" + re.escape(f"{prefix}:{gen}:"))
            return CacheInfo(
                cache.fetch(hits_key, 0), cache.fetch(misses_key, 0), None,
                sum(1 for _ in cache.keys(current)),
            )

        def cache_key(*args, **kwargs):
            """The cache key a call with these arguments uses."""
            return make_key(args, kwargs)

        wrapper.cache_clear = cache_clear
        wrapper.cache_info = cache_info
        wrapper.cache_key = cache_key
        wrapper.cache = cache
        return wrapper

    return decorate
