"""The C fast path for fetch and store (csrc/fastpath.c) behaves exactly as
the Python path it stands in for; and the whole API suite also passes with
it switched off."""
import os
import subprocess
import sys

import pytest

import apccache
from apccache import _bindings as B
from apccache import _bindings as cache_module  # the binding layer owns the fast path

pytestmark = pytest.mark.skipif(cache_module._fastpath is None, reason="built without the fast path")


OPS = ("fetch", "get", "store", "add", "exists", "delete", "inc", "dec", "cas", "touch")


@pytest.mark.parametrize("on_clock", [False, True])
def test_every_single_key_operation_takes_the_fast_path(cache, ccache, on_clock):
    c = ccache if on_clock else cache
    assert c._fast is not None
    for op in OPS:
        assert type(getattr(c, op)).__name__ == "builtin_function_or_method", op


def test_it_reads_the_handles_clock_once_per_operation(ccache, clock):
    c = ccache
    calls = []

    def counting():
        calls.append(1)
        return clock()

    c2 = apccache.Cache.attach(c.name, clock=counting)
    try:
        c2.store("k", 1, ttl=10)
        c2.inc("k")
        assert c2.fetch("k") == 2 and c2.exists("k")
        assert len(calls) == 4
        clock.advance(11)
        assert c2.fetch("k") is None and not c2.exists("k") and not c2.delete("k")
        assert c2.add("k", b"v") and not c2.add("k", b"w")
        assert c2.cas("n", 0, 1) is False
    finally:
        c2.close()


def test_engine_errors_raise_what_the_python_methods_raise(segments):
    c = segments(size=1 << 20)
    c.store("s", b"not an int")
    with pytest.raises(TypeError, match="not an int"):
        c.inc("s")
    with pytest.raises(TypeError, match="not an int"):
        c.dec("s", 2)
    c.store("n", 2**63 - 2)
    with pytest.raises(OverflowError, match="leaves the int64 range"):
        c.inc("n", 5)
    assert c.fetch("n") == 2**63 - 2
    with pytest.raises(apccache.CacheFullError, match="can never fit"):
        c.store("huge", b"x" * (2 << 20))
    with pytest.raises(apccache.CacheFullError, match="can never fit"):
        c.add("huge", "x" * (2 << 20))
    assert c.cas("s", 1, 2) is False  # not an int: False, as the Python method says


def test_the_serializer_is_called_from_the_fast_path(segments):
    class Counting(apccache.PickleSerializer):
        def __init__(self):
            super().__init__(protocol=4)
            self.n = 0

        def dumps(self, value):
            self.n += 1
            return super().dumps(value)

    ser = Counting()
    c = segments(size=1 << 20, serializer=ser)
    assert c.store("d", {"a": 1}) and c.add("e", [1]) and ser.n == 2
    assert c.fetch("d") == {"a": 1}


def test_its_type_tags_are_the_bindings(cache):
    fp = cache_module._fastpath
    for name in ("T_BYTES", "T_STR", "T_INT", "T_FLOAT", "T_TRUE", "T_FALSE", "T_NONE"):
        assert getattr(fp, name) == getattr(B, name), name


@pytest.mark.parametrize("value", [b"", b"x" * 10, b"y" * 20_000, b"z" * (1 << 20), "", "t\u00e9xt",
                                   "s\udc80rrogate", 0, -5, 2**63 - 1, 2**64, 1.25, True, False, None,
                                   {"a": [1]}, (1, 2)])
def test_values_round_trip_through_it(cache, value):
    assert cache.store("k", value) is True
    got = cache.fetch("k")
    assert got == value and type(got) is type(value)
    assert cache.info()["pins"] == 0 and cache.key_info("k")["refs"] == 0


def test_keys_and_defaults(cache):
    cache.store(b"\x00bin", b"1")
    assert cache.fetch(b"\x00bin") == b"1"
    cache.store("\u00e9", b"2")
    assert cache.fetch("\u00e9".encode()) == b"2"
    assert cache.fetch("missing") is None
    assert cache.fetch("missing", 7) == 7
    assert cache.fetch("missing", default=8) == 8
    assert cache.get("missing", 9) == 9
    with pytest.raises(TypeError):
        cache.fetch(5)
    with pytest.raises(ValueError, match="65535"):
        cache.fetch(b"k" * 65536)
    with pytest.raises(ValueError, match="65535"):
        cache.store(b"k" * 65536, b"v")
    with pytest.raises(ValueError, match="surrogate"):
        cache.fetch("\udc80")


def test_ttl_positional_and_keyword(ccache_fast):
    c = ccache_fast
    c.store("a", b"1", 5)
    c.store("b", b"2", ttl=7)
    assert c.key_info("a")["ttl"] == 5 and c.key_info("b")["ttl"] == 7
    with pytest.raises(ValueError, match=r"ttl must be from 0 to 2147483647 seconds \(got -"):
        c.store("c", b"3", ttl=-1)
    with pytest.raises(TypeError):
        c.store("c", b"3", ttl="1")
    with pytest.raises(TypeError):
        c.store("c", b"3", tll=1)
    assert "c" not in c


def test_counts_like_the_python_path(ccache_fast):
    c = ccache_fast
    c.store("a", b"1")
    c.fetch("a")
    c.fetch("nope")
    i = c.info()
    assert (i["num_hits"], i["num_misses"], i["num_inserts"]) == (1, 1, 1)


def test_errors_come_from_the_python_path(segments):
    c = segments(size=1 << 20)
    with pytest.raises(apccache.CacheFullError, match="can never fit"):
        c.store("huge", b"x" * (2 << 20))
    other = apccache.Cache.attach(c.name)
    f = other.fetch
    other.close()
    with pytest.raises(ValueError, match="closed"):
        f("k")
    with pytest.raises(ValueError, match="closed"):
        other.store("k", b"v")


@pytest.fixture
def ccache_fast(segments):
    return segments(size=1 << 20)


# The files of the public API's contracts, and the model test.
API_SUITE = ["test_life_cycle.py", "test_store_fetch.py", "test_key_rules.py", "test_counters.py", "test_entry.py",
             "test_many_forms.py", "test_introspection.py", "test_mapping.py", "test_eviction.py", "test_ttl.py",
             "test_threads.py", "test_serializers.py", "test_file_table.py", "test_input_edges.py",
             "test_stateful.py"]


def test_the_api_suite_passes_without_the_fast_path():
    here = os.path.dirname(__file__)
    env = dict(os.environ, APCCACHE_NO_FASTPATH="1")
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        *(os.path.join(here, f) for f in API_SUITE)],
                       env=env, capture_output=True, text=True, timeout=600, cwd=here)
    assert p.returncode == 0, p.stdout[-3000:]


def test_the_near_window_opens_and_closes_on_the_monotonic_clock(cache):
    """apccache._fastpath.Near (FleetCache's near hit): a memoised key is
    served from the segment while time.monotonic() is below trusted_until,
    and goes to the slow method once it is not -- never late."""
    import time

    fp = cache_module._fastpath
    missing = object()
    slow_calls = []

    def slow(key, default=None):
        slow_calls.append(key)
        return "slow"

    near = fp.Near(cache._fast, slow, missing)
    cache.store(b"seg:k", b"near")
    near.memo = {"k": b"seg:k"}
    assert near.fetch("k") == "slow"  # no window yet
    near.trusted_until = time.monotonic() + 0.2
    assert near.fetch("k") == b"near" and near.fetch("k", 0) == b"near"
    assert near.fetch("other") == "slow"  # not memoised
    deadline = near.trusted_until
    while time.monotonic() < deadline + 0.01:
        if near.fetch("k") == "slow":  # closed: it must not be before 98% of the window
            break
    closed_at = time.monotonic()
    assert near.fetch("k") == "slow"
    assert closed_at <= deadline + 0.01  # and never late
    near.trusted_until = time.monotonic() - 1.0
    assert near.fetch("k") == "slow"
    cache.delete(b"seg:k")
    near.trusted_until = time.monotonic() + 10
    assert near.fetch("k") == "slow"  # a near miss: the method
