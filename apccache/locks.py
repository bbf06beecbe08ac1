"""A host-wide lock kept in the cache: ``cache.lock(name)`` and
``cache.alock(name)``.

>>> import apccache, os
>>> c = apccache.Cache.create(f"doctest-lock-{os.getpid()}", size=1 << 20)
>>> with c.lock("nightly-report", timeout=60) as lk:
...     lk.locked()
True
>>> c.lock("nightly-report").locked()
False
>>> c.unlink(); c.close()

The lock is one int64 entry, ``apccache:lock:<name>``, holding its holder's
identity: ``pid << 41 | start time``, where the start time is the process's
field 22 of ``/proc/PID/stat`` (clock ticks since boot).  Taking it is an
``add`` (exactly one of several racing processes wins); a holder that died
is detected at once by whoever wants the lock next (its pid is gone, a
zombie, or now belongs to a process with another start time: a recycled
pid does not look alive) and the lock is taken over with ``cas``, which
also decides between several processes taking over at once.  Releasing is
``cas(mine, 0)``: it never frees a lock someone else holds.

``timeout`` (seconds) bounds how long a holder that is alive but stuck
keeps the lock.  The holder writes its deadline (milliseconds since the
epoch) to ``apccache:lockdl:<name>:<holder>`` before it takes the lock, and
whoever finds the lock held past that deadline takes it over with ``cas``;
the lock entry's own ttl (``timeout`` rounded up to whole seconds) is a
backstop, should the deadline entry be evicted.  ``None``: held until released or
until the holder dies.  ``blocking_timeout`` bounds how long ``acquire``
waits.

Threads of one process exclude each other too (a per-process lock is taken
before the host-wide one); the lock is not reentrant.  A freed lock leaves
an entry holding 0 behind (about 100 bytes), so that releasing stays a
single conditional operation.
"""
import asyncio
import math
import os
import threading
import time
from typing import TYPE_CHECKING, Optional

from .errors import CacheError

if TYPE_CHECKING:
    from .cache import Cache

__all__ = ["AsyncLock", "Lock", "LockError", "LockNotOwnedError"]

_PREFIX = "apccache:lock:"
_DL_PREFIX = "apccache:lockdl:"  # + name:word -> the holder's deadline, ms since the epoch
_TICKS_BITS = 41
_TICKS_MASK = (1 << _TICKS_BITS) - 1


class LockError(CacheError, RuntimeError):
    """The lock could not be acquired within ``blocking_timeout`` (by a
    ``with`` block), or was used wrongly."""


class LockNotOwnedError(LockError):
    """release() or extend() of a lock this holder no longer holds: it was
    never acquired, or its ``timeout`` expired and another process took
    it."""


def _now_ms():
    return time.time_ns() // 1_000_000


def start_ticks(pid: int) -> Optional[int]:
    """Field 22 of /proc/PID/stat (start time, clock ticks since boot), or
    None if the process does not exist or /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    try:
        # the command name (field 2) may hold spaces and ')': split after the last ')'
        return int(data[data.rindex(b")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


_me = (0, 0)  # (pid, word) of this process, recomputed after fork


def my_word() -> int:
    """This process's identity as one positive int64."""
    global _me
    pid = os.getpid()
    if _me[0] != pid:
        _me = (pid, pid << _TICKS_BITS | ((start_ticks(pid) or 0) & _TICKS_MASK))
    return _me[1]


def holder_alive(word: int) -> bool:
    """Is the process a lock word names still the one that took it?"""
    from ._bindings import pid_alive

    pid = word >> _TICKS_BITS
    if pid <= 0 or not pid_alive(pid):
        return False
    ticks = start_ticks(pid)
    return ticks is None or (ticks & _TICKS_MASK) == (word & _TICKS_MASK)


# Per-process exclusion between threads (and tasks), one lock per (segment,
# name).  Forgotten in a forked child: the threads holding them are not there.
_local_locks = {}
_local_guard = threading.Lock()


def _local_lock(segment, name):
    with _local_guard:
        lk = _local_locks.get((segment, name))
        if lk is None:
            lk = _local_locks[(segment, name)] = threading.Lock()
        return lk


def _after_fork():
    global _local_guard
    _local_locks.clear()
    _local_guard = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)


class _Base:
    def __init__(self, cache: "Cache", name: str, timeout: Optional[float] = None,
                 blocking_timeout: Optional[float] = None) -> None:
        if not isinstance(name, str):
            raise TypeError(f"lock name must be a str, not {type(name).__name__}")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds or None (got {timeout!r})")
        self._cache = cache
        self.name = name
        self.key = _PREFIX + name
        self.timeout = timeout
        self.blocking_timeout = blocking_timeout
        self._local = _local_lock(cache.name, name)
        self._held = False

    def _ttl(self):
        return 0 if self.timeout is None else max(1, math.ceil(self.timeout))

    def _dl_key(self, word):
        return f"{_DL_PREFIX}{self.name}:{word}"

    def _expired(self, word):
        """Has the holder word's own timeout run out (to the millisecond)?"""
        dl = self._cache.fetch(self._dl_key(word), None)
        return type(dl) is int and _now_ms() > dl

    def _try(self):
        """One attempt at the host-wide lock (the local one is held)."""
        c, key, me = self._cache, self.key, my_word()
        if self.timeout is not None:
            # our deadline first, so that it is there before anyone can see
            # us as the holder (no other thread of ours writes it: we hold
            # the local lock)
            c.store(self._dl_key(me), _now_ms() + math.ceil(self.timeout * 1000), self._ttl() + 1)
        for _ in range(8):
            if c.add(key, me, self._ttl()):
                return True
            cur = c.fetch(key, None)
            if cur is None:
                continue  # freed (expired or deleted) meanwhile: add again
            if type(cur) is not int:
                raise LockError(f"the entry {key!r} is not a lock (it holds a {type(cur).__name__})")
            if cur == me or (cur != 0 and holder_alive(cur) and not self._expired(cur)):
                return False
            # free (0), its holder died, or its timeout ran out: take it
            # over, then give it our ttl
            if c.cas(key, cur, me):
                c.touch(key, self._ttl())
                if c.fetch(key, None) == me:
                    return True
        return False

    def locked(self) -> bool:
        """Is the lock held, by anyone (this holder included)?"""
        cur = self._cache.fetch(self.key, None)
        return type(cur) is int and cur != 0 and holder_alive(cur) and not self._expired(cur)

    def owned(self) -> bool:
        """Does this holder hold it?"""
        return self._held and self._cache.fetch(self.key, None) == my_word()

    def release(self) -> None:
        """Free the lock.  LockNotOwnedError if this holder does not hold it
        (never acquired, or expired and taken by another)."""
        if not self._held:
            raise LockNotOwnedError(f"lock {self.name!r} is not held by this holder")
        self._held = False
        try:
            if not self._cache.cas(self.key, my_word(), 0):
                raise LockNotOwnedError(
                    f"lock {self.name!r} expired (timeout {self.timeout}s) and was taken by another holder"
                )
            if self.timeout is not None:
                self._cache.delete(self._dl_key(my_word()))
        finally:
            self._local.release()

    def extend(self, seconds: float) -> bool:
        """Add seconds to the time left before the lock expires."""
        if self.timeout is None:
            raise LockError(f"lock {self.name!r} has no timeout: there is nothing to extend")
        if not self.owned():
            raise LockNotOwnedError(f"lock {self.name!r} is not held by this holder")
        c = self._cache
        dl_key = self._dl_key(my_word())
        dl = c.fetch(dl_key, None)
        now_ms = _now_ms()
        dl = max(dl if type(dl) is int else now_ms, now_ms) + math.ceil(seconds * 1000)
        left = math.ceil((dl - now_ms) / 1000)
        c.store(dl_key, dl, left + 1)
        info = c.key_info(self.key)
        now = c.now()
        engine_left = info["creation_time"] + info["ttl"] - now if info and info["ttl"] else 0
        c.touch(self.key, max(1, left, math.ceil(max(engine_left, 0) + seconds)))
        if not self.owned():
            raise LockNotOwnedError(f"lock {self.name!r} expired before it could be extended")
        return True

    def __repr__(self):
        return f"<apccache {type(self).__name__} {self.name!r} {'held' if self._held else 'free'}>"


class Lock(_Base):
    """``cache.lock(name, timeout=None, blocking_timeout=None)``: see the
    module docstring."""

    def acquire(self, blocking: bool = True, timeout: Optional[float] = None) -> bool:
        """Take the lock; True if taken.  blocking=False: one attempt.
        timeout (default: the lock's blocking_timeout; None waits for
        ever): seconds to wait."""
        if self._held:
            raise LockError(f"lock {self.name!r} is already held by this holder (it is not reentrant)")
        if timeout is None:
            timeout = self.blocking_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        if not blocking:
            if not self._local.acquire(blocking=False):
                return False
        elif not self._local.acquire(timeout=-1 if deadline is None else max(0.0, timeout)):
            return False
        delay = 0.0005
        try:
            while True:
                if self._try():
                    self._held = True
                    return True
                if not blocking or (deadline is not None and time.monotonic() >= deadline):
                    return False
                sleep = delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic()))
                time.sleep(sleep)
                delay = min(delay * 2, 0.02)
        finally:
            if not self._held:
                self._local.release()

    def __enter__(self):
        if not self.acquire():
            raise LockError(f"could not acquire lock {self.name!r} within {self.blocking_timeout}s")
        return self

    def __exit__(self, *exc):
        self.release()


class AsyncLock(_Base):
    """``cache.alock(...)``: the same lock for coroutines.  Waiting never
    blocks the event loop (it polls with ``asyncio.sleep``)."""

    async def acquire(self, blocking: bool = True, timeout: Optional[float] = None) -> bool:
        if self._held:
            raise LockError(f"lock {self.name!r} is already held by this holder (it is not reentrant)")
        if timeout is None:
            timeout = self.blocking_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        have_local = False
        try:
            while True:
                if not have_local:
                    have_local = self._local.acquire(blocking=False)
                if have_local and self._try():
                    self._held = True
                    return True
                if not blocking or (deadline is not None and time.monotonic() >= deadline):
                    return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.02)
        finally:
            if have_local and not self._held:
                self._local.release()

    async def release(self) -> None:
        _Base.release(self)

    async def __aenter__(self):
        if not await self.acquire():
            raise LockError(f"could not acquire lock {self.name!r} within {self.blocking_timeout}s")
        return self

    async def __aexit__(self, *exc):
        _Base.release(self)
