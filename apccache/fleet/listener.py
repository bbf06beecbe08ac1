"""The invalidation listener: one process per host that keeps the host's near
copies coherent with Redis.

HOW IT WORKS

It holds one RESP3 connection per Redis primary (one for a single server)
with ``CLIENT TRACKING ON BCAST PREFIX <ns>:``, so the server pushes the name
of every key under the namespace that anybody changes, whoever the client.
For each pushed key it moves the key's bucket generation in the segment and
deletes the copy filed under the old one (see ``_near``).

Every ``ping_interval`` it sends PING on each connection.  The server
answers in stream order, so when the PONG to a PING sent at time T has been
read, every invalidation for a write the server acknowledged before T was
read, and handled, before it.  The listener then writes T (CLOCK_MONOTONIC)
into the segment's heartbeat record, with the epoch and the trust bound
``max_lag``.  A reader trusts the near copies only while ``now - T <=
max_lag``; so a read that starts more than ``max_lag`` after a write was
acknowledged cannot see a copy older than that write.

WHAT IF...

- ...the listener is stopped, stalled or slow: the heartbeat ages, and
  within ``max_lag`` every reader reads Redis instead.  When it resumes on
  the same connection, the pushes queued meanwhile are handled before the
  next PONG, so trust comes back only after them.
- ...the connection breaks, or a PING goes unanswered for ``dead_after``:
  pushes may be lost.  It reconnects (with backoff) under a *new epoch*:
  copies filed under the old one are never looked up again, and are deleted
  in the background.  The same happens on a server-side flush (a push with no
  key list) and, for a cluster, when the set of primaries changes.
- ...it exits on SIGTERM: it zeroes the heartbeat, so readers stop trusting
  at once instead of after ``max_lag``.

LIMITATIONS

Plain TCP only (no TLS), no Sentinel.  Redis Cluster: one connection per
primary (CLUSTER NODES, slot-less primaries included), re-read every
``topology_interval``; a new primary, or a replica promoted by a failover,
starts a new epoch.  Slots moved to a primary within ``topology_interval`` of
its joining may have their invalidations missed for that long.
"""

import collections
import logging
import os
import select
import signal
import socket
import time
import urllib.parse

from . import _near
from ._resp import Parser, Push, RespError, encode_command

__all__ = ["Listener", "parse_url"]

log = logging.getLogger("apccache.fleet.listener")


def parse_url(url):
    """(host, port, username, password) of a redis:// URL."""
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("redis", ""):
        raise ValueError(f"the listener speaks plain redis:// only (got {url!r})")
    return (u.hostname or "127.0.0.1", u.port or 6379,
            urllib.parse.unquote(u.username) if u.username else None,
            urllib.parse.unquote(u.password) if u.password else None)


class _Conn:
    """One tracking connection to one Redis node."""

    def __init__(self, addr, username, password, prefix, timeout):
        self.addr = addr
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.parser = Parser()
        self.pending = collections.deque()  # (kind, time sent), in stream order
        self.confirmed = 0.0  # send time of the last PING answered
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            hello = ["HELLO", "3"]
            if password is not None:
                hello += ["AUTH", username or "default", password]
            self.hello = self._call(hello, timeout)
            self._call(["CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", prefix], timeout)
            self.sock.setblocking(False)
        except BaseException:
            self.close()
            raise

    def _call(self, args, timeout):
        """A blocking request/reply during setup (no pushes can come yet)."""
        self.sock.sendall(encode_command(*args))
        deadline = time.monotonic() + timeout
        while True:
            for msg in self.parser.messages():
                if isinstance(msg, RespError):
                    raise ConnectionError(f"{self.addr[0]}:{self.addr[1]} refused {args[0]} {args[1]}: {msg}")
                if not isinstance(msg, Push):
                    return msg
            if time.monotonic() > deadline:
                raise TimeoutError(f"no reply from {self.addr[0]}:{self.addr[1]} to {args[0]}")
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"{self.addr[0]}:{self.addr[1]} closed the connection")
            self.parser.feed(data)

    def send(self, kind, *args):
        # The time is taken *before* the bytes leave: the server reads the
        # command after it, so every write it acknowledged before this time
        # is ahead of the reply in the stream.
        sent = time.monotonic()
        self.sock.sendall(encode_command(*args))
        self.pending.append((kind, sent))

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Listener:
    """Keep segment ``cache``'s near copies of namespace ``namespace``
    coherent with the Redis server (or cluster) at ``url``.

    ``run()`` blocks until ``stop()`` (or SIGTERM, when run by ``main``)."""

    def __init__(self, cache, url, namespace, *, max_lag=0.05, ping_interval=0.01,
                 dead_after=1.0, connect_timeout=2.0, topology_interval=1.0):
        self._check_options(max_lag=max_lag, ping_interval=ping_interval, dead_after=dead_after)
        self.cache = cache
        self.host, self.port, self.username, self.password = parse_url(url)
        self.namespace = namespace
        self.prefix = namespace + ":"
        self.layout = _near.Layout(namespace)
        self.max_lag = float(max_lag)
        self.ping_interval = float(ping_interval)
        self.dead_after = float(dead_after)
        self.connect_timeout = float(connect_timeout)
        self.topology_interval = float(topology_interval)
        self.epoch = None
        self.conns = []
        self.primaries = None  # a cluster's primary addresses, sorted; None standalone
        self.invalidations = 0
        self.reconnects = 0
        self._running = True
        self._dirty = True  # copies of other epochs may be in the segment

    @staticmethod
    def _check_options(max_lag=0.05, ping_interval=0.01, dead_after=1.0, connect_timeout=2.0,
                       topology_interval=1.0):
        """ValueError naming a bad option (the constructor's keywords)."""
        if not 0 < ping_interval < max_lag:
            raise ValueError(f"ping_interval must be > 0 and < max_lag (got {ping_interval} and {max_lag})")
        for name, v in (("dead_after", dead_after), ("connect_timeout", connect_timeout),
                        ("topology_interval", topology_interval)):
            if not v > 0:
                raise ValueError(f"{name} must be > 0 (got {v})")

    # ------------------------------------------------------------- control

    def stop(self):
        """Ask run() to return (safe from a signal handler)."""
        self._running = False

    def run(self):
        """Connect, handle pushes and heartbeats, reconnect on failures; on
        return the heartbeat says "do not trust"."""
        backoff = 0.05
        try:
            while self._running:
                try:
                    self._connect()
                    backoff = 0.05
                    self._serve()
                except (OSError, ConnectionError, TimeoutError, ValueError) as e:
                    if not self._running:
                        break
                    log.warning("fleet listener for %r: %s; reconnecting in %.2f s", self.namespace, e, backoff)
                    self._sleep(backoff)
                    backoff = min(backoff * 2, 1.0)
                finally:
                    self._close()
        finally:
            self._write_hb(0.0)

    def _sleep(self, seconds):
        end = time.monotonic() + seconds
        while self._running and time.monotonic() < end:
            time.sleep(min(0.02, max(0.0, end - time.monotonic())))

    # ---------------------------------------------------------- connecting

    def _connect(self):
        """Open a tracking connection to every primary, under a new epoch."""
        first = _Conn((self.host, self.port), self.username, self.password, self.prefix, self.connect_timeout)
        self.conns = [first]
        mode = first.hello.get(b"mode") if isinstance(first.hello, dict) else None
        if mode == b"cluster":
            first.sock.setblocking(True)
            shards = first._call(["CLUSTER", "NODES"], self.connect_timeout)
            first.sock.setblocking(False)
            self.primaries = _primaries(shards, self.host)
            for addr in self.primaries:
                if addr != (self.host, self.port):
                    self.conns.append(_Conn(addr, self.username, self.password, self.prefix, self.connect_timeout))
            if (self.host, self.port) not in self.primaries:
                # the seed is a replica: it still tracks, but only primaries matter
                first.close()
                self.conns.remove(first)
        else:
            self.primaries = None
        if self.epoch is not None:
            self.reconnects += 1
        self.epoch = _near.random_id()
        self._dirty = True
        log.info("fleet listener for %r: tracking %s under epoch %x", self.namespace,
                 ", ".join(f"{h}:{p}" for h, p in (c.addr for c in self.conns)), self.epoch)

    def _close(self):
        for c in self.conns:
            c.close()
        self.conns = []

    # ------------------------------------------------------------- serving

    def _serve(self):
        """The loop: read pushes and replies, send PINGs, write the heartbeat,
        until a connection fails or stop() is called."""
        next_ping = 0.0
        next_topology = time.monotonic() + self.topology_interval
        while self._running:
            now = time.monotonic()
            if now >= next_ping:
                for c in self.conns:
                    c.send("ping", "PING")
                next_ping = now + self.ping_interval
            if self.primaries is not None and now >= next_topology:
                self.conns[0].send("nodes", "CLUSTER", "NODES")
                next_topology = now + self.topology_interval
            for c in self.conns:
                if c.pending and now - c.pending[0][1] > self.dead_after:
                    raise TimeoutError(f"{c.addr[0]}:{c.addr[1]} did not answer PING for {self.dead_after} s")
            ready, _, _ = select.select([c.sock for c in self.conns], [], [], max(0.0, next_ping - time.monotonic()))
            for c in self.conns:
                if c.sock in ready:
                    self._read(c)
            if self._dirty and self.conns and all(c.confirmed for c in self.conns):
                self._drop_old_epochs()

    def _read(self, c):
        try:
            data = c.sock.recv(1 << 20)
        except BlockingIOError:
            return
        if not data:
            raise ConnectionError(f"{c.addr[0]}:{c.addr[1]} closed the connection")
        c.parser.feed(data)
        synced = False
        for msg in c.parser.messages():
            if isinstance(msg, Push):
                self._push(msg)
                continue
            if not c.pending:
                raise ConnectionError(f"unexpected reply from {c.addr[0]}:{c.addr[1]}: {msg!r}")
            kind, sent = c.pending.popleft()
            if isinstance(msg, RespError):
                raise ConnectionError(f"{c.addr[0]}:{c.addr[1]} answered {kind} with {msg}")
            if kind == "ping":
                c.confirmed = sent
                synced = True
            elif kind == "nodes":
                primaries = _primaries(msg, self.host)
                if primaries != self.primaries:
                    raise ConnectionError(f"the cluster's primaries changed ({len(primaries)} now)")
        if synced:
            confirmed = min(x.confirmed for x in self.conns)
            if confirmed:
                self._write_hb(confirmed)

    def _push(self, msg):
        if len(msg) < 2 or msg[0] != b"invalidate":
            return
        keys = msg[1]
        if keys is None:  # FLUSHDB / FLUSHALL: everything may have changed
            self.epoch = _near.random_id()
            self._dirty = True
            log.info("fleet listener for %r: server flushed; new epoch %x", self.namespace, self.epoch)
            return
        cache, layout, epoch = self.cache, self.layout, self.epoch
        n = len(self.prefix)
        for rk in keys:
            kb = rk[n:]
            old = _near.bump_gen(cache, layout.gen_key(kb))
            if old is not None:
                _near.drop_copies(cache, layout, epoch, old, kb)
            self.invalidations += 1

    def _write_hb(self, synced):
        if self.epoch is None:
            return
        self.cache.store(self.layout.hb_key,
                         _near.pack_hb(self.epoch, synced, self.max_lag, os.getpid(), time.time()))

    def _drop_old_epochs(self):
        """Delete the copies filed under earlier epochs (never looked up again)."""
        keep = self.layout.epoch_prefix(self.epoch).decode("utf-8", "surrogateescape")
        vpfx = self.layout.vpfx.decode()
        n = 0
        for key in list(self.cache.keys()):
            k = key if isinstance(key, str) else key.decode("utf-8", "surrogateescape")
            if k.startswith(vpfx) and not k.startswith(keep):
                if self.cache.delete(key):
                    n += 1
        if n:
            log.info("fleet listener for %r: dropped %d copies of earlier epochs", self.namespace, n)
        self._dirty = False


def _primaries(nodes_reply, seed_host):
    """The sorted (host, port) of the primaries in a CLUSTER NODES reply,
    slot-less ones included: a primary just added is tracked before any slot
    moves to it."""
    text = nodes_reply.decode() if isinstance(nodes_reply, bytes) else str(nodes_reply or "")
    out = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        flags = parts[2].split(",")
        if "master" not in flags or {"fail", "handshake", "noaddr"} & set(flags):
            continue
        addr = parts[1].split("@", 1)[0]
        host, _, port = addr.rpartition(":")
        if not port.isdigit() or port == "0":
            continue
        out.add((host or seed_host, int(port)))
    return sorted(out)


def main(cache_name, url, namespace, **options):
    """Run a listener in the foreground until SIGTERM or SIGINT; returns 0."""
    import apccache

    cache = apccache.Cache.attach(cache_name)
    listener = Listener(cache, url, namespace, **options)

    def on_signal(signum, frame):
        listener.stop()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        listener.run()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        cache.close()
    return 0
