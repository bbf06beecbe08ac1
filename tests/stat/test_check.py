"""apcstat NAME check: monitoring-plugin exit codes on a sound segment, one
under a threshold, one deliberately corrupted, and one that cannot be read."""
import json
import struct

from stat_support import apcstat, run_main


def test_a_sound_segment_is_ok_with_perfdata(populated):
    r = apcstat(populated.name, "check")
    assert r.returncode == 0, r.stdout + r.stderr
    (line,) = r.stdout.splitlines()
    assert line.startswith(f"APCCACHE OK - '{populated.name}': sound; 6 entries, hit rate 78.6%, ")
    assert line.endswith("| entries=6 hits=11c misses=3c free_bytes=%dB hit_rate=78.6%%"
                         % populated.sma_info()["avail_mem"])
    obj = json.loads(apcstat(populated.name, "check", "--json").stdout)
    assert (obj["status"], obj["code"], obj["problems"], obj["warnings"]) == ("OK", 0, [], [])
    assert obj["entries"] == 6 and obj["hit_rate"] == round(11 / 14, 6)


def test_thresholds_give_warning(populated):
    rc, out, _ = run_main([populated.name, "check", "--warn-hit-rate", "80"])
    assert rc == 1 and out.startswith("APCCACHE WARNING - ") and "hit rate 78.6% is below 80%" in out
    assert run_main([populated.name, "check", "--warn-hit-rate", "78"])[0] == 0
    # too few requests to judge
    assert run_main([populated.name, "check", "--warn-hit-rate", "80", "--min-requests", "15"])[0] == 0
    rc, out, _ = run_main([populated.name, "check", "--warn-free", "99.9"])
    assert rc == 1 and "of the arena is free, below 99.9%" in out
    assert run_main([populated.name, "check", "--warn-free", "50"])[0] == 0
    obj = json.loads(run_main([populated.name, "check", "--warn-free", "99.9", "--json"])[1])
    assert obj["status"] == "WARNING" and obj["code"] == 1 and len(obj["warnings"]) == 1


def test_a_corrupted_block_tag_is_critical_and_named(segments):
    c = segments(size=1 << 20)
    for i in range(20):
        c.store(f"k{i}", b"v" * 50)
    off = [r[9] for r, _ in c.records()][3]
    c._mv[off - 8:off] = struct.pack("<Q", 0xDEADBEEF0)  # the slot's block tag (size word)
    assert c.check()  # the engine sees it too
    r = apcstat(c.name, "check")
    assert r.returncode == 2, r.stdout + r.stderr
    first, *rest = r.stdout.splitlines()
    assert first.startswith(f"APCCACHE CRITICAL - '{c.name}': ")
    assert "broken invariant" in first
    obj = json.loads(apcstat(c.name, "check", "--json").stdout)
    assert obj["status"] == "CRITICAL" and obj["code"] == 2 and obj["problems"] == c.check()
    # the other commands refuse in words rather than crash
    for args in ([c.name], [c.name, "entries"], [c.name, "--json"]):
        rc, out, err = run_main(args)
        assert "Traceback" not in err
        assert rc in (0, 1)


def test_a_segment_that_cannot_be_attached_is_unknown(raw_path):
    r = apcstat("apctest-stat-no-such-segment", "check")
    assert r.returncode == 3
    assert r.stdout.startswith("APCCACHE UNKNOWN - no segment named 'apctest-stat-no-such-segment'")
    path = raw_path()
    with open(path, "wb") as f:
        f.write(b"NOTAPC!!" + bytes(4096))
    rc, out, _ = run_main([path.rsplit("/", 1)[1], "check"])
    assert rc == 3 and "not an apccache segment" in out
