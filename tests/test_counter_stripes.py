"""The hit, miss and insert counters are sharded: each process counts in a
stripe (a cache line) that it claims the first time it counts, so up to 64
live processes never write each other's line, whatever their pids.  The
totals in info() are sums over the stripes, exact whoever claimed what."""
import multiprocessing as mp
import os

import apccache
from apccache import _bindings as B

NSTRIPES = 64


def stripe_of(cache):
    i = B.lib.apc_counter_stripe(cache._segment.ptr)
    assert 0 <= i < NSTRIPES
    return i


def _claim_and_wait(name, q, go, fetches):
    c = apccache.Cache.attach(name)
    for _ in range(fetches):
        c.fetch("k")
    q.put((os.getpid(), stripe_of(c)))
    go.wait(30)  # alive until every child has claimed
    c.close()


def _children(name, n, fetches=0):
    """n processes alive at once, each with its claimed stripe: [(pid, stripe)]."""
    ctx = mp.get_context("fork")
    q, go = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_claim_and_wait, args=(name, q, go, fetches)) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        return [q.get(timeout=60) for _ in procs]
    finally:
        go.set()
        for p in procs:
            p.join(30)


def test_a_process_keeps_its_stripe_and_a_forked_child_claims_another(segments):
    c = segments(size=1 << 20)
    mine = stripe_of(c)
    c.fetch("k")
    assert stripe_of(c) == mine
    ((_, child),) = _children(c.name, 1)
    assert child != mine


def test_processes_alive_together_count_in_stripes_of_their_own(segments):
    c = segments(size=1 << 20)
    c.store("k", b"v")
    stripe_of(c)
    # 40 processes: with pid % 64, two of them would share a stripe almost
    # surely (and forked pids run consecutively, wrapping round 64)
    got = _children(c.name, 40, fetches=5)
    stripes = [s for _, s in got] + [stripe_of(c)]
    assert len(set(stripes)) == len(stripes)
    assert c.info()["num_hits"] == 40 * 5


def test_a_dead_processs_stripe_is_claimed_again_and_its_counts_stay(segments):
    c = segments(size=1 << 20)
    c.store("k", b"v")
    stripe_of(c)
    first = _children(c.name, NSTRIPES - 1, fetches=1)  # every other stripe, then they exit
    assert len({s for _, s in first} | {stripe_of(c)}) == NSTRIPES
    again = _children(c.name, 10, fetches=1)
    assert len({s for _, s in again}) == 10
    assert c.info()["num_hits"] == NSTRIPES - 1 + 10


def test_more_processes_than_stripes_share_and_count_exactly(segments):
    c = segments(size=1 << 20)
    c.store("k", b"v")  # this process claims one
    got = _children(c.name, NSTRIPES + 6, fetches=3)
    assert len({s for _, s in got} | {stripe_of(c)}) == NSTRIPES  # every stripe is someone's
    assert c.info()["num_hits"] == (NSTRIPES + 6) * 3
    assert c.check() == []
