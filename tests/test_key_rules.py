"""Keys: str and bytes name the same key, any bytes are a key (the empty
one too) up to 65535 bytes, and anything else is refused with TypeError by
every method before anything changes."""

import pytest


def test_str_and_bytes_keys_are_one_key(cache):
    cache.store("a", 1)
    assert cache.fetch(b"a") == 1
    cache.store("\u00e9", 2)
    assert cache.fetch("\u00e9".encode()) == 2


def test_binary_keys_are_safe(cache):
    keys = [b"", b"\x00", b"a\x00b", b"\xff\xfe", bytes(range(256))]
    for i, k in enumerate(keys):
        cache.store(k, i)
    for i, k in enumerate(keys):
        assert cache.fetch(k) == i
    assert len(cache) == len(keys)


def test_the_empty_key_is_valid(cache):
    cache.store("", "empty")
    assert cache.fetch("") == "empty"
    assert "" in cache


def test_keys_up_to_65535_bytes(cache):
    k = b"k" * 65535
    cache.store(k, 1)
    assert cache.fetch(k) == 1
    with pytest.raises(ValueError, match="65535"):
        cache.store(b"k" * 65536, 1)
    with pytest.raises(ValueError, match="65535"):
        cache.fetch("k" * 65536)


@pytest.mark.parametrize("bad", [1, 1.5, None, ("a",), ["a"], object()])
def test_bad_key_types_raise_type_error_and_change_nothing(cache, bad):
    cache.store("x", 1)
    before = cache.info(limited=True)
    for op in (lambda: cache.store(bad, 1), lambda: cache.fetch(bad), lambda: cache.add(bad, 1),
               lambda: cache.delete(bad), lambda: cache.exists(bad), lambda: cache.inc(bad),
               lambda: cache.cas(bad, 1, 2), lambda: cache.entry(bad, str)):
        with pytest.raises(TypeError):
            op()
    after = cache.info(limited=True)
    assert (after["num_entries"], after["num_inserts"], after["num_hits"], after["num_misses"]) == (
        before["num_entries"], before["num_inserts"], before["num_hits"], before["num_misses"])
