"""The segment fuzzer: damage a populated segment, then use it.

One run, for one seed, in a child process of its own:

1. create a small segment and fill it with every kind of value (bytes of
   every size class, the native types, pickled objects), entries deleted
   while pinned (so the GC list is not empty) and a fragmented arena (so
   the free lists are long);
2. damage it in one to three ways chosen by the seed (see CORRUPTIONS):
   byte flips, header fields, entry fields (lengths, offsets, tags, pin
   words, next links), free-list heads and links, block tags, garbage,
   zeroed pages, the lock word, seq words, pin and entry() records;
3. use it: about forty operations of every kind (fetch, store, delete,
   inc, add, cas, entry, exists, the _many forms, info, sma_info, keys,
   key_info, len, check, clear), each result checked against what was
   stored;
4. set repair_due (as a reader that met a broken claim does), write once,
   and record what check() still finds: the repair must leave a sound
   segment whatever the damage.

The parent runs the children a few at a time and classifies each run:

- ``signal``: the child died by a signal (SIGSEGV, SIGBUS, SIGABRT...);
- ``hang``: it ran past the per-run timeout and was killed;
- ``undocumented``: an operation raised something other than a CacheError
  or the documented TypeError/OverflowError of inc/dec/cas and KeyError of
  ``c[key]``;
- ``wrong``: a fetch returned a value that was never stored under its key;
  a miss is always a right answer;
- ``stale``: a fetch returned a value once stored under its key but since
  replaced or deleted (damage linked an old entry back in: a checksum
  cannot tell it from the current one, so it is counted apart);
- otherwise ``ok``; with ``detected`` set when the engine reported the
  damage (CorruptSegmentError) at least once.

``tests/test_fuzz.py`` runs it in the suite; ``bench/fuzz_segment.py`` runs
the long version and writes ``bench/results/fuzz.md``.
"""
import inspect
import json
import os
import random
import signal
import struct
import time
import traceback

import apccache
from apccache import _bindings as B
from apccache.errors import CacheError, CorruptSegmentError

lib = B.lib
SIZE = 1 << 20
_U64 = struct.Struct("<Q")

_CREATE_PARAMS = inspect.signature(apccache.Cache.create).parameters
HAS_CHECKSUMS = "checksums" in _CREATE_PARAMS
HAS_LOCK_TIMEOUT = "lock_timeout" in _CREATE_PARAMS
LOCK_TIMEOUT = 0.2  # a damaged lock word costs a writer this much, not the default


def off(name):
    """Where a named field lies (csrc/check.c: apc_layout_offset)."""
    v = lib.apc_layout_offset(name.encode())
    if v < 0:
        raise KeyError(name)
    return v


class _Unknown:
    """A key whose state an error left unknown: any answer is right."""

    def __repr__(self):
        return "UNKNOWN"


UNKNOWN = _Unknown()


# ------------------------------------------------------------------ values

def _value(rng, big=True):
    kind = rng.randrange(12)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 64))
    if kind == 1:
        return rng.randbytes(rng.randrange(64, 4096))
    if kind == 2 and big:
        return rng.randbytes(rng.randrange(16 * 1024 + 1, 48 * 1024))  # the pinned path
    if kind == 3:
        return "".join(rng.choice("abcé€𝄞 \n") for _ in range(rng.randrange(0, 300)))
    if kind == 4:
        return rng.randrange(-(1 << 63), 1 << 63)
    if kind == 5:
        return rng.uniform(-1e300, 1e300)
    if kind == 6:
        return rng.choice([True, False, None])
    if kind == 7:
        return {"id": rng.randrange(1 << 30), "tags": [rng.random() for _ in range(rng.randrange(8))]}
    if kind == 8:
        return (rng.randrange(100), "t" * rng.randrange(50))
    return rng.randbytes(rng.randrange(8, 512))


def _same(a, b):
    """Equal values of the same type (a stored True is not 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    return a == b


# -------------------------------------------------------------- populating

class _Expected(dict):
    """key -> the value a fetch must return (UNKNOWN: any); remembers every
    value ever stored under each key in .history."""

    def __init__(self):
        super().__init__()
        self.history = {}

    def __setitem__(self, key, value):
        if value is not UNKNOWN:
            self.history.setdefault(key, []).append(value)
        super().__setitem__(key, value)


class Ctx:
    """What the run knows about its segment before damaging it."""

    def __init__(self, c, rng):
        self.c = c
        self.rng = rng
        self.mv = c._mv
        self.size = len(c._mv)
        h = c.info(limited=True)
        self.seg_size = h["seg_size"]
        self.arena_off = _U64.unpack_from(self.mv, off("hdr.arena_off"))[0]
        self.arena_end = self.arena_off + _U64.unpack_from(self.mv, off("hdr.arena_size"))[0]
        self.checksums = bool(h["checksums"])
        self.expected = _Expected()
        self.history = self.expected.history
        self.refs = []  # pins held for the whole run
        self.slots = []  # (slot offset, key) of live entries
        self.gc_slots = []
        self.free_blocks = []

    def attempt(self, key, value):
        """value may be stored under key from now on (even if the call fails)."""
        self.history.setdefault(key, []).append(value)


def populate(c, rng):
    ctx = Ctx(c, rng)
    n = rng.randrange(40, 140)
    for i in range(n):
        k = f"k{i}"
        v = _value(rng)
        c.store(k, v, ttl=rng.choice([0, 0, 0, 3600]))
        ctx.expected[k] = v
    for i in range(rng.randrange(0, 20)):
        c.store(f"ctr{i}", rng.randrange(-1000, 1000))
        ctx.expected[f"ctr{i}"] = c.fetch(f"ctr{i}")
    # Fragment the arena: the free lists get long.
    filler = [f"fill{i}" for i in range(rng.randrange(0, 60))]
    for k in filler:
        fv = rng.randbytes(rng.randrange(100, 3000))
        ctx.history.setdefault(k, []).append(fv)
        c.store(k, fv)
    for k in filler[::2]:
        c.delete(k)
    for k in filler[1::2]:
        ctx.expected[k] = c.fetch(k)
    # Entries replaced while a reader holds them wait on the GC list: pin a
    # few large values (a fetch into a small buffer keeps its pin) and
    # replace them.
    for i in range(rng.randrange(0, 4)):
        k = f"gc{i}"
        c.store(k, rng.randbytes(20000 + i))
        ctx.history.setdefault(k, []).append(c.fetch(k))
        ref = B.ffi.new("apc_ref *")
        r = lib.apc_fetch_ref(c._segment.ptr, 0, k.encode(), len(k), 0, ref)  # never released
        assert r >= 0, r
        ctx.refs.append(ref)
        v = rng.randbytes(rng.randrange(10, 400))
        c.store(k, v)
        ctx.expected[k] = v
    for rec, key in c.records():
        ctx.slots.append((rec[9], key))
    for rec, key in c.records(live=False, deleted=True):
        ctx.gc_slots.append((rec[9], key))
    ctx.free_blocks = [(b["offset"], b["size"]) for b in c.sma_info()["block_lists"][0]]
    return ctx


# ------------------------------------------------------------- corruptions

def _interesting(rng, ctx, old):
    """A value for a damaged 64-bit word."""
    choices = [
        0, 1, 7, 8, 15, 16, 255, 0xFFFF, 1 << 31, (1 << 32) - 1, 1 << 32,
        (1 << 63) - 1, 1 << 63, (1 << 64) - 1, (1 << 64) - 8, (1 << 64) - 16,
        ctx.size, ctx.size - 8, ctx.size + 4096, ctx.arena_end, ctx.arena_end - 8,
        ctx.arena_off, ctx.arena_off + 8, 8 << 20, 2 << 20,
        (old + rng.choice([1, -1, 8, -8, 16, -16, 4096, -4096])) % (1 << 64),
        old ^ (1 << rng.randrange(64)),
        rng.getrandbits(64),
        rng.randrange(ctx.size),
        rng.randrange(ctx.arena_off, ctx.arena_end) & ~7,
        (rng.randrange(ctx.arena_off, ctx.arena_end) & ~15) + 8,
    ]
    if ctx.slots:
        choices += [rng.choice(ctx.slots)[0], rng.choice(ctx.slots)[0] - 8]
    return rng.choice(choices) % (1 << 64)


def _put64(ctx, at, value):
    if 0 <= at and at + 8 <= ctx.size:
        _U64.pack_into(ctx.mv, at, value % (1 << 64))


def _get64(ctx, at):
    """A word of the segment (0 outside it: an earlier damage may have
    sent a length anywhere)."""
    if not 0 <= at <= ctx.size - 8:
        return 0
    return _U64.unpack_from(ctx.mv, at)[0]


def _word(ctx, rng, at):
    if not 0 <= at <= ctx.size - 8:
        at = rng.randrange(ctx.arena_off, ctx.arena_end - 8) & ~7
    old = _get64(ctx, at)
    new = _interesting(rng, ctx, old)
    _put64(ctx, at, new)
    return f"0x{at:x}: 0x{old:x} -> 0x{new:x}"


def c_flip_bytes(ctx, rng):
    n = rng.randrange(1, 32)
    where = []
    for _ in range(n):
        at = rng.randrange(ctx.size)
        ctx.mv[at] ^= rng.randrange(1, 256)
        where.append(at)
    return f"flip {n} bytes anywhere"


def c_flip_arena(ctx, rng):
    n = rng.randrange(1, 64)
    for _ in range(n):
        at = rng.randrange(ctx.arena_off, ctx.arena_end)
        ctx.mv[at] ^= 1 << rng.randrange(8)
    return f"flip {n} bits in the arena"


HEADER_WORDS = ["hdr.repair_due", "hdr.free_map", "hdr.free_bytes", "hdr.nfree", "hdr.nused", "hdr.gc_head",
                "hdr.gc_count", "hdr.next_version", "hdr.ttl", "hdr.gc_ttl", "hdr.seg_size",
                "hdr.arena_off", "hdr.arena_size", "hdr.aux_off"]


def c_header_field(ctx, rng):
    name = rng.choice(HEADER_WORDS + ["stats"] * 2 + ["stripe stats"] * 2 + ["intent"] * 3)
    if name == "stats":
        # expunges, evictions, start_time of either table
        at = off("hdr.stats") + rng.randrange(2) * off("sizeof.apc_table_stats") + 8 * rng.randrange(3)
        return "header stats " + _word(ctx, rng, at)
    if name == "stripe stats":
        # a bucket stripe's num_entries, mem_size, num_inserts or expired, of either table
        at = rng.choice(_locks()[1:]) + off("sizeof.lock") + 8 * rng.randrange(8)
        return "stripe stats " + _word(ctx, rng, at)
    if name == "intent":
        # what a stripe's holder was in the middle of: a block it allocated,
        # where it was to go, a slot it was unlinking (often a real slot's
        # offset, or near one)
        at = rng.choice(_locks()[1:]) + off("lock." + rng.choice(["intent_new", "intent_old",
                                                                   "pending"]))
        return "stripe intent " + _word(ctx, rng, at)
    return f"header {name} " + _word(ctx, rng, off(name))


SLOT_FIELDS = {
    "hash": 4, "ctime": 4, "ttl": 4, "val_len": 4, "key_len": 2, "type": 1, "table": 1,
    "flags": 1, "sum": 8, "next_off": 8, "mtime": 4, "dtime": 4, "ival": 8, "pin": 8, "atime": 4,
    "hits": 4,
}
APC_T_INT = 3


def _is_int(ctx, slot):
    return ctx.mv[slot + off("slot.type")] == APC_T_INT


def _ext(ctx, slot):
    """The optional words between an entry's slot and its key: an int's
    value, then the checksum (csrc/apc_internal.h)."""
    return (8 if _is_int(ctx, slot) else 0) + (8 if ctx.checksums else 0)


def _field_at(ctx, slot, f):
    """Where field f of the entry at slot lies: the optional words follow
    the slot (the checksum after an int's value)."""
    if f == "sum":
        return slot + off("slot.sum") + (8 if _is_int(ctx, slot) else 0)
    if f == "ival" and not _is_int(ctx, slot):
        return slot + off("slot.ival") + _ext(ctx, slot)  # no int word: the key's first bytes
    return slot + off("slot." + f)
SLOT_WEIGHTS = ["val_len"] * 5 + ["key_len"] * 3 + ["next_off"] * 5 + ["pin"] * 4 + \
    ["type"] * 3 + ["table"] * 2 + ["flags"] * 2 + ["hash", "ctime", "ttl", "ival", "dtime"]
try:
    off("slot.sum")
    SLOT_WEIGHTS += ["sum"] * 2
except KeyError:  # an engine without checksums
    del SLOT_FIELDS["sum"]


def _slot_field(ctx, rng, slot, key):
    f = rng.choice(SLOT_WEIGHTS)
    at = _field_at(ctx, slot, f)
    width = SLOT_FIELDS[f]
    if f == "pin":
        old = _get64(ctx, at)
        new = rng.choice([
            0, rng.getrandbits(64), 0xA9C0000000000000, old | 0xFFFF, (old & ~0xFFFF) + 1,
            old ^ (1 << rng.randrange(16, 64)), 0xA9C0000000000000 | 0xFFFF,
        ])
        _put64(ctx, at, new)
        return f"slot {key!r} pin 0x{old:x} -> 0x{new:x}"
    if f == "next_off":
        choices = [_interesting(rng, ctx, _get64(ctx, at)), slot]
        if ctx.slots:
            choices.append(rng.choice(ctx.slots)[0])
        if ctx.free_blocks:
            fb = rng.choice(ctx.free_blocks)[0]
            choices += [fb, fb + 8]
        old = _get64(ctx, at)
        new = rng.choice(choices)
        _put64(ctx, at, new)
        return f"slot {key!r} next_off 0x{old:x} -> 0x{new:x}"
    if width == 8:
        return f"slot {key!r} {f} " + _word(ctx, rng, at)
    if width == 4:
        old = struct.unpack_from("<I", ctx.mv, at)[0]
        new = rng.choice([0, 1, old + 1, old + 8, 0xFFFF, 0x10000, 0xFFFFFFFF, rng.getrandbits(32)])
        struct.pack_into("<I", ctx.mv, at, new % (1 << 32))
        return f"slot {key!r} {f} {old} -> {new % (1 << 32)}"
    if width == 2:
        old = struct.unpack_from("<H", ctx.mv, at)[0]
        new = rng.choice([0, 1, old + 1, old + 8, 0xFF, 0x100, 0xFFFF, rng.getrandbits(16)])
        struct.pack_into("<H", ctx.mv, at, new % (1 << 16))
        return f"slot {key!r} {f} {old} -> {new % (1 << 16)}"
    old = ctx.mv[at]
    new = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 127, 128, 255, old ^ (1 << rng.randrange(8))])
    ctx.mv[at] = new
    return f"slot {key!r} {f} {old} -> {new}"


def c_entry_field(ctx, rng):
    if not ctx.slots:
        return c_flip_arena(ctx, rng)
    slot, key = rng.choice(ctx.slots)
    return _slot_field(ctx, rng, slot, key)


def c_gc_entry(ctx, rng):
    if ctx.gc_slots and rng.random() < 0.7:
        slot, key = rng.choice(ctx.gc_slots)
        return "gc " + _slot_field(ctx, rng, slot, key)
    return "gc head " + _word(ctx, rng, off("hdr.gc_head"))


def c_free_list(ctx, rng):
    choice = rng.randrange(4)
    if choice == 0 or not ctx.free_blocks:
        c = rng.randrange(64)
        return f"free_head[{c}] " + _word(ctx, rng, off("hdr.free_head") + 8 * c)
    b, size = rng.choice(ctx.free_blocks)
    if choice == 1:
        return f"free block 0x{b:x} next " + _word(ctx, rng, b + 8)
    if choice == 2:
        return f"free block 0x{b:x} prev " + _word(ctx, rng, b + 16)
    return f"free_map " + _word(ctx, rng, off("hdr.free_map"))


def c_block_tag(ctx, rng):
    if ctx.slots and rng.random() < 0.6:
        slot, key = rng.choice(ctx.slots)
        b = slot - 8
        size = _get64(ctx, b) & ~7
        # A used block has a header only; the next block's header holds
        # its PREV_USED bit (it stands in for the footer).
        at = b if rng.random() < 0.6 or not size or b + size >= ctx.arena_end else b + size
        return f"used block tag of {key!r} " + _word(ctx, rng, at)
    if ctx.free_blocks:
        b, size = rng.choice(ctx.free_blocks)
        at = b if rng.random() < 0.6 else b + size - 8
        return "free block tag " + _word(ctx, rng, at)
    return c_flip_arena(ctx, rng)


def c_garbage(ctx, rng):
    n = rng.randrange(16, 4096)
    region = rng.choice(["arena", "arena", "buckets", "anywhere"])
    if region == "arena":
        at = rng.randrange(ctx.arena_off, ctx.arena_end - n)
    elif region == "buckets":
        start = off("sizeof.apc_header")
        at = rng.randrange(start, ctx.arena_off - n)
    else:
        at = rng.randrange(0, ctx.size - n)
    ctx.mv[at:at + n] = rng.randbytes(n)
    return f"{n} bytes of garbage at 0x{at:x} ({region})"


def c_zero_page(ctx, rng):
    page = rng.randrange(ctx.size // 4096)
    if rng.random() < 0.5:  # most pages are arena: aim at the structures too
        page = rng.randrange(max(1, ctx.arena_off // 4096 + 2))
    ctx.mv[page * 4096:(page + 1) * 4096] = bytes(4096)
    return f"zeroed page {page}"


def _locks():
    """Where each of the segment's locks is: the allocator's, then one per
    bucket stripe."""
    first, step = off("hdr.bstripes"), off("sizeof.bstripe")
    return [off("hdr.alock")] + [first + i * step for i in range(B.LAYOUT["nstripes"])]


def c_lock_word(ctx, rng):
    # the allocator's lock (every allocating write takes it) half the time
    locks = _locks()
    at = locks[0] if rng.random() < 0.5 else rng.choice(locks[1:])
    n = off("sizeof.lock")
    word, pid_at = at + off("lock.word"), at + off("lock.pid")
    kind = rng.randrange(6)
    if kind == 0:
        ctx.mv[at:at + n] = rng.randbytes(n)
        return "lock word: random bytes"
    if kind == 1:  # "held" by a thread that does not exist
        struct.pack_into("<I", ctx.mv, word, 4_000_000 + rng.randrange(100_000))
        return "lock word: owner is a tid that does not exist"
    if kind == 2:  # "held" by a live process: the parent
        struct.pack_into("<I", ctx.mv, word, os.getppid())
        if pid_at is not None and rng.random() < 0.5:
            struct.pack_into("<q", ctx.mv, pid_at, os.getppid())
            return "lock word and owner record: a live process"
        return "lock word: owner is a live process"
    if kind == 3:
        struct.pack_into("<I", ctx.mv, word, rng.getrandbits(32))
        return "lock word: random owner"
    if kind == 4 and pid_at is not None:  # the record alone
        struct.pack_into("<q", ctx.mv, pid_at, rng.choice([os.getppid(), 1, -1, 4_000_000]))
        return "lock owner record: a pid"
    i = rng.randrange(n)
    ctx.mv[at + i] ^= 1 << rng.randrange(8)
    return f"lock word: bit flip at byte {i}"


def c_seq(ctx, rng):
    i = rng.randrange(64)
    at = off("hdr.seq") + i * off("sizeof.seq")
    return f"seq[{i}] " + _word(ctx, rng, at)


def c_records(ctx, rng):
    if rng.random() < 0.5:
        i = rng.randrange(256)
        at = off("hdr.pins") + i * off("sizeof.apc_pin_rec") + 8 * rng.randrange(4)
        return f"pin record {i} " + _word(ctx, rng, at)
    i = rng.randrange(256)
    at = off("hdr.elocks") + i * off("sizeof.apc_elock") + 8 * rng.randrange(5)
    return f"entry() record {i} " + _word(ctx, rng, at)


def c_value_bytes(ctx, rng):
    """Flip bytes inside a value: only a checksum can tell."""
    if not ctx.slots:
        return c_flip_arena(ctx, rng)
    slot, key = rng.choice(ctx.slots)
    klen = struct.unpack_from("<H", ctx.mv, slot + off("slot.key_len"))[0]
    vlen = struct.unpack_from("<I", ctx.mv, slot + off("slot.val_len"))[0]
    vstart = slot + off("sizeof.apc_slot") + _ext(ctx, slot) + klen
    if vlen == 0 and _is_int(ctx, slot):
        at = slot + off("slot.ival")
        ctx.mv[at + rng.randrange(8)] ^= 1 << rng.randrange(8)
        return f"flip a bit of {key!r}'s int"
    vlen = min(vlen, ctx.size - vstart)  # an earlier damage may have changed it
    if vlen <= 0:
        return c_flip_arena(ctx, rng)
    for _ in range(rng.randrange(1, 4)):
        ctx.mv[vstart + rng.randrange(vlen)] ^= 1 << rng.randrange(8)
    return f"flip bits in {key!r}'s value"


def c_key_bytes(ctx, rng):
    if not ctx.slots:
        return c_flip_arena(ctx, rng)
    slot, key = rng.choice(ctx.slots)
    if not key:
        return c_flip_arena(ctx, rng)
    at = slot + off("sizeof.apc_slot") + _ext(ctx, slot) + rng.randrange(len(key))
    ctx.mv[at] ^= 1 << rng.randrange(8)
    return f"flip a bit of key {key!r}"


CORRUPTIONS = {
    "flip_bytes": (c_flip_bytes, 3),
    "flip_arena": (c_flip_arena, 3),
    "header_field": (c_header_field, 3),
    "entry_field": (c_entry_field, 6),
    "gc_entry": (c_gc_entry, 2),
    "free_list": (c_free_list, 3),
    "block_tag": (c_block_tag, 3),
    "garbage": (c_garbage, 2),
    "zero_page": (c_zero_page, 2),
    "lock_word": (c_lock_word, 1),
    "seq": (c_seq, 1),
    "records": (c_records, 1),
    "value_bytes": (c_value_bytes, 3),
    "key_bytes": (c_key_bytes, 1),
}


def corrupt(ctx, rng):
    names = list(CORRUPTIONS)
    weights = [CORRUPTIONS[n][1] for n in names]
    done = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        name = rng.choices(names, weights)[0]
        done.append(f"{name}: {CORRUPTIONS[name][0](ctx, rng)}")
    return done


# --------------------------------------------------------------- using it

class Verdict:
    def __init__(self):
        self.undocumented = []
        self.wrong = []
        self.stale = []
        self.detected = 0
        self.errors = {}

    def error(self, op, e):
        name = type(e).__name__
        self.errors[name] = self.errors.get(name, 0) + 1
        if isinstance(e, CorruptSegmentError):
            self.detected += 1


def _allowed(op, e):
    if isinstance(e, CacheError):
        return True
    t = type(e)
    if op in ("inc", "dec") and t in (TypeError, OverflowError):
        return True
    if op == "cas" and t is TypeError:
        return True
    if op == "getitem" and t is KeyError:
        return True
    return False


def _check_fetch(ctx, v, key, got, how):
    """A hit must be exactly what is stored under key (a miss is fine)."""
    want = ctx.expected.get(key, None) if key in ctx.expected else _NEVER
    if want is UNKNOWN:
        return
    if want is not _NEVER and _same(got, want):
        return
    if any(_same(got, old) for old in ctx.history.get(key, ())):
        # A value once stored under this key, since replaced or deleted:
        # damage linked an old entry back in.  Counted apart: no checksum
        # can tell it from the current one.
        v.stale.append(f"{how}({key!r}) returned an older value {_short(got)}")
    elif want is _NEVER:
        v.wrong.append(f"{how}({key!r}) returned {_short(got)} for a key that holds nothing")
    else:
        v.wrong.append(f"{how}({key!r}) returned {_short(got)}, stored {_short(want)}")


_NEVER = object()
_MISS = object()


def _short(x):
    r = repr(x)
    return r if len(r) < 80 else r[:60] + f"... ({len(r)} chars)"


def _keys(ctx, rng):
    known = list(ctx.expected)
    fresh = f"new{rng.randrange(1000)}"
    return rng.choice(known) if known and rng.random() < 0.8 else fresh


def use(ctx, rng, v, nops=40):
    c = ctx.c
    ops = ["fetch"] * 10 + ["store"] * 5 + ["delete", "add", "inc", "inc", "cas", "exists",
           "entry", "fetch_many", "store_many", "getitem", "key_info", "len", "keys", "info",
           "sma_info", "check", "big_store", "contains"]
    for _ in range(nops):
        op = rng.choice(ops)
        if rng.random() < 0.01:
            op = "clear"
        k = _keys(ctx, rng)
        try:
            if op == "fetch":
                got = c.fetch(k, _MISS)
                if got is not _MISS:
                    _check_fetch(ctx, v, k, got, "fetch")
            elif op == "getitem":
                try:
                    got = c[k]
                except KeyError:
                    pass
                else:
                    _check_fetch(ctx, v, k, got, "c[key]")
            elif op == "contains":
                k in c
            elif op in ("store", "big_store"):
                val = _value(rng) if op == "store" else rng.randbytes(rng.randrange(50_000, 300_000))
                ctx.attempt(k, val)
                ctx.expected[k] = UNKNOWN
                c.store(k, val)
                ctx.expected[k] = val
            elif op == "add":
                val = _value(rng, big=False)
                before = ctx.expected.get(k, _NEVER)
                ctx.attempt(k, val)
                ctx.expected[k] = UNKNOWN
                if c.add(k, val):
                    ctx.expected[k] = val
                elif before is not _NEVER:
                    ctx.expected[k] = before
                else:
                    ctx.expected[k] = UNKNOWN  # a live entry we never stored?
            elif op == "delete":
                ctx.expected[k] = UNKNOWN
                c.delete(k)
                ctx.expected.pop(k, None)
            elif op in ("inc", "dec"):
                ck = f"ctr{rng.randrange(20)}"
                ctx.expected[ck] = UNKNOWN
                ctx.expected[ck] = c.inc(ck, rng.randrange(-5, 6))
            elif op == "cas":
                ck = f"ctr{rng.randrange(20)}"
                old = ctx.expected.get(ck)
                if isinstance(old, int) and not isinstance(old, bool):
                    ctx.expected[ck] = UNKNOWN
                    if c.cas(ck, old, old + 1):
                        ctx.expected[ck] = old + 1
                    else:
                        ctx.expected[ck] = old  # a miss or a mismatch: unchanged
                        got = c.fetch(ck, _MISS)
                        if got is not _MISS:
                            _check_fetch(ctx, v, ck, got, "fetch after cas")
                        ctx.expected[ck] = UNKNOWN
            elif op == "exists":
                c.exists(k)
            elif op == "entry":
                before = ctx.expected.get(k, _NEVER)
                made = _value(rng, big=False)
                ctx.attempt(k, made)
                ctx.expected[k] = UNKNOWN
                got = c.entry(k, lambda key: made)
                if not _same(got, made):
                    ctx.expected[k] = before
                    if before is _NEVER:
                        del ctx.expected[k]
                    _check_fetch(ctx, v, k, got, "entry")
                ctx.expected[k] = got
            elif op == "fetch_many":
                ks = [_keys(ctx, rng) for _ in range(rng.randrange(1, 6))]
                for kk, got in c.fetch_many(ks).items():
                    _check_fetch(ctx, v, kk, got, "fetch_many")
            elif op == "store_many":
                m = {_keys(ctx, rng): _value(rng, big=False) for _ in range(rng.randrange(1, 5))}
                for kk, val in m.items():
                    ctx.attempt(kk, val)
                    ctx.expected[kk] = UNKNOWN
                failed = c.store_many(m)
                for kk, val in m.items():
                    if kk not in failed:
                        ctx.expected[kk] = val
            elif op == "key_info":
                c.key_info(k)
            elif op == "len":
                len(c)
            elif op == "keys":
                list(c.keys())
            elif op == "info":
                c.info()
            elif op == "sma_info":
                c.sma_info()
            elif op == "check":
                c.check()
            elif op == "clear":
                for kk in list(ctx.expected):
                    ctx.expected[kk] = UNKNOWN
                c.clear()
                ctx.expected.clear()
        except Exception as e:  # noqa: BLE001 - classifying is the point
            v.error(op, e)
            if not _allowed(op, e):
                tb = traceback.format_exception(type(e), e, e.__traceback__)
                v.undocumented.append(f"{op}({k!r}): {type(e).__name__}: {e}\n{''.join(tb[-3:])}")


def child_run(name, seed, checksums, note=None):
    """The body of one run (in the child); returns its result dict.
    note(dict) is told what was damaged before the segment is used."""
    rng = random.Random(seed)
    kw = {"size": SIZE, "reserve": False}
    if checksums:
        kw["checksums"] = True
    if HAS_LOCK_TIMEOUT:
        kw["lock_timeout"] = LOCK_TIMEOUT
    c = apccache.Cache.create(name, **kw)
    ctx = populate(c, rng)
    done = corrupt(ctx, rng)
    if note:
        note({"corruptions": done})
    v = Verdict()
    use(ctx, rng, v)
    final = None
    noticed = v.detected
    try:
        i = c.info(limited=True)
        noticed += i["repairs"] + i.get("corrupt_reads", 0)
    except Exception as e:  # noqa: BLE001
        v.error("final info", e)
        if not _allowed("info", e):
            v.undocumented.append(f"final info: {type(e).__name__}: {e}")
    problems = []
    try:
        problems = c.check()
        final = len(problems)
    except Exception as e:  # noqa: BLE001
        v.error("final check", e)
        if not _allowed("check", e):
            v.undocumented.append(f"final check: {type(e).__name__}: {e}")
    # Then have the next writer repair (as a reader that met a broken
    # claim would): what does check() say after that?
    after_repair = None
    try:
        _U64.pack_into(ctx.mv, off("hdr.repair_due"), 1)
        c.store("after-repair", b"x")
        after_repair = [p[:200] for p in c.check()[:3]]
    except Exception as e:  # noqa: BLE001
        v.error("repair", e)
        # With one process, nobody holds the lock: a writer refused now is
        # refused for good.
        after_repair = [f"the next writer failed: {type(e).__name__}: {e}"]
        if not _allowed("store", e):
            v.undocumented.append(f"store after repair_due: {type(e).__name__}: {e}")
    return {
        "after_repair": after_repair,
        "seed": seed, "checksums": checksums, "corruptions": done, "undocumented": v.undocumented,
        "wrong": v.wrong, "stale": v.stale, "detected": v.detected, "noticed": noticed, "errors": v.errors, "final_check": final,
        "final_problems": [p[:200] for p in problems[:3]],
    }


# ------------------------------------------------------------ the parent

def _send(wfd, obj):
    data = json.dumps(obj).encode()[:60000] + b"\n"
    while data:
        n = os.write(wfd, data)
        data = data[n:]


def _child(name, seed, checksums, wfd, timeout):
    code = 0
    import faulthandler

    # Where a hung run was: its stacks, just before the parent kills it.
    faulthandler.dump_traceback_later(max(0.5, timeout - 1.0), file=wfd)
    try:
        res = child_run(name, seed, checksums, note=lambda d: _send(wfd, d))
    except BaseException as e:  # noqa: BLE001 - setting up or corrupting failed
        res = {"seed": seed, "checksums": checksums, "harness_error":
               "".join(traceback.format_exception(type(e), e, e.__traceback__))[-2000:]}
        code = 3
    try:
        faulthandler.cancel_dump_traceback_later()
        _send(wfd, res)
    finally:
        os._exit(code)


def _parse(chunks, base):
    """Merge the child's JSON lines into base; keep other text (a stack
    dump) as "stacks"."""
    other = []
    for line in b"".join(chunks).decode(errors="replace").splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            other.append(line)
            continue
        if isinstance(d, dict):
            base.update(d)
    if other:
        base["stacks"] = "\n".join(other)[-3000:]
    return base


def classify(res):
    if "signal" in res:
        return "signal"
    if res.get("hang"):
        return "hang"
    if "harness_error" in res:
        return "harness error"
    if res["undocumented"]:
        return "undocumented"
    if res["wrong"]:
        return "wrong"
    if res.get("stale"):
        return "stale"
    return "ok"


def run_seeds(seeds, checksums_of=lambda seed: seed % 2 == 1, jobs=2, timeout=15.0,
              env_note=None, progress=None):
    """Run each seed in a forked child, jobs at a time; a list of result
    dicts (with "signal" or "hang" added by the parent)."""
    seeds = list(seeds)
    todo = list(reversed(seeds))
    running = {}  # pid -> (seed, name, rfd, start, checksums, chunks)
    results = []
    while todo or running:
        while todo and len(running) < jobs:
            seed = todo.pop()
            cs = bool(checksums_of(seed)) and HAS_CHECKSUMS
            name = f"apcfuzz-{os.getpid()}-{seed}"
            rfd, wfd = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(rfd)
                _child(name, seed, cs, wfd, timeout)
            os.close(wfd)
            os.set_blocking(rfd, False)
            running[pid] = [seed, name, rfd, time.monotonic(), cs, []]
        time.sleep(0.002)
        for pid, st in list(running.items()):
            seed, name, rfd, start, cs, chunks = st
            try:
                while True:
                    b = os.read(rfd, 65536)
                    if not b:
                        break
                    chunks.append(b)
            except BlockingIOError:
                pass
            wpid, status = os.waitpid(pid, os.WNOHANG)
            res = None
            if wpid == 0:
                if time.monotonic() - start > timeout:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    res = {"seed": seed, "checksums": cs, "hang": True}
                    try:
                        while True:
                            b = os.read(rfd, 65536)
                            if not b:
                                break
                            chunks.append(b)
                    except BlockingIOError:
                        pass
                    res = _parse(chunks, res)
                else:
                    continue
            else:
                try:
                    while True:
                        b = os.read(rfd, 65536)
                        if not b:
                            break
                        chunks.append(b)
                except BlockingIOError:
                    pass
                res = _parse(chunks, {"seed": seed, "checksums": cs})
                if os.WIFSIGNALED(status):
                    res["signal"] = signal.Signals(os.WTERMSIG(status)).name
                elif "undocumented" not in res and "harness_error" not in res:
                    res["harness_error"] = f"no result (exit {os.WEXITSTATUS(status)})"
            os.close(rfd)
            del running[pid]
            try:
                os.unlink(f"/dev/shm/{name}")
            except FileNotFoundError:
                pass
            res["outcome"] = classify(res)
            res["seconds"] = round(time.monotonic() - start, 3)
            results.append(res)
            if progress:
                progress(res)
    return results
