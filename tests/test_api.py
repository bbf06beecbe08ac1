"""The public contract of apccache.Cache, one behaviour per test."""
import errno
import os
import pickle
import stat
import threading

import pytest

import apccache
from apccache import _bindings as B
from apccache import CacheFullError

from apc_support import segment_name


# ---------------------------------------------------------------- life cycle


def test_create_makes_a_0600_segment_that_attach_sees(segments):
    c = segments(size=1 << 20)
    st = os.stat(f"/dev/shm/{c.name}")
    assert stat.S_IMODE(st.st_mode) == 0o600
    c.store("k", b"v")
    other = apccache.Cache.attach(c.name)
    try:
        assert other.fetch("k") == b"v"
        assert other.name == c.name
    finally:
        other.close()


def test_create_refuses_an_existing_name(cache):
    with pytest.raises(FileExistsError):
        apccache.Cache.create(cache.name, size=1 << 20)


def test_create_reserves_the_whole_segment_unless_told_not_to(segments):
    reserved = segments(size=8 << 20)
    lazy = segments(size=8 << 20, reserve=False)
    # st_blocks counts 512-byte blocks actually allocated in /dev/shm.
    assert os.stat(f"/dev/shm/{reserved.name}").st_blocks * 512 >= 8 << 20
    assert os.stat(f"/dev/shm/{lazy.name}").st_blocks * 512 < 4 << 20
    lazy.store("k", b"v" * 100_000)
    assert lazy.fetch("k") == b"v" * 100_000


def test_a_segment_larger_than_dev_shm_is_refused_at_create_and_leaves_nothing():
    st = os.statvfs("/dev/shm")
    too_big = st.f_bavail * st.f_frsize + (64 << 20)
    name = segment_name("huge")
    with pytest.raises(OSError) as e:
        apccache.Cache.create(name, size=too_big)
    assert e.value.errno == errno.ENOSPC
    assert "/dev/shm" in str(e.value) and "--shm-size" in str(e.value)
    assert not os.path.exists(f"/dev/shm/{name}")


def test_attach_to_a_missing_name_raises_file_not_found():
    with pytest.raises(FileNotFoundError):
        apccache.Cache.attach(segment_name("missing"))


def test_closing_an_attached_handle_does_not_unlink(cache):
    other = apccache.Cache.attach(cache.name)
    other.close()
    other.close()  # idempotent
    assert os.path.exists(f"/dev/shm/{cache.name}")
    assert apccache.Cache.attach(cache.name).close() is None


def test_unlink_removes_the_name_but_handles_keep_working(segments):
    c = segments(size=1 << 20)
    other = apccache.Cache.attach(c.name)
    c.store("k", 1)
    c.unlink()
    with pytest.raises(FileNotFoundError):
        apccache.Cache.attach(c.name)
    assert other.fetch("k") == 1
    other.store("j", 2)
    assert c.fetch("j") == 2
    other.close()


def test_a_closed_handle_raises_value_error(segments):
    c = segments(size=1 << 20)
    other = apccache.Cache.attach(c.name)
    other.close()
    with pytest.raises(ValueError, match="closed"):
        other.fetch("k")
    with pytest.raises(ValueError, match="closed"):
        other.store("k", b"v")
    assert other.closed


def test_context_manager_closes(segments):
    c = segments(size=1 << 20)
    with apccache.Cache.attach(c.name) as other:
        other.store("a", 1)
    assert other.closed
    assert c.fetch("a") == 1


def test_bad_create_arguments_are_refused_clearly():
    with pytest.raises(ValueError, match="too small"):
        apccache.Cache.create(segment_name(), size=1024)
    with pytest.raises(ValueError, match=r"ttl must be from 0 to 2147483647 seconds \(got -"):
        apccache.Cache.create(segment_name(), size=1 << 20, ttl=-1)
    with pytest.raises(TypeError):
        apccache.Cache.create(segment_name(), size="big")
    with pytest.raises(ValueError):
        apccache.Cache.create("a/b", size=1 << 20)


def test_slots_are_the_first_prime_at_or_above_the_hint(segments):
    assert segments(size=2 << 20, slots=1000).info()["num_slots"] == 1009
    assert segments(size=2 << 20, slots=1009).info()["num_slots"] == 1009
    # default: about 512 per MiB
    assert segments(size=8 << 20).info()["num_slots"] == 4099


# ------------------------------------------------------------------ values


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


# -------------------------------------------------------------------- keys


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


def test_negative_ttl_raises(cache):
    with pytest.raises(ValueError, match=r"ttl must be from 0 to 2147483647 seconds \(got -"):
        cache.store("k", 1, ttl=-5)
    with pytest.raises(ValueError):
        cache.add("k", 1, ttl=-1)
    with pytest.raises(TypeError):
        cache.store("k", 1, ttl="10")
    assert "k" not in cache


# ------------------------------------------------------- add/delete/exists


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


# ---------------------------------------------------------------- counters


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


# ------------------------------------------------------------------ entry


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


# -------------------------------------------------------------- many forms


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


# ---------------------------------------------------------- introspection


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


# ------------------------------------------------------------- full cache


def test_a_value_that_can_never_fit_raises_and_evicts_nothing(segments):
    c = segments(size=1 << 20)
    c.store("keep", 1)
    with pytest.raises(CacheFullError, match="can never fit"):
        c.store("huge", b"x" * (2 << 20))
    assert c.fetch("keep") == 1
    assert c.info()["evictions"] == 0


def test_a_full_cache_evicts_least_recently_used_first(segments, clock):
    c = segments(size=1 << 20, clock=clock)
    value = b"v" * 1000
    n = 0
    while c.sma_info(limited=True)["avail_mem"] > 20_000:
        c.store(f"k{n}", value)
        n += 1
        clock.advance(1)
    for i in range(n // 2, n):  # the newer half was read recently
        c.fetch(f"k{i}")
    clock.advance(1)
    for i in range(n, n + 200):
        c.store(f"k{i}", value)
    i = c.info()
    assert i["evictions"] > 0 and i["expunges"] > 0
    survivors_old = sum(1 for j in range(0, n // 4) if c.exists(f"k{j}"))
    survivors_new = sum(1 for j in range(3 * n // 4, n) if c.exists(f"k{j}"))
    assert survivors_new > survivors_old
    assert len(c) > n // 3  # never wiped
    assert c.check() == []


def test_expired_entries_go_before_live_ones(segments, clock):
    c = segments(size=1 << 20, clock=clock)
    value = b"v" * 1000
    n = 0
    while c.sma_info(limited=True)["avail_mem"] > 20_000:
        c.store(f"k{n}", value, ttl=0 if n % 2 else 5)
        n += 1
    clock.advance(10)
    for i in range(n, n + 100):
        c.store(f"k{i}", value)
    assert all(c.exists(f"k{j}") for j in range(1, n, 2))  # live ones all kept
    assert c.info()["evictions"] == 0
    assert c.check() == []


def test_soft_ttl_entries_go_first(segments, clock):
    c = segments(size=1 << 20, ttl=60, clock=clock)
    value = b"v" * 1000
    n = 0
    while c.sma_info(limited=True)["avail_mem"] > 20_000:
        c.store(f"k{n}", value)
        n += 1
    clock.advance(30)
    for i in range(0, n, 2):
        c.fetch(f"k{i}")  # touched: not idle for the soft ttl
    clock.advance(40)
    assert c.fetch("k1") is None or True  # still readable until room is needed
    for i in range(n, n + 50):
        c.store(f"k{i}", value)
    assert all(c.exists(f"k{j}") for j in range(0, n, 2))
    assert c.check() == []


def test_soft_expired_entries_stay_readable(segments, clock):
    c = segments(size=1 << 20, ttl=10, clock=clock)
    c.store("k", 1)
    clock.advance(100)
    assert c.fetch("k") == 1


def test_fragmentation_is_compacted_not_refused(segments):
    c = segments(size=1 << 20)
    arena = c.sma_info()["seg_size"]
    n = 0
    while c.sma_info(limited=True)["avail_mem"] > 8_000:
        c.store(f"k{n}", b"x" * 4000)
        n += 1
    for i in range(0, n, 2):
        c.delete(f"k{i}")
    s = c.sma_info()
    assert s["largest_free"] < arena // 4 < s["avail_mem"]
    big = b"B" * (arena // 4)
    c.store("big", big)
    assert c.fetch("big") == big
    survivors = sum(1 for i in range(1, n, 2) if c.exists(f"k{i}"))
    assert survivors == len(range(1, n, 2))  # compaction evicted nothing
    assert c.info()["compactions"] >= 1
    assert c.check() == []


# --------------------------------------------------------------- threads


def test_threads_share_a_handle(cache):
    errors = []

    def work(t):
        try:
            for i in range(2000):
                cache.store(f"t{t}-{i % 50}", bytes([t]) * (i % 300))
                v = cache.fetch(f"t{t}-{(i * 7) % 50}")
                assert v is None or v == bytes([t]) * len(v)
                cache.inc("counter")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []
    assert cache.fetch("counter") == 8000
    assert cache.check() == []


# ------------------------------------------------------------ serializers


def test_json_serializer_never_unpickles(segments):
    c = segments(size=1 << 20, serializer=apccache.JSONSerializer())
    c.store("d", {"a": [1, 2.5, None, True]})
    assert c.fetch("d") == {"a": [1, 2.5, None, True]}
    with pytest.raises(TypeError):
        c.store("s", {1, 2})
    # a pickle written by another handle is not loaded as pickle: bytes the
    # serializer refuses are a miss, counted as corruption
    other = apccache.Cache.attach(c.name)
    other.store("p", {"x": 1})
    assert c.fetch("p") is None and c.fetch("p", 0) == 0
    assert c.info(limited=True)["corrupt_reads"] == 2
    other.close()


def test_unpickling_may_call_into_the_cache(cache):
    cache.store("obj", Reentrant(cache.name))
    obj = cache.fetch("obj")
    assert isinstance(obj, Reentrant)
    assert cache.fetch("side-effect") == "set in __setstate__"


class Reentrant:
    def __init__(self, name):
        self.name = name

    def __getstate__(self):
        return {"name": self.name}

    def __setstate__(self, state):
        self.name = state["name"]
        with apccache.Cache.attach(self.name) as c:
            c.store("side-effect", "set in __setstate__")


# -------------------------------------------------------------------- ttl


def test_hard_ttl_boundary_is_creation_plus_ttl_strictly_before_now(ccache, clock):
    ccache.store("k", "v", ttl=2)
    clock.advance(2)  # creation + ttl == now: still there
    assert ccache.fetch("k") == "v"
    clock.advance(1)  # creation + ttl < now: gone
    assert ccache.fetch("k") is None


def test_an_expired_entry_is_absent_for_every_operation(ccache, clock):
    ccache.store("k", 5, ttl=1)
    ccache.store("keep", 1)
    clock.advance(2)
    assert ccache.fetch("k", "miss") == "miss"
    assert not ccache.exists("k") and "k" not in ccache
    assert ccache.key_info("k") is None
    assert list(ccache.keys()) == ["keep"]
    assert len(ccache) == 1
    assert ccache.cas("k", 5, 6) is False
    assert "entries" in ccache.info() and [e["key"] for e in ccache.info()["entries"]] == ["keep"]
    assert ccache.delete("k") is False
    ccache.store("k", 5, ttl=1)
    clock.advance(2)
    assert ccache.inc("k", 3) == 3  # created as 0, then updated
    ccache.store("a", 1, ttl=1)
    clock.advance(2)
    assert ccache.add("a", 2) is True  # an expired entry is replaced
    assert ccache.fetch("a") == 2
    assert ccache.check() == []


def test_an_entry_without_ttl_never_expires(ccache, clock):
    ccache.store("k", 1)
    clock.advance(10**6)
    assert ccache.fetch("k") == 1


def test_inc_keeps_the_ttl_of_the_entry(ccache, clock):
    ccache.store("n", 1, ttl=5)
    clock.advance(3)
    assert ccache.inc("n") == 2
    clock.advance(3)
    assert ccache.fetch("n") is None


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


def test_the_segment_is_the_object_multiprocessing_shared_memory_opens(cache):
    from multiprocessing import resource_tracker, shared_memory

    cache.store("k", b"v")
    shm = shared_memory.SharedMemory(cache.name)
    try:
        resource_tracker.unregister(shm._name, "shared_memory")  # Python < 3.13 would unlink it at exit
        assert shm.size == os.path.getsize(f"/dev/shm/{cache.name}")
        assert bytes(shm.buf[:8]) == b"APCCACHE"
    finally:
        shm.close()
