"""No stale fill: a reader that missed, read Redis, and files its copy after an
invalidation overtook it must leave nothing that a later read can find."""

import signal
import time

from apccache.fleet import _near
from fleet_support import wait_synced


def test_a_fill_overtaken_by_an_invalidation_is_never_served(hosts):
    """The classic client-side-caching race, forced: host b's reader has read
    v1 from Redis; before it files its copy, host a writes v2 and b's listener
    handles the invalidation.  Every read on b after that returns v2."""
    a, b = hosts(2)
    a.fc.store("k", "v1")
    wait_synced(b.fc)      # b's listener is done with v1's push
    kb = b"k"
    gkey = b.fc._layout.gen_key(kb)
    real = b.fc._get_pttl
    seen = {}

    def overtaken_read(keys, args=None, client=None):
        reply = real(keys=keys)                  # Redis answers v1 ...
        before = b.cache.fetch(gkey)
        a.fc.store("k", "v2")                    # ... then a write is acknowledged
        deadline = time.monotonic() + 5
        while b.cache.fetch(gkey) == before:     # ... and b's listener handles it
            assert time.monotonic() < deadline, "b's listener never saw the write"
        seen["gen_after"] = b.cache.fetch(gkey)
        return reply                             # ... before b files its copy of v1

    filed = []
    real_fill = b.fc._fill

    def recorded_fill(bucket, key, epoch, gen, value, pttl):
        filed.append((gen, value))
        return real_fill(bucket, key, epoch, gen, value, pttl)

    b.fc._get_pttl = overtaken_read
    b.fc._fill = recorded_fill
    try:
        assert b.fc.fetch("k") == "v1"           # began before the write: v1 is a right answer
    finally:
        b.fc._get_pttl = real
        b.fc._fill = real_fill
    assert b.fc.fetch("k") == "v2"
    assert b.fleet().fetch("k") == "v2"          # another worker on b
    # The copy of v1 was filed under the generation read before Redis was,
    # which the invalidation had already moved on from: nobody looks it up.
    epoch = b.fc._epoch
    assert filed[0][1] == "v1" and filed[0][0] != seen["gen_after"]
    # ... and the interleaving above is the dangerous one: had the reader
    # filed v1 under the generation current *after* its Redis read, it would
    # be served.
    naive = b.fc._layout.value_key(epoch, seen["gen_after"], kb)
    b.cache.store(naive, "v1")
    assert b.fc.fetch("k") == "v1"
    b.cache.delete(naive)


def test_a_local_write_during_a_fill_wins(hosts):
    """Two workers of one host: one fills while the other writes; the write's
    own invalidation (made before store() returns) beats the fill, even with
    the listener stalled (a long max_lag keeps the host trusting it)."""
    (h,) = hosts(1, max_lag=5.0)
    writer = h.fleet()
    h.fc.store("k", 1)
    wait_synced(h.fc)
    h.listener.signal(signal.SIGSTOP)
    real = h.fc._get_pttl

    def overtaken_read(keys, args=None, client=None):
        reply = real(keys=keys)
        writer.store("k", 2)
        return reply

    h.fc._get_pttl = overtaken_read
    try:
        assert h.fc.fetch("k") == 1
    finally:
        h.fc._get_pttl = real
    assert h.fc.status()["trusted"]
    assert h.fc.fetch("k") == 2
    assert writer.fetch("k") == 2
    h.listener.signal(signal.SIGCONT)


def test_generations_only_move_to_values_never_recorded(segments):
    """A bucket's generation is created at a random value and moved by
    compare-and-swap, so an evicted and recreated counter does not come back
    at a value a reader filed a copy under."""
    c = segments(size=1 << 20)
    gkey = b"\x00fleet:x\x00g1"
    seen = set()
    for _ in range(20):
        g = _near.read_gen(c, gkey)
        assert g not in seen
        seen.add(g)
        old = _near.bump_gen(c, gkey)
        assert old == g and c.fetch(gkey) == g + 1
        seen.add(g + 1)
        c.delete(gkey)          # as an eviction would
    assert _near.bump_gen(c, gkey) is None
    assert c.fetch(gkey) not in seen
