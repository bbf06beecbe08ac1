"""What the fleet tier keeps in the host's segment, and the one place that
reads and writes it (used by FleetCache in every worker and by the listener).

All of it is ordinary cache entries under one reserved prefix per namespace,
written with the public Cache API::

    PFX = b"\\x00fleet:" + namespace + b"\\x00"

    PFX + b"hb"                   the heartbeat record (bytes, see pack_hb)
    PFX + b"g" + bucket           a bucket's generation (int)
    PFX + b"v" + epoch + b":" + gen + b":" + key
                                  a near copy of Redis key NS:key, valid
                                  for that epoch and that bucket generation

THE TWO COUNTERS

- The *epoch* names one unbroken tracking connection of the listener.  It is
  64 random bits, chosen afresh on every (re)connect and on a server-side
  flush, so a near copy made under an older connection can never be named
  again, even if the segment lost the heartbeat record to eviction.
- A bucket's *generation* moves whenever the listener is told that a key of
  that bucket changed, and whenever a writer on this host changes one.  It
  moves by ``bump_gen``: a random start value if the counter is absent,
  else +1.  A reader reads the generation *before* it reads Redis, and files
  its copy under that generation: if an invalidation is handled while the
  read is in flight, the copy is filed under a generation that is no longer
  current, and a reader that reads the generation afresh never finds it.
  That is the whole no-stale-fill argument, and it needs no lock.  (Readers
  memoise generations for one trust window at most -- see
  FleetCache._memo_key for why that keeps the bound -- and a filler that sees
  the generation moved deletes its copy at once, so in practice nobody finds
  it at all.)

Everything here may be evicted like any entry.  A missing heartbeat means
"do not trust"; a missing generation is never equal to a recorded one.
"""

import os
import struct
import zlib

__all__ = ["Layout", "HB", "NBUCKETS", "bump_gen", "random_id"]

NBUCKETS = 8192  # generation counters per namespace (a power of two)

# epoch (u64), time of the last confirmed sync (CLOCK_MONOTONIC s),
# the trust bound (s), listener pid, then-current wall time (s, for humans)
HB = struct.Struct("<QddId")


def random_id():
    """A random 63-bit positive int (fits the engine's int64)."""
    return int.from_bytes(os.urandom(8), "little") >> 1


class Layout:
    """The key names of one namespace in a segment."""

    __slots__ = ("pfx", "hb_key", "gen_keys", "vpfx")

    def __init__(self, namespace):
        ns = namespace.encode() if isinstance(namespace, str) else bytes(namespace)
        self.pfx = b"\x00fleet:" + ns + b"\x00"
        self.hb_key = self.pfx + b"hb"
        self.gen_keys = [self.pfx + b"g%d" % i for i in range(NBUCKETS)]
        self.vpfx = self.pfx + b"v"

    @staticmethod
    def bucket(kb):
        return zlib.crc32(kb) & (NBUCKETS - 1)

    def gen_key(self, kb):
        return self.gen_keys[zlib.crc32(kb) & (NBUCKETS - 1)]

    def epoch_prefix(self, epoch):
        return self.vpfx + b"%x:" % epoch

    def value_key(self, epoch, gen, kb):
        return self.vpfx + b"%x:%d:" % (epoch, gen) + kb


# How many generations below the one it moved from an invalidation clears.
# Each process that moves a generation (the listener, or a writer) deletes
# the copy filed under the value it moved from just after the move; while
# it has not yet, a reader whose memo still names that value could find the
# copy after a later write has been acknowledged.  Every process has at most
# one such move in flight, so clearing a few generations below closes that
# window unless more processes than this are mid-move on one bucket at once.
STALE_GENS = 4


def drop_copies(cache, layout, epoch, old, kb):
    """Delete kb's copies under generation old and the STALE_GENS - 1 below it."""
    for g in range(old, max(old - STALE_GENS, 0), -1):
        cache.delete(layout.value_key(epoch, g, kb))


def bump_gen(cache, gkey):
    """Move a bucket's generation to a value no reader has recorded; return
    the value it had (None if absent).

    Never ``inc``: inc creates a missing counter at 0 and would make the same
    small values again after an eviction.  A counter is only ever created at
    a random value, and moved by compare-and-swap."""
    while True:
        old = cache.fetch(gkey)
        if old is None:
            if cache.add(gkey, random_id()):
                return None
            continue
        if type(old) is not int:  # not ours: replace it
            cache.store(gkey, random_id())
            return None
        new = old + 1 if old < (1 << 63) - 1 else 1
        if cache.cas(gkey, old, new):
            return old


def read_gen(cache, gkey):
    """The bucket's generation, created at a random value if absent."""
    g = cache.fetch(gkey)
    if g is None:
        cache.add(gkey, random_id())
        g = cache.fetch(gkey)
    return g


def pack_hb(epoch, synced, bound, pid, wall):
    return HB.pack(epoch, synced, bound, pid, wall)


def unpack_hb(raw):
    """(epoch, synced, bound, pid, wall) or None for a missing/odd record."""
    if type(raw) is not bytes or len(raw) != HB.size:
        return None
    return HB.unpack(raw)
