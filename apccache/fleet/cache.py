"""FleetCache: the API of the two-tier cache (see the package docstring)."""

import os
import re
import struct
import threading
import time
import zlib

import redis
from redis.exceptions import RedisError, ResponseError

from ..cache import ItemMethods
from ..errors import CacheFullError
from ..serializers import PickleSerializer
from . import _near
from .errors import FleetUnavailableError

__all__ = ["FleetCache"]

_MISSING = object()
_monotonic = time.monotonic
_crc32 = zlib.crc32
_MASK = _near.NBUCKETS - 1
_F64 = struct.Struct("<d")
_DECIMAL = re.compile(rb"-?(0|[1-9][0-9]{0,18})")
_INT64 = (-(1 << 63), (1 << 63) - 1)
_MEMO_MAX = 8192  # memo entries per trust window (then it starts over)

# GET and PTTL of one key, atomically, in one round trip (works on a cluster:
# one key, one slot).
_GET_PTTL = "return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}"
# INCRBY that gives a key it creates the ttl (ms) in ARGV[2].
_INCR = """
local existed = redis.call('EXISTS', KEYS[1])
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if existed == 0 and tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return v
"""
# Compare-and-swap of an int (decimal text), keeping the key's ttl.
_CAS = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL') return 1 end
return 0
"""
_UNLOCK = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
_RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"


def _key_bytes(key):
    if isinstance(key, str):
        try:
            return key.encode()
        except UnicodeEncodeError:
            raise ValueError("key is not encodable as UTF-8 (lone surrogate?)") from None
    if isinstance(key, bytes):
        return bytes(key)
    raise TypeError(f"key must be str or bytes, not {type(key).__name__}")


def _check_ttl(ttl):
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise TypeError(f"ttl must be an int number of seconds, not {type(ttl).__name__}")
    if ttl < 0:
        raise ValueError(f"ttl must be >= 0 (got {ttl})")
    return int(ttl)


def _near_ttl(pttl):
    """The near copy's ttl for a Redis key with pttl ms left, or None when no
    copy may be made.  The engine's ttl counts whole seconds from the second
    the copy was stored, so a copy with ttl s can live up to s + 1 s: one
    second less than Redis's keeps it from outliving the key."""
    if pttl == -1:
        return 0
    s = pttl // 1000 - 1
    return s if s >= 1 else None


class FleetCache(ItemMethods):
    """A namespace of Redis keys, read through this host's segment.

    ``cache``: an ``apccache.Cache`` (the host's segment, which a listener
    watches: ``apccache fleet listen``).  ``redis``: a ``redis://`` URL or a
    redis-py client (``Redis`` or ``RedisCluster``; a URL with
    ``cluster=True`` makes a ``RedisCluster``).  ``stale_if_error``: seconds;
    when Redis cannot be reached, a read may serve a near copy made at most
    that long ago instead of raising ``FleetUnavailableError``.
    ``lock_lease``: seconds an ``entry()`` generator holds the fleet-wide
    lock before another host may take it over (renewed while it runs).

    Writes go to Redis first; once it acknowledges, this host's copy is
    invalidated before the call returns, and every other host's within the
    listener's trust bound.  Reads take the near copy while the listener's
    heartbeat vouches for it, else read Redis and file a copy."""

    def __init__(self, cache, redis_or_url, namespace, *, stale_if_error=None, lock_lease=30.0,
                 cluster=False, socket_timeout=1.0):
        if not isinstance(namespace, str) or not namespace or ":" in namespace:
            raise ValueError(f"namespace must be a non-empty str without ':' (got {namespace!r})")
        if stale_if_error is not None and not stale_if_error >= 0:
            raise ValueError(f"stale_if_error must be >= 0 seconds or None (got {stale_if_error!r})")
        if not lock_lease > 0:
            raise ValueError(f"lock_lease must be > 0 seconds (got {lock_lease!r})")
        self.cache = cache
        self.namespace = namespace
        self.stale_if_error = stale_if_error
        self.lock_lease = float(lock_lease)
        if isinstance(redis_or_url, str):
            opts = dict(socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout)
            if cluster:
                self.redis = redis.RedisCluster.from_url(redis_or_url, **opts)
            else:
                self.redis = redis.Redis.from_url(redis_or_url, **opts)
        else:
            self.redis = redis_or_url
            kw = getattr(getattr(redis_or_url, "connection_pool", None), "connection_kwargs", {}) or {}
            if kw.get("decode_responses") or getattr(redis_or_url, "get_encoder", None) and \
                    getattr(redis_or_url.get_encoder(), "decode_responses", False):
                raise ValueError("the redis client must return bytes (decode_responses=False): "
                                 "FleetCache stores tagged binary values")
        self._cluster = isinstance(self.redis, redis.RedisCluster)
        self._ser = getattr(cache, "serializer", None) or PickleSerializer()
        self._nsb = namespace.encode() + b":"
        self._lockpfx = namespace.encode() + b"\x00lock:"
        self._layout = L = _near.Layout(namespace)
        self._gkeys = L.gen_keys
        self._get_pttl = self.redis.register_script(_GET_PTTL)
        self._incr = self.redis.register_script(_INCR)
        self._cas = self.redis.register_script(_CAS)
        self._unlock = self.redis.register_script(_UNLOCK)
        self._renew = self.redis.register_script(_RENEW)
        # The heartbeat as this process last read it.
        self._trusted_until = 0.0
        self._epoch = None
        self._epfx = None
        self._memo = {}  # key -> the segment key of its copy, for the current trust window
        self._fetch = cache.fetch
        # The near hit without a Python frame (csrc/fastpath.c): it reads
        # the memo and the trust window that _refresh hands it, and leaves
        # everything else to the methods below.
        reader = getattr(cache, "fast_reader", None)
        self._near = reader(FleetCache.fetch.__get__(self), _MISSING) if reader is not None else None
        if self._near is not None:
            self.fetch = self.get = self._near.fetch

    def __repr__(self):
        return f"<FleetCache {self.namespace!r} on {self.cache.name!r}>"

    def close(self):
        """Close the Redis client (the segment is the caller's)."""
        self.redis.close()

    # ---------------------------------------------------------------- trust

    def _refresh(self, now):
        """Re-read the heartbeat; True if near copies may be trusted now."""
        rec = _near.unpack_hb(self._fetch(self._layout.hb_key))
        if rec is None:
            self._trusted_until = 0.0
            if self._near is not None:
                self._near.trusted_until = 0.0
            return False
        epoch, synced, bound = rec[0], rec[1], rec[2]
        if epoch != self._epoch:
            self._epoch = epoch
            self._epfx = self._layout.epoch_prefix(epoch)
        # A new trust window starts with an empty memo, made *before* the
        # window is published (see fetch).
        self._memo = {}
        self._trusted_until = synced + bound if synced > 0 else 0.0
        if self._near is not None:
            # The memo first: the window it belongs to opens after it.
            self._near.memo = self._memo
            self._near.trusted_until = self._trusted_until
        return now < self._trusted_until

    def status(self):
        """This host's view of the tier: ``trusted`` (near copies are used
        now), ``heartbeat_age`` (s since the listener's last confirmed sync,
        None if it never ran or stopped), ``max_lag``, ``epoch`` and the
        listener's ``pid``."""
        now = _monotonic()
        rec = _near.unpack_hb(self._fetch(self._layout.hb_key))
        if rec is None:
            return {"trusted": False, "heartbeat_age": None, "max_lag": None, "epoch": None, "pid": None}
        epoch, synced, bound, pid, _wall = rec
        age = now - synced if synced > 0 else None
        return {"trusted": age is not None and age <= bound, "heartbeat_age": age, "max_lag": bound,
                "epoch": epoch, "pid": pid}

    # ---------------------------------------------------------- encoding

    def _dumps(self, value):
        t = type(value)
        if t is int:
            if not _INT64[0] <= value <= _INT64[1]:
                return b"\x00p" + self._ser.dumps(value)
            return b"%d" % value
        if t is bytes:
            return b"\x00b" + value
        if t is str:
            return b"\x00s" + value.encode("utf-8", "surrogatepass")
        if t is bool:
            return b"\x00T" if value else b"\x00F"
        if value is None:
            return b"\x00N"
        if t is float:
            return b"\x00f" + _F64.pack(value)
        return b"\x00p" + self._ser.dumps(value)

    def _loads(self, raw):
        if raw[:1] == b"\x00" and len(raw) >= 2:
            tag, data = raw[1:2], raw[2:]
            if tag == b"b":
                return data
            if tag == b"s":
                return data.decode("utf-8", "surrogatepass")
            if tag == b"p":
                return self._ser.loads(data)
            if tag == b"f":
                return _F64.unpack(data)[0]
            if tag == b"T":
                return True
            if tag == b"F":
                return False
            if tag == b"N":
                return None
        if _DECIMAL.fullmatch(raw):
            return int(raw)
        return raw

    # ------------------------------------------------------------- reading

    def fetch(self, key, default=None, *, stale_if_error=_MISSING):
        """The value under key, or default.

        A near copy is used while the listener's heartbeat is fresh;
        otherwise, or on a near miss, Redis is read and a copy filed for the
        other workers of this host.  If Redis cannot be reached,
        ``FleetUnavailableError`` -- unless ``stale_if_error`` (here or
        given to the constructor) allows a near copy that old."""
        if _monotonic() < self._trusted_until or self._refresh(_monotonic()):
            nk = self._memo.get(key) or self._memo_key(key)
            if nk is not None:
                v = self._fetch(nk, _MISSING)
                if v is not _MISSING:
                    return v
        kb = key.encode() if type(key) is str else _key_bytes(key)
        return self._remote(kb, default, stale_if_error, key)

    def _memo_key(self, key):
        """Read the generation of key's bucket and memoise the segment key
        of its copy (keyed by key as given), for this trust window only.

        WHY THE MEMO KEEPS THE BOUND: it is emptied whenever the heartbeat is
        re-read, so an entry's generation was read after the heartbeat that
        vouches for the current window (synced time S, trusted until S + max_lag).  A
        read that starts at t < S + max_lag may only miss writes acknowledged
        after t - max_lag, hence after S; every earlier write's invalidation
        had moved its generation before S was written, so before the memo
        read it.  A copy filed under a generation that moved later can be
        served by a process whose memo still names it only until its window
        ends: within max_lag of that write."""
        kb = key.encode() if type(key) is str else _key_bytes(key)
        memo = self._memo  # the window's own dict, even if a refresh replaces it meanwhile
        g = self._fetch(self._gkeys[_crc32(kb) & _MASK])
        if g is None:
            return None
        if len(memo) >= _MEMO_MAX:
            memo.clear()
        nk = memo[key] = self._epfx + b"%d:" % g + kb
        return nk

    def _forget(self, kb):
        """Drop kb's memo entries (under its str and bytes forms)."""
        memo = self._memo
        memo.pop(kb, None)
        try:
            memo.pop(kb.decode(), None)
        except UnicodeDecodeError:
            pass

    get = fetch

    def _remote(self, kb, default, stale_if_error=_MISSING, key=None):
        """Read Redis and file a copy (the fill).  The bucket's generation is
        read *before* Redis: a copy filed under it is only found while no
        invalidation has been handled since (see _near)."""
        epoch = self._epoch
        b = _crc32(kb) & _MASK
        memo = self._memo
        g = _near.read_gen(self.cache, self._gkeys[b]) if epoch is not None else None
        if g is not None and len(memo) < _MEMO_MAX:
            memo[kb if key is None else key] = self._layout.value_key(epoch, g, kb)  # read now: fresh
        try:
            raw, pttl = self._get_pttl(keys=[self._nsb + kb])
        except (RedisError, OSError) as e:
            if isinstance(e, ResponseError) and not _unavailable(e):
                raise
            return self._stale(kb, default, stale_if_error, e)
        if raw is None:
            return default
        value = self._loads(raw)
        if g is not None:
            self._fill(b, kb, epoch, g, value, pttl)
        return value

    def _fill(self, b, kb, epoch, g, value, pttl):
        """File a copy under generation g (read before Redis was).  If the
        generation has moved since, the copy can only be found by a process
        whose memo still names g, and only until its trust window ends; it is
        deleted at once to keep even that from happening."""
        ttl = _near_ttl(pttl)
        if ttl is None:
            return
        vkey = self._layout.value_key(epoch, g, kb)
        try:
            self.cache.store(vkey, value, ttl)
        except (CacheFullError, ValueError):
            return  # too big for the segment: serve it, keep no copy
        if self._fetch(self._gkeys[b]) != g:
            self.cache.delete(vkey)
            self._forget(kb)

    def _stale(self, kb, default, stale_if_error, error):
        bound = self.stale_if_error if stale_if_error is _MISSING else stale_if_error
        if bound is None or self._epoch is None:
            raise FleetUnavailableError(
                f"redis is unreachable for namespace {self.namespace!r} ({error}); "
                f"pass stale_if_error=SECONDS to serve this host's copies meanwhile") from error
        g = self.cache.fetch(self._gkeys[_crc32(kb) & _MASK])
        if g is not None:
            vkey = self._layout.value_key(self._epoch, g, kb)
            info = self.cache.key_info(vkey)
            if info is not None and time.time() - info["mtime"] <= bound:
                v = self.cache.fetch(vkey, _MISSING)
                if v is not _MISSING:
                    return v
        raise FleetUnavailableError(
            f"redis is unreachable for namespace {self.namespace!r} ({error}), and this host has "
            f"no copy of that key made within stale_if_error={bound} s") from error

    def fetch_many(self, keys, *, stale_if_error=_MISSING):
        """{key: value} for the keys that exist, keyed as given.  Near hits
        first; the rest in one pipelined round trip (per node, on a cluster)."""
        pairs = [(key, _key_bytes(key)) for key in keys]
        out = {}
        rest = []
        trusted = _monotonic() < self._trusted_until or self._refresh(_monotonic())
        for key, kb in pairs:
            if trusted:
                nk = self._memo.get(key) or self._memo_key(key)
                if nk is not None:
                    v = self._fetch(nk, _MISSING)
                    if v is not _MISSING:
                        out[key] = v
                        continue
            rest.append((key, kb))
        if len(rest) <= 1 or self._cluster:
            for key, kb in rest:
                v = self._remote(kb, _MISSING, stale_if_error, key)
                if v is not _MISSING:
                    out[key] = v
            return out
        epoch = self._epoch
        gens = [_near.read_gen(self.cache, self._gkeys[_crc32(kb) & _MASK]) if epoch is not None else None
                for _, kb in rest]
        try:
            pipe = self.redis.pipeline(transaction=False)
            for _, kb in rest:
                self._get_pttl(keys=[self._nsb + kb], client=pipe)
            replies = pipe.execute()
        except (RedisError, OSError) as e:
            if isinstance(e, ResponseError) and not _unavailable(e):
                raise
            for key, kb in rest:
                v = self._stale_or_missing(kb, stale_if_error, e)
                if v is not _MISSING:
                    out[key] = v
            return out
        for (key, kb), g, (raw, pttl) in zip(rest, gens, replies):
            if raw is None:
                continue
            value = out[key] = self._loads(raw)
            if g is not None:
                self._fill(_crc32(kb) & _MASK, kb, epoch, g, value, pttl)
        return out

    def _stale_or_missing(self, kb, stale_if_error, error):
        try:
            return self._stale(kb, _MISSING, stale_if_error, error)
        except FleetUnavailableError:
            bound = self.stale_if_error if stale_if_error is _MISSING else stale_if_error
            if bound is None:
                raise
            return _MISSING

    def exists(self, key):
        """Is the key in Redis?  (Asks Redis.)"""
        try:
            return bool(self.redis.exists(self._nsb + _key_bytes(key)))
        except (RedisError, OSError) as e:
            raise self._down(e) from e

    # ------------------------------------------------------------- writing

    def _down(self, e):
        if isinstance(e, ResponseError) and not _unavailable(e):
            return e
        return FleetUnavailableError(f"redis is unreachable for namespace {self.namespace!r}: {e}; "
                                     "nothing was written")

    def _invalidate(self, kb):
        """Move this host's generation for kb (after Redis acknowledged a
        write): every worker here misses and reads the new value.  The
        copies under the generations just below go too: a memo may name one
        that an invalidation in flight has moved but not yet cleared
        (_near.drop_copies)."""
        b = _crc32(kb) & _MASK
        self._forget(kb)  # this process reads the new generation next
        old = _near.bump_gen(self.cache, self._gkeys[b])
        epoch = self._epoch
        if epoch is None:  # a process that has only written: the listener's epoch, from its heartbeat
            rec = _near.unpack_hb(self._fetch(self._layout.hb_key))
            epoch = rec[0] if rec is not None else None
        if old is not None and epoch is not None:
            _near.drop_copies(self.cache, self._layout, epoch, old, kb)

    def store(self, key, value, ttl=0):
        """Write to Redis (SET, with ttl seconds if > 0); this host's copy is
        invalidated before it returns.  True, or FleetUnavailableError."""
        kb = _key_bytes(key)
        ttl = _check_ttl(ttl)
        data = self._dumps(value)
        try:
            self.redis.set(self._nsb + kb, data, ex=ttl or None)
        except (RedisError, OSError) as e:
            raise self._down(e) from e
        self._invalidate(kb)
        return True

    set = store

    def add(self, key, value, ttl=0):
        """SET NX: store only if Redis has no such key; True if stored."""
        kb = _key_bytes(key)
        ttl = _check_ttl(ttl)
        data = self._dumps(value)
        try:
            done = self.redis.set(self._nsb + kb, data, ex=ttl or None, nx=True)
        except (RedisError, OSError) as e:
            raise self._down(e) from e
        if done:
            self._invalidate(kb)
        return bool(done)

    def delete(self, key):
        """DEL; False if Redis had no such key."""
        kb = _key_bytes(key)
        try:
            n = self.redis.delete(self._nsb + kb)
        except (RedisError, OSError) as e:
            raise self._down(e) from e
        self._invalidate(kb)
        return n > 0

    def inc(self, key, step=1, ttl=0):
        """INCRBY, atomic across the fleet; a missing key is created as 0
        first (with ttl).  Returns the new value.  TypeError if the value is
        not an int, OverflowError if the result leaves int64."""
        kb = _key_bytes(key)
        if isinstance(step, bool) or not isinstance(step, int):
            raise TypeError(f"step must be an int, not {type(step).__name__}")
        if not _INT64[0] <= step <= _INT64[1]:
            raise OverflowError(f"step {step} is outside the int64 range")
        ttl = _check_ttl(ttl)
        try:
            v = self._incr(keys=[self._nsb + kb], args=[step, ttl * 1000])
        except ResponseError as e:
            text = str(e)
            if "overflow" in text:
                raise OverflowError(f"inc/dec of key {key!r} by {step} leaves the int64 range") from None
            if "not an integer" in text:
                raise TypeError(f"cannot inc/dec key {key!r}: its value is not an int") from None
            raise self._down(e) from e
        except (RedisError, OSError) as e:
            raise self._down(e) from e
        self._invalidate(kb)
        return int(v)

    def dec(self, key, step=1, ttl=0):
        """DECRBY; see inc."""
        if isinstance(step, bool) or not isinstance(step, int):
            raise TypeError(f"step must be an int, not {type(step).__name__}")
        return self.inc(key, -step, ttl)

    def cas(self, key, old, new):
        """Replace the int old with new, atomically across the fleet (the
        key keeps its ttl).  False if the key is missing (never inserts), not
        an int, or not old."""
        kb = _key_bytes(key)
        for name, v in (("old", old), ("new", new)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, not {type(v).__name__}")
            if not _INT64[0] <= v <= _INT64[1]:
                raise OverflowError(f"{name} {v} is outside the int64 range")
        try:
            done = self._cas(keys=[self._nsb + kb], args=[b"%d" % old, b"%d" % new])
        except (RedisError, OSError) as e:
            raise self._down(e) from e
        if done:
            self._invalidate(kb)
        return bool(done)

    def store_many(self, mapping, ttl=0):
        """Store every item (one pipelined round trip); returns the keys not
        stored ([] on success).  All or nothing on a connection error."""
        ttl = _check_ttl(ttl)
        items = [(key, _key_bytes(key), self._dumps(v)) for key, v in mapping.items()]
        try:
            pipe = self.redis.pipeline(transaction=False)
            for _, kb, data in items:
                pipe.set(self._nsb + kb, data, ex=ttl or None)
            results = pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as e:
            raise self._down(e) from e
        failed = []
        for (key, kb, _), r in zip(items, results):
            if isinstance(r, Exception):
                failed.append(key)
            self._invalidate(kb)
        return failed

    def delete_many(self, keys):
        """Delete each key; returns the keys Redis did not have."""
        pairs = [(key, _key_bytes(key)) for key in keys]
        try:
            pipe = self.redis.pipeline(transaction=False)
            for _, kb in pairs:
                pipe.delete(self._nsb + kb)
            results = pipe.execute()
        except (RedisError, OSError) as e:
            raise self._down(e) from e
        missing = []
        for (key, kb), n in zip(pairs, results):
            if not n:
                missing.append(key)
            self._invalidate(kb)
        return missing

    def clear(self):
        """Delete every key of the namespace in Redis (SCAN + UNLINK; every
        host's listener is told of each); returns how many were deleted."""
        pattern = re.sub(rb"([*?\[\]\\])", rb"\\\1", self._nsb) + b"*"
        n = 0
        try:
            batch = []
            for rk in self.redis.scan_iter(match=pattern, count=1000):
                batch.append(rk)
                if len(batch) >= 500:
                    n += self._unlink(batch)
                    batch = []
            if batch:
                n += self._unlink(batch)
        except (RedisError, OSError) as e:
            raise self._down(e) from e
        return n

    def _unlink(self, rks):
        if self._cluster:
            n = sum(self.redis.unlink(rk) for rk in rks)
        else:
            n = self.redis.unlink(*rks)
        m = len(self._nsb)
        for rk in rks:
            self._invalidate(rk[m:])
        return n

    # ------------------------------------------------------- mapping protocol

    def __contains__(self, key):
        return self.fetch(key, _MISSING) is not _MISSING

    # -------------------------------------------------------------- entry()

    def entry(self, key, generator, ttl=0):
        """The value under key; if Redis has none, ``generator(key)`` makes
        it once across the whole fleet, it is stored with ttl and returned.

        Per host, one process waits on Redis (the others wait on this host's
        ``Cache.entry`` for the same key).  Across hosts, that process takes
        a Redis lock (a random token, expiring after ``lock_lease`` s,
        renewed while the generator runs); the others poll until the value
        appears, and take the lock over if its holder's lease runs out (it
        died).  If the generator raises, nothing is stored and the exception
        propagates."""
        kb = _key_bytes(key)
        ttl = _check_ttl(ttl)
        v = self.fetch(key, _MISSING)
        if v is not _MISSING:
            return v
        built = []

        def on_host(_):
            built.append(True)
            return self._fleet_entry(kb, key, generator, ttl)

        hk = self._layout.pfx + b"e:" + kb
        try:
            # ttl 1: the hand-over copy for this host's waiters lives ~1-2 s
            # at most, and is deleted as soon as its maker returns.
            return self.cache.entry(hk, on_host, ttl=1)
        finally:
            if built:
                self.cache.delete(hk)

    def _fleet_entry(self, kb, key, generator, ttl):
        lk = self._lockpfx + kb
        lease_ms = int(self.lock_lease * 1000)
        delay = 0.002
        while True:
            v = self._remote(kb, _MISSING, None)
            if v is not _MISSING:
                return v
            token = os.urandom(16).hex()
            try:
                got = self.redis.set(lk, token, nx=True, px=lease_ms)
            except (RedisError, OSError) as e:
                raise self._down(e) from e
            if got:
                return self._generate_locked(kb, key, generator, ttl, lk, token, lease_ms)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _generate_locked(self, kb, key, generator, ttl, lk, token, lease_ms):
        done = threading.Event()

        def renew():
            while not done.wait(self.lock_lease / 3):
                try:
                    if not self._renew(keys=[lk], args=[token, lease_ms]):
                        return  # lost it (taken over): nothing to renew
                except (RedisError, OSError):
                    pass

        t = threading.Thread(target=renew, name="apccache-fleet-lease", daemon=True)
        t.start()
        try:
            value = generator(key)
            self.store(key, value, ttl)
            return value
        finally:
            done.set()
            try:
                self._unlock(keys=[lk], args=[token])
            except (RedisError, OSError):
                pass  # the lease expires by itself


def _unavailable(e):
    """Is this error reply the server saying it cannot serve now?"""
    text = str(e)
    return text.startswith(("LOADING", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "READONLY"))
