"""asyncio: ``await cache.aentry(key, generator, ttl=0)``.

``entry()`` waits for another process's generator by sleeping, which in a
coroutine would stall the event loop for the whole wait.  ``aentry`` makes
the same guarantee (the generator runs once across all processes, and is
taken over if the process running it dies) but waits with
``asyncio.sleep``, so the loop keeps serving while another process (or
another task of this one) computes.  The generator may be a plain function
or a coroutine function; what it returns is awaited if it is awaitable, and
the result stored.

Every other cache operation is one call into the engine that never waits on
another process for more than the engine's bound, and takes well under a
microsecond to a few microseconds: call them straight from a coroutine
(``cache.fetch(key)``), there is no thread hop to gain.

The engine calls of entry()'s protocol (begin, take over, end) are
``Cache``'s private ``_entry_*`` methods; only the waiting differs.
"""
import asyncio
import inspect
import itertools
from typing import TYPE_CHECKING, Any, Callable, Union

from . import _bindings as B

if TYPE_CHECKING:
    from .cache import Cache

__all__ = ["aentry"]

_MISSING = object()
# entry() tells its waiters apart by (pid, tid); tasks of one thread share
# the thread's ident, so each aentry call gets its own tid, out of the range
# of thread idents (pointers, below 2**48 on Linux).
_tids = itertools.count(1)
_TID_BASE = 1 << 62


async def aentry(cache: "Cache", key: Union[str, bytes], generator: Callable[[Any], Any],
                 ttl: int = 0) -> Any:
    from .cache import _check_ttl, _key_bytes

    k = _key_bytes(key)
    ttl = _check_ttl(ttl)
    value = cache._fetch_key(k, _MISSING)
    if value is not _MISSING:
        return value
    tid = _TID_BASE + next(_tids)
    delay = 0.0005
    while True:
        rc, token, holder = cache._entry_begin(k, tid)
        if rc == B.EXISTS:
            value = cache._fetch_key(k, _MISSING)
            if value is not _MISSING:
                return value
            continue
        if rc == B.BUSY:
            if token >= 0 and not B.pid_alive(holder):
                if cache._entry_takeover(token, holder, tid):
                    return await _generate(cache, k, key, generator, ttl, token, tid)
                continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)
            continue
        if rc == B.BUSY_SELF:  # cannot happen with a tid of our own; run it
            return await _call(generator, key)
        return await _generate(cache, k, key, generator, ttl, token, tid)


async def _call(generator, key):
    value = generator(key)
    if inspect.isawaitable(value):
        value = await value
    return value


async def _generate(cache, k, key, generator, ttl, token, tid):
    cache._entry_claimed(token, tid)  # close() gives it up, if it comes first (as entry() does)
    try:
        value = await _call(generator, key)
        cache._store_key(k, value, ttl)
    finally:
        cache._entry_end(token, tid)
    return value
