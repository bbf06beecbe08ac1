"""The exceptions apccache raises.

Every engine return code maps to one class in ``_bindings.RC_ERRORS``.  Each
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
    """An offset, chain or header field failed its bounds check."""


class CacheLockError(CacheError, OSError):
    """The segment's write lock could not be taken or repaired."""
