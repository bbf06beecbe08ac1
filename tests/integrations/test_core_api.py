"""The core API the integrations need: Cache.open, touch, memoize, aentry,
the host-wide lock and alock."""
import asyncio
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import apccache
from apccache.locks import LockError, LockNotOwnedError, holder_alive, my_word, start_ticks
from helpers.children import run_processes
from helpers.segments import segment_name, unlink_name
from tests.test_input_edges import BAD_TTLS

FORK = mp.get_context("fork")


@pytest.fixture
def name(shm_names):
    return shm_names("core")


# ------------------------------------------------------------ Cache.open


def _opener(name, barrier, q):
    barrier.wait()
    c = apccache.Cache.open(name, size=4 << 20)
    c.inc("opened")
    q.put(c._owner)


def test_open_many_at_once_exactly_one_creates(name):
    n = 8
    barrier, q = FORK.Barrier(n), FORK.Queue()
    procs = [FORK.Process(target=_opener, args=(name, barrier, q)) for _ in range(n)]
    run_processes(procs, 30)
    owners = [q.get(timeout=5) for _ in range(n)]
    assert owners.count(True) == 1
    c = apccache.Cache.open(name, create=False)
    assert c.fetch("opened") == n
    c.close()


def test_open_waits_for_a_creator_that_has_not_sized_it_yet(name):
    fd = os.open(f"/dev/shm/{name}", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.close(fd)  # empty, as between a creator's shm_open and its ftruncate
    t0 = time.monotonic()
    with pytest.raises(apccache.CorruptSegmentError):
        apccache.Cache.open(name, size=4 << 20, timeout=0.3)
    assert 0.25 < time.monotonic() - t0 < 5
    # the "creator" goes away: open creates it afresh
    threading.Timer(0.1, unlink_name, (name,)).start()
    c = apccache.Cache.open(name, size=4 << 20, timeout=5)
    assert c._owner and c.store("k", 1)
    c.close()


def test_open_create_false_and_the_missing_name_error(name):
    with pytest.raises(FileNotFoundError, match="no apccache segment named"):
        apccache.Cache.open(name, create=False)
    assert not os.path.exists(f"/dev/shm/{name}")
    c = apccache.Cache.open(name, size=4 << 20)
    other = segment_name("missing")
    with pytest.raises(FileNotFoundError, match=f"segments that exist: .*{name}"):
        apccache.Cache.attach(other)
    d = apccache.Cache.open(name, create=False)
    assert not d._owner
    c.store("x", 1)
    assert d.fetch("x") == 1
    c.close()
    d.close()


# ------------------------------------------------------------------ touch


def test_touch_sets_the_ttl_from_now(ccache, clock):
    ccache.store("k", "v", ttl=10)
    clock.advance(8)
    assert ccache.touch("k", 10) is True
    clock.advance(10)  # 18 s after the store, 10 after the touch
    assert ccache.fetch("k") == "v"
    clock.advance(2)
    assert ccache.fetch("k") is None  # expired 10 s (+ the second's granularity) after the touch
    assert ccache.touch("k", 10) is False  # expired: not revived
    assert ccache.touch("missing", 5) is False
    ccache.store("f", 1, ttl=1)
    assert ccache.touch("f", 0) is True  # 0: never expires
    clock.advance(10**6)
    assert ccache.fetch("f") == 1
    assert ccache.key_info("f")["creation_time"] == ccache.key_info("f")["mtime"]  # value not rewritten


def test_touch_validates(cache):
    with pytest.raises(ValueError):
        cache.touch("k", -1)
    with pytest.raises(TypeError):
        cache.touch(3, 1)


# ----------------------------------------------------------------- memoize

CALLS = "calls"


def test_memoize_computes_once_across_processes(cache):
    @cache.memoize(ttl=60)
    def slow(n):
        cache.inc(CALLS)
        time.sleep(0.3)
        return n * 2

    def child(q):
        q.put(slow(21))

    q = FORK.Queue()
    procs = [FORK.Process(target=child, args=(q,)) for _ in range(4)]
    run_processes(procs, 30)
    assert [q.get(timeout=5) for _ in procs] == [42] * 4
    assert cache.fetch(CALLS) == 1
    assert slow(21) == 42 and cache.fetch(CALLS) == 1
    info = slow.cache_info()
    assert (info.hits, info.misses, info.currsize) == (4, 1, 1)  # summed over the processes


def test_memoize_clear_is_seen_by_every_process(cache):
    @cache.memoize()
    def f(x):
        cache.inc(CALLS)
        return x

    f(1), f(2)
    p = FORK.Process(target=f.cache_clear)
    p.start()
    p.join(10)
    assert f.cache_info() == (0, 0, None, 0)
    f(1)
    assert cache.fetch(CALLS) == 3


def test_memoize_stores_none_and_uses_the_key_callable(cache):
    seen = []

    @cache.memoize(key=lambda user, verbose=False: f"user-{user}")
    def g(user, verbose=False):
        seen.append(user)
        return None

    assert g(7) is None and g(7, verbose=True) is None
    assert seen == [7]
    assert g.cache_key(7).endswith(":user-7")


KEY_SCRIPT = """
import apccache.memoize as m
print(m.args_key(({"b", "a", "c"}, {"z": 1, "y": frozenset({"q", "p"})}, 1.5, None, b"x"), {"k": ("v", True)}))
"""


def test_memoize_keys_are_the_same_in_every_process():
    """Never hash(): two interpreters with different hash seeds (set and
    dict orders differ) build the same key."""
    keys = set()
    for seed in ("1", "2", "3"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        keys.add(subprocess.run([sys.executable, "-c", KEY_SCRIPT], env=env, capture_output=True,
                                text=True, check=True).stdout)
    assert len(keys) == 1


def test_memoize_coroutine(cache):
    calls = []

    @cache.memoize(ttl=60)
    async def fetch_user(uid):
        calls.append(uid)
        await asyncio.sleep(0.01)
        return {"id": uid}

    async def main():
        return await asyncio.gather(*(fetch_user(5) for _ in range(5)))

    assert asyncio.run(main()) == [{"id": 5}] * 5
    assert calls == [5]  # tasks of one loop wait for the first, too
    assert fetch_user.cache_info().misses == 1


# ------------------------------------------------------------------ aentry


def _generate_slowly(cache, key, value, hold, started):
    def gen(_):
        started.set()
        time.sleep(hold)
        return value

    cache.entry(key, gen)


def test_aentry_waits_for_another_process_without_blocking_the_loop(cache):
    started = FORK.Event()
    p = FORK.Process(target=_generate_slowly, args=(cache, "k", "theirs", 0.6, started))
    p.start()
    assert started.wait(10)

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.ensure_future(ticker())
        value = await cache.aentry("k", lambda key: "ours")
        t.cancel()
        return value, ticks

    value, ticks = asyncio.run(main())
    p.join(10)
    assert value == "theirs"
    assert ticks >= 20  # the loop ran all along (about 50 ticks in 0.5 s)


def test_aentry_awaits_a_coroutine_generator_and_stores_its_result(cache):
    async def gen(key):
        await asyncio.sleep(0)
        return {"key": key}

    assert asyncio.run(cache.aentry("a", gen, ttl=30)) == {"key": "a"}
    assert cache.fetch("a") == {"key": "a"} and cache.key_info("a")["ttl"] == 30
    assert asyncio.run(cache.aentry("a", gen)) == {"key": "a"}


def test_aentry_takes_over_from_a_process_killed_while_generating(cache):
    started = FORK.Event()
    p = FORK.Process(target=_generate_slowly, args=(cache, "k", "never", 60, started))
    p.start()
    assert started.wait(10)
    os.kill(p.pid, signal.SIGKILL)
    t0 = time.monotonic()
    assert asyncio.run(cache.aentry("k", lambda key: "ours")) == "ours"
    assert time.monotonic() - t0 < 5
    p.join(10)


# -------------------------------------------------------------------- lock


def _count_under_lock(cache, n):
    for _ in range(n):
        with cache.lock("counter", timeout=30):
            v = cache.fetch("n", 0)
            cache.store("n", v + 1)  # a read-modify-write: only safe under the lock


def test_lock_excludes_processes(cache):
    procs = [FORK.Process(target=_count_under_lock, args=(cache, 150)) for _ in range(4)]
    run_processes(procs, 60)
    assert cache.fetch("n") == 600


def test_lock_excludes_threads(cache):
    threads = [threading.Thread(target=_count_under_lock, args=(cache, 100)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert cache.fetch("n") == 400


def _hold(cache, name, timeout, held):
    lk = cache.lock(name, timeout=timeout)
    lk.acquire()
    held.set()
    time.sleep(60)


def test_a_dead_holders_lock_is_free_at_once(cache):
    held = FORK.Event()
    p = FORK.Process(target=_hold, args=(cache, "L", None, held))
    p.start()
    assert held.wait(10)
    lk = cache.lock("L")
    assert lk.locked() and lk.acquire(blocking=False) is False
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    assert not lk.locked()
    assert lk.acquire(blocking=False) is True
    lk.release()


def test_a_recycled_pid_does_not_look_alive():
    me = my_word()
    assert holder_alive(me)
    assert not holder_alive(me ^ 1)  # this pid, another start time
    assert start_ticks(os.getpid()) is not None


def test_timeout_frees_a_stuck_holders_lock(cache):
    held = FORK.Event()
    p = FORK.Process(target=_hold, args=(cache, "L", 1.5, held))
    p.start()
    try:
        assert held.wait(10)
        t0 = time.monotonic()
        lk = cache.lock("L", blocking_timeout=0.2)
        assert lk.locked() and lk.acquire() is False
        while lk.locked():
            time.sleep(0.01)
        assert lk.acquire(timeout=5) is True  # the holder is alive, but its 1.5 s ran out
        # to the millisecond: the entry's own ttl (2 whole seconds) would free it only
        # 2 to 3 s after it was taken
        assert 1.2 < time.monotonic() - t0 < 1.95
        lk.release()
    finally:
        p.kill()
        p.join(10)


def test_release_extend_locked_owned(cache):
    lk = cache.lock("L", timeout=5)
    with pytest.raises(LockNotOwnedError):
        lk.release()
    assert lk.acquire() and lk.locked() and lk.owned()
    with pytest.raises(LockError):
        lk.acquire()  # not reentrant
    lk.extend(100)
    assert cache.key_info("apccache:lock:L")["ttl"] >= 100
    deadline = cache.fetch(f"apccache:lockdl:L:{my_word()}")
    assert deadline > time.time() * 1000 + 99_000  # its own deadline moved too
    lk.release()
    assert not lk.locked() and not lk.owned()
    with pytest.raises(LockError):
        cache.lock("N").extend(1)  # no timeout
    with cache.lock("L", blocking_timeout=1) as held:
        assert held.owned()
        with pytest.raises(LockError):
            with cache.lock("L", blocking_timeout=0.05):
                pass


def test_release_of_a_lock_taken_by_another_after_timeout_raises(ccache, clock):
    lk = ccache.lock("L", timeout=1)
    assert lk.acquire()
    clock.advance(5)  # expired; someone else takes it
    ccache.store("apccache:lock:L", 12345 << 41)
    with pytest.raises(LockNotOwnedError):
        lk.release()
    assert ccache.fetch("apccache:lock:L") == 12345 << 41  # not freed by the wrong holder


def test_alock_waits_without_blocking_the_loop(cache):
    held = FORK.Event()
    p = FORK.Process(target=_hold, args=(cache, "A", None, held))
    p.start()
    assert held.wait(10)
    threading.Timer(0.4, os.kill, (p.pid, signal.SIGKILL)).start()

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.ensure_future(ticker())
        async with cache.alock("A", blocking_timeout=10) as lk:
            assert lk.owned()
        t.cancel()
        return ticks

    assert asyncio.run(main()) >= 15
    p.join(10)
    assert not cache.lock("A").locked()


def test_open_sorts_options_between_create_and_attach(name):
    with pytest.raises(TypeError, match="unexpected options: bogus"):
        apccache.Cache.open(name, size=4 << 20, bogus=1)
    assert not os.path.exists(f"/dev/shm/{name}")
    ser = apccache.JSONSerializer()
    c = apccache.Cache.open(name, size=4 << 20, mode=0o660, serializer=ser, lock_timeout=1.0)
    d = apccache.Cache.open(name, size=4 << 20, mode=0o660, serializer=ser, lock_timeout=1.0)
    assert c._owner and not d._owner  # the second attached the group segment as one
    d.store("k", [1])
    assert c.fetch("k") == [1]
    c.close()
    d.close()


@pytest.mark.parametrize("bad,exc,msg", BAD_TTLS, ids=[repr(b) for b, _, _ in BAD_TTLS])
def test_touch_refuses_the_same_bad_ttls_as_every_method(cache, bad, exc, msg):
    cache.store("k", b"v", ttl=50)
    with pytest.raises(exc, match=msg) as e:
        cache.touch("k", bad)
    assert type(e.value) is exc
    assert cache.key_info("k")["ttl"] == 50


def test_touch_accepts_max_ttl(ccache, clock):
    ccache.store("k", b"v", ttl=5)
    assert ccache.touch("k", apccache.MAX_TTL)
    clock.advance(10**6)
    assert ccache.fetch("k") == b"v"


def test_memoized_coroutine_waits_for_another_process_without_blocking_the_loop(cache):
    started = FORK.Event()

    @cache.memoize(ttl=60)
    async def slow(n):
        started.set()
        cache.inc(CALLS)
        await asyncio.sleep(0.6)
        return f"{n} by {os.getpid()}"

    p = FORK.Process(target=lambda: asyncio.run(slow(1)))
    p.start()
    assert started.wait(10)

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.ensure_future(ticker())
        value = await slow(1)
        t.cancel()
        return value, ticks

    value, ticks = asyncio.run(main())
    p.join(10)
    assert value == f"1 by {p.pid}" and cache.fetch(CALLS) == 1  # computed once, by the other process
    assert ticks >= 20
