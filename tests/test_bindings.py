"""The binding layer (apccache._bindings): one table from every return code
to its exception, engine records as named frozen tuples, a Table per slot
table, and no other module of the package calling the engine."""
import ast
import pathlib

import pytest

import apccache
from apccache import _bindings as B
from apccache.errors import (
    CacheBusyError,
    CacheClosedError,
    CacheError,
    CacheFullError,
    CacheLockError,
    CorruptSegmentError,
    IncompatibleSegmentError,
)

# Every negative code of apc.h and the exception it must be.
EXPECTED = {
    B.E_NOMEM: CacheFullError,
    B.E_TOOBIG: CacheFullError,
    B.E_TYPE: TypeError,
    B.E_OVERFLOW: OverflowError,
    B.E_MAGIC: IncompatibleSegmentError,
    B.E_FORMAT: IncompatibleSegmentError,
    B.E_TRUNCATED: CorruptSegmentError,
    B.E_CORRUPT: CorruptSegmentError,
    B.E_ARG: ValueError,
    B.E_LOCK: CacheLockError,
    B.E_SMALL: CacheError,
    B.E_NOTREADY: IncompatibleSegmentError,
    B.E_SYS: OSError,
    B.E_CLOSED: CacheClosedError,
    B.E_BUSY: CacheBusyError,
}


@pytest.fixture
def table(segments):
    c = segments(size=1 << 20)
    return c._table


def test_the_table_has_every_error_code_of_the_engine():
    codes = {getattr(B.lib, n) for n in dir(B.lib) if n.startswith("APC_E_")}
    assert set(B.ERRORS) == codes == set(EXPECTED)
    assert B.RC_ERRORS == EXPECTED


@pytest.mark.parametrize("rc", sorted(EXPECTED), ids=lambda rc: B.strerror(rc))
@pytest.mark.parametrize("op, key", [("delete", b"some-key"), ("store", "a str key"), ("inc", b"counter")])
def test_every_code_raises_its_exception_naming_the_operation_and_the_key(table, rc, op, key):
    e = table.error(op, rc, key, nbytes=100, step=3)
    assert type(e) is EXPECTED[rc]
    assert op in str(e) and repr(key) in str(e), str(e)


def test_a_code_without_a_key_names_the_operation(table):
    for rc in EXPECTED:
        e = B.error(rc, "clear")
        assert isinstance(e, EXPECTED[rc]) and "clear" in str(e), str(e)


def test_an_unknown_code_is_a_cache_error_with_the_engine_words():
    e = B.error(-99, "fetch", b"k")
    assert type(e) is CacheError and str(e).startswith("fetch b'k': ")


def test_what_the_special_codes_say(table):
    assert "can never fit" in str(table.error("store", B.E_TOOBIG, b"k", 1 << 30))
    assert "under 4 GiB" in str(table.error("store", B.E_TOOBIG, b"k", 1 << 32))
    full = str(table.error("add", B.E_NOMEM, b"k", 2048))
    assert "no room for a 2.0 KiB entry" in full and table.segment.name in full
    assert "not an int" in str(table.error("dec", B.E_TYPE, "n"))
    assert "by 7 leaves the int64 range" in str(table.error("inc", B.E_OVERFLOW, "n", step=7))
    busy = table.error("store", B.E_BUSY, b"k")
    assert isinstance(busy, TimeoutError) and "lock timeout" in str(busy) and busy.pid >= 0
    assert "operation on a closed cache" in str(table.error("fetch", B.E_CLOSED, b"k"))


def test_a_bad_key_behind_an_arg_error_says_what_is_wrong_with_it(table):
    with pytest.raises(ValueError, match="the limit is"):
        raise table.error("store", B.E_ARG, b"x" * (B.MAX_KEY + 1))
    with pytest.raises(TypeError, match="key must be str or bytes"):
        raise table.error("fetch", B.E_ARG, 42)


def test_the_attach_codes_name_the_segment():
    seg = B._Named("mine", 4096)
    assert "'mine' is not an apccache segment" in str(B.error(B.E_MAGIC, "attach", segment=seg))
    assert "layout version 7" in str(B.error(B.E_FORMAT, "attach", segment=seg, fmt=7))
    assert "shorter (4096 bytes)" in str(B.error(B.E_TRUNCATED, "attach", segment=seg))
    assert "never finished" in str(B.error(B.E_NOTREADY, "attach", segment=seg))


def test_the_cache_raises_through_the_table(segments):
    c = segments(size=1 << 20)
    c.store("s", "text")
    with pytest.raises(TypeError, match="cannot inc key b?'s'"):
        c.inc("s")
    with pytest.raises(TypeError, match="cannot (dec|inc) key b?'s'"):
        c.dec("s")
    with pytest.raises(CacheFullError, match=r"store b?'big'.*can never fit"):
        c.store("big", b"x" * (2 << 20))
    c.close()
    with pytest.raises(CacheClosedError, match="delete b'k': operation on a closed cache"):
        c._table.delete(b"k")


# ------------------------------------------------------------------ records


def _assert_frozen_and_named(rec, fields):
    assert type(rec)._fields == fields
    assert tuple(getattr(rec, f) for f in fields) == tuple(rec)
    with pytest.raises(AttributeError):
        setattr(rec, fields[0], 1)


def test_records_are_named_and_frozen(segments):
    c = segments(size=1 << 20)
    c.store("k", b"v" * 10, ttl=50)
    c.fetch("k")
    ((rec, key),) = c.records()
    assert key == b"k"
    _assert_frozen_and_named(rec, B.EntryRecord._fields)
    assert (rec.type, rec.val_len, rec.ttl, rec.hits, rec.key_len) == (B.T_BYTES, 10, 50, 1, 1)
    assert rec.flags == 0 and rec[9] == rec.offset  # still indexes like the tuple it replaces
    info = c._table.key_info(b"k")
    assert type(info) is B.EntryRecord and info.hits == 1 and info.ttl == 50
    ti = c._table.info()
    _assert_frozen_and_named(ti, B.TableInfo._fields)
    assert ti.num_entries == 1 and ti.format == B.FORMAT
    sma = c._segment.sma_info()
    _assert_frozen_and_named(sma, B.SmaInfo._fields)
    assert sma.free_blocks and all(len(b) == 2 for b in sma.free_blocks)
    assert c._segment.sma_info(limited=True).free_blocks is None


def test_the_info_record_has_every_field_of_apc_info():
    assert set(B.TableInfo._fields) == set(dir(B.ffi.new("apc_info *")))
    assert set(B.SmaInfo._fields) - {"free_blocks"} == set(dir(B.ffi.new("apc_sma_info *")))
    assert set(B.EntryRecord._fields) == set(dir(B.ffi.new("apc_entry_rec *")))


def test_deleted_and_expired_records_are_flagged(segments, clock):
    c = segments(size=1 << 20, clock=clock)
    c.store("gone", b"x", ttl=1)
    c.store("kept", b"y")
    clock.advance(5)
    flags = {k: r.flags for r, k in c.records()}
    assert flags[b"gone"] & B.REC_EXPIRED and not flags[b"kept"] & B.REC_EXPIRED


# -------------------------------------------------------------------- tables


def test_the_two_tables_of_a_segment_are_apart(segments):
    c = segments(size=1 << 20)
    user, files = c._segment.table(B.TABLE_USER), c._segment.table(B.TABLE_FILES)
    assert user.store(b"k", B.T_BYTES, b"user", 0, 0) and files.store(b"k", B.T_BYTES, bytearray(b"file"), 0, 0)
    assert user.fetch(b"k") == (B.T_BYTES, b"user") and files.fetch(b"k") == (B.T_BYTES, b"file")
    assert not files.store(b"k", B.T_BYTES, b"again", 0, 0, add=True)
    assert files.delete(b"k") and not files.exists(b"k") and user.exists(b"k")
    assert user.inc(b"n", 5, 0) == 5 and user.cas(b"n", 5, 6) and not user.cas(b"n", 5, 7)
    assert user.fetch(b"n") == (B.T_INT, 6) and user.fetch(b"missing") is None
    assert user.touch(b"n", 10) and not user.touch(b"missing", 10)
    assert files.count_live() == 0 and user.count_live() == 2


def test_read_holds_a_large_value_in_place_and_copies_a_small_one(segments):
    c = segments(size=4 << 20)
    t = c._table
    t.store(b"big", B.T_BYTES, b"x" * (B.IO_BUF + 1), 0, 0)
    t.store(b"small", B.T_STR, b"s", 0, 0)
    tag, n, done = t.read(b"big", len)
    assert (tag, n, done) == (B.T_BYTES, B.IO_BUF + 1, True)
    assert t.read(b"small", len) == (B.T_STR, b"s", False)
    assert t.read(b"none", len) is None
    assert c.info(limited=True)["pins"] == 0


# ------------------------------------------------------- nothing else binds


def test_no_other_module_of_the_package_calls_the_engine():
    root = pathlib.Path(apccache.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if path.name in ("_bindings.py", "_build.py"):
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("_bindings"):
                offenders += [f"{path.name}: imports {a.name}" for a in node.names if a.name in ("lib", "ffi")]
            if isinstance(node, ast.ImportFrom) and (node.module or "").endswith(("_engine", "_engine_debug")):
                offenders.append(f"{path.name}: imports the engine")
            if isinstance(node, ast.Attribute) and node.attr in ("lib", "ffi") and \
                    isinstance(node.value, ast.Name) and node.value.id in ("B", "_bindings"):
                offenders.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
            if isinstance(node, ast.Attribute) and node.attr in ("_seg", "_snapshot", "_fast", "_ser") and \
                    path.name != "cache.py" and not (isinstance(node.value, ast.Name) and node.value.id == "self"):
                offenders.append(f"{path.name}:{node.lineno}: .{node.attr}")
    assert offenders == []
