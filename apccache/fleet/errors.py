"""The fleet tier's own exception."""

from ..errors import CacheError

__all__ = ["FleetUnavailableError"]


class FleetUnavailableError(CacheError, ConnectionError):
    """Redis could not be reached (refused, timed out, loading, cluster
    down).  Raised by every write, and by a read that is not allowed to serve
    a near copy instead (``stale_if_error``).  ``__cause__`` is redis-py's
    exception."""
