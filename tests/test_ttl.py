"""Time to live: an entry lives while creation + ttl >= now and is then
absent for every operation; ttl 0 never expires; inc keeps the entry's ttl;
the soft (cache-wide) ttl never hides an entry from a read."""


def test_soft_expired_entries_stay_readable(segments, clock):
    c = segments(size=1 << 20, ttl=10, clock=clock)
    c.store("k", 1)
    clock.advance(100)
    assert c.fetch("k") == 1


def test_hard_ttl_boundary_is_creation_plus_ttl_strictly_before_now(ccache, clock):
    ccache.store("k", "v", ttl=2)
    clock.advance(2)  # creation + ttl == now: still there
    assert ccache.fetch("k") == "v"
    clock.advance(1)  # creation + ttl < now: gone
    assert ccache.fetch("k") is None


def test_an_expired_entry_is_absent_for_every_operation(ccache, clock):
    ccache.store("k", 5, ttl=1)
    ccache.store("keep", 1)
    clock.advance(2)
    assert ccache.fetch("k", "miss") == "miss"
    assert not ccache.exists("k") and "k" not in ccache
    assert ccache.key_info("k") is None
    assert list(ccache.keys()) == ["keep"]
    assert len(ccache) == 1
    assert ccache.cas("k", 5, 6) is False
    assert "entries" in ccache.info() and [e["key"] for e in ccache.info()["entries"]] == ["keep"]
    assert ccache.delete("k") is False
    ccache.store("k", 5, ttl=1)
    clock.advance(2)
    assert ccache.inc("k", 3) == 3  # created as 0, then updated
    ccache.store("a", 1, ttl=1)
    clock.advance(2)
    assert ccache.add("a", 2) is True  # an expired entry is replaced
    assert ccache.fetch("a") == 2
    assert ccache.check() == []


def test_an_entry_without_ttl_never_expires(ccache, clock):
    ccache.store("k", 1)
    clock.advance(10**6)
    assert ccache.fetch("k") == 1


def test_inc_keeps_the_ttl_of_the_entry(ccache, clock):
    ccache.store("n", 1, ttl=5)
    clock.advance(3)
    assert ccache.inc("n") == 2
    clock.advance(3)
    assert ccache.fetch("n") is None
