"""A two-tier cache for more than one host: Redis (or Redis Cluster) is the
shared store, and each host's apccache segment is the near cache that every
worker on that host shares.

    >>> from apccache.fleet import FleetCache                # doctest: +SKIP
    >>> fc = FleetCache(cache, "redis://10.0.0.5:6379/0", namespace="myapp")
    >>> fc.store("user:42", {"name": "Ada"}, ttl=300)        # Redis, then this host
    True
    >>> fc.fetch("user:42")                                  # near hit, or Redis and fill
    {'name': 'Ada'}

THE GUARANTEE

A read that starts more than ``max_lag`` (the listener's trust bound, 50 ms
by default) after a write was acknowledged -- by this library or by any other
Redis client writing under ``<namespace>:`` -- never returns an older value.
In the writing process it holds at once, and in the other processes of its
host at once too unless a fill raced the write (a write moves this host's
generation of the key before it returns).  It rests on Redis's
server-assisted client-side caching (CLIENT TRACKING, broadcast mode): see
``listener`` for how the heartbeat turns the push stream into that bound,
``_near`` for why a fill that an invalidation has overtaken is filed where
readers do not look, and ``FleetCache._memo_key`` for why memoising
generations keeps the bound.

WHAT CROSSES PROCESSES

Everything a FleetCache keeps on the host is in the segment: near copies,
bucket generations and the listener's heartbeat.  A FleetCache object itself
holds only its Redis client, a cached copy of the heartbeat (re-read at
least every ``max_lag``) and, for that long, the bucket generations it read.
It may be shared between threads.

VALUES IN REDIS

Keys are ``<namespace>:<key>``.  An int is stored as its decimal text (so
``inc`` is Redis's INCRBY and other clients can read it); anything else as a
two-byte tag and the data: ``bytes``, ``str``, ``float``, ``bool`` and
``None`` natively, other objects serialized once with the cache's serializer.
A value written by another client (no tag) reads back as an int if it is
canonical decimal text, else as ``bytes``.
"""

__all__ = ["FleetCache", "FleetUnavailableError", "Listener"]


def __getattr__(name):
    # FleetCache needs redis-py (the ``fleet`` extra); the listener does not.
    if name == "FleetCache":
        from .cache import FleetCache

        return FleetCache
    if name == "FleetUnavailableError":
        from .errors import FleetUnavailableError

        return FleetUnavailableError
    if name == "Listener":
        from .listener import Listener

        return Listener
    raise AttributeError(f"module 'apccache.fleet' has no attribute {name!r}")
