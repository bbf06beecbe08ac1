"""entry(key, generator): the generator runs only on a miss, its exception
stores nothing, and it may use the cache itself."""

import pytest


def test_entry_runs_the_generator_only_when_missing(cache):
    calls = []

    def gen(k):
        calls.append(k)
        return k.upper()

    assert cache.entry("abc", gen) == "ABC"
    assert cache.entry("abc", gen) == "ABC"
    assert calls == ["abc"]
    assert cache.fetch("abc") == "ABC"


def test_entry_exception_propagates_and_stores_nothing(cache):
    def gen(k):
        raise KeyError("boom")

    with pytest.raises(KeyError):
        cache.entry("k", gen)
    assert "k" not in cache
    assert cache.info()["entries_in_progress"] == 0
    assert cache.entry("k", lambda k: 1) == 1


def test_entry_generator_may_use_the_cache_even_nested(cache):
    def inner(k):
        cache.store("side", 1)
        return "inner"

    def outer(k):
        return cache.entry("inner", inner) + "+" + str(cache.fetch("side"))

    assert cache.entry("outer", outer) == "inner+1"
    # the same key, nested: the generator simply runs
    assert cache.entry("same", lambda k: cache.entry("same", lambda k2: 5) * 2) == 10


def test_entry_with_ttl(ccache, clock):
    ccache.entry("k", lambda k: 1, ttl=5)
    clock.advance(6)
    assert ccache.entry("k", lambda k: 2) == 2
