"""Reading is read-only: 100 runs of apcstat leave the counters and every
byte of the segment as they were, and apcstat's exit never removes it."""
import os

from stat_support import apcstat, run_main

COMMANDS = [
    [],
    ["--json"],
    ["--prometheus"],
    ["entries"],
    ["entries", "--sort", "key", "--json"],
    ["entries", "--sort", "size", "--reverse"],
    ["entries", "--sort", "atime", "--filter", "a"],
    ["entries", "--sort", "mtime", "--limit", "2"],
    ["entries", "--sort", "ctime", "--json"],
    ["entries", "--sort", "ttl"],
    ["entries", "--deleted"],
    ["entries", "--files", "--json"],
    ["check"],
    ["check", "--json", "--warn-hit-rate", "99"],
    ["watch", "--lines", "--count", "2", "-i", "0.01"],
    ["watch", "--json", "--count", "1", "-i", "0.01"],
]


def counters(c):
    i = c.info(limited=True)
    return {k: i[k] for k in ("num_hits", "num_misses", "num_inserts", "num_entries", "expunges", "evictions",
                              "expired", "mem_size", "gc_entries", "start_time")}


def test_100_runs_change_no_counter_and_no_byte(populated):
    populated.file_table.put(b"/srv/app/views.py", b"code")
    populated.file_table.get(b"/srv/app/views.py")
    before_counters = counters(populated)
    before_files = populated.file_table.info()
    before_bytes = bytes(populated._mv)
    before_keys = {k: populated.key_info(k) for k in populated.keys()}
    runs = 0
    for i in range(100):
        args = [populated.name, *COMMANDS[i % len(COMMANDS)]] if i % 25 else ["--list"]
        rc, _, err = run_main(args)
        assert rc in (0, 1), (args, err)  # check with a 99% threshold warns (1)
        runs += 1
    for args in ([], ["--json"], ["entries"], ["check"]):
        r = apcstat(populated.name, *args)
        assert r.returncode == 0, r.stderr
        runs += 1
    assert runs == 104
    assert counters(populated) == before_counters
    assert populated.file_table.info() == before_files
    assert {k: populated.key_info(k) for k in populated.keys()} == before_keys
    after = bytes(populated._mv)
    if after != before_bytes:
        diff = [i for i in range(len(after)) if after[i] != before_bytes[i]]
        raise AssertionError(f"{len(diff)} bytes changed, first at offset {diff[0]:#x}")
    assert os.path.exists(f"/dev/shm/{populated.name}")
