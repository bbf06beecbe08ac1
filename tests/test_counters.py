"""Counters: inc, dec and cas work on int values only, in 64 bits, and a
refused change keeps the value."""

import pytest


def test_inc_and_dec(cache):
    assert cache.inc("n") == 1
    assert cache.inc("n", 10) == 11
    assert cache.dec("n", 2) == 9
    assert cache.fetch("n") == 9
    assert cache.dec("m") == -1
    assert cache.dec("m2", 5) == -5
    assert cache.inc("i5", 5) == 5


@pytest.mark.parametrize("value", [1.0, "1", True, b"1", None, [1]])
def test_inc_on_a_non_int_raises_type_error_and_keeps_the_value(cache, value):
    cache.store("k", value)
    with pytest.raises(TypeError):
        cache.inc("k")
    with pytest.raises(TypeError):
        cache.dec("k")
    assert cache.fetch("k") == value and type(cache.fetch("k")) is type(value)


def test_inc_overflow_raises_and_keeps_the_value(cache):
    cache.store("k", 2**63 - 1)
    with pytest.raises(OverflowError):
        cache.inc("k")
    assert cache.fetch("k") == 2**63 - 1
    cache.store("j", -(2**63))
    with pytest.raises(OverflowError):
        cache.dec("j")
    assert cache.fetch("j") == -(2**63)
    with pytest.raises(OverflowError):
        cache.inc("k", 2**63)


def test_cas(cache):
    assert cache.cas("k", 0, 1) is False  # never inserts
    assert "k" not in cache
    cache.store("k", 5)
    assert cache.cas("k", 4, 6) is False
    assert cache.cas("k", 5, 6) is True
    assert cache.fetch("k") == 6
    cache.store("s", "5")
    assert cache.cas("s", 5, 6) is False
    assert cache.fetch("s") == "5"
    with pytest.raises(TypeError):
        cache.cas("k", "6", 7)
