"""What the cache says of itself: the counters of info(), key_info(),
sma_info() balancing to the byte, and clear() resetting them."""


def test_counting(cache):
    cache.store("a", 1)
    cache.store("a", 2)  # an overwrite is an insert too
    cache.add("a", 3)  # a refused add is not
    cache.fetch("a")
    cache.fetch("zz")
    cache.key_info("a")  # not a hit
    cache.exists("a")  # neither
    i = cache.info()
    assert i["num_inserts"] == 2
    assert i["num_hits"] == 1
    assert i["num_misses"] == 1
    assert i["num_entries"] == 1
    assert i["mem_size"] == sum(e["mem_size"] for e in i["entries"])
    assert cache.key_info("a")["hits"] == 1


def test_info_fields(cache):
    cache.store("a", b"x" * 100, ttl=30)
    i = cache.info()
    for f in ("num_slots", "num_hits", "num_misses", "num_inserts", "num_entries", "expunges",
              "evictions", "start_time", "mem_size", "ttl", "gc_ttl"):
        assert isinstance(i[f], int), f
    (e,) = i["entries"]
    assert e["key"] == "a"
    assert e["ttl"] == 30
    assert e["mem_size"] >= 100
    for f in ("hits", "creation_time", "mtime", "access_time", "deletion_time", "refs"):
        assert isinstance(e[f], int)
    assert "entries" not in cache.info(limited=True)


def test_key_info(cache):
    assert cache.key_info("zz") is None
    cache.store("k", 1, ttl=9)
    ki = cache.key_info("k")
    assert set(ki) >= {"hits", "access_time", "mtime", "creation_time", "deletion_time", "ttl", "refs"}
    assert ki["ttl"] == 9 and ki["hits"] == 0 and ki["refs"] == 0


def test_sma_info_balances(cache):
    s = cache.sma_info()
    assert s["avail_mem"] + s["used_mem"] == s["seg_size"]
    assert s["largest_free"] <= s["avail_mem"]
    blocks = s["block_lists"][0]
    assert sum(b["size"] for b in blocks) == s["avail_mem"]
    cache.store("x", b"y" * 10000)
    s2 = cache.sma_info()
    assert s2["avail_mem"] < s["avail_mem"]


def test_clear_resets_the_user_cache(cache):
    cache.store("a", 1)
    cache.fetch("a")
    cache.fetch("b")
    t0 = cache.info()["start_time"]
    cache.clear()
    i = cache.info()
    assert i["num_entries"] == 0 and len(cache) == 0
    assert (i["num_hits"], i["num_misses"], i["num_inserts"], i["expunges"]) == (0, 0, 0, 0)
    assert i["start_time"] >= t0
    assert cache.sma_info()["avail_mem"] == cache.sma_info()["seg_size"]
    assert cache.check() == []
