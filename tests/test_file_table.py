"""The file table: a second table in the same segment, apart from the user
cache, whose values can be read in place."""

import pytest


def test_the_file_table_is_apart_from_the_user_cache(cache):
    ft = cache.file_table
    assert ft.add(b"file:1", b"code") is True
    assert ft.add(b"file:1", b"other") is False
    cache.store(b"file:1", "user value")  # same key, other table
    assert ft.get(b"file:1") == b"code"
    cache.clear()
    assert ft.get(b"file:1") == b"code"
    assert len(ft) == 1 and len(cache) == 0
    assert ft.info()["num_entries"] == 1 and cache.info()["num_entries"] == 0
    assert ft.entry(b"file:2", lambda k: b"made") == b"made"
    assert [k for _, k in ft.entries()] and ft.delete(b"file:2")
    ft.clear()
    assert len(ft) == 0
    assert cache.check() == []


@pytest.mark.parametrize("size", [10, 200_000])
def test_file_table_view_reads_the_value_in_place_and_lets_it_go(cache, size):
    ft = cache.file_table
    value = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    assert ft.put(b"blob", bytearray(value)) is True, "a bytearray is stored as bytes"
    assert ft.get(b"blob") == value
    seen = []
    assert ft.view(b"blob", lambda buf: seen.append(buf) or bytes(buf[:3]) + bytes(buf[-3:])) == value[:3] + value[-3:]
    if size > 16384:  # read where it lies: a view, released when fn returns
        with pytest.raises(ValueError, match="released"):
            bytes(seen[0])
    assert ft.view(b"absent", bytes, "default") == "default"
    # The pin is gone: the entry can be replaced and every byte is freed.
    assert ft.put(b"blob", b"new") and ft.view(b"blob", bytes) == b"new"
    assert cache.check() == []
