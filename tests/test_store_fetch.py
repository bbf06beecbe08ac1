"""store, fetch, add, delete, exists: a value comes back equal, of the
same type and as a copy, at any size; a miss gives the default; a store that
fails keeps the old value."""
import os
import pickle
import threading

import pytest

import apccache


@pytest.mark.parametrize(
    "value",
    [b"", b"\x00bin\xff", "", "text \u00e9\u4e2d", 0, -1, 2**63 - 1, -(2**63), 2**64, 1.5,
     float("inf"), True, False, None, [1, 2], (1, "a"), {"a": {"b": [1]}}, {1, 2},
     bytearray(b"ba")],
)
def test_fetch_returns_an_equal_value_of_the_same_type(cache, value):
    cache.store("k", value)
    got = cache.fetch("k")
    assert got == value
    assert type(got) is type(value)


def test_nan_round_trips(cache):
    cache.store("k", float("nan"))
    v = cache.fetch("k")
    assert v != v


def test_fetch_returns_a_copy(cache):
    cache.store("k", {"a": [1]})
    v = cache.fetch("k")
    v["a"].append(2)
    assert cache.fetch("k") == {"a": [1]}


def test_large_values_round_trip(cache):
    for n in (4095, 4096, 4097, 100_000, 1 << 20):
        data = os.urandom(n)
        cache.store("big", data)
        assert cache.fetch("big") == data
    assert cache.check() == []
    assert cache.info()["pins"] == 0


def test_large_values_written_to_fresh_and_to_rewritten_pages_are_seen_everywhere(segments):
    """Large values go into pages this process has not written by pwrite,
    and into pages it has by memcpy (a forked child starts afresh): every
    way, other handles and processes see the bytes at once."""
    c = segments(size=16 << 20)
    other = apccache.Cache.attach(c.name)
    try:
        sizes = [16384, 16385, 20000, 65536, 300_001, 1 << 20]
        for rnd in range(3):  # the first round writes fresh pages, the others reuse them
            for i, n in enumerate(sizes):
                data = bytes([rnd, i]) + os.urandom(n - 2)
                c.store(f"v{i}", data)
                assert other.fetch(f"v{i}") == data and c.fetch(f"v{i}") == data
        pid = os.fork()
        if pid == 0:
            ok = True
            for i, n in enumerate(sizes):
                data = b"child" + bytes(n - 5)
                c.store(f"v{i}", data)
                ok = ok and c.fetch(f"v{i}") == data
            os._exit(0 if ok else 1)
        assert os.waitpid(pid, 0)[1] == 0
        assert all(other.fetch(f"v{i}") == b"child" + bytes(n - 5) for i, n in enumerate(sizes))
        assert c.check() == []
    finally:
        other.close()


def test_a_large_value_that_cannot_be_written_fails_the_store_and_leaks_nothing(cache):
    used = cache.sma_info()["avail_mem"]
    fd = cache._segment.fd()  # the engine's own descriptor of the segment
    saved = os.dup(fd)
    os.close(fd)  # the segment's file is gone from under the engine: pwrite fails
    try:
        with pytest.raises(OSError):
            cache.store("big", os.urandom(100_000))
    finally:
        os.dup2(saved, fd)
        os.close(saved)
    assert "big" not in cache and cache.check() == []
    assert cache.sma_info()["avail_mem"] == used
    cache.store("big", b"x" * 100_000)
    assert cache.fetch("big") == b"x" * 100_000


def test_missing_key_gives_the_default(cache):
    assert cache.fetch("nope") is None
    assert cache.fetch("nope", 7) == 7


def test_store_overwrites(cache):
    assert cache.store("k", 1) is True
    assert cache.store("k", "two") is True
    assert cache.fetch("k") == "two"
    assert len(cache) == 1


def test_unpicklable_value_raises_and_keeps_the_old_value(cache):
    cache.store("k", "old")
    with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
        cache.store("k", lambda: 1)
    assert cache.fetch("k") == "old"
    with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
        cache.store("k", threading.Lock())
    assert cache.fetch("k") == "old"


def test_add_only_when_missing(cache):
    assert cache.add("k", 1) is True
    assert cache.add("k", 2) is False
    assert cache.fetch("k") == 1


def test_delete_and_exists(cache):
    cache.store("k", 1)
    assert cache.exists("k")
    assert cache.delete("k") is True
    assert cache.delete("k") is False
    assert not cache.exists("k")
    assert cache.check() == []
