"""Errors in words with exit 1 (no such segment, permission denied,
incompatible layout), clear/delete confirmation and ownership, and --list."""
import json
import os
import struct

import pytest

import apccache
from apccache import _bindings as B
from apccache.stat.render import human_size
from stat_support import apcstat, run_main

NOBODY = 65534


def as_nobody(args):
    """Run main(args) in a forked child with uid/gid nobody: (status, stdout, stderr)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to another user")
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 99
        try:
            os.close(out_r)
            os.close(err_r)
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            import sys

            sys.stdout = os.fdopen(out_w, "w")
            sys.stderr = os.fdopen(err_w, "w")
            import apccache.stat

            code = apccache.stat.main(args)
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(out_w)
    os.close(err_w)
    with os.fdopen(out_r) as f:
        out = f.read()
    with os.fdopen(err_r) as f:
        err = f.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out, err


def test_no_such_segment_lists_the_ones_that_exist(segments):
    c = segments(size=1 << 20)
    r = apcstat("apctest-stat-missing")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("apcstat: no segment named 'apctest-stat-missing'; the apccache segments on this "
                               "host are: ")
    assert c.name in r.stderr


def test_permission_denied_says_whose_it_is(populated):
    rc, out, err = as_nobody([populated.name])
    assert rc == 1, err
    assert f"apcstat: permission denied opening segment '{populated.name}': it belongs to " in err
    assert "mode 0600; run apcstat as its owner (or root)" in err
    # listing cannot read it either, and says so instead of guessing
    rc, out, err = as_nobody(["--list", "--json"])
    obj = json.loads(out)
    assert rc == 0 and obj["unreadable"] >= 1
    assert populated.name not in [s["name"] for s in obj["segments"]]


def test_an_incompatible_layout_names_the_version_that_made_it(segments):
    c = segments(size=1 << 20)
    c._mv[8:12] = struct.pack("<I", 999)
    r = apcstat(c.name)
    assert r.returncode == 1
    assert f"apcstat: segment '{c.name}' has layout version 999" in r.stderr
    assert f"this apccache reads version {B.FORMAT}" in r.stderr
    (seg,) = [s for s in json.loads(run_main(["--list", "--json"])[1])["segments"] if s["name"] == c.name]
    assert seg["layout_version"] == 999 and seg["entries"] is None
    c._mv[8:12] = struct.pack("<I", B.FORMAT)


def test_a_foreign_file_is_not_an_apccache_segment(raw_path):
    path = raw_path()
    with open(path, "wb") as f:
        f.write(b"NOTAPC!!" + bytes(8192))
    name = os.path.basename(path)
    rc, _, err = run_main([name])
    assert rc == 1 and f"segment '{name}' is not an apccache segment (bad magic)" in err
    assert name not in [s["name"] for s in json.loads(run_main(["--list", "--json"])[1])["segments"]]


def test_clear_needs_yes_and_then_clears(populated):
    rc, _, err = run_main([populated.name, "clear"])
    assert rc == 2 and "add --yes to confirm" in err
    assert len(populated) == 6
    r = apcstat(populated.name, "clear", "--yes")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"cleared '{populated.name}': removed 6 entries (the file cache keeps its entries)\n"
    assert len(populated) == 0 and populated.info(limited=True)["num_hits"] == 0


def test_delete_needs_yes_and_reports_a_missing_key(populated):
    rc, _, err = run_main([populated.name, "delete", "alpha"])
    assert rc == 2 and "add --yes to confirm" in err and populated.exists("alpha")
    rc, out, _ = run_main([populated.name, "delete", "alpha", "--yes"])
    assert rc == 0 and out == f"deleted 'alpha' from '{populated.name}'\n" and not populated.exists("alpha")
    rc, _, err = run_main([populated.name, "delete", "alpha", "--yes"])
    assert rc == 1 and f"no live entry under 'alpha' in '{populated.name}'" in err
    rc, out, _ = run_main([populated.name, "delete", "beta", "--yes", "--json"])
    assert rc == 0 and json.loads(out) == {"apcstat": 1, "segment": populated.name, "key": "beta", "deleted": True}


def test_clear_and_delete_are_refused_on_a_segment_of_another_user(populated):
    if os.geteuid() != 0:
        pytest.skip("needs root to give the segment away")
    path = f"/dev/shm/{populated.name}"
    os.chown(path, NOBODY, NOBODY)
    try:
        for args in (["clear", "--yes"], ["delete", "alpha", "--yes"]):
            rc, _, err = run_main([populated.name, *args])
            assert rc == 1
            assert f"refusing to {'clear' if args[0] == 'clear' else 'delete from'} segment '{populated.name}': it " \
                   f"belongs to " in err and "run apcstat as its owner" in err
        assert len(populated) == 6
    finally:
        os.chown(path, 0, 0)


def test_list_reads_headers_without_attaching(populated, segments, monkeypatch):
    other = segments(size=3 << 20)
    monkeypatch.setattr(apccache.Cache, "attach", None)  # listing must not need it
    rc, out, _ = run_main(["--list", "--json"])
    assert rc == 0
    segs = {s["name"]: s for s in json.loads(out)["segments"]}
    for c in (populated, other):
        info, sma = c.info(limited=True), c.sma_info(limited=True)
        s = segs[c.name]
        assert (s["size"], s["entries"], s["memory_free"], s["layout_version"], s["created"], s["creator_pid"]) == (
            info["seg_size"], info["num_entries"], sma["avail_mem"], B.FORMAT, info["create_time"], os.getpid())
        assert s["owner_uid"] == os.geteuid() and s["mode"] == "0600" and s["creator_alive"] is True
    rc, out, _ = run_main(["--list"])
    assert rc == 0 and out.splitlines()[0].split() == ["Name", "Size", "Free", "Entries", "Owner", "Layout", "Age"]
    (row,) = [ln.split() for ln in out.splitlines() if ln.startswith(populated.name + " ")]
    free = human_size(populated.sma_info()["avail_mem"]).split()
    assert row[1:6] == ["2.0", "MiB", *free, "6"] and row[7] == str(B.FORMAT) and row[8:] == ["10", "min"]
