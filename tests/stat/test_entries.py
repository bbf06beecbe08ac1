"""apcstat NAME entries: every sort, --reverse, --filter, --limit, --deleted
and --files, checked against the order Cache.info()'s records imply."""
import json
import re

import pytest

from stat_support import ENTRIES, apcstat, run_main

ORDER = {
    "key": lambda e: (e["key"],),
    "hits": lambda e: (-e["hits"], e["key"]),
    "size": lambda e: (-e["mem_size"], e["key"]),
    "atime": lambda e: (-e["access_time"], e["key"]),
    "mtime": lambda e: (-e["mtime"], e["key"]),
    "ctime": lambda e: (-e["creation_time"], e["key"]),
    "ttl": lambda e: (e["ttl"] == 0, e["creation_time"] + e["ttl"], e["key"]),
}


def keys_of(out):
    return [e["key"] for e in json.loads(out)["entries"]]


def test_every_sort_and_its_reverse_orders_entries_as_the_records_say(populated):
    records = populated.info()["entries"]
    seen = set()
    for sort, order in ORDER.items():
        expected = [e["key"] for e in sorted(records, key=order)]
        seen.add(tuple(expected))
        rc, out, err = run_main([populated.name, "entries", "--sort", sort, "--json"])
        assert rc == 0, err
        assert keys_of(out) == expected, sort
        rc, out, err = run_main([populated.name, "entries", "--sort", sort, "--reverse", "--json"])
        assert keys_of(out) == expected[::-1], sort
    assert len(seen) >= 6  # the data tells the sorts apart
    # the default is by hits
    assert keys_of(run_main([populated.name, "entries", "--json"])[1]) == \
        [e["key"] for e in sorted(records, key=ORDER["hits"])]
    # and the subprocess agrees
    assert keys_of(apcstat(populated.name, "entries", "--sort", "ttl", "--json").stdout) == \
        [e["key"] for e in sorted(records, key=ORDER["ttl"])]


def test_entry_rows_carry_exact_values(populated):
    rows = {e["key"]: e for e in json.loads(run_main([populated.name, "entries", "--json"])[1])["entries"]}
    for rec in populated.info()["entries"]:
        row = rows[rec["key"]]
        assert (row["hits"], row["size"], row["created"], row["modified"], row["accessed"], row["ttl"]) == (
            rec["hits"], rec["mem_size"], rec["creation_time"], rec["mtime"], rec["access_time"], rec["ttl"])
        assert row["expires"] == (rec["creation_time"] + rec["ttl"] if rec["ttl"] else None)
        assert row["deleted"] is None and row["refs"] == 0
    assert {k: rows[k]["type"] for k in rows} == {
        "alpha": "bytes", "beta": "str", "gamma": "int", "delta": "bytes", "epsilon": "serialized", "zeta": "float"}
    assert rows["beta"]["value_size"] == 500 and rows["gamma"]["value_size"] == 8


def test_filter_and_limit(populated):
    out = run_main([populated.name, "entries", "--filter", "^(a|e)", "--sort", "key", "--json"])[1]
    obj = json.loads(out)
    assert keys_of(out) == ["alpha", "epsilon"] and obj["total"] == 2 and obj["filter"] == "^(a|e)"
    out = run_main([populated.name, "entries", "--filter", "ta$", "--sort", "size", "--json"])[1]
    assert keys_of(out) == ["delta", "beta", "zeta"]
    out = run_main([populated.name, "entries", "--limit", "2", "--json"])[1]
    assert keys_of(out) == ["alpha", "beta"] and json.loads(out)["total"] == 6
    rc, out, _ = run_main([populated.name, "entries", "--filter", "^no-such-key$"])
    assert rc == 0 and "no entries match '^no-such-key$'" in out
    r = apcstat(populated.name, "entries", "--filter", "^(b|g)", "--limit", "1", "--sort", "key")
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "1 of 2 entries, by key (A to Z); --limit 0 shows all"


def test_the_human_table_has_human_sizes_and_relative_times(populated):
    r = apcstat(populated.name, "entries", "--sort", "key")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert re.match(r"^Key\s+Type\s+Hits\s+Size\s+Accessed\s+Modified\s+Created\s+Expires$", lines[0])
    body = {ln.split()[0]: ln for ln in lines[2:2 + len(ENTRIES)]}
    assert list(body) == sorted(e[0] for e in ENTRIES)
    # A block: an 8-byte header, the 48-byte slot, an int's 8-byte value
    # word, the key and the value, rounded up to 8.
    assert re.search(r"^alpha\s+bytes\s+5\s+72 B\s+\d+ min ago\s+10 min ago\s+10 min ago\s+never$", body["alpha"])
    assert re.search(r"^delta\s+bytes\s+2\s+3\.0 KiB\s+.*ago\s+in (20|19) min$", body["delta"])
    assert re.search(r"^gamma\s+int\s+1\s+72 B\s+.*in 1 h$", body["gamma"])
    assert lines[-1] == "6 of 6 entries, by key (A to Z)"
    r = apcstat(populated.name, "entries", "--limit", "1", "--sort", "ttl", "--reverse")
    assert r.stdout.splitlines()[-1] == "1 of 6 entries, by ttl (soonest expiry first, reversed); --limit 0 shows all"


def test_human_output_shows_at_most_100_entries_unless_told(segments):
    c = segments(size=2 << 20)
    assert c.store_many({f"k{i:03d}": i for i in range(130)}) == []
    assert run_main([c.name, "entries"])[1].splitlines()[-1].startswith("100 of 130 entries")
    assert run_main([c.name, "entries", "--limit", "0"])[1].splitlines()[-1].startswith("130 of 130 entries")
    assert len(keys_of(run_main([c.name, "entries", "--json"])[1])) == 130


def test_deleted_shows_the_gc_list(populated):
    rc, out, _ = run_main([populated.name, "entries", "--deleted"])
    assert rc == 0 and "no deleted entries on the GC list" in out
    obj = json.loads(run_main([populated.name, "entries", "--deleted", "--json"])[1])
    assert obj["deleted"] is True and obj["entries"] == [] and obj["total"] == 0


def test_expired_entries_are_not_listed(segments):
    c = segments(size=1 << 20)
    c.store("fresh", 1)
    c.store("stale", 2, ttl=1)
    # make "stale" expire without waiting: its ctime is far in the past
    (off,) = [r[9] for r, k in c.records() if k == b"stale"]
    from apccache import _bindings as B
    at = off + B.lib.apc_layout_offset(b"slot.ctime")
    c._mv[at:at + 4] = (1000).to_bytes(4, "little")  # apc_slot.ctime (32 bits)
    assert keys_of(run_main([c.name, "entries", "--json"])[1]) == ["fresh"]
    assert json.loads(run_main([c.name, "--json"])[1])["user"]["expired_entries"] == 1


def test_files_lists_the_file_cache(populated):
    populated.file_table.put(b"/srv/app/models.py", b"x" * 100)
    populated.file_table.put(b"\xff\xfe not utf-8", b"y")
    obj = json.loads(run_main([populated.name, "entries", "--files", "--sort", "key", "--json"])[1])
    assert obj["table"] == "files"
    assert [e["key"] for e in obj["entries"]] == ["/srv/app/models.py", "\\xff\\xfe not utf-8"]
    assert obj["entries"][1]["key_hex"] == b"\xff\xfe not utf-8".hex()
    assert "/srv/app/models.py" in apcstat(populated.name, "entries", "--files").stdout


@pytest.mark.parametrize("sort", sorted(ORDER))
def test_each_sort_works_in_human_mode_too(populated, sort):
    records = populated.info()["entries"]
    expected = [e["key"] for e in sorted(records, key=ORDER[sort])]
    rc, out, _ = run_main([populated.name, "entries", "--sort", sort])
    assert rc == 0
    lines = out.splitlines()
    assert [ln.split()[0] for ln in lines[2:2 + len(expected)]] == expected


def test_deleted_lists_an_entry_a_reader_still_holds(segments):
    """An entry deleted while pinned waits on the GC list; --deleted and the summary show it."""
    import struct

    c = segments(size=1 << 20)
    c.store("held", b"x" * 100)
    c.store("other", 1)
    (off,) = [r[9] for r, k in c.records() if k == b"held"]
    from apccache._bindings import LAYOUT

    pin_off = off + LAYOUT["slot_pin_off"]
    pin = struct.unpack_from("<Q", c._mv, pin_off)[0]  # apc_slot.pin: tag | version | refs
    struct.pack_into("<Q", c._mv, pin_off, pin + 1)  # as if a reader held it
    assert c.delete("held")
    (gone,) = c.info()["deleted_list"]
    obj = json.loads(run_main([c.name, "entries", "--deleted", "--json"])[1])
    (row,) = obj["entries"]
    assert (row["key"], row["refs"], row["deleted"], row["size"]) == ("held", 1, gone["deletion_time"],
                                                                       gone["mem_size"])
    assert keys_of(run_main([c.name, "entries", "--json"])[1]) == ["other"]
    rc, out, _ = run_main([c.name, "entries", "--deleted"])
    assert re.search(r"^held\s+bytes\s+0\s+160 B\s+.*\s+1$", out, re.M)
    assert out.splitlines()[0].split()[-2:] == ["Deleted", "Refs"]
    st = json.loads(run_main([c.name, "--json"])[1])
    assert st["user"]["gc"] == {"entries": 1, "memory": gone["mem_size"], "oldest_deletion": gone["deletion_time"]}
    assert re.search(r"^  GC list:\s+1 entry \(160 B\), oldest deleted (now|\d+ s ago)$", run_main([c.name])[1], re.M)
