"""The exceptions apccache raises.

Every engine return code maps to one class, and to what its message says,
in ``_bindings.ERRORS`` (one table, for every operation).  Each
subclasses the builtin whose meaning it shares, so ``except ValueError`` and
``except OSError`` keep working for code that does not know apccache.
"""


class CacheError(Exception):
    """Base class of apccache's own errors."""


class CacheFullError(CacheError, MemoryError):
    """No room for the entry, even after expiry, eviction and compaction;
    or the entry is larger than the whole cache."""


class IncompatibleSegmentError(CacheError, ValueError):
    """The named segment is not an apccache segment, or one of another
    layout version or ABI."""


class CorruptSegmentError(CacheError, ValueError):
    """An offset, chain, length or header field read from the segment failed
    its check, or the segment was truncated under this process.  Nothing
    outside the mapping was read or written; a repair is scheduled."""


class CacheLockError(CacheError, OSError):
    """A lock of the segment could not be taken or repaired."""


class CacheBusyError(CacheLockError, TimeoutError):
    """A live process held a lock of the segment for longer than the
    handle's ``lock_timeout``.  ``pid`` is that process (0 if unknown)."""

    def __init__(self, message, pid=0):
        super().__init__(message)
        self.pid = pid


class CacheClosedError(CacheError, ValueError):
    """An operation on a handle that was closed."""


class UntrustedSegmentError(CacheError, PermissionError):
    """The segment is owned by another user, or writable by group or others:
    its contents (pickled values, compiled code) cannot be trusted."""
