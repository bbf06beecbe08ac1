"""The binding layer: every call into the compiled engine, and nothing else.

``ffi`` and ``lib`` come from ``apccache._engine``, or from
``apccache._engine_debug`` when ``APCCACHE_DEBUG=1`` is set (assertions and
the named fault-injection points; ``APCCACHE_FAULT=<point>`` arms one).
No other module of the package touches ``lib`` or ``ffi``; what they need
of the engine, they ask of the three things defined here (the way PyNaCl's
``bindings`` and argon2-cffi's ``low_level`` sit under their public APIs):

- ``SegmentHandle``: one attached segment (the engine's ``apc_seg``):
  formatting, attaching, closing, the clock, the whole-segment calls
  (``check``, ``recover``, ``sma_info``, the aux area) and the C fast path
  built over it;
- ``Table(segment, table_id)``: one slot table of it (the user cache's, or
  the file cache's): one method per engine call, keys and values already
  bytes, answers in Python terms (``True``/``False``/``None``, a tag and its
  payload, a record), every failure raised as its exception;
- ``ERRORS``, the one table from a return code to its exception, and
  ``error()``, which builds the exception with the operation, the key and
  whatever the code needs said (``CacheFullError`` names the segment and
  its free room, ``CacheBusyError`` the process that held the lock).

Engine records come back as named, frozen tuples: ``EntryRecord`` (a
snapshot's entry, or ``key_info``), ``TableInfo`` (``apc_info``) and
``SmaInfo`` (``apc_sma_info``); they still index like the tuples they
replace.

Values are not this layer's business: a ``Table`` stores a type tag and its
bytes (or int), and hands them back as such.  What a tag means for Python
objects is the codec's, in ``apccache.cache`` (the user cache) and
``FileTable`` (the file cache).
"""
import os
import struct
import threading
import time
from typing import NamedTuple, Optional

from ._units import format_size as human_size
from .errors import (
    CacheBusyError,
    CacheClosedError,
    CacheError,
    CacheFullError,
    CacheLockError,
    CorruptSegmentError,
    IncompatibleSegmentError,
)

DEBUG = os.environ.get("APCCACHE_DEBUG", "") not in ("", "0")

if DEBUG:
    from ._engine_debug import ffi, lib
else:
    from ._engine import ffi, lib

if os.environ.get("APCCACHE_FAULT"):
    if lib.apc_fault_arm(os.environ["APCCACHE_FAULT"].encode()) != 0:
        raise RuntimeError("APCCACHE_FAULT needs the debug engine: set APCCACHE_DEBUG=1 as well")

FORMAT = lib.APC_FORMAT
MAX_KEY = lib.APC_MAX_KEY
IO_BUF = lib.APC_IO_BUF  # values up to this size are copied straight into a per-thread buffer

TABLE_USER = lib.APC_TABLE_USER
TABLE_FILES = lib.APC_TABLE_FILES

# Value type tags (apc.h defines them).
T_BYTES = lib.APC_T_BYTES
T_STR = lib.APC_T_STR
T_INT = lib.APC_T_INT
T_FLOAT = lib.APC_T_FLOAT
T_TRUE = lib.APC_T_TRUE
T_FALSE = lib.APC_T_FALSE
T_NONE = lib.APC_T_NONE
T_SER = lib.APC_T_SER
TYPE_MASK = 0x7F

# What a snapshot takes (SNAP_*) and what a record says of its entry (REC_*).
SNAP_LIVE = lib.APC_SNAP_LIVE
SNAP_DELETED = lib.APC_SNAP_DELETED
REC_DELETED = lib.APC_REC_DELETED
REC_EXPIRED = lib.APC_REC_EXPIRED

OK = lib.APC_OK
NOTFOUND = lib.APC_NOTFOUND
EXISTS = lib.APC_EXISTS
BUSY = lib.APC_BUSY
BUSY_SELF = lib.APC_BUSY_SELF
MISMATCH = lib.APC_MISMATCH
E_NOMEM = lib.APC_E_NOMEM
E_TOOBIG = lib.APC_E_TOOBIG
E_TYPE = lib.APC_E_TYPE
E_OVERFLOW = lib.APC_E_OVERFLOW
E_MAGIC = lib.APC_E_MAGIC
E_FORMAT = lib.APC_E_FORMAT
E_TRUNCATED = lib.APC_E_TRUNCATED
E_CORRUPT = lib.APC_E_CORRUPT
E_ARG = lib.APC_E_ARG
E_LOCK = lib.APC_E_LOCK
E_SMALL = lib.APC_E_SMALL
E_NOTREADY = lib.APC_E_NOTREADY
E_SYS = lib.APC_E_SYS
E_CLOSED = lib.APC_E_CLOSED
E_BUSY = lib.APC_E_BUSY

_ADD = lib.APC_ADD
_fetch = lib.apc_fetch
_store = lib.apc_store
_ident = threading.get_ident


def _layout():
    m = ffi.new("apc_header_map *")
    lib.apc_header_map_get(m)
    return {f: getattr(m, f) for f in dir(m)}


# Where the header's and an entry's fields lie (for apcstat --list, and for
# tests that must scribble on a segment).
LAYOUT = _layout()


# ------------------------------------------------------------------ records


class EntryRecord(NamedTuple):
    """One entry as the engine copies it out (``apc_entry_rec``): times in
    epoch seconds, sizes in bytes; ``type`` is the value's tag, ``flags``
    REC_DELETED / REC_EXPIRED; ``offset`` is where its slot lies."""

    hash: int
    ctime: int
    mtime: int
    atime: int
    dtime: int
    ttl: int
    hits: int
    mem_size: int
    val_len: int
    offset: int
    refs: int
    key_len: int
    type: int
    flags: int


_REC = struct.Struct("<10Q4I")  # apc_entry_rec, as a snapshot lays it out
assert _REC.size == ffi.sizeof("apc_entry_rec")


class TableInfo(NamedTuple):
    """The counters of one slot table and the segment's header (``apc_info``)."""

    format: int
    seg_size: int
    arena_size: int
    create_time: int
    creator_pid: int
    ttl: int
    gc_ttl: int
    num_slots: int
    num_entries: int
    mem_size: int
    num_hits: int
    num_misses: int
    num_inserts: int
    expunges: int
    evictions: int
    expired: int
    start_time: int
    gc_entries: int
    gc_mem_size: int
    gc_oldest: int
    repairs: int
    compactions: int
    entry_locks: int
    pins: int
    corrupt_reads: int
    waited_reads: int
    lock_steals: int
    checksums: int
    wl_hold_max_ns: int


class SmaInfo(NamedTuple):
    """The allocator (``apc_sma_info``); ``free_blocks`` is ((size, offset),
    ...) when it was asked for, else None."""

    arena_size: int
    avail: int
    used: int
    largest_free: int
    nfree: int
    nused: int
    free_blocks: Optional[tuple]


# ------------------------------------------------------------------ errors


def strerror(rc):
    return ffi.string(lib.apc_strerror(rc)).decode()


#: Every negative return code: its exception, and what it says.  A message
#: is formatted with ``op`` (the operation), ``key`` (repr, or "" when
#: there is none), ``at`` ("op key: " or "op: ", the usual start),
#: ``what`` (the engine's own words), ``name``, ``size``, ``n``, ``avail``,
#: ``arena`` (a segment and a value's size, humanly), ``step`` and
#: ``pid``.  A code whose message depends on the operation has a dict:
#: {op: message}, and None for any other operation.
ERRORS = {
    E_NOMEM: (CacheFullError, "{at}no room for a {n} entry in {name!r} ({size} segment, {avail} free after "
                              "eviction; the rest is pinned or deleted entries still in use)"),
    E_TOOBIG: (CacheFullError, "{at}a {n} entry can never fit in {name!r} ({size} segment, {arena} arena): "
                               "create a larger cache"),
    E_TYPE: (TypeError, {"inc": "cannot {op} key {key}: its value is not an int",
                         None: "{at}{what}"}),
    E_OVERFLOW: (OverflowError, {"inc": "{op} of key {key} by {step} leaves the int64 range",
                                 None: "{at}{what}"}),
    E_MAGIC: (IncompatibleSegmentError, {"attach": "segment {name!r} is not an apccache segment (bad "
                                                   "magic): choose another name",
                                         None: "{at}{what}"}),
    E_FORMAT: (IncompatibleSegmentError, {"attach": "segment {name!r} has layout version {fmt} (or was "
                                                    "made on another ABI); this apccache reads version "
                                                    f"{FORMAT}: stop its users and recreate it, or use "
                                                    "the apccache version that created it",
                                          None: "{at}{what}"}),
    E_TRUNCATED: (CorruptSegmentError, {"attach": "segment {name!r} is shorter ({bytes} bytes) than its "
                                                  "header says: it was truncated; unlink and recreate it",
                                        None: "{at}the segment's file was truncated under this process "
                                              "(or is shorter than its header says): close this handle; "
                                              "unlink and recreate the segment"}),
    E_CORRUPT: (CorruptSegmentError, "{at}{what}"),
    E_ARG: (ValueError, "{at}{what}"),
    E_LOCK: (CacheLockError, "{at}{what}"),
    E_SMALL: (CacheError, "{at}{what}"),
    E_NOTREADY: (IncompatibleSegmentError, {"attach": "segment {name!r} was never finished by its "
                                                      "creator: unlink and recreate it",
                                            None: "{at}{what}"}),
    E_SYS: (OSError, "{at}{what}"),
    E_CLOSED: (CacheClosedError, "{at}operation on a closed cache"),
    E_BUSY: (CacheBusyError, "{at}pid {pid} has held a lock of the segment for longer than the lock "
                             "timeout (stopped, or stuck in a long operation?)"),
}
# inc and dec share their messages.
_SAME_AS = {"dec": "inc"}

#: The exception class of each code, as ERRORS has it.
RC_ERRORS = {rc: cls for rc, (cls, _msg) in ERRORS.items()}


def error(rc, op="", key=None, *, segment=None, nbytes=0, step=0, fmt=None):
    """The exception for the negative return code rc of operation op on key
    (bytes or str; None for an operation on no key), from ERRORS.  segment
    (a SegmentHandle) and nbytes fill in what CacheFullError says."""
    if rc == E_ARG and key is not None:
        key_bytes(key)  # raises the error that says what is wrong with the key
    cls, msg = ERRORS.get(rc, (CacheError, "{at}{what}"))
    if type(msg) is dict:
        msg = msg.get(_SAME_AS.get(op, op)) or msg[None]
    k = "" if key is None else repr(key)
    fields = {
        "op": op, "key": k, "what": strerror(rc), "step": step, "fmt": fmt,
        "at": f"{op} {k}: " if k else (f"{op}: " if op else ""),
        "name": segment.name if segment is not None else "", "bytes": segment.size if segment else 0,
        "size": human_size(segment.size) if segment is not None else "?", "n": human_size(nbytes),
    }
    if rc == E_BUSY:
        fields["pid"] = pid = lib.apc_last_busy_pid()
        return CacheBusyError(msg.format(**fields), pid)
    if rc in (E_NOMEM, E_TOOBIG):
        if rc == E_TOOBIG and nbytes >= 1 << 32:
            return CacheFullError(f"{fields['at']}a {human_size(nbytes)} value is over the engine's limit: "
                                  "values are under 4 GiB")
        sma = segment.sma_info(limited=True) if segment is not None else None
        fields["avail"] = human_size(sma.avail) if sma else "?"
        fields["arena"] = human_size(sma.arena_size) if sma else "?"
    return cls(msg.format(**fields))


def check(rc, op="", key=None):
    """rc, or the exception for it if it is negative."""
    if rc < 0:
        raise error(rc, op, key)
    return rc


def key_bytes(key):
    """Validate a key and return its bytes (str keys as UTF-8): what the
    engine takes as a key."""
    if type(key) is str or isinstance(key, str):
        try:
            k = key.encode()
        except UnicodeEncodeError:
            raise ValueError("key is not encodable as UTF-8 (lone surrogate?)") from None
    elif isinstance(key, bytes):
        k = bytes(key)
    else:
        raise TypeError(f"key must be str or bytes, not {type(key).__name__}")
    if len(k) > MAX_KEY:
        raise ValueError(f"key is {len(k)} bytes; the limit is {MAX_KEY}")
    return k


# ----------------------------------------------------------- free functions


def pid_alive(pid):
    """Is pid a running process on this host?  A zombie (killed, not yet
    reaped) is not; one owned by another user is."""
    return pid > 0 and bool(lib.apc_pid_alive(pid))


def slot_counts(slots):
    """(user table slots, file table slots, the least segment size they
    need) for a hint of slots."""
    nslots = lib.apc_next_prime(slots)
    nfiles = lib.apc_next_prime(max(61, nslots // 8))
    return nslots, nfiles, lib.apc_layout_size(nslots, nfiles) + 65536


# ----------------------------------------------------------------- segment

if os.environ.get("APCCACHE_NO_FASTPATH", "") in ("", "0"):
    try:
        from . import _fastpath
    except ImportError:  # a build without it: the Python path does everything
        _fastpath = None
else:
    _fastpath = None
# What the fast path calls, by address: the very functions lib calls.
_FAST_FNS = tuple(
    int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))
    for name in ("apc_fetch_ref", "apc_ref_release", "apc_store", "apc_count_corrupt",
                 "apc_exists", "apc_delete", "apc_inc", "apc_cas", "apc_touch")
)
#: The operations the fast path takes (csrc/fastpath.c), each on the user table.
FAST_OPS = ("fetch", "store", "add", "exists", "delete", "inc", "dec", "cas", "touch")


class _IO:
    """A thread's copy-out buffer and the views on it."""

    __slots__ = ("io", "buf", "view", "i64", "u64")

    def __init__(self):
        self.io = io = ffi.new("apc_io *")
        self.buf = io.buf
        self.view = ffi.buffer(io, IO_BUF)
        self.i64 = ffi.cast("int64_t *", io)
        self.u64 = ffi.cast("uint64_t *", io)


class SegmentHandle:
    """One attached segment: the engine's handle on it, and the calls that
    concern the whole segment.  ``shm`` is the ``apccache._shm.Segment``
    whose descriptor the engine mapped; ``clock`` (None, or a callable
    returning seconds) the time handed to every call."""

    def __init__(self, shm, ptr, clock=None, lock_timeout_ns=5 * 10**9):
        self.ptr = ptr
        self.name = shm.name.lstrip("/")
        self.size = shm.size
        self.clock = clock
        self._ios = {}  # thread ident -> _IO
        self._fast = None
        # The binding's own mapping (shm.buf: the aux area) is guarded
        # against SIGBUS like the engine's: a truncated file is an error,
        # not a crash.
        base = ffi.from_buffer(shm.buf)
        self._base = ffi.cast("void *", int(ffi.cast("uintptr_t", base)))
        del base  # an address is all the guard needs: no export kept on buf
        lib.apc_guard_range(ptr, self._base, shm.size)
        lib.apc_set_lock_timeout(ptr, lock_timeout_ns)

    @classmethod
    def create(cls, shm, nslots, nfiles, ttl, gc_ttl, checksums=False, clock=None,
               lock_timeout_ns=5 * 10**9):
        """Format shm's mapping as an empty segment and attach it."""
        base = ffi.from_buffer(shm.buf)
        now = int(clock()) if clock else 0
        flags = lib.APC_FMT_CHECKSUMS if checksums else 0
        rc = lib.apc_format_segment(base, shm.size, nslots, nfiles, ttl, gc_ttl, now, os.getpid(), flags)
        del base
        if rc < 0:
            raise error(rc, f"formatting segment {shm.name.lstrip('/')!r}")
        segp = ffi.new("apc_seg **")
        check(lib.apc_attach_fd(shm._fd, segp), f"opening segment {shm.name.lstrip('/')!r}")
        return cls(shm, segp[0], clock, lock_timeout_ns)

    @classmethod
    def attach(cls, shm, deadline, clock=None, lock_timeout_ns=5 * 10**9):
        """Attach the segment in shm's mapping, waiting until deadline
        (time.monotonic()) for a creator still formatting it."""
        segp = ffi.new("apc_seg **")
        while True:
            rc = lib.apc_attach_fd(shm._fd, segp)
            if rc != E_NOTREADY or time.monotonic() > deadline:
                break
            time.sleep(0.005)
        if rc < 0:
            name = shm.name.lstrip("/")
            fmt = lib.apc_peek_format(ffi.from_buffer(shm.buf), shm.size) if rc == E_FORMAT else None
            said = rc in (E_FORMAT, E_MAGIC, E_TRUNCATED, E_NOTREADY)  # ERRORS words these for attach
            raise error(rc, "attach" if said else f"attaching segment {name!r}",
                        segment=_Named(name, shm.size), fmt=fmt)
        return cls(shm, segp[0], clock, lock_timeout_ns)

    @property
    def closed(self):
        return self.ptr == ffi.NULL

    def close(self):
        """Make every later call fail with CacheClosedError, wait for the
        calls in flight, and let go of the mapping."""
        ptr = self.ptr
        if ptr == ffi.NULL:
            return
        self.ptr = ffi.NULL
        if self._fast is not None:
            self._fast.close()
        lib.apc_close(ptr)  # waits for the calls in flight
        lib.apc_guard_range(ptr, self._base, 0)
        self._base = None
        self._ios = {}

    def release(self):
        """close() for a finaliser: no wait beyond the engine's own."""
        if self._fast is not None:
            self._fast.close()
        ptr = self.ptr
        if ptr != ffi.NULL:
            self.ptr = ffi.NULL
            lib.apc_close(ptr)

    def now(self):
        """The time handed to the engine: 0 (its own clock) or the clock's."""
        c = self.clock
        return int(c()) if c else 0

    def io(self):
        """This thread's copy-out buffer (the GIL is released during C calls,
        so threads must not share one)."""
        ios = self._ios
        t = ios.get(_ident())
        if t is None:
            if len(ios) > 256:  # threads come and go: forget the old ones
                ios.clear()
            t = ios[_ident()] = _IO()
        return t

    def table(self, table_id):
        return Table(self, table_id)

    def fd(self):
        """The engine's own descriptor of the segment's file (-1: none)."""
        return lib.apc_fd(self.ptr)

    def aux_range(self):
        """(offset, size) of the aux area in the segment."""
        return lib.apc_aux_offset(self.ptr), lib.apc_aux_size(self.ptr)

    def check(self):
        """The broken invariants of the whole segment, in words."""
        cap = 1 << 16
        buf = ffi.new("char[]", cap)
        n = lib.apc_check(self.ptr, buf, cap)
        if n == E_CLOSED:
            raise error(n, "check")
        text = ffi.string(buf).decode(errors="replace")
        lines = [ln for ln in text.split("\n") if ln]
        if n > len(lines):
            lines.append(f"... and {n - len(lines)} more")
        return lines

    def recover(self, pid):
        return check(lib.apc_recover(self.ptr, pid, self.now()), "recover")

    def sma_info(self, limited=False):
        """The allocator, as an SmaInfo; with its free blocks unless limited."""
        o = ffi.new("apc_sma_info *")
        cap = 0 if limited else 4096
        while True:
            blocks = ffi.new("uint64_t[]", 2 * cap) if cap else ffi.NULL
            n = check(lib.apc_sma_info_get(self.ptr, o, blocks, cap), "sma_info")
            if limited or n < cap or o.nfree <= cap:
                break
            cap = o.nfree + 256
        free = None if limited else tuple((blocks[2 * i], blocks[2 * i + 1]) for i in range(n))
        return SmaInfo(o.arena_size, o.avail, o.used, o.largest_free, o.nfree, o.nused, free)

    def fast(self, slow, raise_rc, serializer):
        """The user table's single-key operations as C methods
        (``_fastpath.Handle``: fetch, store, add, exists, delete, inc, dec,
        cas, touch), over this segment; None in a build without it.  What
        they do not take as it is goes to ``slow[op]``; an engine error to
        ``raise_rc(op, rc, key, nbytes, step)``."""
        if _fastpath is None:
            return None
        self._fast = _fastpath.Handle(int(ffi.cast("uintptr_t", self.ptr)), *_FAST_FNS, slow, raise_rc,
                                      serializer, self.clock)
        return self._fast

    def near(self, slow, missing):
        """A ``_fastpath.Near`` over this segment's fast path (the fleet
        tier's near hit without a Python frame), or None without one."""
        if self._fast is None:
            return None
        return _fastpath.Near(self._fast, slow, missing)


class _Named:
    """What error() needs of a segment that is not attached yet."""

    def __init__(self, name, size):
        self.name, self.size = name, size


# ------------------------------------------------------------------- table


class Table:
    """One slot table of a segment: the user cache's (TABLE_USER) or the
    file cache's (TABLE_FILES).  Keys are bytes (checked by the caller);
    every method is one engine call (or a short loop of them) and raises
    the exception ERRORS gives for a failure, naming the operation and
    the key."""

    __slots__ = ("segment", "id")

    def __init__(self, segment, table_id):
        self.segment = segment
        self.id = table_id

    def __repr__(self):
        return f"<apccache._bindings.Table {self.id} of {self.segment.name!r}>"

    def error(self, op, rc, key=None, nbytes=0, step=0):
        """The exception for rc from op on key, with this table's segment."""
        return error(rc, op, key, segment=self.segment, nbytes=nbytes, step=step)

    def raise_rc(self, op, rc, key, nbytes=0, step=0):
        """Raise error(); the fast path's one door back for a failed call."""
        raise self.error(op, rc, key, nbytes, step)

    # -------------------------------------------------------- values

    def fetch(self, k):
        """(tag, payload) for the entry under k: payload the value's bytes,
        or its int for T_INT; None if there is none.  Counts a hit or miss."""
        s = self.segment
        io = s.io()
        c = s.clock
        r = _fetch(s.ptr, self.id, k, len(k), int(c()) if c else 0, io.buf, IO_BUF)
        if r < 0:
            if r == NOTFOUND:
                return None
            if r == E_SMALL:  # every pin record is taken: copy into a buffer of its size
                return self._fetch_unbuffered(k, io.u64[0])
            raise self.error("fetch", r, k)
        tag = r & TYPE_MASK
        if tag == T_INT:
            return tag, io.i64[0]
        return tag, io.view[0 : r >> 8]

    def _fetch_unbuffered(self, k, size):
        s = self.segment
        while True:
            cap = max(size, 16)
            buf = ffi.new("char[]", cap)
            r = lib.apc_fetch(s.ptr, self.id, k, len(k), s.now(), buf, cap)
            if r == E_SMALL:
                size = ffi.cast("uint64_t *", buf)[0]
                continue
            if r == NOTFOUND:
                return None
            if r < 0:
                raise self.error("fetch", r, k)
            tag = r & TYPE_MASK
            if tag == T_INT:
                return tag, ffi.cast("int64_t *", buf)[0]
            return tag, ffi.unpack(buf, r >> 8)

    def read(self, k, inplace):
        """The entry under k while it is held: (T_BYTES, inplace(view),
        True) for a bytes value larger than IO_BUF, read where it lies
        (pinned, and released when inplace returns: it must keep no view);
        (tag, payload, False) copied for any other; None if absent."""
        s = self.segment
        ref = ffi.new("apc_ref *")
        ptr = s.ptr
        r = lib.apc_fetch_ref(ptr, self.id, k, len(k), s.now(), ref)
        if r < 0:
            if r == NOTFOUND:
                return None
            raise self.error("fetch", r, k)
        tag, n = r & TYPE_MASK, r >> 8
        if n > IO_BUF and tag == T_BYTES:
            try:
                view = memoryview(ffi.buffer(ref.ptr, n))
                try:
                    return tag, inplace(view), True
                finally:
                    view.release()
            finally:
                lib.apc_ref_release(ptr, ref)
        try:
            payload = ref.ival if tag == T_INT else ffi.buffer(ref.ptr, n)[:]
        finally:
            lib.apc_ref_release(ptr, ref)
        return tag, payload, False

    def store(self, k, tag, data, ival, ttl, add=False):
        """Store (tag, data, ival) under k with ttl, replacing any entry;
        with add, only if no live entry exists (False if one does).  data
        may be a bytearray."""
        if type(data) is bytearray:
            data = ffi.from_buffer(data)
        s = self.segment
        c = s.clock
        rc = _store(s.ptr, self.id, k, len(k), tag, data, len(data), ival, ttl, int(c()) if c else 0,
                    _ADD if add else 0)
        if rc < 0:
            if rc == EXISTS:
                return False
            raise self.error("add" if add else "store", rc, k, len(data))
        return True

    def count_corrupt(self):
        """Count a value that did not decode as its tag says (a miss)."""
        lib.apc_count_corrupt(self.segment.ptr, self.id)

    # delete and exists are written out, not shared: on the Python path a
    # helper call is a tenth of the operation.

    def delete(self, k):
        s = self.segment
        c = s.clock
        rc = lib.apc_delete(s.ptr, self.id, k, len(k), int(c()) if c else 0)
        if rc == NOTFOUND:
            return False
        if rc < 0:
            raise self.error("delete", rc, k)
        return True

    def exists(self, k):
        """Is there a live entry under k?  Counts neither a hit nor a miss."""
        s = self.segment
        c = s.clock
        rc = lib.apc_exists(s.ptr, self.id, k, len(k), int(c()) if c else 0)
        if rc == NOTFOUND:
            return False
        if rc < 0:
            raise self.error("exists", rc, k)
        return True

    def inc(self, k, step, ttl, op="inc"):
        """The int under k plus step (created as 0 with ttl if missing)."""
        s = self.segment
        i64 = s.io().i64
        rc = lib.apc_inc(s.ptr, self.id, k, len(k), step, ttl, s.now(), i64)
        if rc < 0:
            raise self.error(op, rc, k, 8, step)
        return i64[0]

    def cas(self, k, old, new):
        """Replace the int old with new; False if the key is missing, not an
        int, or not old."""
        s = self.segment
        rc = lib.apc_cas(s.ptr, self.id, k, len(k), old, new, s.now())
        if rc == OK:
            return True
        if rc in (NOTFOUND, MISMATCH, E_TYPE):
            return False
        raise self.error("cas", rc, k)

    def touch(self, k, ttl):
        """A new ttl from now for a live entry; False if there is none."""
        s = self.segment
        rc = lib.apc_touch(s.ptr, self.id, k, len(k), ttl, s.now())
        if rc == NOTFOUND:
            return False
        if rc < 0:
            raise self.error("touch", rc, k)
        return True

    def clear(self):
        s = self.segment
        check(lib.apc_clear(s.ptr, self.id, s.now()), "clear")

    # ------------------------------------------------------ entry()

    def entry_begin(self, k, tid):
        """Claim k for generating it: (OK, token, 0) claimed; (EXISTS, ...)
        the value is there; (BUSY, token, holder pid) another generates it;
        (BUSY_SELF, ...) this very thread does."""
        s = self.segment
        out = ffi.new("int64_t[2]")
        rc = lib.apc_entry_begin(s.ptr, self.id, k, len(k), tid, s.now(), out)
        if rc < 0 and rc not in (EXISTS, BUSY, BUSY_SELF):
            raise self.error("entry", rc, k)
        return rc, out[0], out[1]

    def entry_takeover(self, token, holder, tid):
        """Take over a dead holder's claim; False if that did not happen."""
        s = self.segment
        return lib.apc_entry_takeover(s.ptr, token, holder, tid, s.now()) == 0

    def entry_holder_alive(self, token):
        return lib.apc_entry_holder_alive(self.segment.ptr, token) != 0

    def entry_end(self, token, tid):
        lib.apc_entry_end(self.segment.ptr, token, tid)

    # ----------------------------------------------------- inspection

    def info(self):
        """The table's counters and the header, as a TableInfo."""
        o = ffi.new("apc_info *")
        check(lib.apc_info_get(self.segment.ptr, self.id, o), "info")
        return TableInfo(*[getattr(o, f) for f in TableInfo._fields])

    def key_info(self, k):
        """The EntryRecord of the live entry under k, or None.  Not a hit."""
        s = self.segment
        r = ffi.new("apc_entry_rec *")
        rc = lib.apc_key_info(s.ptr, self.id, k, len(k), s.now(), r)
        if rc == NOTFOUND:
            return None
        if rc < 0:
            raise self.error("key_info", rc, k)
        return EntryRecord(r.hash, r.ctime, r.mtime, r.atime, r.dtime, r.ttl, r.hits, r.mem_size,
                           r.val_len, r.offset, r.refs, r.key_len, r.type, r.flags)

    def stripe(self, k):
        """The bucket stripe of k (whose lock a write of it takes)."""
        rc = lib.apc_key_stripe(self.segment.ptr, self.id, k, len(k))
        if rc < 0:
            raise self.error("stripe", rc, k)
        return rc

    def records(self, live=True, deleted=False):
        """[(EntryRecord, key bytes)]: the live entries (expired ones
        flagged REC_EXPIRED) a bounded chunk at a time, each bucket under
        its stripe's lock (a writer waits for one bucket at most); with
        deleted, the GC list in one piece.  Counts nothing, pins nothing."""
        s = self.segment
        now = s.now()
        parts = []
        if live:
            cursor = ffi.new("uint64_t[2]")
            nslots = self.info().num_slots
            cap = 1 << 18
            buf = ffi.new("char[]", cap)
            while cursor[0] < nslots:
                r = lib.apc_snapshot_chunk(s.ptr, self.id, now, cursor, buf, cap)
                if r == E_SMALL:  # one bucket holds more than the buffer
                    cap = ffi.cast("uint64_t *", buf)[0] + 4096
                    buf = ffi.new("char[]", cap)
                    continue
                check(r, "snapshot")
                parts.append(ffi.buffer(buf, r)[:])
        if deleted:
            i = self.info()
            # Counts read from the segment are claims: no more entries than
            # blocks fit in the arena.
            n = min(i.gc_entries, i.arena_size // 32)
            cap = max(1 << 16, (n + 64) * (_REC.size + 48))
            while True:
                buf = ffi.new("char[]", cap)
                r = lib.apc_snapshot(s.ptr, self.id, now, SNAP_DELETED, buf, cap)
                if r == E_SMALL:
                    cap = ffi.cast("uint64_t *", buf)[0] + 4096
                    continue
                check(r, "snapshot")
                parts.append(ffi.buffer(buf, r)[:])
                break
        data = b"".join(parts)
        out = []
        pos, rs, end = 0, _REC.size, len(data)
        # tuple.__new__ rather than EntryRecord._make: a million records,
        # and _make is a Python frame each
        new, unpack, append = tuple.__new__, _REC.unpack_from, out.append
        while pos < end:
            rec = new(EntryRecord, unpack(data, pos))
            klen = rec[11]  # key_len
            append((rec, data[pos + rs : pos + rs + klen]))
            pos += rs + ((klen + 7) & ~7)
        return out

    def count_live(self):
        """The entries that have not expired, counted a chunk at a time
        (one short lock hold each)."""
        s = self.segment
        cursor = ffi.new("uint64_t[2]")
        nslots, now, n = self.info().num_slots, s.now(), 0
        while cursor[0] < nslots:
            n += check(lib.apc_count_live_chunk(s.ptr, self.id, now, cursor), "len")
        return n
