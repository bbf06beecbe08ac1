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
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Union

from . import _bindings as B
from ._shm import Segment, check_trusted
from .errors import (
    CacheClosedError,
    CacheError,
    CacheFullError,
    CorruptSegmentError,
    IncompatibleSegmentError,
    UntrustedSegmentError,
)
from .serializers import PickleSerializer

if TYPE_CHECKING:
    import re

    from .locks import AsyncLock, Lock

Key = Union[str, bytes]

ffi, lib = B.ffi, B.lib

_MISSING = object()
_BUF = lib.APC_IO_BUF  # values up to this size are copied straight into a per-thread buffer
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1

#: The largest ttl (and gc_ttl) in seconds: about 68 years.  Larger ones
#: are refused with ValueError rather than wrapping around.
MAX_TTL = (1 << 31) - 1
_CLOSED = "operation on a closed cache"
_F64 = struct.Struct("<d")
_REC = struct.Struct("<10Q4I")  # apc_entry_rec


_fetch = lib.apc_fetch
_store = lib.apc_store
_ident = threading.get_ident

if os.environ.get("APCCACHE_NO_FASTPATH", "") in ("", "0"):
    try:
        from . import _fastpath
    except ImportError:  # a build without it: the cffi path does everything
        _fastpath = None
else:
    _fastpath = None
# What the fast path calls, by address: the very functions lib calls.
_FAST_FNS = tuple(
    int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))
    for name in ("apc_fetch_ref", "apc_ref_release", "apc_store", "apc_count_corrupt",
                 "apc_exists", "apc_delete", "apc_inc", "apc_cas", "apc_touch")
)
_FAST_OPS = ("fetch", "store", "add", "exists", "delete", "inc", "dec", "cas", "touch")
DEFAULT_LOCK_TIMEOUT = 5.0


def _key_bytes(key):
    """Validate a key and return its bytes (str keys as UTF-8)."""
    if type(key) is str or isinstance(key, str):
        try:
            k = key.encode()
        except UnicodeEncodeError:
            raise ValueError("key is not encodable as UTF-8 (lone surrogate?)") from None
    elif isinstance(key, bytes):
        k = bytes(key)
    else:
        raise TypeError(f"key must be str or bytes, not {type(key).__name__}")
    if len(k) > B.MAX_KEY:
        raise ValueError(f"key is {len(k)} bytes; the limit is {B.MAX_KEY}")
    return k


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


def _human(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024


def _key_out(k):
    try:
        return k.decode()
    except UnicodeDecodeError:
        return k


class _IO:
    """A thread's copy-out buffer and the views on it."""

    __slots__ = ("io", "buf", "view", "i64", "u64")

    def __init__(self):
        self.io = io = ffi.new("apc_io *")
        self.buf = io.buf
        self.view = ffi.buffer(io, _BUF)
        self.i64 = ffi.cast("int64_t *", io)
        self.u64 = ffi.cast("uint64_t *", io)


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

    def __init__(self, shm, seg, serializer=None, clock=None, owner=False,
                 lock_timeout=DEFAULT_LOCK_TIMEOUT):
        self._shm = shm
        self._seg = seg
        self._mv = shm.buf
        # The binding's own mapping (the aux area) is guarded against SIGBUS
        # like the engine's: a truncated file is an error, not a crash.
        base = ffi.from_buffer(shm.buf)
        self._mv_base = ffi.cast("void *", int(ffi.cast("uintptr_t", base)))
        del base  # an address is all the guard needs: no export kept on buf
        lib.apc_guard_range(seg, self._mv_base, shm.size)
        lib.apc_set_lock_timeout(seg, _check_lock_timeout(lock_timeout))
        self._entries = {}  # entry() generations this handle runs: token -> tid
        self._ser = serializer or PickleSerializer()
        self._clock = clock
        self._ios = {}  # thread ident -> _IO
        self._owner = owner
        self._untrusted = None  # why not, for a handle opened for inspection only
        self.name = shm.name.lstrip("/")
        self._fast = None
        if _fastpath is not None:
            # The single-key operations as CPython methods (csrc/fastpath.c);
            # what they do not take as it is comes back to the methods below.
            slow = {op: getattr(self, op) for op in _FAST_OPS}
            self._fast = h = _fastpath.Handle(
                int(ffi.cast("uintptr_t", seg)), *_FAST_FNS, slow, self._raise_rc, self._ser,
                clock)
            for op in _FAST_OPS:
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
        nslots = lib.apc_next_prime(slots)
        nfiles = lib.apc_next_prime(max(61, nslots // 8))
        minimum = lib.apc_layout_size(nslots, nfiles) + 65536
        if size < minimum:
            raise ValueError(
                f"size {size} is too small for {nslots} slots: it must be at least {minimum} bytes"
                " (pass a larger size or fewer slots)"
            )
        shm = Segment(name, create=True, size=size, reserve=reserve, mode=mode,
                      trust="group" if mode == 0o660 else "owner")
        try:
            base = ffi.from_buffer(shm.buf)
            now = int(clock()) if clock else 0
            flags = lib.APC_FMT_CHECKSUMS if checksums else 0
            B.check(
                lib.apc_format_segment(base, size, nslots, nfiles, ttl, gc_ttl, now, os.getpid(),
                                       flags),
                f"formatting segment {name!r}",
            )
            del base
            segp = ffi.new("apc_seg **")
            B.check(lib.apc_attach_fd(shm._fd, segp), f"opening segment {name!r}")
        except BaseException:
            shm.unlink()
            try:
                shm.close()
            except BufferError:
                pass
            raise
        return cls(shm, segp[0], serializer, clock, owner=True, lock_timeout=lock_timeout)

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
        deadline = time.monotonic() + timeout
        try:
            segp = ffi.new("apc_seg **")
            while True:
                rc = lib.apc_attach_fd(shm._fd, segp)
                if rc != B.E_NOTREADY or time.monotonic() > deadline:
                    break
                time.sleep(0.005)
            if rc == lib.APC_E_FORMAT:
                fmt = lib.apc_peek_format(ffi.from_buffer(shm.buf), shm.size)
                raise IncompatibleSegmentError(
                    f"segment {name!r} has layout version {fmt} (or was made on another ABI); this "
                    f"apccache reads version {B.FORMAT}: stop its users and recreate it, or use the "
                    "apccache version that created it"
                )
            if rc == lib.APC_E_MAGIC:
                raise IncompatibleSegmentError(
                    f"segment {name!r} is not an apccache segment (bad magic): choose another name"
                )
            if rc == lib.APC_E_TRUNCATED:
                raise CorruptSegmentError(
                    f"segment {name!r} is shorter ({shm.size} bytes) than its header says: it was "
                    "truncated; unlink and recreate it"
                )
            if rc == B.E_NOTREADY:
                raise IncompatibleSegmentError(
                    f"segment {name!r} was never finished by its creator: unlink and recreate it"
                )
            B.check(rc, f"attaching segment {name!r}")
        except BaseException:
            shm.close()
            raise
        handle = cls(shm, segp[0], serializer, clock, lock_timeout=lock_timeout)
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
        seg = self._seg
        if seg == ffi.NULL:
            return
        for token, tid in list(self._entries.items()):
            lib.apc_entry_end(seg, token, tid)
        self._entries.clear()
        self._seg = ffi.NULL
        if self._fast is not None:
            self._fast.close()
        lib.apc_close(seg)  # waits for the calls in flight
        lib.apc_guard_range(seg, self._mv_base, 0)
        self._mv = self._mv_base = None
        self._ios = {}
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
        seg = getattr(self, "_seg", ffi.NULL)
        fast = getattr(self, "_fast", None)
        if fast is not None:
            fast.close()
        if seg != ffi.NULL:
            self._seg = ffi.NULL
            lib.apc_close(seg)

    def __repr__(self):
        state = "closed" if self._seg == ffi.NULL else f"{_human(self._shm.size)}"
        return f"<apccache.Cache {self.name!r} {state}>"

    @property
    def closed(self) -> bool:
        return self._seg == ffi.NULL

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
        off = lib.apc_aux_offset(self._seg)
        return self._mv[off : off + lib.apc_aux_size(self._seg)]

    # ------------------------------------------------------------- helpers

    def _io(self):
        """This thread's copy-out buffer (the GIL is released during C calls, so
        threads must not share one)."""
        ios = self._ios
        t = ios.get(_ident())
        if t is None:
            if len(ios) > 256:  # threads come and go: forget the old ones
                ios.clear()
            t = ios[_ident()] = _IO()
        return t

    def _now(self):
        c = self._clock
        return int(c()) if c else 0

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

    def _decode(self, tag, data, ival=0, table=0):
        """The value for a tag and its bytes, or _MISSING (counted as a
        corrupt read) for bytes that do not decode as their tag says: bad
        UTF-8, a short float, an unknown tag, or what the serializer
        refuses."""
        try:
            if tag == B.T_BYTES:
                return data
            if tag == B.T_STR:
                return data.decode("utf-8", "surrogatepass")
            if tag == B.T_INT:
                return ival
            if tag == B.T_SER:
                return self._ser.loads(data)
            if tag == B.T_FLOAT:
                return _F64.unpack(data)[0]
            if tag == B.T_TRUE:
                return True
            if tag == B.T_FALSE:
                return False
            if tag == B.T_NONE:
                return None
        except Exception:
            pass
        lib.apc_count_corrupt(self._seg, table)
        return _MISSING

    def _fetch_key(self, k, default, table=0):
        """fetch for already-validated key bytes, on any table."""
        io = self._io()
        r = _fetch(self._seg, table, k, len(k), self._now(), io.buf, _BUF)
        return self._result(io, r, k, default, table)

    def _result(self, io, r, k, default, table):
        """The value for what the engine's fetch returned (all but the
        plain-bytes hit, which fetch() handles inline)."""
        if r < 0:
            if r == B.NOTFOUND:
                return default
            if r == lib.APC_E_ARG:
                _key_bytes(k)  # raises the error that says what is wrong
            if r == B.E_SMALL:
                return self._fetch_unbuffered(k, default, table, io.u64[0])
            raise B.error(r, "fetch")
        tag = r & 0x7F
        if tag == B.T_INT:
            return io.i64[0]
        value = self._decode(tag, io.view[0 : r >> 8], 0, table)
        return default if value is _MISSING else value

    def _fetch_with(self, k, fn, default, table):
        """fn(buffer) for the bytes stored under k, while the entry is held:
        a large value is read where it lies (pinned, and released when fn
        returns), a small one from a copy.  default if absent; a value that
        is not bytes is passed as fetch returns it."""
        ref = ffi.new("apc_ref *")
        seg = self._seg
        r = lib.apc_fetch_ref(seg, table, k, len(k), self._now(), ref)
        if r < 0:
            if r == B.NOTFOUND:
                return default
            if r == lib.APC_E_ARG:
                _key_bytes(k)  # raises the error that says what is wrong
            raise B.error(r, "fetch")
        tag, n = r & 0x7F, r >> 8
        if n > _BUF and tag == B.T_BYTES:
            try:
                view = memoryview(ffi.buffer(ref.ptr, n))
                try:
                    return fn(view)
                finally:
                    view.release()
            finally:
                lib.apc_ref_release(seg, ref)
        try:
            data = b"" if tag == B.T_INT else ffi.buffer(ref.ptr, n)[:]
            ival = ref.ival
        finally:
            lib.apc_ref_release(seg, ref)
        value = ival if tag == B.T_INT else self._decode(tag, data, 0, table)
        return default if value is _MISSING else fn(value)

    def _fetch_unbuffered(self, k, default, table, size):
        """The rare path: every pin record is taken, so copy into a buffer
        of the value's size."""
        while True:
            cap = max(size, 16)
            buf = ffi.new("char[]", cap)
            r = lib.apc_fetch(self._seg, table, k, len(k), self._now(), buf, cap)
            if r == B.E_SMALL:
                size = ffi.cast("uint64_t *", buf)[0]
                continue
            if r == B.NOTFOUND:
                return default
            B.check(r, "fetch")
            tag = r & 0x7F
            if tag == B.T_INT:
                return ffi.cast("int64_t *", buf)[0]
            value = self._decode(tag, ffi.unpack(buf, r >> 8), 0, table)
            return default if value is _MISSING else value

    def _store_key(self, k, value, ttl, flags, table=0):
        t = type(value)
        if t is bytes:
            tag, data, ival = B.T_BYTES, value, 0
        elif t is bytearray and table:  # the file table is bytes in, bytes out
            tag, data, ival = B.T_BYTES, ffi.from_buffer(value), 0
        else:
            tag, data, ival = self._encode(value)
        c = self._clock
        rc = _store(self._seg, table, k, len(k), tag, data, len(data), ival, ttl,
                    int(c()) if c else 0, flags)
        if rc < 0:
            if rc == B.EXISTS:
                return False
            raise self._store_error(k, len(data), rc)
        return True

    def _raise_rc(self, op, rc, key, nbytes=0, step=0):
        """Raise what a failed engine call means, for op on key (the one
        place for the fast path, and for the methods below)."""
        if rc == lib.APC_E_ARG:
            _key_bytes(key)  # raises the error that says what is wrong with the key
        if op in ("store", "add"):
            raise self._store_error(_key_bytes(key), nbytes, rc)
        if op in ("inc", "dec"):
            if rc == B.E_TYPE:
                raise TypeError(f"cannot inc/dec key {key!r}: its value is not an int")
            if rc == lib.APC_E_OVERFLOW:
                raise OverflowError(f"inc/dec of key {key!r} by {step} leaves the int64 range")
            if rc == lib.APC_E_NOMEM or rc == lib.APC_E_TOOBIG:
                raise self._full_error(_key_bytes(key), 8, rc)
        raise B.error(rc, op)

    def _store_error(self, k, n, rc):
        if rc == lib.APC_E_ARG:
            _key_bytes(k)  # an oversized key: raises the error that names the limit
        if rc == lib.APC_E_NOMEM or rc == lib.APC_E_TOOBIG:
            return self._full_error(k, n, rc)
        return B.error(rc, "store")

    def _full_error(self, k, n, rc):
        size = self._shm.size
        sma = self.sma_info(limited=True)
        if rc == lib.APC_E_TOOBIG and n >= 1 << 32:
            return CacheFullError(f"a {_human(n)} value is over the engine's limit: values are "
                                  f"under 4 GiB")
        if rc == lib.APC_E_TOOBIG:
            return CacheFullError(
                f"a {_human(n)} entry can never fit in {self.name!r} ({_human(size)} segment, "
                f"{_human(sma['seg_size'])} arena): create a larger cache"
            )
        return CacheFullError(
            f"no room for a {_human(n)} entry in {self.name!r} ({_human(size)} segment, "
            f"{_human(sma['avail_mem'])} free after eviction; the rest is pinned or deleted "
            "entries still in use)"
        )

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
        return self._store_key(_key_bytes(key), value, _check_ttl(ttl), 0)

    def add(self, key: Key, value: Any, ttl: int = 0) -> bool:
        """Store only if no live entry exists; True if stored.  Exactly one
        of several processes adding the same key at once wins."""
        return self._store_key(_key_bytes(key), value, _check_ttl(ttl), lib.APC_ADD)

    def delete(self, key: Key) -> bool:
        """Remove the entry; False if there was none (or it had expired)."""
        k = _key_bytes(key)
        rc = lib.apc_delete(self._seg, 0, k, len(k), self._now())
        if rc == B.NOTFOUND:
            return False
        B.check(rc, "delete")
        return True

    def exists(self, key: Key) -> bool:
        """Is there a live entry?  Counts neither a hit nor a miss."""
        k = _key_bytes(key)
        rc = lib.apc_exists(self._seg, 0, k, len(k), self._now())
        if rc == B.NOTFOUND:
            return False
        B.check(rc, "exists")
        return True

    def inc(self, key: Key, step: int = 1, ttl: int = 0) -> int:
        """Add step to the int stored under key, atomically across processes,
        and return the new value.  A missing or expired key is created as 0
        first (with ttl).  TypeError if the value is not an int;
        OverflowError if the result leaves int64; the value is then
        unchanged."""
        k = _key_bytes(key)
        step = _check_int("step", step)
        ttl = _check_ttl(ttl)
        i64 = self._io().i64
        rc = lib.apc_inc(self._seg, 0, k, len(k), step, ttl, self._now(), i64)
        if rc < 0:
            self._raise_rc("inc", rc, key, 8, step)
        return i64[0]

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
        k = _key_bytes(key)
        old = _check_int("old", old)
        new = _check_int("new", new)
        rc = lib.apc_cas(self._seg, 0, k, len(k), old, new, self._now())
        if rc == 0:
            return True
        if rc in (B.NOTFOUND, B.MISMATCH, B.E_TYPE):
            return False
        raise B.error(rc, "cas")

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
        return self._entry(_key_bytes(key), key, generator, _check_ttl(ttl), 0)

    def _entry(self, k, key, generator, ttl, table, max_wait=None):
        """entry() on any table.  With max_wait, a process that has waited
        that long for another's generator runs its own (and its result is
        stored only if the key is still missing)."""
        value = self._fetch_key(k, _MISSING, table)
        if value is not _MISSING:
            return value
        tid = threading.get_ident()
        out = ffi.new("int64_t[2]")
        delay = 0.0005
        deadline = None if max_wait is None else time.monotonic() + max_wait
        unreadable = 0
        while True:
            rc = lib.apc_entry_begin(self._seg, table, k, len(k), tid, self._now(), out)
            if rc == B.EXISTS:
                value = self._fetch_key(k, _MISSING, table)
                if value is not _MISSING:
                    return value
                # Deleted or replaced in between, or an entry that exists but
                # never reads (damaged: a corrupt read is a miss).  Again and
                # again: drop it, and generate.
                unreadable += 1
                if unreadable >= 3:
                    lib.apc_delete(self._seg, table, k, len(k), self._now())
                continue
            unreadable = 0
            if rc == B.BUSY_SELF:
                value = generator(key)
                self._store_key(k, value, ttl, 0, table)
                return value
            if rc == B.BUSY:
                token, holder = out[0], out[1]
                if token >= 0 and lib.apc_entry_holder_alive(self._seg, token) == 0:
                    if lib.apc_entry_takeover(self._seg, token, holder, tid, self._now()) == 0:
                        return self._generate(k, key, generator, ttl, table, token, tid)
                    continue
                if deadline is not None and time.monotonic() >= deadline:
                    value = generator(key)
                    self._store_key(k, value, ttl, lib.APC_ADD, table)
                    return value
                time.sleep(delay)
                delay = min(delay * 2, 0.02)
                continue
            B.check(rc, "entry")
            return self._generate(k, key, generator, ttl, table, out[0], tid)

    def _generate(self, k, key, generator, ttl, table, token, tid):
        self._entries[token] = tid  # close() gives it up, if it comes first
        try:
            value = generator(key)
            self._store_key(k, value, ttl, 0, table)
        finally:
            if self._entries.pop(token, None) is not None:
                lib.apc_entry_end(self._seg, token, tid)
        return value

    # --------------------------------------------------------- many at once

    def store_many(self, mapping: Mapping[Key, Any], ttl: int = 0) -> List[Key]:
        """Store every item; returns the keys that could not be stored (no
        room, unserialisable value), [] on success.  Keys are all checked
        first: a bad key raises before anything is stored.  An error of
        the cache itself (closed, busy, corrupt) raises."""
        self._require_open()
        ttl = _check_ttl(ttl)
        items = list(mapping.items())
        for key, _ in items:
            _key_bytes(key)  # every key is checked before any is stored
        store = self.store  # the fast path, where there is one
        failed = []
        for key, v in items:
            try:
                store(key, v, ttl)
            except CacheFullError:
                failed.append(key)
            except CacheError:
                raise
            except Exception:  # the value cannot be serialised
                failed.append(key)
        return failed

    def add_many(self, mapping: Mapping[Key, Any], ttl: int = 0) -> List[Key]:
        """add() for each item; returns the keys not added (a live entry
        existed, no room, or an unserialisable value); an error of the
        cache itself raises, as for store_many."""
        self._require_open()
        ttl = _check_ttl(ttl)
        items = list(mapping.items())
        for key, _ in items:
            _key_bytes(key)  # every key is checked before any is added
        add = self.add  # the fast path, where there is one
        failed = []
        for key, v in items:
            try:
                if not add(key, v, ttl):
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
        B.check(lib.apc_clear(self._seg, 0, self._now()), "clear")

    def _info(self, table):
        o = ffi.new("apc_info *")
        B.check(lib.apc_info_get(self._seg, table, o), "info")
        return {f: getattr(o, f) for f in dir(o)}

    def info(self, limited: bool = False) -> Dict[str, Any]:
        """Counters of the user cache, as one snapshot; unless limited, also
        'entries' and 'deleted_list' (entries waiting on the GC list)."""
        i = self._info(0)
        out = {
            "num_slots": i["num_slots"],
            "num_hits": i["num_hits"],
            "num_misses": i["num_misses"],
            "num_inserts": i["num_inserts"],
            "num_entries": i["num_entries"],
            "expunges": i["expunges"],
            "evictions": i["evictions"],
            "expired": i["expired"],
            "start_time": i["start_time"],
            "mem_size": i["mem_size"],
            "ttl": i["ttl"],
            "gc_ttl": i["gc_ttl"],
            "gc_entries": i["gc_entries"],
            "gc_mem_size": i["gc_mem_size"],
            "gc_oldest": i["gc_oldest"],
            "seg_size": i["seg_size"],
            "format": i["format"],
            "create_time": i["create_time"],
            "creator_pid": i["creator_pid"],
            "repairs": i["repairs"],
            "compactions": i["compactions"],
            "entries_in_progress": i["entry_locks"],
            "pins": i["pins"],
            "corrupt_reads": i["corrupt_reads"],
            "waited_reads": i["waited_reads"],
            "lock_steals": i["lock_steals"],
            "whole_lock_max_us": i["wl_hold_max_ns"] // 1000,
            "checksums": bool(i["checksums"]),
        }
        if not limited:
            now = self._now()
            out["entries"] = [self._entry_dict(r, k) for r, k in self._snapshot(0, lib.APC_SNAP_LIVE, now)
                              if not r[13] & lib.APC_REC_EXPIRED]
            out["deleted_list"] = [self._entry_dict(r, k) for r, k in self._snapshot(0, lib.APC_SNAP_DELETED, now)]
        return out

    @staticmethod
    def _entry_dict(r, k):
        return {
            "key": _key_out(k),
            "hits": r[6],
            "creation_time": r[1],
            "mtime": r[2],
            "access_time": r[3],
            "deletion_time": r[4],
            "ttl": r[5],
            "mem_size": r[7],
            "refs": r[10],
        }

    def _stripe_of(self, key, table=0):
        """The bucket stripe of a key: writes of keys in different stripes
        do not wait for each other (tests and tools)."""
        k = _key_bytes(key)
        rc = lib.apc_key_stripe(self._seg, table, k, len(k))
        if rc < 0:
            raise B.error(rc, "stripe")
        return rc

    def _snapshot(self, table, flags, now):
        """[(record tuple, key bytes)]: the live entries (APC_SNAP_LIVE) a
        bounded chunk at a time, so that writers wait for one chunk at
        most; the GC list (APC_SNAP_DELETED) in one piece."""
        parts = []
        if flags & lib.APC_SNAP_LIVE:
            cursor = ffi.new("uint64_t[2]")
            nslots = self._info(table)["num_slots"]
            cap = 1 << 18
            buf = ffi.new("char[]", cap)
            while cursor[0] < nslots:
                r = lib.apc_snapshot_chunk(self._seg, table, now, cursor, buf, cap)
                if r == B.E_SMALL:  # one bucket holds more than the buffer
                    cap = ffi.cast("uint64_t *", buf)[0] + 4096
                    buf = ffi.new("char[]", cap)
                    continue
                B.check(r, "snapshot")
                parts.append(ffi.buffer(buf, r)[:])
        if flags & lib.APC_SNAP_DELETED:
            i = self._info(table)
            # Counts read from the segment are claims: no more entries than
            # blocks fit in the arena.
            n = min(i["gc_entries"], i["arena_size"] // 32)
            cap = max(1 << 16, (n + 64) * (_REC.size + 48))
            while True:
                buf = ffi.new("char[]", cap)
                r = lib.apc_snapshot(self._seg, table, now, lib.APC_SNAP_DELETED, buf, cap)
                if r == B.E_SMALL:
                    cap = ffi.cast("uint64_t *", buf)[0] + 4096
                    continue
                B.check(r, "snapshot")
                parts.append(ffi.buffer(buf, r)[:])
                break
        data = b"".join(parts)
        out = []
        pos, rs = 0, _REC.size
        while pos < len(data):
            rec = _REC.unpack_from(data, pos)
            klen = rec[11]
            out.append((rec, data[pos + rs : pos + rs + klen]))
            pos += rs + ((klen + 7) & ~7)
        return out

    def _count_live(self, table):
        """The table's entries that have not expired, counted a chunk at a
        time (one short lock hold each)."""
        cursor = ffi.new("uint64_t[2]")
        nslots, now, n = self._info(table)["num_slots"], self._now(), 0
        while cursor[0] < nslots:
            n += B.check(lib.apc_count_live_chunk(self._seg, table, now, cursor), "len")
        return n

    def sma_info(self, limited: bool = False) -> Dict[str, Any]:
        """The allocator: seg_size (usable arena bytes), avail_mem (free
        bytes), largest_free, and unless limited block_lists, the free
        blocks as [[{size, offset}, ...]] (one list: one segment)."""
        o = ffi.new("apc_sma_info *")
        cap = 0 if limited else 4096
        while True:
            blocks = ffi.new("uint64_t[]", 2 * cap) if cap else ffi.NULL
            n = B.check(lib.apc_sma_info_get(self._seg, o, blocks, cap), "sma_info")
            if limited or n < cap or o.nfree <= cap:
                break
            cap = o.nfree + 256
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
            out["block_lists"] = [[{"size": blocks[2 * i], "offset": blocks[2 * i + 1]} for i in range(n)]]
        return out

    def key_info(self, key: Key) -> Optional[Dict[str, int]]:
        """hits, access_time, mtime, creation_time, deletion_time, ttl, refs
        of a live entry, or None.  Not a hit."""
        k = _key_bytes(key)
        r = ffi.new("apc_entry_rec *")
        rc = lib.apc_key_info(self._seg, 0, k, len(k), self._now(), r)
        if rc == B.NOTFOUND:
            return None
        B.check(rc, "key_info")
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
        return self._keys(self._snapshot(0, lib.APC_SNAP_LIVE, self._now()), rx)

    @staticmethod
    def _keys(snap, rx):
        for rec, k in snap:
            if rec[13] & lib.APC_REC_EXPIRED:
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
        cap = 1 << 16
        buf = ffi.new("char[]", cap)
        n = lib.apc_check(self._seg, buf, cap)
        if n == lib.APC_E_CLOSED:
            raise CacheClosedError(_CLOSED)
        text = ffi.string(buf).decode(errors="replace")
        lines = [ln for ln in text.split("\n") if ln]
        if n > len(lines):
            lines.append(f"... and {n - len(lines)} more")
        return lines

    def recover(self, pid: int) -> int:
        """Release what the dead process pid still held: pins on large
        values, and entry() generations in progress.  Returns how many."""
        pid = _check_int("pid", pid)
        if pid <= 0:
            raise ValueError(f"pid must be > 0 (got {pid})")
        return B.check(lib.apc_recover(self._seg, pid, self._now()), "recover")

    # ---------------------------------------------------------- mapping protocol

    def __len__(self):
        return self._count_live(0)

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
        return FileTable(self)

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
        k = _key_bytes(key)
        rc = lib.apc_touch(self._seg, 0, k, len(k), _check_ttl(ttl), self._now())
        if rc == B.NOTFOUND:
            return False
        if rc < 0:
            self._raise_rc("touch", rc, key)
        return True

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

    def _entry_begin(self, k, tid, out):
        return lib.apc_entry_begin(self._seg, 0, k, len(k), tid, self._now(), out)

    def _entry_takeover(self, token, holder, tid):
        return lib.apc_entry_takeover(self._seg, token, holder, tid, self._now())

    def _entry_end(self, token, tid):
        if self._entries.pop(token, None) is not None:
            lib.apc_entry_end(self._seg, token, tid)


class FileTable:
    """The second slot table of a segment, bytes in and bytes out.

    The same engine, locks and arena as the user cache, but its own buckets,
    counters and clear(): APC kept compiled files apart from user entries,
    and so does apccache.  Keys are bytes; values are stored as given
    (bytes are not serialised)."""

    TABLE = lib.APC_TABLE_FILES

    def __init__(self, cache):
        self._c = cache

    def get(self, key, default=None):
        """The bytes stored under key, or default (counts a hit or miss)."""
        return self._c._fetch_key(key, default, self.TABLE)

    def view(self, key, fn, default=None):
        """fn(buffer) for the value under key, or default; see get().  A
        large value is read in place, without a copy: the buffer is valid
        only until fn returns, and fn must keep no view of it."""
        return self._c._fetch_with(key, fn, default, self.TABLE)

    def put(self, key, data, ttl=0):
        """Store, replacing any entry (data: bytes, or a bytearray stored
        as bytes)."""
        return self._c._store_key(key, data, _check_ttl(ttl), 0, self.TABLE)

    def add(self, key, data, ttl=0):
        """Store only if absent; False if a live entry exists."""
        return self._c._store_key(key, data, _check_ttl(ttl), lib.APC_ADD, self.TABLE)

    def delete(self, key):
        c = self._c
        rc = lib.apc_delete(c._seg, self.TABLE, key, len(key), c._now())
        if rc == B.NOTFOUND:
            return False
        B.check(rc, "delete")
        return True

    def entry(self, key, generator, ttl=0, max_wait=None):
        """Cache.entry() on this table; see Cache._entry for max_wait."""
        return self._c._entry(key, key, generator, _check_ttl(ttl), self.TABLE, max_wait)

    def clear(self):
        B.check(lib.apc_clear(self._c._seg, self.TABLE, self._c._now()), "clear")

    def info(self):
        return self._c._info(self.TABLE)

    def entries(self):
        """[(record dict, key bytes)] of the live entries."""
        c = self._c
        return [(c._entry_dict(r, k), k) for r, k in c._snapshot(self.TABLE, lib.APC_SNAP_LIVE, c._now())
                if not r[13] & lib.APC_REC_EXPIRED]

    def __len__(self):
        return self._c._count_live(self.TABLE)
