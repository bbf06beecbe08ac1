"""Input edges: one ttl rule for every method, and one error for every
method of a closed handle.

A ttl is an int number of seconds from 0 to apccache.MAX_TTL (2**31 - 1);
bool is not a ttl.  Anything else is refused with the same exception and
message by every method that takes a ttl, before anything is changed.
"""
import asyncio
import inspect
import operator

import pytest

import apccache
from apccache.cache import Cache


def _gen(key):
    return "made"


# Every method that takes a ttl, called with it; each stores under "k".
TTL_CALLS = {  # name: (the key it stores, the table, the call)
    "store bytes": ("k", 0, lambda c, ttl: c.store("k", b"v", ttl=ttl)),
    "store bytes positional": ("k", 0, lambda c, ttl: c.store("k", b"v", ttl)),
    "store bytes under a bytes key": ("k", 0, lambda c, ttl: c.store(b"k", b"v", ttl)),
    "store str": ("k", 0, lambda c, ttl: c.store("k", "v", ttl=ttl)),
    "store int": ("k", 0, lambda c, ttl: c.store("k", 7, ttl=ttl)),
    "store object": ("k", 0, lambda c, ttl: c.store("k", {"v": 1}, ttl=ttl)),
    "add": ("k2", 0, lambda c, ttl: c.add("k2", b"v", ttl=ttl)),
    "inc": ("m", 0, lambda c, ttl: c.inc("m", 1, ttl=ttl)),
    "dec": ("m", 0, lambda c, ttl: c.dec("m", 1, ttl=ttl)),
    "entry": ("k3", 0, lambda c, ttl: c.entry("k3", _gen, ttl=ttl)),
    "store_many": ("k", 0, lambda c, ttl: c.store_many({"k": b"v"}, ttl=ttl)),
    "add_many": ("k4", 0, lambda c, ttl: c.add_many({"k4": b"v"}, ttl=ttl)),
    "file_table.put": (b"f", 1, lambda c, ttl: c.file_table.put(b"f", b"v", ttl=ttl)),
    "file_table.add": (b"f2", 1, lambda c, ttl: c.file_table.add(b"f2", b"v", ttl=ttl)),
    "file_table.entry": (b"f3", 1, lambda c, ttl: c.file_table.entry(b"f3", lambda k: b"v", ttl=ttl)),
}

BAD_TTLS = [
    (True, TypeError, "ttl must be an int number of seconds, not bool"),
    (False, TypeError, "ttl must be an int number of seconds, not bool"),
    (1.0, TypeError, "ttl must be an int number of seconds, not float"),
    ("5", TypeError, "ttl must be an int number of seconds, not str"),
    (None, TypeError, "ttl must be an int number of seconds, not NoneType"),
    (-1, ValueError, r"ttl must be from 0 to 2147483647 seconds \(got -1\)"),
    (2**31, ValueError, r"ttl must be from 0 to 2147483647 seconds \(got 2147483648\)"),
    (2**64 - 1, ValueError, r"ttl must be from 0 to 2147483647 seconds \(got 18446744073709551615\)"),
    (2**80, ValueError, r"\(got 1208925819614629174706176\)"),
]


@pytest.fixture(params=["fast path", "python path"])
def edge_cache(request, segments, clock):
    """With the CPython fast path for fetch/store, and without it (a clock
    turns it off)."""
    if request.param == "fast path":
        return segments(size=1 << 20)
    return segments(size=1 << 20, clock=clock)


def test_max_ttl_is_documented_and_exported():
    assert apccache.MAX_TTL == 2**31 - 1
    assert "MAX_TTL" in apccache.__all__


@pytest.mark.parametrize("call", list(TTL_CALLS), ids=list(TTL_CALLS))
@pytest.mark.parametrize("bad,exc,msg", BAD_TTLS, ids=[repr(b) for b, _, _ in BAD_TTLS])
def test_every_method_refuses_the_same_bad_ttls_and_changes_nothing(edge_cache, call, bad, exc, msg):
    c = edge_cache
    c.store("k", b"before")
    c.store("n", 5)
    before = (c.info(limited=True)["num_inserts"], len(c), len(c.file_table))
    with pytest.raises(exc, match=msg) as e:
        TTL_CALLS[call][2](c, bad)
    assert type(e.value) is exc
    assert c.fetch("k") == b"before" and c.fetch("n") == 5
    assert not any(c.exists(k) for k in ("k2", "k3", "k4", "m"))
    assert (c.info(limited=True)["num_inserts"], len(c), len(c.file_table)) == before


@pytest.mark.parametrize("call", list(TTL_CALLS), ids=list(TTL_CALLS))
@pytest.mark.parametrize("good", [0, 1, apccache.MAX_TTL])
def test_every_method_accepts_ttls_up_to_max_ttl_and_stores_them(edge_cache, call, good):
    c = edge_cache
    key, table, fn = TTL_CALLS[call]
    fn(c, good)
    if table == 0:
        assert c.key_info(key)["ttl"] == good
    else:
        assert [r["ttl"] for r, k in c.file_table.entries() if k == key] == [good]


def test_an_int_subclass_that_is_not_bool_is_a_ttl(edge_cache):
    class Seconds(int):
        pass

    assert edge_cache.store("k", b"v", Seconds(60))
    assert edge_cache.key_info("k")["ttl"] == 60


def test_max_ttl_entries_do_not_expire_at_once(segments, clock):
    """The wrap that made ttl=2**64-1 expire at once cannot happen: the
    largest ttl lives as long as it says."""
    c = segments(size=1 << 20, clock=clock)
    c.store("k", b"v", apccache.MAX_TTL)
    c.store("o", [1], apccache.MAX_TTL)
    clock.advance(10**6)
    assert c.fetch("k") == b"v" and c.fetch("o") == [1]


@pytest.mark.parametrize("arg", ["ttl", "gc_ttl"])
def test_create_applies_the_same_ttl_rule(segments, arg):
    with pytest.raises(TypeError, match="not bool"):
        segments(size=1 << 20, **{arg: True})
    with pytest.raises(ValueError, match="from 0 to 2147483647"):
        segments(size=1 << 20, **{arg: 2**31})


def test_negative_ttl_raises(cache):
    with pytest.raises(ValueError, match=r"ttl must be from 0 to 2147483647 seconds \(got -"):
        cache.store("k", 1, ttl=-5)
    with pytest.raises(ValueError):
        cache.add("k", 1, ttl=-1)
    with pytest.raises(TypeError):
        cache.store("k", 1, ttl="10")
    assert "k" not in cache


# ------------------------------------------------------------------ closed handles

# How to call each public member of Cache; a new public member without an
# entry here fails test_the_table_covers_every_public_member.
CLOSED_CALLS = {
    "fetch": lambda c: c.fetch("k"),
    "get": lambda c: c.get("k"),
    "store": lambda c: c.store("k", b"v"),
    "add": lambda c: c.add("k", 1),
    "delete": lambda c: c.delete("k"),
    "exists": lambda c: c.exists("k"),
    "inc": lambda c: c.inc("k"),
    "dec": lambda c: c.dec("k"),
    "cas": lambda c: c.cas("k", 1, 2),
    "entry": lambda c: c.entry("k", _gen),
    "store_many": lambda c: c.store_many({"a": 1, "b": b"x"}),
    "add_many": lambda c: c.add_many({"a": 1}),
    "fetch_many": lambda c: c.fetch_many(["a"]),
    "delete_many": lambda c: c.delete_many(["a"]),
    "clear": lambda c: c.clear(),
    "info": lambda c: c.info(),
    "sma_info": lambda c: c.sma_info(),
    "key_info": lambda c: c.key_info("k"),
    "keys": lambda c: c.keys(),
    "check": lambda c: c.check(),
    "recover": lambda c: c.recover(1),
    "files": lambda c: c.files,
    "file_table": lambda c: c.file_table,
    "aux": lambda c: c.aux,
    "__len__": len,
    "__contains__": lambda c: "k" in c,
    "__getitem__": lambda c: c["k"],
    "__setitem__": lambda c: operator.setitem(c, "k", b"v"),
    "__delitem__": lambda c: operator.delitem(c, "k"),
    "__iter__": iter,
    "__enter__": lambda c: c.__enter__(),
    "touch": lambda c: c.touch("k", 1),
    "memoize": lambda c: c.memoize()(_gen)("k"),
    "aentry": lambda c: asyncio.run(c.aentry("k", _gen)),
    "lock": lambda c: c.lock("l").acquire(),
    "alock": lambda c: asyncio.run(c.alock("l").acquire()),
    "records": lambda c: c.records(),
    "fast_reader": lambda c: c.fast_reader(_gen, None),
    "fstat": lambda c: c.fstat(),
}
# Members that are meant to work on a closed handle.
STILL_WORK = {"close", "closed", "unlink", "name", "create", "attach", "open", "now", "serializer", "file_stat",
              "untrusted"}
EMPTY_CALLS = {
    "store_many": lambda c: c.store_many({}),
    "add_many": lambda c: c.add_many({}),
    "fetch_many": lambda c: c.fetch_many([]),
    "delete_many": lambda c: c.delete_many([]),
    "keys with a pattern": lambda c: c.keys("^x"),
    "info limited": lambda c: c.info(limited=True),
    "sma_info limited": lambda c: c.sma_info(limited=True),
}


def test_the_table_covers_every_public_member(segments):
    public = {n for n in dir(segments(size=1 << 20)) if not n.startswith("_")}
    protocol = {n for n in ("__len__", "__contains__", "__getitem__", "__setitem__", "__delitem__", "__iter__",
                            "__enter__") if hasattr(Cache, n)}
    assert public | protocol == set(CLOSED_CALLS) | STILL_WORK


@pytest.fixture
def closed_handles(segments, clock):
    """A closed attached handle with the fast path, one without, and a
    closed creating handle."""
    c = segments(size=1 << 20)
    c.store("k", b"v")
    c.store("a", 1)
    handles = [Cache.attach(c.name), Cache.attach(c.name, clock=clock), segments(size=1 << 20)]
    for h in handles:
        h.fetch("k")  # a per-thread call block exists before close
        h.close()
    yield handles
    assert c.fetch("k") == b"v" and c.fetch("a") == 1  # the segment itself is untouched


@pytest.mark.parametrize("member", list(CLOSED_CALLS) + list(EMPTY_CALLS))
def test_every_method_of_a_closed_handle_raises_cache_closed_error(closed_handles, member):
    call = CLOSED_CALLS.get(member) or EMPTY_CALLS[member]
    for h in closed_handles:
        with pytest.raises(apccache.CacheClosedError, match="operation on a closed cache"):
            call(h)


def test_a_method_fetched_before_close_raises_after_it(segments):
    c = segments(size=1 << 20)
    other = Cache.attach(c.name)
    fetch, store, ft = other.fetch, other.store, other.file_table
    other.close()
    for call in (lambda: fetch("k"), lambda: store("k", b"v"), lambda: ft.get(b"k"), lambda: ft.put(b"k", b"v")):
        with pytest.raises(apccache.CacheClosedError, match="operation on a closed cache"):
            call()


def test_cache_closed_error_is_still_a_value_error():
    assert issubclass(apccache.CacheClosedError, ValueError)


def test_what_still_works_on_a_closed_handle(segments):
    c = segments(size=1 << 20)
    other = Cache.attach(c.name)
    other.close()
    other.close()  # idempotent
    assert other.closed and other.name == c.name and "closed" in repr(other)
    assert inspect.isfunction(Cache.unlink)


def test_a_closed_handle_raises_value_error(segments):
    c = segments(size=1 << 20)
    other = apccache.Cache.attach(c.name)
    other.close()
    with pytest.raises(ValueError, match="closed"):
        other.fetch("k")
    with pytest.raises(ValueError, match="closed"):
        other.store("k", b"v")
    assert other.closed


def test_the_supervisor_config_uses_the_same_limit():
    from apccache.supervisor import config

    assert config._MAX_TTL == apccache.MAX_TTL


def test_a_value_of_4_gib_or_more_is_refused_and_changes_nothing(segments):
    """The slot keeps a value's length in 32 bits: a longer one is refused
    as too big (the engine checks the length before it reads a byte)."""
    from apccache import _bindings as B
    c = segments(size=1 << 20)
    c.store("k", b"v")
    buf = B.ffi.new("char[]", 16)
    for vlen in (1 << 32, (1 << 32) + 8, (1 << 64) - 1):
        rc = B.lib.apc_store(c._segment.ptr, 0, b"big", 3, B.T_BYTES, buf, vlen, 0, 0, 0, 0)
        assert rc == B.lib.APC_E_TOOBIG
    assert c.fetch("big") is None and c.fetch("k") == b"v" and len(c) == 1
    assert c.check() == []
