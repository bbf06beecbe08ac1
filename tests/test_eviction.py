"""A full cache: what can never fit is refused and evicts nothing; room is
made from expired entries first, then idle ones past the soft ttl, then the
least recently used; split-up free space is compacted, not refused."""

import pytest

from apccache import CacheFullError


def test_a_value_that_can_never_fit_raises_and_evicts_nothing(segments):
    c = segments(size=1 << 20)
    c.store("keep", 1)
    with pytest.raises(CacheFullError, match="can never fit"):
        c.store("huge", b"x" * (2 << 20))
    assert c.fetch("keep") == 1
    assert c.info()["evictions"] == 0


def test_a_full_cache_evicts_least_recently_used_first(segments, clock):
    c = segments(size=1 << 20, clock=clock)
    value = b"v" * 1000
    n = 0
    while c.sma_info(limited=True)["avail_mem"] > 20_000:
        c.store(f"k{n}", value)
        n += 1
        clock.advance(1)
    for i in range(n // 2, n):  # the newer half was read recently
        c.fetch(f"k{i}")
    clock.advance(1)
    for i in range(n, n + 200):
        c.store(f"k{i}", value)
    i = c.info()
    assert i["evictions"] > 0 and i["expunges"] > 0
    survivors_old = sum(1 for j in range(0, n // 4) if c.exists(f"k{j}"))
    survivors_new = sum(1 for j in range(3 * n // 4, n) if c.exists(f"k{j}"))
    assert survivors_new > survivors_old
    assert len(c) > n // 3  # never wiped
    assert c.check() == []


def test_expired_entries_go_before_live_ones(segments, clock):
    c = segments(size=1 << 20, clock=clock)
    value = b"v" * 1000
    n = 0
    while c.sma_info(limited=True)["avail_mem"] > 20_000:
        c.store(f"k{n}", value, ttl=0 if n % 2 else 5)
        n += 1
    clock.advance(10)
    for i in range(n, n + 100):
        c.store(f"k{i}", value)
    assert all(c.exists(f"k{j}") for j in range(1, n, 2))  # live ones all kept
    assert c.info()["evictions"] == 0
    assert c.check() == []


def test_soft_ttl_entries_go_first(segments, clock):
    c = segments(size=1 << 20, ttl=60, clock=clock)
    value = b"v" * 1000
    n = 0
    while c.sma_info(limited=True)["avail_mem"] > 20_000:
        c.store(f"k{n}", value)
        n += 1
    clock.advance(30)
    for i in range(0, n, 2):
        c.fetch(f"k{i}")  # touched: not idle for the soft ttl
    clock.advance(40)
    assert c.fetch("k1") == value  # still readable until room is needed
    for i in range(n, n + 50):
        c.store(f"k{i}", value)
    assert all(c.exists(f"k{j}") for j in range(0, n, 2))
    assert c.check() == []


def test_fragmentation_is_compacted_not_refused(segments):
    c = segments(size=1 << 20)
    arena = c.sma_info()["seg_size"]
    n = 0
    while c.sma_info(limited=True)["avail_mem"] > 8_000:
        c.store(f"k{n}", b"x" * 4000)
        n += 1
    for i in range(0, n, 2):
        c.delete(f"k{i}")
    s = c.sma_info()
    assert s["largest_free"] < arena // 4 < s["avail_mem"]
    big = b"B" * (arena // 4)
    c.store("big", big)
    assert c.fetch("big") == big
    survivors = sum(1 for i in range(1, n, 2) if c.exists(f"k{i}"))
    assert survivors == len(range(1, n, 2))  # compaction evicted nothing
    assert c.info()["compactions"] >= 1
    assert c.check() == []
