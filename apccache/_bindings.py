"""The one place that loads the compiled engine and maps its return codes.

``ffi`` and ``lib`` come from ``apccache._engine``, or from
``apccache._engine_debug`` when ``APCCACHE_DEBUG=1`` is set (assertions and
the named fault-injection points; ``APCCACHE_FAULT=<point>`` arms one).
Only this module and ``cache.py`` (whose hot paths call ``lib`` directly, one
C call per operation) touch ``lib``.
"""
import os

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

OK = lib.APC_OK
NOTFOUND = lib.APC_NOTFOUND
EXISTS = lib.APC_EXISTS
BUSY = lib.APC_BUSY
BUSY_SELF = lib.APC_BUSY_SELF
MISMATCH = lib.APC_MISMATCH
E_TYPE = lib.APC_E_TYPE
E_SMALL = lib.APC_E_SMALL
E_NOTREADY = lib.APC_E_NOTREADY
E_CLOSED = lib.APC_E_CLOSED
E_BUSY = lib.APC_E_BUSY
E_TRUNCATED = lib.APC_E_TRUNCATED

RC_ERRORS = {
    lib.APC_E_NOMEM: CacheFullError,
    lib.APC_E_TOOBIG: CacheFullError,
    lib.APC_E_TYPE: TypeError,
    lib.APC_E_OVERFLOW: OverflowError,
    lib.APC_E_MAGIC: IncompatibleSegmentError,
    lib.APC_E_FORMAT: IncompatibleSegmentError,
    lib.APC_E_TRUNCATED: CorruptSegmentError,
    lib.APC_E_CORRUPT: CorruptSegmentError,
    lib.APC_E_ARG: ValueError,
    lib.APC_E_LOCK: CacheLockError,
    lib.APC_E_SMALL: CacheError,
    lib.APC_E_NOTREADY: IncompatibleSegmentError,
    lib.APC_E_SYS: OSError,
    lib.APC_E_CLOSED: CacheClosedError,
    lib.APC_E_BUSY: CacheBusyError,
}


def _layout():
    m = ffi.new("apc_header_map *")
    lib.apc_header_map_get(m)
    return {f: getattr(m, f) for f in dir(m)}


# Where the header's and an entry's fields lie (for apcstat --list, and for
# tests that must scribble on a segment).
LAYOUT = _layout()


def strerror(rc):
    return ffi.string(lib.apc_strerror(rc)).decode()


def error(rc, what=""):
    """The exception for a negative return code, with what was being done."""
    cls = RC_ERRORS.get(rc, CacheError)
    msg = strerror(rc)
    if rc == lib.APC_E_CLOSED:
        return CacheClosedError("operation on a closed cache")
    if rc == lib.APC_E_BUSY:
        pid = lib.apc_last_busy_pid()
        return CacheBusyError(
            f"{what + ': ' if what else ''}pid {pid} has held a lock of the segment for longer "
            "than the lock timeout (stopped, or stuck in a long operation?)", pid)
    if rc == lib.APC_E_TRUNCATED:
        msg = ("the segment's file was truncated under this process (or is shorter than its "
               "header says): close this handle; unlink and recreate the segment")
    return cls(f"{what}: {msg}" if what else msg)


def check(rc, what=""):
    if rc < 0:
        raise error(rc, what)
    return rc


def pid_alive(pid):
    """Is pid a running process on this host?  A zombie (killed, not yet
    reaped) is not; one owned by another user is."""
    return pid > 0 and bool(lib.apc_pid_alive(pid))
