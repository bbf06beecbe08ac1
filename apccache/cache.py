"""The user cache: ``apccache.Cache``.

A ``Cache`` is a handle on one shared-memory segment.  Every process that
attaches the same name sees the same entries; each operation is one call
into the C engine, which is atomic with respect to every other process:

- ``store``, ``add``, ``delete``, ``inc``, ``dec`` and ``cas`` of one key
  are serialised by the lock of its bucket stripe (writes of other keys
  seldom wait for them), so concurrent ``inc`` calls sum exactly and
  concurrent ``add`` calls have exactly one winner;
- ``fetch`` and ``exists`` take no lock: readers never wait for each other,
  and see either the value before a concurrent write or the value after it;
- ``entry`` runs its generator once per missing key across all processes.

Values are copied in and out: mutating a fetched object never changes the
cache.  bytes, str, int (int64), float, bool and None are stored natively;
anything else goes through the serializer (pickle by default: see
``apccache.serializers`` for what that means for security).

This module is the public API only: argument checks, the value codec and
the documentation.  Every call into the engine goes through the binding
layer (``apccache._bindings``): a ``Table`` of the segment's user slot table
here, another of its file table under ``FileTable``.  The single-key
operations are bound, when the handle is made, to the C fast path
(``_fastpath.Handle``), so that a call is one C call; the methods written
below are what it falls back to (and all there is without it).

>>> import apccache, os
>>> c = apccache.Cache.create(f"doctest-{os.getpid()}", size=1 << 20)
>>> c.store("answer", 42)
True
>>> c.inc("answer")
43
>>> c.fetch("missing", "default")
'default'
>>> c.unlink(); c.close()
"""
import os
import struct
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

from . import _bindings as B
from ._bindings import EntryRecord, SegmentHandle, Table, human_size as _human, key_bytes as _key_bytes
from ._shm import Segment, check_trusted
from .errors import (
    CacheClosedError,
    CacheError,
    CacheFullError,
    CorruptSegmentError,
    UntrustedSegmentError,
)
from .serializers import PickleSerializer

if TYPE_CHECKING:
    import re

    from .locks import AsyncLock, Lock

Key = Union[str, bytes]

_MISSING = object()
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1

#: The largest ttl (and gc_ttl) in seconds: about 68 years.  Larger ones
#: are refused with ValueError rather than wrapping around.
MAX_TTL = (1 << 31) - 1
_CLOSED = "operation on a closed cache"
_F64 = struct.Struct("<d")
DEFAULT_LOCK_TIMEOUT = 5.0


def _check_ttl(ttl, name="ttl"):
    """The one ttl rule of every method: an int (never a bool) from 0 to
    MAX_TTL seconds."""
    if type(ttl) is not int:
        if isinstance(ttl, bool) or not isinstance(ttl, int):
            raise TypeError(f"{name} must be an int number of seconds, not {type(ttl).__name__}")
        ttl = int(ttl)
    if not 0 <= ttl <= MAX_TTL:
        raise ValueError(f"{name} must be from 0 to {MAX_TTL} seconds (got {ttl})")
    return ttl


def _check_lock_timeout(t):
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise TypeError(f"lock_timeout must be a number of seconds, not {type(t).__name__}")
    if not 0 <= t <= 3600:
        raise ValueError(f"lock_timeout must be between 0 and 3600 s (got {t})")
    return int(t * 1e9)


def _check_int(name, v):
    if type(v) is not int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, not {type(v).__name__}")
        v = int(v)
    if not _INT64_MIN <= v <= _INT64_MAX:
        raise OverflowError(f"{name} {v} is outside the int64 range")
    return v


class _NoLoadSerializer:
    """The serializer of a handle opened for inspection only: it never
    loads (or stores) a serialized value."""

    name = "none"

    def __init__(self, segment):
        self.segment = segment

    def _refuse(self, *args):
        raise UntrustedSegmentError(
            f"segment {self.segment!r} was opened for inspection only: its serialized values are never loaded"
        )

    dumps = loads = _refuse


def _key_out(k):
    try:
        return k.decode()
    except UnicodeDecodeError:
        return k


class ItemMethods:
    """c[key], c[key] = value and del c[key] over fetch, store and delete
    (KeyError for a missing key), for Cache and FleetCache alike."""

    __slots__ = ()

    def __getitem__(self, key):
        v = self.fetch(key, _MISSING)
        if v is _MISSING:
            raise KeyError(key)
        return v

    def __setitem__(self, key, value):
        self.store(key, value)

    def __delitem__(self, key):
        if not self.delete(key):
            raise KeyError(key)


class Cache(ItemMethods):
    """A handle on a shared-memory cache segment.  See the module docstring."""

    def __init__(self, shm, segment: SegmentHandle, serializer=None, owner=False):
        self._shm = shm  # the mapping's file: unlink() and trust checks
        self._mv = shm.buf
        self._segment = segment
        self._table = segment.table(B.TABLE_USER)
        self._entries = {}  # entry() generations this handle runs: token -> tid
        self._ser = serializer or PickleSerializer()
        self._owner = owner
        self._untrusted = None  # why not, for a handle opened for inspection only
        self.name = segment.name
        # The single-key operations as CPython methods (csrc/fastpath.c),
        # bound once here so that a call is one C call; what they do not
        # take as it is comes back to the methods below, an engine error to
        # the binding's one error table.
        slow = {op: getattr(self, op) for op in B.FAST_OPS}
        self._fast = h = segment.fast(slow, self._table.raise_rc, self._ser)
        if h is not None:
            for op in B.FAST_OPS:
                setattr(self, op, getattr(h, op))
            self.get = h.fetch

    # ------------------------------------------------------------ life cycle

    @classmethod
    def create(cls, name, size=64 * 1024 * 1024, slots=None, ttl=0, gc_ttl=3600, *,
               serializer=None, clock=None, reserve=True, checksums=False,
               lock_timeout=DEFAULT_LOCK_TIMEOUT, mode=0o600):
        """Create the segment ``name`` (mode 0600) and return a handle on it.

        ``size`` is the segment's size in bytes; ``slots`` a hint for the
        number of hash buckets (the first prime >= it is used; by default
        about 512 per MiB); ``ttl`` the cache-wide soft TTL (entries without
        their own ttl that have not been read for that long go first when
        room is needed; 0 = off); ``gc_ttl`` how long a deleted entry still
        pinned by a reader waits before it is freed anyway.  ``clock`` (a
        callable returning seconds) replaces the real clock, for tests.
        ``reserve`` allocates all the segment's memory now, so that a
        /dev/shm too small for it fails here (OSError ENOSPC) rather than
        with SIGBUS in whichever process later writes past what fits;
        False leaves the pages to be allocated as entries are written.
        ``checksums`` gives every entry a checksum of its value, type and
        length, checked on every read: a value whose bytes were changed in
        the segment is then a miss counted in ``info()['corrupt_reads']``,
        never a wrong value (see the README for its cost).
        ``lock_timeout``: see attach().

        ``mode`` 0o660 makes a segment that the members of this process's
        group may attach (with ``trust_group=True``) and write; since any of
        them could then run code in the others through pickle, it needs an
        explicit ``serializer`` (``JSONSerializer()``, or
        ``PickleSerializer()`` named on purpose).  Nothing else is accepted:
        others may never write a segment.

        Raises FileExistsError if the segment exists.
        """
        name = cls._check_name(name)
        size = _check_int("size", size)
        ttl, gc_ttl = _check_ttl(ttl), _check_ttl(gc_ttl, "gc_ttl")
        if type(mode) is not int:
            raise TypeError(f"mode must be the int 0o600 or 0o660, not {type(mode).__name__}")
        if mode not in (0o600, 0o660):
            raise ValueError(f"mode must be 0o600 (the owner only) or 0o660 (shared with the group), not {mode:#o}")
        if mode == 0o660 and serializer is None:
            raise ValueError(
                "a group-shared segment (mode=0o660) needs an explicit serializer: every member of the group "
                "can write it, and unpickling runs code; pass serializer=apccache.JSONSerializer(), or "
                "serializer=apccache.PickleSerializer() if every member is trusted to run code in the others"
            )
        _check_lock_timeout(lock_timeout)
        if slots is None:
            slots = max(64, size // (1 << 20) * 512)
        slots = _check_int("slots", slots)
        if not 1 <= slots <= 1 << 31:
            raise ValueError(f"slots must be between 1 and 2**31 (got {slots})")
        nslots, nfiles, minimum = B.slot_counts(slots)
        if size < minimum:
            raise ValueError(
                f"size {size} is too small for {nslots} slots: it must be at least {minimum} bytes"
                " (pass a larger size or fewer slots)"
            )
        shm = Segment(name, create=True, size=size, reserve=reserve, mode=mode,
                      trust="group" if mode == 0o660 else "owner")
        try:
            segment = SegmentHandle.create(shm, nslots, nfiles, ttl, gc_ttl, checksums, clock,
                                           _check_lock_timeout(lock_timeout))
        except BaseException:
            shm.unlink()
            try:
                shm.close()
            except BufferError:
                pass
            raise
        return cls(shm, segment, serializer, owner=True)

    @classmethod
    def attach(cls, name, *, serializer=None, clock=None, timeout=2.0,
               lock_timeout=DEFAULT_LOCK_TIMEOUT, trust_group=False, _inspect=False):
        """Attach the existing segment ``name``.  Attaching, closing and
        exiting never remove it; only ``unlink()`` does.

        Only a segment this user owns and nobody else may write is trusted:
        before anything is read from it, ``fstat`` of the very descriptor
        that is then mapped must show a regular file owned by the effective
        uid, not writable by group or others.  ``trust_group=True`` also
        accepts a segment whose group is one of this process's groups and
        that the group may write (see ``create(mode=0o660)``); it requires
        an explicit ``serializer``, so that pickle is never chosen for a
        shared segment without saying so.  Others may never write it.

        ``lock_timeout`` (seconds, default 5) bounds how long a write waits
        for another live process that holds a lock it needs; then
        it raises CacheBusyError naming that process.  A holder that died is
        never waited for.  Reads never wait for the lock.

        Raises FileNotFoundError if there is no such segment,
        UntrustedSegmentError (a PermissionError) if it is not trusted, and
        IncompatibleSegmentError if it is not an apccache segment of this
        layout version.
        """
        name = cls._check_name(name)
        if type(trust_group) is not bool:
            raise TypeError(f"trust_group must be True or False, not {type(trust_group).__name__}")
        if trust_group and serializer is None and not _inspect:
            raise ValueError(
                "trust_group=True needs an explicit serializer: any member of the group can write the segment, "
                "and unpickling runs code; pass serializer=apccache.JSONSerializer(), or "
                "serializer=apccache.PickleSerializer() if every member is trusted to run code here"
            )
        if _inspect:
            # apcstat's read-only views: a foreign segment may be looked at,
            # but no value of it is ever loaded.
            trust, serializer = None, _NoLoadSerializer(name)
        else:
            trust = "group" if trust_group else "owner"
        _check_lock_timeout(lock_timeout)
        try:
            shm = Segment(name, trust=trust)
        except FileNotFoundError:
            from ._open import missing_message

            raise FileNotFoundError(2, missing_message(name)) from None
        except ValueError:
            raise CorruptSegmentError(f"segment {name!r} is empty: not an apccache segment") from None
        try:
            segment = SegmentHandle.attach(shm, time.monotonic() + timeout, clock,
                                           _check_lock_timeout(lock_timeout))
        except BaseException:
            shm.close()
            raise
        handle = cls(shm, segment, serializer)
        if _inspect:
            try:
                check_trusted(shm.stat, name)
            except UntrustedSegmentError as e:
                handle._untrusted = str(e)  # what apcstat says of it
        return handle

    @staticmethod
    def _check_name(name):
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        bare = name.lstrip("/")
        if not bare or "/" in bare or len(bare) > 250 or "\0" in bare:
            raise ValueError(f"invalid segment name {name!r}: use a short name without '/'")
        return bare

    def close(self):
        """Release this handle (the segment stays).  Idempotent, and safe
        while other threads use the handle: calls already in the engine
        finish first (each is bounded by lock_timeout), later ones raise
        CacheClosedError.  entry() generations this handle runs give up
        their key at once, so other processes stop waiting for them."""
        segment = self._segment
        if segment.closed:
            return
        for token, tid in list(self._entries.items()):
            self._table.entry_end(token, tid)
        self._entries.clear()
        segment.close()  # waits for the calls in flight
        self._mv = None
        try:
            self._shm.close()
        except BufferError:
            pass  # a memoryview of aux is still alive; the mapping goes with it

    def unlink(self) -> None:
        """Remove the segment's name.  Handles already attached keep
        working; new attaches fail with FileNotFoundError."""
        try:
            self._shm.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self):
        self._require_open()
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        segment = getattr(self, "_segment", None)
        if segment is not None:
            segment.release()

    def __repr__(self):
        state = "closed" if self.closed else f"{_human(self._shm.size)}"
        return f"<apccache.Cache {self.name!r} {state}>"

    @property
    def closed(self) -> bool:
        return self._segment.closed

    def _require_open(self):
        """CacheClosedError for a closed handle: for the methods that could
        otherwise finish without calling the engine (an empty store_many,
        a property)."""
        if self.closed:
            raise CacheClosedError(_CLOSED)

    @property
    def aux(self):
        """A writable view of the segment's 64 KiB aux area (zeroed at
        create), which the supervisor uses for its scoreboard."""
        self._require_open()
        off, size = self._segment.aux_range()
        return self._mv[off : off + size]

    # ------------------------------------------------------------- the codec

    @property
    def serializer(self):
        """The serializer of this handle: what stores and loads the values
        that are not bytes, str, int, float, bool or None (and the file
        cache's loaded values)."""
        return self._ser

    def now(self) -> int:
        """The time this handle goes by, in whole epoch seconds: its
        ``clock``'s if it was given one, else the real time."""
        return self._segment.now() or int(time.time())

    def _encode(self, value):
        """(type tag, bytes, int) for a value; serialises outside any lock."""
        t = type(value)
        if t is bytes:
            return B.T_BYTES, value, 0
        if t is str:
            return B.T_STR, value.encode("utf-8", "surrogatepass"), 0
        if t is int and _INT64_MIN <= value <= _INT64_MAX:
            return B.T_INT, b"", value
        if t is bool:
            return (B.T_TRUE if value else B.T_FALSE), b"", 0
        if value is None:
            return B.T_NONE, b"", 0
        if t is float:
            return B.T_FLOAT, _F64.pack(value), 0
        return B.T_SER, self._ser.dumps(value), 0

    def _decode(self, tag, payload, table):
        """The value for a tag and its payload (bytes; the int of T_INT), or
        _MISSING (counted as a corrupt read of table) for bytes that do not
        decode as their tag says: bad UTF-8, a short float, an unknown tag,
        or what the serializer refuses."""
        try:
            if tag == B.T_BYTES:
                return payload
            if tag == B.T_STR:
                return payload.decode("utf-8", "surrogatepass")
            if tag == B.T_INT:
                return payload
            if tag == B.T_SER:
                return self._ser.loads(payload)
            if tag == B.T_FLOAT:
                return _F64.unpack(payload)[0]
            if tag == B.T_TRUE:
                return True
            if tag == B.T_FALSE:
                return False
            if tag == B.T_NONE:
                return None
        except Exception:
            pass
        table.count_corrupt()
        return _MISSING

    def _fetch_key(self, k, default, table=None):
        """fetch for already-validated key bytes, on any table (the Python
        path: the fast path's fallback, and the file table's)."""
        table = table or self._table
        r = table.fetch(k)
        if r is None:
            return default
        tag, payload = r
        value = self._decode(tag, payload, table)
        return default if value is _MISSING else value

    def _store_key(self, k, value, ttl, add=False, table=None, encode=None):
        """store (or add) for already-validated key bytes, on any table, with
        its codec (encode: the user cache's by default; bytes are bytes in
        every codec, so they skip it)."""
        if type(value) is bytes:
            tag, data, ival = B.T_BYTES, value, 0
        else:
            tag, data, ival = (encode or self._encode)(value)
        return (table or self._table).store(k, tag, data, ival, ttl, add)

    # ------------------------------------------------------------ the API

    def fetch(self, key: Key, default: Any = None) -> Any:
        """The value stored under key, or default.  Expired entries are
        misses.  Counts a hit or a miss.  Never blocks on writers.  (The
        fast path's fallback: see csrc/fastpath.c.)"""
        return self._fetch_key(_key_bytes(key), default)

    def store(self, key: Key, value: Any, ttl: int = 0) -> bool:
        """Store value under key, replacing any entry.  Returns True.

        ttl > 0: the entry is gone once ttl whole seconds have passed since
        it was stored.  Raises CacheFullError if no room can be made, and
        the serializer's error if the value cannot be serialised; either way
        the previous value stays."""
        k, ttl = _key_bytes(key), _check_ttl(ttl)
        tag, data, ival = (B.T_BYTES, value, 0) if type(value) is bytes else self._encode(value)
        return self._table.store(k, tag, data, ival, ttl)

    def add(self, key: Key, value: Any, ttl: int = 0) -> bool:
        """Store only if no live entry exists; True if stored.  Exactly one
        of several processes adding the same key at once wins."""
        k, ttl = _key_bytes(key), _check_ttl(ttl)
        tag, data, ival = (B.T_BYTES, value, 0) if type(value) is bytes else self._encode(value)
        return self._table.store(k, tag, data, ival, ttl, True)

    def delete(self, key: Key) -> bool:
        """Remove the entry; False if there was none (or it had expired)."""
        return self._table.delete(_key_bytes(key))

    def exists(self, key: Key) -> bool:
        """Is there a live entry?  Counts neither a hit nor a miss."""
        return self._table.exists(_key_bytes(key))

    def inc(self, key: Key, step: int = 1, ttl: int = 0) -> int:
        """Add step to the int stored under key, atomically across processes,
        and return the new value.  A missing or expired key is created as 0
        first (with ttl).  TypeError if the value is not an int;
        OverflowError if the result leaves int64; the value is then
        unchanged."""
        return self._table.inc(_key_bytes(key), _check_int("step", step), _check_ttl(ttl))

    def dec(self, key: Key, step: int = 1, ttl: int = 0) -> int:
        """Subtract step; see inc.  A missing key ends up as -step."""
        step = _check_int("step", step)
        if step == _INT64_MIN:
            raise OverflowError(f"dec by {step} leaves the int64 range")
        return self.inc(key, -step, ttl)

    def cas(self, key: Key, old: int, new: int) -> bool:
        """Replace the int old with new, atomically.  False if the key is
        missing (cas never inserts), its value is not an int, or it is not
        old."""
        return self._table.cas(_key_bytes(key), _check_int("old", old), _check_int("new", new))

    def entry(self, key: Key, generator: Callable[[Key], Any], ttl: int = 0) -> Any:
        """The value under key; if missing, ``generator(key)`` makes it, it
        is stored with ttl, and returned.

        Atomic across processes: when several race on a missing key, the
        generator runs once and all get its value.  The others wait for
        that key only (no lock is held while the generator runs), and take
        over if the generating process dies.  The generator may call any
        cache method, including entry() for another key (or the same key:
        then it simply runs).  If it raises, nothing is stored and the
        exception propagates."""
        return self._entry(_key_bytes(key), key, generator, _check_ttl(ttl), self._table)

    def _entry(self, k, key, generator, ttl, table, max_wait=None, encode=None):
        """entry() on any table.  With max_wait, a process that has waited
        that long for another's generator runs its own (and its result is
        stored only if the key is still missing)."""
        value = self._fetch_key(k, _MISSING, table)
        if value is not _MISSING:
            return value
        tid = threading.get_ident()
        delay = 0.0005
        deadline = None if max_wait is None else time.monotonic() + max_wait
        unreadable = 0
        while True:
            rc, token, holder = table.entry_begin(k, tid)
            if rc == B.EXISTS:
                value = self._fetch_key(k, _MISSING, table)
                if value is not _MISSING:
                    return value
                # Deleted or replaced in between, or an entry that exists but
                # never reads (damaged: a corrupt read is a miss).  Again and
                # again: drop it, and generate.
                unreadable += 1
                if unreadable >= 3:
                    table.delete(k)
                continue
            unreadable = 0
            if rc == B.BUSY_SELF:
                value = generator(key)
                self._store_key(k, value, ttl, False, table, encode)
                return value
            if rc == B.BUSY:
                if token >= 0 and not table.entry_holder_alive(token):
                    if table.entry_takeover(token, holder, tid):
                        return self._generate(k, key, generator, ttl, table, token, tid, encode)
                    continue
                if deadline is not None and time.monotonic() >= deadline:
                    value = generator(key)
                    self._store_key(k, value, ttl, True, table, encode)
                    return value
                time.sleep(delay)
                delay = min(delay * 2, 0.02)
                continue
            return self._generate(k, key, generator, ttl, table, token, tid, encode)

    def _generate(self, k, key, generator, ttl, table, token, tid, encode=None):
        self._entries[token] = tid  # close() gives it up, if it comes first
        try:
            value = generator(key)
            self._store_key(k, value, ttl, False, table, encode)
        finally:
            if self._entries.pop(token, None) is not None:
                table.entry_end(token, tid)
        return value

    # --------------------------------------------------------- many at once

    def store_many(self, mapping: Mapping[Key, Any], ttl: int = 0) -> List[Key]:
        """Store every item; returns the keys that could not be stored (no
        room, unserialisable value), [] on success.  Keys are all checked
        first: a bad key raises before anything is stored.  An error of
        the cache itself (closed, busy, corrupt) raises."""
        return self._put_each(mapping, ttl, self.store)

    def add_many(self, mapping: Mapping[Key, Any], ttl: int = 0) -> List[Key]:
        """add() for each item; returns the keys not added (a live entry
        existed, no room, or an unserialisable value); an error of the
        cache itself raises, as for store_many."""
        return self._put_each(mapping, ttl, self.add)

    def _put_each(self, mapping, ttl, put):
        """put(key, value, ttl) for each item (put is the fast path's
        method, where there is one); the keys it refused or could not
        store.  Every key is checked before any is stored."""
        self._require_open()
        ttl = _check_ttl(ttl)
        items = list(mapping.items())
        for key, _ in items:
            _key_bytes(key)
        failed = []
        for key, v in items:
            try:
                if not put(key, v, ttl):
                    failed.append(key)
            except CacheFullError:
                failed.append(key)
            except CacheError:
                raise
            except Exception:  # the value cannot be serialised
                failed.append(key)
        return failed

    def fetch_many(self, keys: Iterable[Key]) -> Dict[Key, Any]:
        """{key: value} for the keys that are present, keyed as given."""
        self._require_open()
        keys = list(keys)
        for key in keys:
            _key_bytes(key)  # every key is checked before any is fetched
        fetch = self.fetch  # the fast path, where there is one
        out = {}
        for key in keys:
            v = fetch(key, _MISSING)
            if v is not _MISSING:
                out[key] = v
        return out

    def delete_many(self, keys: Iterable[Key]) -> List[Key]:
        """Delete each key; returns the keys that were missing."""
        self._require_open()
        keys = list(keys)
        for key in keys:
            _key_bytes(key)  # every key is checked before any is deleted
        delete = self.delete  # the fast path, where there is one
        return [key for key in keys if not delete(key)]

    # ------------------------------------------------------------ whole cache

    def clear(self) -> None:
        """Remove every entry of the user cache (the file cache keeps its
        entries) and reset hits, misses, inserts and expunges."""
        self._table.clear()

    def info(self, limited: bool = False) -> Dict[str, Any]:
        """Counters of the user cache, as one snapshot; unless limited, also
        'entries' and 'deleted_list' (entries waiting on the GC list)."""
        i = self._table.info()
        out = {
            "num_slots": i.num_slots,
            "num_hits": i.num_hits,
            "num_misses": i.num_misses,
            "num_inserts": i.num_inserts,
            "num_entries": i.num_entries,
            "expunges": i.expunges,
            "evictions": i.evictions,
            "expired": i.expired,
            "start_time": i.start_time,
            "mem_size": i.mem_size,
            "ttl": i.ttl,
            "gc_ttl": i.gc_ttl,
            "gc_entries": i.gc_entries,
            "gc_mem_size": i.gc_mem_size,
            "gc_oldest": i.gc_oldest,
            "seg_size": i.seg_size,
            "format": i.format,
            "create_time": i.create_time,
            "creator_pid": i.creator_pid,
            "repairs": i.repairs,
            "compactions": i.compactions,
            "entries_in_progress": i.entry_locks,
            "pins": i.pins,
            "corrupt_reads": i.corrupt_reads,
            "waited_reads": i.waited_reads,
            "lock_steals": i.lock_steals,
            "whole_lock_max_us": i.wl_hold_max_ns // 1000,
            "checksums": bool(i.checksums),
        }
        if not limited:
            out["entries"] = _entry_dicts(self._table.records())
            out["deleted_list"] = _entry_dicts(self._table.records(False, True), keep_expired=True)
        return out

    def records(self, live: bool = True, deleted: bool = False) -> List[Tuple[EntryRecord, bytes]]:
        """[(record, key bytes)] of the user cache's entries as the engine
        copies them out, without counting a hit, touching an access time or
        pinning anything (what ``apcstat`` shows): the live ones (those
        that have expired but are not yet removed carry ``REC_EXPIRED`` in
        their ``flags``), a bounded chunk of buckets at a time, and with
        ``deleted`` the entries on the GC list.  Each record is an
        ``EntryRecord`` (a named tuple: ``hits``, ``ctime``, ``ttl``,
        ``mem_size``, ``type``, ``flags``, ...)."""
        return self._table.records(live, deleted)

    def _stripe_of(self, key):
        """The bucket stripe of a key: writes of keys in different stripes
        do not wait for each other (tests and tools)."""
        return self._table.stripe(_key_bytes(key))

    def sma_info(self, limited: bool = False) -> Dict[str, Any]:
        """The allocator: seg_size (usable arena bytes), avail_mem (free
        bytes), largest_free, and unless limited block_lists, the free
        blocks as [[{size, offset}, ...]] (one list: one segment)."""
        o = self._segment.sma_info(limited)
        out = {
            "num_seg": 1,
            "seg_size": o.arena_size,
            "avail_mem": o.avail,
            "used_mem": o.used,
            "largest_free": o.largest_free,
            "num_free_blocks": o.nfree,
            "num_used_blocks": o.nused,
        }
        if not limited:
            out["block_lists"] = [[{"size": size, "offset": off} for size, off in o.free_blocks]]
        return out

    def key_info(self, key: Key) -> Optional[Dict[str, int]]:
        """hits, access_time, mtime, creation_time, deletion_time, ttl, refs
        of a live entry, or None.  Not a hit."""
        r = self._table.key_info(_key_bytes(key))
        if r is None:
            return None
        return {
            "hits": r.hits,
            "access_time": r.atime,
            "mtime": r.mtime,
            "creation_time": r.ctime,
            "deletion_time": r.dtime,
            "ttl": r.ttl,
            "refs": r.refs,
            "mem_size": r.mem_size,
        }

    def keys(self, pattern: Union[str, "re.Pattern", None] = None) -> Iterator[Key]:
        """An iterator over the live keys (a snapshot: the cache may change
        while it runs).  pattern: a regex applied with re.search.  Keys come
        back as str, or as bytes where they are not valid UTF-8.  The
        snapshot is taken by the call, not by the first next()."""
        import re  # here: keys() is rare, and re costs start-up time

        self._require_open()
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        return self._keys(self._table.records(), rx)

    @staticmethod
    def _keys(snap, rx):
        for rec, k in snap:
            if rec.flags & B.REC_EXPIRED:
                continue
            key = _key_out(k)
            if rx is not None:
                subject = key if isinstance(key, str) else k
                if isinstance(subject, bytes) and isinstance(rx.pattern, str):
                    continue
                if not rx.search(subject):
                    continue
            yield key

    def check(self) -> List[str]:
        """The broken invariants of the whole segment, in words ([] when it
        is sound)."""
        return self._segment.check()

    def recover(self, pid: int) -> int:
        """Release what the dead process pid still held: pins on large
        values, and entry() generations in progress.  Returns how many."""
        pid = _check_int("pid", pid)
        if pid <= 0:
            raise ValueError(f"pid must be > 0 (got {pid})")
        return self._segment.recover(pid)

    # ------------------------------------------------- the handle, for tools

    @property
    def file_stat(self) -> os.stat_result:
        """The ``fstat`` taken of the segment's descriptor when this handle
        mapped it (owner, mode): what was attached, whatever the name means
        by now."""
        return self._shm.stat

    def fstat(self) -> os.stat_result:
        """``fstat`` of the segment's descriptor now (its owner or mode may
        have changed since ``file_stat``): what the opcode cache checks
        before it runs code from the segment."""
        self._require_open()
        return os.fstat(self._shm._fd)

    @property
    def untrusted(self) -> Optional[str]:
        """Why the segment failed the trust check, for a handle opened for
        inspection only (apcstat's); None for any handle that passed it."""
        return self._untrusted

    def fast_reader(self, slow: Callable, missing: Any):
        """For ``apccache.fleet``: a C-level reader (``_fastpath.Near``) over
        this handle's fast path, which falls back to ``slow`` for anything
        it does not serve itself; None in a build without the fast path."""
        self._require_open()
        return self._segment.near(slow, missing)

    # ---------------------------------------------------------- mapping protocol

    def __len__(self):
        return self._table.count_live()

    def __contains__(self, key):
        return self.exists(key)

    def __iter__(self):
        return self.keys()

    get = fetch

    # ------------------------------------------------------------ file cache

    @property
    def files(self):
        """The file-key cache (``apccache.files.FileCache``), kept in the
        segment's second slot table: clear() of the user cache leaves it
        alone, and info() reports it apart."""
        self._require_open()
        fc = self.__dict__.get("_files")
        if fc is None:
            from .files import FileCache

            fc = self.__dict__["_files"] = FileCache(self)
        return fc

    @property
    def file_table(self):
        """Bytes-level access to the file cache's slot table (for
        ``apccache.files``)."""
        self._require_open()
        return FileTable(self, self._segment.table(B.TABLE_FILES))

    # ------------------------------------------- for the framework integrations
    # (apccache.integrations); each is a thin door into its own module.

    @classmethod
    def open(cls, name: str, size: int = 64 * 1024 * 1024, *, create: bool = True,
             timeout: float = 5.0, **options) -> "Cache":
        """Create-or-attach: the segment ``name``, created with ``size``
        and ``options`` (create()'s keyword arguments) if it does not exist,
        else attached.  Race-free across processes: when many start at once,
        exactly one creates it and the others attach it once its creator
        has finished (waiting up to ``timeout`` seconds).  ``create=False``
        only attaches (FileNotFoundError naming the segments that exist)."""
        from ._open import open_cache

        return open_cache(cls, name, size, create, timeout, options)

    def touch(self, key: Key, ttl: int = 0) -> bool:
        """Give a live entry a new ttl counted from now (0: it never
        expires), atomically, without rewriting its value.  False if the
        key is missing or expired."""
        return self._table.touch(_key_bytes(key), _check_ttl(ttl))

    def memoize(self, ttl: int = 0, *, key: Optional[Callable[..., Key]] = None,
                namespace: Optional[str] = None) -> Callable[[Callable], Callable]:
        """A decorator caching a function's (or coroutine function's)
        results in this cache, computed once across all processes; adds
        ``f.cache_clear()`` and ``f.cache_info()``.  See apccache.memoize."""
        from .memoize import memoize

        return memoize(self, ttl, key=key, namespace=namespace)

    async def aentry(self, key: Key, generator: Callable[[Key], Any], ttl: int = 0) -> Any:
        """entry() for coroutines: waiting for another process never blocks
        the event loop; generator may be a coroutine function.  See
        apccache.aio."""
        from .aio import aentry

        return await aentry(self, key, generator, ttl)

    def lock(self, name: str, timeout: Optional[float] = None,
             blocking_timeout: Optional[float] = None) -> "Lock":
        """A host-wide lock (context manager; acquire, release, locked,
        extend), freed at once if its holder dies.  See apccache.locks."""
        from .locks import Lock

        return Lock(self, name, timeout, blocking_timeout)

    def alock(self, name: str, timeout: Optional[float] = None,
              blocking_timeout: Optional[float] = None) -> "AsyncLock":
        """lock() for ``async with``: waiting never blocks the event loop."""
        from .locks import AsyncLock

        return AsyncLock(self, name, timeout, blocking_timeout)

    # entry()'s protocol, one engine call each, for aentry (apccache.aio),
    # which cannot wait inside _entry as entry() does.

    def _entry_begin(self, k, tid):
        """(rc, token, holder): see Table.entry_begin."""
        return self._table.entry_begin(k, tid)

    def _entry_takeover(self, token, holder, tid):
        return self._table.entry_takeover(token, holder, tid)

    def _entry_claimed(self, token, tid):
        self._entries[token] = tid  # close() gives it up, if it comes first

    def _entry_end(self, token, tid):
        if self._entries.pop(token, None) is not None:
            self._table.entry_end(token, tid)


def _entry_dict(r, k):
    """An EntryRecord as info()'s and FileTable.entries()'s dict."""
    return {
        "key": _key_out(k),
        "hits": r.hits,
        "creation_time": r.ctime,
        "mtime": r.mtime,
        "access_time": r.atime,
        "deletion_time": r.dtime,
        "ttl": r.ttl,
        "mem_size": r.mem_size,
        "refs": r.refs,
    }


def _entry_dicts(records, keep_expired=False):
    return [_entry_dict(r, k) for r, k in records if keep_expired or not r.flags & B.REC_EXPIRED]


class FileTable:
    """The second slot table of a segment, bytes in and bytes out: the file
    cache's ``Table`` and its codec.

    The same engine, locks and arena as the user cache, but its own buckets,
    counters and clear(): APC kept compiled files apart from user entries,
    and so does apccache.  Keys are bytes; bytes (and a bytearray) are
    stored as they are; any other value goes through the user cache's
    codec, and comes back as it went in."""

    TABLE = B.TABLE_FILES

    def __init__(self, cache, table: Table):
        self._c = cache
        self._t = table

    def get(self, key, default=None):
        """The bytes stored under key, or default (counts a hit or miss)."""
        return self._c._fetch_key(key, default, self._t)

    def view(self, key, fn, default=None):
        """fn(buffer) for the value under key, or default; see get().  A
        large value is read in place, without a copy: the buffer is valid
        only until fn returns, and fn must keep no view of it.  A value
        that is not bytes is passed as get() returns it."""
        r = self._t.read(key, fn)
        if r is None:
            return default
        tag, payload, done = r
        if done:
            return payload
        value = self._c._decode(tag, payload, self._t)
        return default if value is _MISSING else fn(value)

    def _encode(self, data):
        if type(data) is bytes or type(data) is bytearray:
            return B.T_BYTES, data, 0
        return self._c._encode(data)

    def put(self, key, data, ttl=0):
        """Store, replacing any entry (data: bytes, or a bytearray stored
        as bytes)."""
        return self._t.store(key, *self._encode(data), _check_ttl(ttl))

    def add(self, key, data, ttl=0):
        """Store only if absent; False if a live entry exists."""
        return self._t.store(key, *self._encode(data), _check_ttl(ttl), True)

    def delete(self, key):
        return self._t.delete(key)

    def entry(self, key, generator, ttl=0, max_wait=None):
        """Cache.entry() on this table; see Cache._entry for max_wait."""
        return self._c._entry(key, key, generator, _check_ttl(ttl), self._t, max_wait, self._encode)

    def clear(self):
        self._t.clear()

    def info(self):
        """The table's counters (apc_info's fields) as a dict."""
        return self._t.info()._asdict()

    def records(self, live=True, deleted=False):
        """[(EntryRecord, key bytes)]: see Cache.records."""
        return self._t.records(live, deleted)

    def entries(self):
        """[(record dict, key bytes)] of the live entries."""
        return [(_entry_dict(r, k), k) for r, k in self._t.records() if not r.flags & B.REC_EXPIRED]

    def __len__(self):
        return self._t.count_live()
