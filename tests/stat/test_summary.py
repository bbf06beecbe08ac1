"""apcstat NAME: the human summary's sections, exact values in --json, and
--prometheus exposition that prometheus_client's parser reads back."""
import json
import os
import re

import pytest
import xxhash
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import apccache.stat
from apccache import _bindings as B
from apccache.metrics import ApcCollector
from stat_support import ENTRIES, MISSES, apcstat

HITS = sum(e[4] for e in ENTRIES)


def sections(text):
    """{title: [lines]} of the human output, in order."""
    out, title = {}, None
    for line in text.splitlines():
        if line and not line.startswith(" "):
            title = line
            out[title] = []
        elif title is not None and line.strip():
            out[title].append(line)
    return out


def expected_chains(cache):
    """Chain lengths computed independently: xxh3 of each key, modulo the slot count."""
    n = cache.info(limited=True)["num_slots"]
    per = {}
    for key in cache.keys():
        b = xxhash.xxh3_64_intdigest(key.encode()) % n
        per[b] = per.get(b, 0) + 1
    longest = max(per.values())
    hist = [sum(1 for v in per.values() if v == k) for k in range(longest + 1)]
    hist[0] = n - len(per)
    return n, longest, hist


def test_the_summary_has_every_section_in_order_with_name_value_lines(populated):
    r = apcstat(populated.name)
    assert r.returncode == 0, r.stderr
    assert "\x1b[" not in r.stdout  # no colour off a terminal
    s = sections(r.stdout)
    assert list(s) == [f"Segment {populated.name}", "User cache", "Top keys by hits", "Slots", "Allocator"]
    seg = "\n".join(s[f"Segment {populated.name}"])
    assert re.search(r"^  Size:\s+2\.0 MiB \(2,097,152 bytes\)$", seg, re.M)
    assert re.search(rf"^  Layout version:\s+{B.FORMAT}$", seg, re.M)
    assert re.search(rf"^  Created:\s+\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d by pid {os.getpid()} \(running\)$", seg, re.M)
    assert re.search(r"^  Uptime:\s+\d+ min \d\d s$", seg, re.M)
    assert re.search(r"^  Owner:\s+\S+, mode 0600$", seg, re.M)
    user = "\n".join(s["User cache"])
    for pattern in (r"Entries:\s+6$", rf"Hits:\s+{HITS}$", rf"Misses:\s+{MISSES}$",
                    rf"Hit rate:\s+{HITS / (HITS + MISSES) * 100:.1f}%$", r"Inserts:\s+6$",
                    r"Memory:\s+\[.*\] \d+\.\d% used$", r"[\d.]+ \S+ used, [\d.]+ \S+ free of [\d.]+ MiB$",
                    r"Rates since start \(\d+ min \d\d s\):\s+[\d.]+ requests/s, [\d.]+ hits/s, [\d.]+ misses/s, "
                    r"[\d.]+ inserts/s$",
                    r"Expunges:\s+0$", r"Evictions:\s+0$", r"Expired removals:\s+0$", r"GC list:\s+0 entries$",
                    r"TTL:\s+none$", r"GC TTL:\s+3600 s$"):
        assert re.search(r"^\s+" + pattern, user, re.M), (pattern, user)
    top = [ln.split() for ln in s["Top keys by hits"][1:]]
    assert [(t[0], t[1]) for t in top] == [("alpha", "5"), ("beta", "3"), ("delta", "2"), ("gamma", "1")]
    n, longest, hist = expected_chains(populated)
    slots = "\n".join(s["Slots"])
    assert re.search(rf"^  Slots:\s+{n:,}$", slots, re.M)
    assert re.search(rf"^  Longest chain:\s+{longest}$", slots, re.M)
    assert re.search(r"^  Entries per slot:\s+0\.01$", slots, re.M)
    rows = [ln.split() for ln in s["Slots"] if re.match(r"^\s+\d+\s+[\d,]+", ln)]
    assert [(int(a), int(b.replace(",", ""))) for a, b, *_ in rows] == list(enumerate(hist))
    alloc = "\n".join(s["Allocator"])
    sma = populated.sma_info()
    assert re.search(rf"^  Largest free block:\s+.* \({sma['largest_free']:,} bytes\)$", alloc, re.M)
    n_free = sma["num_free_blocks"]
    blocks = "block" if n_free == 1 else "blocks"
    assert re.search(rf"^  Free:\s+.* in {n_free} {blocks}$", alloc, re.M)
    assert re.search(r"Free block size\s+Blocks\s+Bytes", alloc)


def test_the_file_cache_section_appears_once_it_is_used(populated):
    populated.file_table.put(b"/srv/app/views.py", b"code object")
    populated.file_table.get(b"/srv/app/views.py")
    s = sections(apcstat(populated.name).stdout)
    assert "File and opcode cache" in s
    body = "\n".join(s["File and opcode cache"])
    assert re.search(r"^  Entries:\s+1$", body, re.M) and re.search(r"^  Hits:\s+1$", body, re.M)
    st = json.loads(apcstat(populated.name, "--json").stdout)
    assert st["files"]["entries"] == 1 and st["files"]["hits"] == 1 and st["files"]["inserts"] == 1
    assert st["files"]["slots"]["longest_chain"] == 1


def test_keys_are_printed_literally_not_as_markup(segments):
    c = segments(size=1 << 20)
    c.store("[bold red]boom[/]", 1)
    c.fetch("[bold red]boom[/]")
    out = apcstat(c.name).stdout
    assert "[bold red]boom[/]" in out
    assert "[bold red]boom[/]" in apcstat(c.name, "entries").stdout


def test_json_is_one_versioned_object_with_exact_values(populated):
    r = apcstat(populated.name, "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    info, sma = populated.info(limited=True), populated.sma_info()
    assert st["apcstat"] == apccache.stat.SCHEMA == 1
    seg = st["segment"]
    assert seg == {**seg, "name": populated.name, "size": 2 << 20, "layout_version": B.FORMAT,
                   "created": info["create_time"], "creator_pid": os.getpid(), "creator_alive": True,
                   "owner_uid": os.geteuid(), "mode": "0600", "path": f"/dev/shm/{populated.name}"}
    u = st["user"]
    assert (u["entries"], u["hits"], u["misses"], u["requests"], u["inserts"]) == (6, HITS, MISSES, HITS + MISSES, 6)
    assert u["hit_rate"] == round(HITS / (HITS + MISSES), 6)
    assert u["memory"] == info["mem_size"] == sum(e["mem_size"] for e in populated.info()["entries"])
    assert (u["expunges"], u["evictions"], u["expired"], u["expired_entries"]) == (0, 0, 0, 0)
    assert u["gc"] == {"entries": 0, "memory": 0, "oldest_deletion": None}
    assert (u["ttl"], u["gc_ttl"], u["start_time"]) == (0, 3600, info["start_time"])
    assert u["since_start"] == st["time"] - info["start_time"]
    assert u["rates"]["hits"] == round(HITS / u["since_start"], 6)
    # A block: an 8-byte header, the 48-byte slot, an int's 8-byte value
    # word, the key and the value, rounded up to 8.
    assert u["top_keys"] == [
        {"key": "alpha", "type": "bytes", "hits": 5, "size": 72},
        {"key": "beta", "type": "str", "hits": 3, "size": 560},
        {"key": "delta", "type": "bytes", "hits": 2, "size": 3064},
        {"key": "gamma", "type": "int", "hits": 1, "size": 72},
    ]
    n, longest, hist = expected_chains(populated)
    assert st["slots"]["count"] == n
    assert st["slots"]["longest_chain"] == longest
    assert [h["slots"] for h in st["slots"]["chain_lengths"]] == hist
    assert st["slots"]["used"] == n - hist[0]
    a = st["allocator"]
    assert (a["arena_size"], a["used"], a["free"], a["largest_free"], a["free_blocks"], a["used_blocks"]) == (
        sma["seg_size"], sma["used_mem"], sma["avail_mem"], sma["largest_free"], sma["num_free_blocks"],
        sma["num_used_blocks"])
    sizes = a["free_block_sizes"]
    assert sum(h["bytes"] for h in sizes) == a["free"]
    assert sum(h["blocks"] for h in sizes) == a["free_blocks"]
    for h in sizes:
        assert h["max"] + 1 == 2 * h["min"] and h["min"] & (h["min"] - 1) == 0
    assert st["files"] is None and st["supervisor"] is None


def test_prometheus_output_parses_and_carries_the_counters(populated):
    r = apcstat(populated.name, "--prometheus")
    assert r.returncode == 0, r.stderr
    fams = {f.name: f for f in text_string_to_metric_families(r.stdout)}
    seg = {"segment": populated.name}
    user = {**seg, "table": "user"}

    def value(name, labels):
        (s,) = [s for f in fams.values() for s in f.samples if s.name == name and s.labels == labels]
        return s.value

    sma = populated.sma_info()
    assert value("apccache_hits_total", user) == HITS
    assert value("apccache_misses_total", user) == MISSES
    assert value("apccache_inserts_total", user) == 6
    assert value("apccache_evictions_total", user) == 0
    assert value("apccache_entries", user) == 6
    assert value("apccache_memory_used_bytes", seg) == sma["used_mem"]
    assert value("apccache_memory_limit_bytes", seg) == sma["seg_size"]
    assert value("apccache_memory_free_bytes", seg) == sma["avail_mem"]
    assert value("apccache_info", {**seg, "layout_version": str(B.FORMAT)}) == 1
    assert fams["apccache_hits"].type == "counter" and fams["apccache_entries"].type == "gauge"
    n, longest, hist = expected_chains(populated)
    assert fams["apccache_chain_length"].type == "histogram"
    assert value("apccache_chain_length_count", seg) == n
    assert value("apccache_chain_length_sum", seg) == 6
    assert value("apccache_chain_length_bucket", {**seg, "le": "0.0"}) == hist[0]
    assert value("apccache_free_block_bytes_sum", seg) == sma["avail_mem"]
    assert all(name.startswith("apccache_") for name in fams)


def test_the_collector_serves_the_same_numbers_and_counts_nothing(populated):
    reg = CollectorRegistry()
    reg.register(ApcCollector(populated))
    before = populated.info(limited=True)
    user = {"segment": populated.name, "table": "user"}
    for _ in range(3):
        assert reg.get_sample_value("apccache_hits_total", user) == HITS
        assert reg.get_sample_value("apccache_entries", user) == 6
    assert reg.get_sample_value("apccache_chain_length_count", {"segment": populated.name}) is None
    detailed = CollectorRegistry()
    detailed.register(ApcCollector(populated, detail=True))
    assert detailed.get_sample_value("apccache_chain_length_count", {"segment": populated.name}) == \
        before["num_slots"]
    after = populated.info(limited=True)
    assert (after["num_hits"], after["num_misses"]) == (before["num_hits"], before["num_misses"])


def test_the_console_script_entry_returns_the_exit_status(populated, capsys):
    assert apccache.stat.main([populated.name, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["user"]["hits"] == HITS
    assert apccache.stat.main([]) == 2
    assert "name a segment, or use --list" in capsys.readouterr().err


def test_help_exits_0_and_names_the_commands(capsys):
    assert apccache.stat.main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("entries", "watch", "check", "clear", "delete", "--list", "--json", "--prometheus"):
        assert cmd in out


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "unrecognized arguments"),
    (["NAME", "bogus"], "invalid choice: 'bogus'"),
    (["NAME", "entries", "--sort", "color"], "invalid choice: 'color'"),
    (["NAME", "entries", "--limit", "-1"], "must be a whole number >= 0"),
    (["NAME", "entries", "--filter", "("], "is not a valid regular expression"),
    (["NAME", "watch", "-i", "0"], "must be between 0.01 and 86400 seconds"),
    (["NAME", "check", "--warn-free", "120"], "must be a percentage from 0 to 100"),
    (["NAME", "entries", "--prometheus"], "--prometheus works with the summary only"),
    (["--list", "NAME"], "--list takes no segment name"),
    (["NAME", "--json", "--prometheus"], "not allowed with argument"),
])
def test_usage_errors_exit_2_with_a_message(args, message, capsys):
    assert apccache.stat.main(args) == 2
    assert message in capsys.readouterr().err
