"""FleetCache's API against a real redis-server: values round-trip with their
types, writes go to Redis and invalidate near copies, TTLs are Redis's."""

import pytest

import apccache
from apccache.fleet import FleetCache, _near
from fleet_support import wait_for, wait_synced


def redis_commands(rclient, name):
    """How many times the server ran command `name` (from INFO commandstats)."""
    stats = rclient.info("commandstats")
    return stats.get(f"cmdstat_{name}", {}).get("calls", 0)


@pytest.mark.parametrize("value", [
    b"raw\x00bytes", "text é", 42, -(2 ** 63), 2 ** 63 - 1, 2 ** 70, 1.5, True, False, None,
    {"name": "Ada", "tags": [1, 2]}, (1, "a"), b"", "",
])
def test_values_round_trip_through_redis_and_the_near_copy(hosts, value):
    (h,) = hosts(1)
    assert h.fc.store("k", value) is True
    got_remote = h.fc.fetch("k")   # the first read after a write comes from Redis
    got_near = h.fc.fetch("k")     # then from the segment
    assert got_remote == value and type(got_remote) is type(value)
    assert got_near == value and type(got_near) is type(value)


def test_a_near_hit_does_not_ask_redis(hosts, rclient):
    (h,) = hosts(1)
    h.fc.store("user:42", {"name": "Ada"})
    wait_synced(h.fc)   # the listener's push for our own write is handled too
    assert h.fc.fetch("user:42") == {"name": "Ada"}
    before = redis_commands(rclient, "evalsha")
    for _ in range(50):
        assert h.fc.fetch("user:42") == {"name": "Ada"}
    assert redis_commands(rclient, "evalsha") == before


def test_every_worker_of_a_host_shares_one_copy(hosts, rclient):
    (h,) = hosts(1)
    other = h.fleet()   # a second handle: another worker on the same host
    h.fc.store("shared", "v1")
    wait_synced(h.fc)
    assert h.fc.fetch("shared") == "v1"           # fills the segment
    before = redis_commands(rclient, "evalsha")
    assert other.fetch("shared") == "v1"
    assert redis_commands(rclient, "evalsha") == before


def test_keys_live_under_the_namespace_in_redis(hosts, rclient, namespace):
    (h,) = hosts(1)
    h.fc.store("a", 7)
    h.fc.store("b", "x")
    assert rclient.get(f"{namespace}:a") == b"7"     # ints as decimal text
    assert rclient.get(f"{namespace}:b") == b"\x00sx"


def test_values_written_by_other_clients(hosts, rclient, namespace):
    (h,) = hosts(1)
    rclient.set(f"{namespace}:plain", "hello")
    rclient.set(f"{namespace}:num", "-17")
    rclient.set(f"{namespace}:notnum", "017")
    assert h.fc.fetch("plain") == b"hello"
    assert h.fc.fetch("num") == -17
    assert h.fc.fetch("notnum") == b"017"


def test_a_write_here_is_seen_here_at_once(hosts):
    (h,) = hosts(1)
    other = h.fleet()
    h.fc.store("k", 1)
    assert other.fetch("k") == 1
    for i in range(2, 50):
        h.fc.store("k", i)
        assert other.fetch("k") == i   # no wait for the listener
        assert h.fc.fetch("k") == i


def _stale_copy_left(h, other, key):
    """other fills and memoises a copy of key (after the listener has
    handled the write of 1); then the bucket's generation moves the way an
    invalidation in flight moves it: before its copy is deleted."""
    wait_synced(h.fc)
    assert other.fetch(key) == 1
    _near.bump_gen(h.cache, h.fc._layout.gen_key(key.encode()))


def test_a_write_here_is_seen_by_another_fleetcache_of_this_process_at_once(hosts):
    """Even when an invalidation (the listener's) had moved the generation
    that other's memo names and not yet deleted the copy under it."""
    (h,) = hosts(1)
    other = h.fleet()
    h.fc.store("k", 1)
    _stale_copy_left(h, other, "k")
    h.fc.store("k", 2)
    assert other.fetch("k") == 2


def test_a_write_here_clears_the_copies_an_unfinished_invalidation_left(hosts):
    """The same with other on its own handle of the segment, as another
    process of the host would be."""
    (h,) = hosts(1)
    handle = apccache.Cache.attach(h.name)
    try:
        other = FleetCache(handle, h.url, h.namespace)
        h.fc.store("k", 1)
        _stale_copy_left(h, other, "k")
        h.fc.store("k", 2)
        assert other.fetch("k") == 2
        other.redis.close()
    finally:
        handle.close()


def test_a_write_on_another_host_is_seen_within_the_bound(hosts):
    a, b = hosts(2)
    a.fc.store("k", "old")
    assert b.fc.fetch("k") == "old"
    assert b.fc.fetch("k") == "old"   # b's near copy
    a.fc.store("k", "new")
    wait_for(lambda: b.fc.fetch("k") == "new", timeout=0.5, what="b to see a's write")


def test_a_plain_redis_write_invalidates_the_copy(hosts, rclient, namespace):
    (h,) = hosts(1)
    h.fc.store("k", "old")
    assert h.fc.fetch("k") == "old"
    rclient.set(f"{namespace}:k", "\x00snew")
    wait_for(lambda: h.fc.fetch("k") == "new", timeout=0.5, what="the bypassing write to show")
    rclient.delete(f"{namespace}:k")
    wait_for(lambda: h.fc.fetch("k", "gone") == "gone", timeout=0.5, what="the bypassing delete to show")


def test_add_inc_dec_delete(hosts):
    (h,) = hosts(1)
    assert h.fc.add("a", 1) is True
    assert h.fc.add("a", 2) is False
    assert h.fc.fetch("a") == 1
    assert h.fc.inc("a") == 2
    assert h.fc.inc("a", 10) == 12
    assert h.fc.dec("a", 3) == 9
    assert h.fc.fetch("a") == 9
    assert h.fc.inc("fresh", 5) == 5
    assert h.fc.dec("fresh2") == -1
    assert h.fc.delete("a") is True
    assert h.fc.delete("a") is False
    assert h.fc.fetch("a", "none") == "none"
    h.fc.store("s", "text")
    with pytest.raises(TypeError):
        h.fc.inc("s")
    h.fc.store("big", 2 ** 63 - 1)
    with pytest.raises(OverflowError):
        h.fc.inc("big")
    assert h.fc.fetch("big") == 2 ** 63 - 1


def test_inc_gives_a_new_key_its_ttl(hosts, rclient, namespace):
    (h,) = hosts(1)
    h.fc.inc("c", 1, ttl=100)
    assert 0 < rclient.ttl(f"{namespace}:c") <= 100
    h.fc.inc("c", 1, ttl=5)          # an existing key keeps its ttl
    assert rclient.ttl(f"{namespace}:c") > 5


def test_many_forms(hosts):
    (h,) = hosts(1)
    assert h.fc.store_many({"a": 1, "b": "two", "c": [3]}) == []
    assert h.fc.fetch_many(["a", "b", "c", "d"]) == {"a": 1, "b": "two", "c": [3]}
    assert h.fc.fetch_many(["a", "b", "c", "d"]) == {"a": 1, "b": "two", "c": [3]}  # near hits now
    assert h.fc.delete_many(["a", "d"]) == ["d"]
    assert h.fc.fetch_many(["a", "b"]) == {"b": "two"}


def test_clear_empties_the_namespace_on_every_host(hosts, rclient, namespace):
    a, b = hosts(2)
    rclient.set("other:key", "stays")
    a.fc.store_many({f"k{i}": i for i in range(1200)})
    assert b.fc.fetch("k7") == 7 and b.fc.fetch("k7") == 7
    assert a.fc.clear() == 1200
    assert a.fc.fetch("k7") is None
    wait_for(lambda: b.fc.fetch("k7") is None, timeout=0.5, what="b to see the clear")
    assert rclient.get("other:key") == b"stays"
    rclient.delete("other:key")


def test_ttl_is_redis_and_a_copy_never_outlives_it(hosts, rclient, namespace):
    (h,) = hosts(1)
    h.fc.store("t", "v", ttl=30)
    assert 28 <= rclient.ttl(f"{namespace}:t") <= 30
    assert h.fc.fetch("t") == "v"
    near = [k for k in h.cache.keys() if k.endswith(":t") and "\x00v" in k]
    assert len(near) == 1
    info = h.cache.key_info(near[0])
    assert 1 <= info["ttl"] <= rclient.ttl(f"{namespace}:t") - 1
    # a key about to expire gets no copy at all
    h.fc.store("short", "v", ttl=1)
    assert h.fc.fetch("short") == "v"
    assert not [k for k in h.cache.keys() if k.endswith(":short")]


def test_bad_arguments_change_nothing(hosts):
    (h,) = hosts(1)
    with pytest.raises(TypeError):
        h.fc.store(1, "v")
    with pytest.raises(ValueError):
        h.fc.store("k", "v", ttl=-1)
    with pytest.raises(TypeError):
        h.fc.inc("k", 1.5)
    assert h.fc.fetch("k") is None
    from apccache.fleet import FleetCache

    with pytest.raises(ValueError, match="namespace"):
        FleetCache(h.cache, h.url, "has:colon")
    import redis

    with pytest.raises(ValueError, match="decode_responses"):
        FleetCache(h.cache, redis.Redis.from_url(h.url, decode_responses=True), "ns")


def test_a_redis_py_client_can_be_given(hosts, redis_server, namespace):
    import redis

    from apccache.fleet import FleetCache

    (h,) = hosts(1)
    fc = FleetCache(h.cache, redis.Redis(port=redis_server.port), namespace)
    fc.store("k", [1, 2])
    assert h.fc.fetch("k") == [1, 2]
    fc.close()


def test_status_reports_the_listener(hosts):
    (h,) = hosts(1)
    s = h.fc.status()
    assert s["trusted"] is True
    assert s["pid"] == h.listener.pid
    assert 0 <= s["heartbeat_age"] <= s["max_lag"]


def test_cas_and_the_mapping_protocol(hosts, rclient, namespace):
    (h,) = hosts(1)
    h.fc.store("c", 5, ttl=100)
    assert h.fc.fetch("c") == 5
    assert h.fc.cas("c", 5, 6) is True
    assert h.fc.fetch("c") == 6                    # this host's copy was invalidated
    assert h.fc.cas("c", 5, 7) is False
    assert h.fc.cas("missing", 0, 1) is False and h.fc.fetch("missing") is None
    assert 0 < rclient.ttl(f"{namespace}:c") <= 100
    h.fc.store("s", "text")
    assert h.fc.cas("s", 0, 1) is False
    h.fc["m"] = {"a": 1}
    assert h.fc["m"] == {"a": 1} and "m" in h.fc and "nope" not in h.fc
    del h.fc["m"]
    with pytest.raises(KeyError):
        h.fc["m"]
    with pytest.raises(KeyError):
        del h.fc["m"]


def test_a_password_protected_redis(hosts, tmp_path):
    from fleet_support import RedisServer

    srv = RedisServer(tmp_path / "auth", extra=["--requirepass", "s3cret"])
    srv.start()
    try:
        url = f"redis://:s3cret@127.0.0.1:{srv.port}/0"
        a, b = hosts(2, url=url)
        a.fc.store("k", "v1")
        assert b.fc.fetch("k") == "v1"
        a.fc.store("k", "v2")
        wait_for(lambda: b.fc.fetch("k") == "v2", timeout=0.5, what="b to see the write")
    finally:
        srv.stop()


def test_the_near_hit_takes_the_fast_path_and_its_misses_the_method(hosts, rclient):
    from apccache import _bindings as cache_module

    if cache_module._fastpath is None:
        pytest.skip("built without the fast path")
    (h,) = hosts(1)
    assert type(h.fc.fetch).__name__ == "builtin_function_or_method"
    h.fc.store("k", b"v")
    wait_synced(h.fc)
    assert h.fc.fetch("k") == b"v"  # filled from Redis: the memo now names the copy
    before = redis_commands(rclient, "evalsha")
    assert [h.fc.fetch("k") for _ in range(20)] == [b"v"] * 20
    assert redis_commands(rclient, "evalsha") == before
    assert h.fc.fetch("missing", 7) == 7  # not memoised: the method, and Redis
    assert h.fc.fetch("k", stale_if_error=1) == b"v"  # a keyword: the method
    h.fc._near.trusted_until = 0.0  # the window closed: the method re-reads the heartbeat
    assert h.fc.fetch("k") == b"v"
