"""The _many forms: store_many, fetch_many, add_many, delete_many check
every key first and list the items they could not do."""

import pytest


def test_many_forms(cache):
    assert cache.store_many({"a": 1, "b": 2, b"c": 3}) == []
    assert cache.fetch_many(["a", "b", "c", "zz"]) == {"a": 1, "b": 2, "c": 3}
    assert cache.add_many({"a": 9, "d": 4}) == ["a"]
    assert cache.delete_many(["a", "zz"]) == ["zz"]
    assert sorted(cache.keys()) == ["b", "c", "d"]


def test_store_many_lists_the_items_that_failed(cache):
    failed = cache.store_many({"ok": 1, "bad": lambda: 1, "big": b"x" * (8 << 20)})
    assert sorted(failed) == ["bad", "big"]
    assert cache.fetch("ok") == 1


def test_many_forms_check_every_key_first(cache):
    with pytest.raises(TypeError):
        cache.store_many({"a": 1, 5: 2})
    assert "a" not in cache
