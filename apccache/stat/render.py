"""The human side of apcstat: rich renderables built from ``collect()`` dicts.

Every section is a bold title followed by aligned ``Name: value`` lines, the
way ``mdb_stat`` and ``memcached-tool`` print, with tables for histograms,
pools, workers and entries.  Anything that came out of the segment (keys,
pool and job names, exit reasons) goes into ``Text`` objects, never into
markup, so a key such as ``"[red]x"`` prints as itself.  Colour is rich's
business: it is used only on a terminal and never when ``NO_COLOR`` is set.
"""
import time

from rich import box
from rich.bar import Bar
from rich.console import Group
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

# Bytes in IEC units ("512 B", "1.5 KiB", "32.0 MiB", None as "-"): the
# package's one size formatter, under the name the screens use.
from .._units import format_size as human_size

__all__ = ["summary", "entries_table", "segment_list", "line_header", "line", "human_size", "ago", "duration"]

BAR_WIDTH = 30
LINE_FIELDS = (
    ("time", 8), ("entries", 9), ("used", 9), ("free", 9), ("hits", 12), ("misses", 10), ("hit%", 6),
    ("req/s", 9), ("hit/s", 9), ("ins/s", 8), ("evict", 7), ("gc", 5), ("workers", 8),
)


# ------------------------------------------------------------ formatting


def _pow2(n):
    """A power of two in whole IEC units: 64 B, 2 KiB, 16 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:g} {unit}"
        n /= 1024


def count(n):
    return "-" if n is None else f"{n:,}"


def pct(x):
    return "-" if x is None else f"{x * 100:.1f}%"


def rate(x):
    return f"{x:,.1f}"


def duration(seconds):
    """A span in words: 42 s, 3 min 12 s, 2 h 05 min, 3 d 4 h."""
    s = int(max(0, seconds))
    if s < 60:
        return f"{max(0.0, seconds):.1f} s" if seconds < 10 and seconds != int(seconds) else f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _short_duration(seconds):
    s = int(max(0, seconds))
    for unit, n in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= n:
            return f"{s // n} {unit}"
    return f"{s} s"


def ago(t, now, short=False):
    """A moment relative to now: "5 s ago", "in 4 min 10 s" ("in 4 min" if
    short), "-" for none."""
    if not t:
        return "-"
    d = now - t
    if abs(d) < 1:
        return "now"
    span = _short_duration if short else duration
    return f"{span(d)} ago" if d > 0 else f"in {span(-d)}"


def stamp(t):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _t(value):
    """A cell as Text, so nothing from the segment is read as markup."""
    return value if isinstance(value, (Text, Group, Table, Bar)) else Text(str(value))


# -------------------------------------------------------------- sections


def _section(title, rows, extra=()):
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column()
    for name, value in rows:
        grid.add_row(Text(f"  {name}:"), _t(value))
    parts = [Text(title, style="bold")]
    if rows:
        parts.append(grid)
    parts.extend(Padding(x, (0, 0, 0, 2), expand=False) for x in extra)
    parts.append(Text(""))
    return Group(*parts)


def _bar(used, total):
    """[████████      ] 41.2% used, as a grid of three cells."""
    g = Table.grid()
    g.add_row(Text("["), Bar(max(total, 1), 0, used, width=BAR_WIDTH, color="cyan", bgcolor="grey23"),
              Text(f"] {pct(used / total if total else 0)} used"))
    return g


def _histogram(headers, rows, largest):
    """A small table whose last column is a bar scaled to the largest row."""
    t = Table(box=None, show_header=True, header_style="bold", pad_edge=False, padding=(0, 2, 0, 0))
    for h in headers:
        t.add_column(h, justify="right", no_wrap=True)
    t.add_column("", no_wrap=True)
    for *cells, value in rows:
        t.add_row(*(_t(c) for c in cells), Bar(max(largest, 1), 0, value, width=BAR_WIDTH // 2 + 10,
                                               color="cyan"))
    return t


def _segment(s):
    creator = f"{s['creator_pid']} ({'running' if s['creator_alive'] else 'gone'})"
    owner = s["owner"] if s["owner"] is not None else (f"uid {s['owner_uid']}" if s["owner_uid"] is not None else "-")
    return _section(f"Segment {s['name']}", [
        ("Size", f"{human_size(s['size'])} ({count(s['size'])} bytes)"),
        ("Layout version", s["layout_version"]),
        ("Created", f"{stamp(s['created'])} by pid {creator}"),
        ("Uptime", duration(s["uptime"])),
        ("Owner", f"{owner}, mode {s['mode']}" if s["mode"] else owner),
        *([("Trust", f"NOT TRUSTED ({s['untrusted_reason']}): shown, but none of its values is loaded, and "
                     "clear and delete are refused")] if s.get("trusted") is False else []),
    ])


def _rates_line(r):
    if r is None:
        return "- (just started)"
    return (f"{rate(r['requests'])} requests/s, {rate(r['hits'])} hits/s, {rate(r['misses'])} misses/s, "
            f"{rate(r['inserts'])} inserts/s")


def _user(st, interval):
    u, a, now = st["user"], st["allocator"], st["time"]
    entries = count(u["entries"])
    if u.get("expired_entries"):
        entries += f" (and {count(u['expired_entries'])} expired, not yet removed)"
    gc = u["gc"]
    gc_text = f"{count(gc['entries'])} {'entry' if gc['entries'] == 1 else 'entries'}"
    if gc["entries"]:
        gc_text += f" ({human_size(gc['memory'])}), oldest deleted {ago(gc['oldest_deletion'], now)}"
    mem = Group(_bar(a["used"], a["arena_size"]),
                Text(f"{human_size(a['used'])} used, {human_size(a['free'])} free of {human_size(a['arena_size'])}"))
    rows = [
        ("Entries", entries),
        ("Memory", mem),
        ("Entry memory", f"{human_size(u['memory'])} ({count(u['memory'])} bytes)"),
        ("Hits", count(u["hits"])),
        ("Misses", count(u["misses"])),
        ("Hit rate", pct(u["hit_rate"]) if u["hit_rate"] is not None else "- (no requests yet)"),
        ("Inserts", count(u["inserts"])),
        (f"Rates since start ({duration(u['since_start'])})", _rates_line(u["rates"])),
    ]
    if interval is not None:
        rows.append((f"Rates over the last {interval['seconds']:.1f} s",
                     _rates_line(interval) + (f", hit rate {pct(interval['hit_rate'])}"
                                              if interval["hit_rate"] is not None else "")))
    rows += [
        ("Expunges", count(u["expunges"])),
        ("Evictions", count(u["evictions"])),
        ("Expired removals", count(u["expired"])),
        ("GC list", gc_text),
        ("TTL", f"{u['ttl']} s" if u["ttl"] else "none"),
        ("GC TTL", f"{u['gc_ttl']} s"),
    ]
    if u["entries_in_progress"]:
        rows.append(("entry() in progress", count(u["entries_in_progress"])))
    if u["pins"]:
        rows.append(("Pinned large values", count(u["pins"])))
    return _section("User cache", rows)


def _slots(sl, title="Slots"):
    rows = [("Slots", count(sl["count"]))]
    extra = []
    if "used" in sl:
        rows += [
            ("Used slots", f"{count(sl['used'])} ({pct(sl['used'] / sl['count'] if sl['count'] else 0)})"),
            ("Entries per slot", f"{sl['load']:.2f}"),
            ("Longest chain", count(sl["longest_chain"])),
        ]
        hist = sl["chain_lengths"]
        largest = max((h["slots"] for h in hist), default=0)
        extra.append(_histogram(["Chain length", "Slots"],
                                [(h["length"], count(h["slots"]), h["slots"]) for h in hist], largest))
    return _section(title, rows, extra)


def _allocator(a):
    rows = [
        ("Arena", f"{human_size(a['arena_size'])} ({count(a['arena_size'])} bytes)"),
        ("Used", f"{human_size(a['used'])} in {_blocks(a['used_blocks'])}"),
        ("Free", f"{human_size(a['free'])} in {_blocks(a['free_blocks'])}"),
        ("Largest free block", f"{human_size(a['largest_free'])} ({count(a['largest_free'])} bytes)"),
        ("Repairs", count(a["repairs"])),
        ("Compactions", count(a["compactions"])),
    ]
    extra = []
    sizes = a.get("free_block_sizes")
    if sizes:
        largest = max(h["bytes"] for h in sizes)
        extra.append(_histogram(
            ["Free block size", "Blocks", "Bytes"],
            [(f"{_pow2(h['min'])} - {_pow2(h['max'] + 1)}", count(h["blocks"]), human_size(h["bytes"]),
              h["bytes"]) for h in sizes], largest))
    return _section("Allocator", rows, extra)


def _blocks(n):
    return f"{count(n)} block{'' if n == 1 else 's'}"


def _files(f):
    rows = [
        ("Entries", count(f["entries"])),
        ("Memory", human_size(f["memory"])),
        ("Hits", count(f["hits"])),
        ("Misses", count(f["misses"])),
        ("Hit rate", pct(f["hit_rate"])),
        ("Inserts", count(f["inserts"])),
        ("Expunges", count(f["expunges"])),
        ("Evictions", count(f["evictions"])),
        ("Expired removals", count(f["expired"])),
        ("Slots", count(f["slots"]["count"])),
    ]
    if "longest_chain" in f["slots"]:
        rows.append(("Longest chain", count(f["slots"]["longest_chain"])))
    return _section("File and opcode cache", rows)


def _top(keys):
    t = Table(box=None, show_header=True, header_style="bold", pad_edge=False, padding=(0, 2, 0, 0))
    t.add_column("Key", overflow="fold")
    t.add_column("Hits", justify="right", no_wrap=True)
    t.add_column("Size", justify="right", no_wrap=True)
    t.add_column("Type", no_wrap=True)
    for k in keys:
        t.add_row(Text(k["key"]), count(k["hits"]), human_size(k["size"]), k["type"])
    return _section("Top keys by hits", [], [t])


def _supervisor(sv, now):
    if "error" in sv:
        return _section("Supervisor", [("Scoreboard", f"unreadable: {sv['error']}")])
    master = f"{sv['master_pid']} ({'running' if sv['master_alive'] else 'not running'})"
    rows = [
        ("Master pid", master),
        ("State", sv["state"]),
        ("Generation", sv["generation"]),
        ("Up", duration(now - sv["started"]) if sv["started"] else "-"),
        ("Heartbeat", ago(sv["heartbeat"], now) if sv["heartbeat"] else "-"),
    ]
    if sv["last_reload"]:
        rows.append(("Last reload", sv["last_reload"]))
    pools = Table(box=box.SIMPLE_HEAD, show_header=True, header_style="bold", pad_edge=False, show_edge=False)
    for h in ("Pool", "State", "Ready", "Gen", "Jobs", "Errors", "Time limits", "Crashes", "Rotations",
              "Restarts"):
        pools.add_column(h, justify="left" if h in ("Pool", "State") else "right", no_wrap=True)
    for p in sv["pools"]:
        pools.add_row(Text(str(p["name"])), Text(str(p["state"])), f"{p['ready']}/{p['workers']}",
                      str(p["generation"]), count(p["jobs"]), count(p["job_errors"]), count(p["time_limits"]),
                      count(p["crashes"]), count(p["rotations"]), count(p["restarts"]))
    workers = Table(box=box.SIMPLE_HEAD, show_header=True, header_style="bold", pad_edge=False, show_edge=False)
    for h in ("Pid", "Pool", "Id", "Gen", "State", "Jobs", "Job", "Runtime", "Memory", "Restarts"):
        workers.add_column(h, justify="right" if h in ("Pid", "Id", "Gen", "Jobs", "Memory", "Restarts", "Runtime")
                           else "left", no_wrap=True)
    exits = Table.grid(padding=(0, 1))
    exits.add_column(no_wrap=True)
    exits.add_column()
    for w in sv["workers"]:
        workers.add_row(
            str(w["pid"]) if w["pid"] else "-", Text(str(w["pool"])), str(w["worker_id"]), str(w["generation"]),
            Text(str(w["state"])),
            count(w["jobs"]), Text(w["job"] or "-"),
            duration(w["job_runtime"]) if w["job_runtime"] is not None else "-",
            human_size(w["memory"]) if w["memory"] else "-", count(w["restarts"]))
        if w["last_exit"]:
            exits.add_row(Text(f"{w['pool']} {w['worker_id']}:"), Text(w["last_exit"]))
    extra = [Text("Pools", style="bold"), pools, Text("\nWorkers", style="bold"), workers]
    if exits.row_count:
        extra += [Text("\nLast exits (of the process each worker replaced)", style="bold"), exits]
    return _section("Supervisor", rows, extra)


def summary(st, interval=None):
    """The whole summary of a ``collect()`` dict; interval: rates between two watch ticks."""
    parts = [_segment(st["segment"]), _user(st, interval)]
    if st["user"].get("top_keys"):
        parts.append(_top(st["user"]["top_keys"]))
    parts.append(_slots(st["slots"]))
    parts.append(_allocator(st["allocator"]))
    if st["files"] is not None:
        parts.append(_files(st["files"]))
    if st["supervisor"] is not None:
        parts.append(_supervisor(st["supervisor"], time.time()))
    return Group(*parts)


# ---------------------------------------------------------------- entries


def entries_table(rows, now, deleted=False):
    t = Table(box=box.SIMPLE_HEAD, show_header=True, header_style="bold", pad_edge=False, show_edge=False)
    t.add_column("Key", overflow="fold", min_width=min(40, max((len(r["key"]) for r in rows), default=3)))
    for h in ("Type", "Hits", "Size", "Accessed", "Modified", "Created", "Expires"):
        t.add_column(h, justify="right" if h in ("Hits", "Size") else "left", no_wrap=True)
    if deleted:
        t.add_column("Deleted", no_wrap=True)
        t.add_column("Refs", justify="right", no_wrap=True)
    for r in rows:
        cells = [Text(r["key"]), r["type"], count(r["hits"]), human_size(r["size"]), ago(r["accessed"], now, True),
                 ago(r["modified"], now, True), ago(r["created"], now, True),
                 ago(r["expires"], now, True) if r["expires"] else "never"]
        if deleted:
            cells += [ago(r["deleted"], now, True), count(r["refs"])]
        t.add_row(*(_t(c) for c in cells))
    return t


def segment_list(segs, now):
    t = Table(box=box.SIMPLE_HEAD, show_header=True, header_style="bold", pad_edge=False, show_edge=False)
    t.add_column("Name", overflow="fold", min_width=min(40, max((len(s["name"]) for s in segs), default=4)))
    for h in ("Size", "Free", "Entries", "Owner", "Layout", "Age"):
        t.add_column(h, justify="right" if h in ("Size", "Entries", "Free", "Layout", "Age") else "left",
                     no_wrap=True)
    for s in segs:
        owner = s["owner"] if s["owner"] is not None else f"uid {s['owner_uid']}"
        age = _short_duration(now - s["created"]) if s["created"] else "-"
        t.add_row(Text(s["name"]), human_size(s["size"]), human_size(s["memory_free"]), count(s["entries"]),
                  Text(owner), str(s["layout_version"]), age)
    return t


# ------------------------------------------------------------------ lines


def line_header():
    return " ".join(f"{name:>{w}}" if i else f"{name:<{w}}" for i, (name, w) in enumerate(LINE_FIELDS))


def line(st, interval=None):
    """One dense line per watch tick (redis-cli --stat style)."""
    u, a, sv = st["user"], st["allocator"], st["supervisor"]
    workers = "-"
    if sv and "error" not in sv:
        ready = sum(1 for w in sv["workers"] if w["state"] in ("idle", "busy"))
        workers = f"{ready}/{sum(p['workers'] or 0 for p in sv['pools'])}"
    if interval is None:
        hitpct, req, hit, ins = pct(u["hit_rate"]), "-", "-", "-"
    else:
        hitpct = pct(interval["hit_rate"])
        req, hit, ins = rate(interval["requests"]), rate(interval["hits"]), rate(interval["inserts"])
    values = (time.strftime("%H:%M:%S", time.localtime(st["time"])), count(u["entries"]),
              _short_size(a["used"]), _short_size(a["free"]), count(u["hits"]), count(u["misses"]), hitpct, req, hit,
              ins, count(u["evictions"]), count(u["gc"]["entries"]), workers)
    return " ".join(f"{v:>{w}}" if i else f"{v:<{w}}" for i, ((_, w), v) in enumerate(zip(LINE_FIELDS, values)))


def _short_size(n):
    for unit in ("B", "K", "M", "G", "T"):
        if n < 1024 or unit == "T":
            return f"{n}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
