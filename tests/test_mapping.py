"""The mapping protocol (cache[k], k in cache, del, len, iter) and keys(),
with a pattern, while the cache changes under the iteration."""

import pytest


def test_keys_with_a_pattern(cache):
    for k in ["user:1", "user:2", "post:1"]:
        cache.store(k, 1)
    cache.store(b"\xff\xfe", 1)
    assert sorted(cache.keys("^user:")) == ["user:1", "user:2"]
    assert sorted(cache.keys("1$")) == ["post:1", "user:1"]
    allk = list(cache.keys())
    assert b"\xff\xfe" in allk and len(allk) == 4


def test_iteration_may_change_the_cache(cache):
    for i in range(50):
        cache.store(f"k{i}", i)
    for k in cache.keys():
        cache.delete(k)
        cache.store("new-" + k, 1)
    assert len(cache) == 50
    assert cache.check() == []


def test_mapping_protocol(cache):
    cache["a"] = 1
    assert cache["a"] == 1
    assert "a" in cache and "b" not in cache
    with pytest.raises(KeyError):
        cache["b"]
    del cache["a"]
    with pytest.raises(KeyError):
        del cache["a"]
    cache["x"] = 1
    assert list(cache) == ["x"]
    assert len(cache) == 1
