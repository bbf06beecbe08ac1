"""Damage the fuzzer found, one case each: the engine checks the claim
instead of following it.

Each case runs in a forked child (a regression would be a SIGSEGV or a
hang, which must not take the test process with it) with a deadline.
"""
import os
import signal
import struct
import time
import traceback

import pytest

import apccache
from apccache import _bindings as B

from helpers.segments import segment_name

U64 = struct.Struct("<Q")
U32 = struct.Struct("<I")  # the slot's times and lengths


def off(name):
    return B.lib.apc_layout_offset(name.encode())


def in_child(fn, timeout=10.0):
    """Run fn() in a forked child; '' if it returned, else what went wrong."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 0
        try:
            fn()
        except BaseException:  # noqa: BLE001 - reported to the parent
            os.write(w, traceback.format_exc().encode()[-4000:])
            code = 1
        os._exit(code)
    os.close(w)
    deadline = time.monotonic() + timeout
    while True:
        wpid, status = os.waitpid(pid, os.WNOHANG)
        if wpid:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
            return f"hung: killed after {timeout} s"
        time.sleep(0.01)
    out = b""
    while chunk := os.read(r, 65536):
        out += chunk
    os.close(r)
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return out.decode(errors="replace")


@pytest.fixture
def cache():
    name = segment_name("dmg")
    c = apccache.Cache.create(name, size=1 << 20)
    yield c
    c.unlink()
    c.close()


def _fill(c, n=60):
    for i in range(n):
        c.store(f"k{i}", b"v" * (100 + 37 * i))
    for i in range(0, n, 2):
        c.delete(f"k{i}")  # free blocks of many sizes: every list has a head


def _arena(c):
    a = U64.unpack_from(c._mv, off("hdr.arena_off"))[0]
    return a, a + U64.unpack_from(c._mv, off("hdr.arena_size"))[0]


@pytest.mark.parametrize("head", [1 << 32, 0x8000000000000000, 8, 1 << 20])
def test_a_free_list_head_outside_the_arena_is_not_written_through(cache, head):
    """Seeds 267 and 465: freeing a block pushed it on its list and wrote
    its address through whatever free_head[c] held."""
    for i in range(60):
        cache.store(f"k{i}", b"v" * (100 + 37 * i))  # used blocks side by side
    heads = off("hdr.free_head")
    header = bytes(cache._mv[:off("hdr.bstripes")])

    def damage_then_use():
        for c_ in range(63):  # every list but the top one (the arena's tail)
            U64.pack_into(cache._mv, heads + 8 * c_, head)
        cache.delete("k30")  # both neighbours used: freed straight onto its list
        assert bytes(cache._mv[:off("hdr.bstripes")]) == header, "the header was written"
        cache.clear()
        for i in range(40):
            cache.store(f"n{i}", b"n" * (50 * i))
        assert cache.fetch("n39") == b"n" * (50 * 39)
        assert cache.check() == [], cache.check()

    assert in_child(damage_then_use) == ""


def _class_of(size):
    """apc_class_of: four free-list classes per power of two from 32 bytes."""
    lg = size.bit_length() - 1
    return min((lg - 5) * 4 + ((size >> (lg - 2)) & 3), 63)


def test_a_free_list_that_loops_ends_the_allocator_walk(cache):
    """A free block whose next link points at itself, too small for the
    request that scans its class: the walk of a class had no cap."""
    for i in range(20):
        cache.store(f"k{i}", b"v" * 1000)
    cache.delete("k10")  # one free block of about 1.1 KiB between used ones
    (hole,) = [b for b in cache.sma_info()["block_lists"][0] if b["size"] < 4096]
    size = hole["size"]
    # A value whose block is larger than the hole but in the same class.
    grow = next(g for g in range(16, 4096, 16) if _class_of(size + g) != _class_of(size)) - 16
    assert grow > 0
    value = b"w" * (1000 + grow)

    def damage_then_use():
        U64.pack_into(cache._mv, hole["offset"] + 8, hole["offset"])  # next = itself
        cache.store("grown", value)
        assert cache.fetch("grown") == value
        assert cache.check() == [], cache.check()

    assert in_child(damage_then_use) == ""


def test_a_chain_loop_reached_from_every_bucket_is_listed_once(cache):
    """Every bucket pointing into one loop: a snapshot emitted the loop's
    records once per bucket, each walk capped only by itself (gigabytes)."""
    for i in range(50):
        cache.store(f"k{i}", b"v")
    first = [r[9] for r, _ in cache.records()][0]
    buckets_off, nslots = struct.unpack_from("<QQ", cache._mv, off("hdr.geom"))

    def damage_then_use():
        U64.pack_into(cache._mv, first + off("slot.next_off"), first)  # a loop
        for i in range(nslots):
            U64.pack_into(cache._mv, buckets_off + 8 * i, first)
        t0 = time.monotonic()
        entries = cache.info()["entries"]
        assert len(entries) <= (1 << 20) // 32
        assert time.monotonic() - t0 < 5

    assert in_child(damage_then_use, timeout=30) == ""


def test_a_huge_entry_count_sizes_no_allocation(cache):
    """Seed 867 and make_room_wl: entry counts read from the header sized
    allocations (n * sizeof wrapped in C; info() raised OverflowError)."""
    _fill(cache)
    stats = off("hdr.stats")

    def damage_then_use():
        U64.pack_into(cache._mv, stats, (1 << 63) - 1)  # num_entries of the user table
        U64.pack_into(cache._mv, stats + off("sizeof.apc_table_stats"), 1 << 61)
        cache.info()
        list(cache.keys())
        for i in range(30):  # fill past the arena: eviction runs
            cache.store(f"big{i}", b"B" * 60_000)
        assert cache.fetch("big29") == b"B" * 60_000

    assert in_child(damage_then_use) == ""


def test_entry_over_an_entry_that_never_reads_generates(cache):
    """Seed 1750: entry() looped for ever when entry_begin saw a live entry
    that every fetch took for a miss (an unknown type tag)."""
    cache.store("k", b"value")
    slot = [r[9] for r, k in cache.records() if k == b"k"][0]

    def damage_then_use():
        cache._mv[slot + off("slot.type")] = 127
        assert cache.fetch("k", "miss") == "miss"
        assert cache.entry("k", lambda key: b"made") == b"made"
        assert cache.fetch("k") == b"made"

    assert in_child(damage_then_use) == ""


def test_a_huge_ttl_claim_does_not_wrap_into_expiry(cache):
    """ctime + ttl wrapped: an entry whose ttl word reads 2**64-1 expired at
    once.  A ttl is a claim like any other; arithmetic on it must not wrap.
    (The ttl word is 32 bits now: its largest value.)"""
    cache.store("k", b"value", ttl=100)
    slot = [r[9] for r, k in cache.records() if k == b"k"][0]

    def damage_then_use():
        U32.pack_into(cache._mv, slot + off("slot.ttl"), (1 << 32) - 1)
        assert cache.fetch("k") == b"value"
        assert cache.exists("k")
        assert len(cache) == 1

    assert in_child(damage_then_use) == ""


def test_a_deletion_time_in_the_future_does_not_free_a_pinned_entry(cache):
    """dtime + gc_ttl wrapped: a GC-listed entry whose deletion time reads
    2**64-1 was freed at once although a reader still held its pin, and its
    memory reused under the reader."""
    cache.store("k", b"x" * 30_000)

    def damage_then_use():
        ref = B.ffi.new("apc_ref *")
        assert B.lib.apc_fetch_ref(cache._segment.ptr, 0, b"k", 1, 0, ref) >= 0  # a reader's pin
        cache.delete("k")  # pinned: onto the GC list
        (slot,) = [r[9] for r, _ in cache.records(live=False, deleted=True)]
        U32.pack_into(cache._mv, slot + off("slot.dtime"), (1 << 32) - 1)  # 32 bits now
        for i in range(20):
            cache.store(f"n{i}", b"n" * 20_000)  # sweeps the GC list, allocates
        assert bytes(B.ffi.buffer(ref.ptr, ref.len)) == b"x" * 30_000
        assert cache.info()["gc_entries"] == 1
        B.lib.apc_ref_release(cache._segment.ptr, ref)

    assert in_child(damage_then_use) == ""


def test_a_scribbled_header_geometry_is_put_right_by_the_next_writer(cache):
    """Zeroing the header's first bytes (magic, format, sizes, table
    geometry) went unnoticed: the engine works from its own copy, but every
    new attacher was refused and check() reported an arena of size 0.  The
    next writer notices, restores them from its handle and repairs."""
    cache.store("k", b"v")
    name = cache.name

    def damage_then_use():
        cache._mv[: off("hdr.bstripes")] = bytes(off("hdr.bstripes"))
        cache.store("k2", b"v2")
        assert cache.check() == [], cache.check()
        other = apccache.Cache.attach(name)
        assert other.fetch("k") == b"v" and other.fetch("k2") == b"v2"
        other.close()

    assert in_child(damage_then_use) == ""


def test_a_pinned_deleted_entry_with_a_damaged_length_stays_on_the_gc_list(cache):
    """Seed 809: the repair put a pinned, deleted entry whose val_len read
    2**64-8 back on the GC list (its size check wrapped), and the next sweep
    cut the list there without a word: the header still counted it, and its
    block leaked for good."""
    cache.store("k", b"x" * 20_000)

    def damage_then_use():
        ref = B.ffi.new("apc_ref *")
        assert B.lib.apc_fetch_ref(cache._segment.ptr, 0, b"k", 1, 0, ref) >= 0  # a reader's pin
        cache.delete("k")
        (slot,) = [r[9] for r, _ in cache.records(live=False, deleted=True)]
        U32.pack_into(cache._mv, slot + off("slot.val_len"), (1 << 32) - 8)  # 32 bits now
        U64.pack_into(cache._mv, off("hdr.repair_due"), 1)
        cache.store("a", b"a")  # repairs, then sweeps the GC list
        cache.store("b", b"b")
        assert cache.check() == [], cache.check()
        assert cache.info()["gc_entries"] == 1
        assert bytes(B.ffi.buffer(ref.ptr, ref.len)) == b"x" * 20_000
        B.lib.apc_ref_release(cache._segment.ptr, ref)
        cache.store("c", b"c")  # unpinned now: the sweep frees it
        assert cache.info()["gc_entries"] == 0
        assert cache.check() == [], cache.check()

    assert in_child(damage_then_use) == ""


def _kernel_thread():
    """A pid that exists but maps no memory (a kernel thread), or None."""
    for pid in range(2, 200):
        try:
            with open(f"/proc/{pid}/maps") as f:
                if f.read() == "" and os.path.exists(f"/proc/{pid}/comm"):
                    os.kill(pid, 0)
                    return pid
        except OSError:
            continue
    return None


def test_a_lock_word_naming_a_kernel_thread_is_taken_over(cache):
    """Seed 5728: one flipped bit made the (then single) write lock's word read 8, the tid
    of a kernel thread: alive, and its /proc/PID/maps empty, which the
    holder check took for "cannot tell".  Every writer got CacheBusyError,
    for ever.  A thread that maps nothing cannot hold the lock."""
    kt = _kernel_thread()
    if kt is None:
        pytest.skip("no kernel thread visible in this pid namespace")
    name = cache.name

    def damage_then_use():
        c = apccache.Cache.attach(name, lock_timeout=0.2)
        struct.pack_into("<I", c._mv, off("hdr.alock") + off("lock.word"), kt)
        c.store("k", b"v")
        assert c.fetch("k") == b"v"
        assert c.check() == []

    assert in_child(damage_then_use) == ""
