"""The ``apcstat`` command line.

::

    apcstat NAME                      the summary
    apcstat NAME entries [...]        the entry table
    apcstat NAME watch [-i SECONDS]   a live view (or one line per tick)
    apcstat NAME check [...]          integrity and thresholds, monitoring-plugin exit codes
    apcstat NAME clear --yes          remove every entry of the user cache
    apcstat NAME delete KEY --yes     remove one entry
    apcstat --list                    the apccache segments on this host

``--json`` (any command) prints one versioned object instead; ``--prometheus``
(the summary) prints exposition text.  Exit codes: 0 done, 1 an error in
words (no such segment, permission denied, incompatible layout, ...), 2 a
usage error; ``check`` exits 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
"""
import argparse
import json
import os
import re
import sys
import time

from . import collect as C

__all__ = ["main", "StatError"]

SORTS = ("key", "hits", "size", "atime", "mtime", "ctime", "ttl")
_SORT_FIELD = {"hits": "hits", "size": "size", "atime": "accessed", "mtime": "modified", "ctime": "created"}
HUMAN_LIMIT = 100
OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATUS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


class StatError(Exception):
    """An error to print in words; ``code`` is the exit status."""

    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------ parser


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: {message}\n")


def _argument(convert, ok, what, out_of_range=None):
    """An argparse type: text through convert, then ok(value), each failure
    said as "must be <what>" (or <out_of_range>, when only the range is wrong)."""
    def parse(text):
        try:
            v = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what} (got {text!r})") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"must be {out_of_range or what} (got {text!r})")
        return v
    return parse


_percent = _argument(float, lambda v: 0 <= v <= 100, "a percentage from 0 to 100")
_seconds = _argument(float, lambda v: 0.01 <= v <= 86400, "a number of seconds",
                     "between 0.01 and 86400 seconds")
_count = _argument(int, lambda v: v >= 0, "a whole number >= 0")


def _regex(text):
    try:
        return re.compile(text)
    except re.error as e:
        raise argparse.ArgumentTypeError(f"is not a valid regular expression ({e}): {text!r}") from None


def _output_options(p, suppress):
    d = {"default": argparse.SUPPRESS} if suppress else {}
    g = p.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true", help="print one versioned JSON object (integers in base units)",
                   **d)
    g.add_argument("--prometheus", action="store_true",
                   help="print Prometheus exposition text (the summary only; needs prometheus_client)", **d)


COMMANDS_HELP = """commands (after NAME):
  entries    the entry table (--sort, --reverse, --filter, --limit, --deleted, --files)
  watch      a live view (-i SECONDS, --lines, --count N)
  check      the integrity checker, monitoring-plugin exit codes
  clear      remove every entry of the user cache (--yes)
  delete     remove one entry: delete KEY (--yes)

'apcstat NAME COMMAND -h' describes a command.
Exit codes: 0 done, 1 an error in words, 2 a usage error; 'check' exits 0 OK, 1 WARNING,
2 CRITICAL, 3 UNKNOWN."""


def parser():
    """(top, commands): the parser of the options and NAME, and the parser of what follows NAME.

    argparse cannot put an optional positional (NAME) before optional
    subcommands, so main() splits the command line at the first word after
    NAME and gives each part to its own parser."""
    p = _Parser(
        prog="apcstat",
        usage="apcstat [-h] [--json | --prometheus] NAME [COMMAND ...]\n       apcstat [--json] --list",
        description="Look inside a live apccache segment without disturbing it: no counter or access time "
        "moves, readers are never blocked (writers wait at most for one copy of the entry records), and "
        "nothing is ever removed except by 'clear' or 'delete'.",
        epilog=COMMANDS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="the segment's name (as in Cache.attach or [cache] name)")
    p.add_argument("--list", action="store_true", help="list the apccache segments on this host")
    _output_options(p, suppress=False)
    cmds = _Parser(prog="apcstat NAME", add_help=False)
    sub = cmds.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser, required=True)

    e = sub.add_parser("entries", help="the entry table", description="The entries of the user cache (or "
                       "of the file cache with --files), like apc.php's: human sizes and relative times.")
    e.add_argument("--sort", choices=SORTS, default="hits",
                   help="sort key (default hits); key sorts A to Z, ttl soonest expiry first, the others "
                   "largest or newest first")
    e.add_argument("--reverse", action="store_true", help="reverse the order")
    e.add_argument("--filter", type=_regex, metavar="REGEX", help="only keys that match REGEX (re.search)")
    e.add_argument("--limit", type=_count, metavar="N",
                   help=f"show at most N entries; 0 shows all (default {HUMAN_LIMIT}, all with --json)")
    e.add_argument("--deleted", action="store_true",
                   help="show the GC list: entries deleted while a reader still held them")
    e.add_argument("--files", action="store_true", help="the file and opcode cache's entries")
    _output_options(e, suppress=True)
    e.set_defaults(func=cmd_entries)

    w = sub.add_parser("watch", help="a live view", description="Redraw the summary in place every interval, "
                       "with rates from the change since the last tick; with --lines (or when stdout is not a "
                       "terminal) print one dense line per tick instead.")
    w.add_argument("-i", "--interval", type=_seconds, default=1.0, metavar="SECONDS",
                   help="seconds between ticks (default 1)")
    w.add_argument("--lines", action="store_true", help="one line per tick, for logs")
    w.add_argument("-n", "--count", type=_count, default=0, metavar="N", help="stop after N ticks (default: "
                   "run until interrupted)")
    _output_options(w, suppress=True)
    w.set_defaults(func=cmd_watch)

    c = sub.add_parser("check", help="run the integrity checker (monitoring-plugin exit codes)",
                       description="Walk every slot, chain and block; exit 0 OK, 1 WARNING (a threshold below), "
                       "2 CRITICAL (a broken invariant), 3 UNKNOWN (cannot attach).")
    c.add_argument("--warn-hit-rate", type=_percent, metavar="PERCENT",
                   help="WARNING when the hit rate is below PERCENT")
    c.add_argument("--min-requests", type=_count, default=0, metavar="N",
                   help="judge the hit rate only after N requests (default 0)")
    c.add_argument("--warn-free", type=_percent, metavar="PERCENT",
                   help="WARNING when less than PERCENT of the arena is free")
    _output_options(c, suppress=True)
    c.set_defaults(func=cmd_check)

    cl = sub.add_parser("clear", help="remove every entry of the user cache",
                        description="Remove every entry of the user cache for every process and reset its hits, "
                        "misses, inserts and expunges (the file cache keeps its entries).  Needs --yes; refused "
                        "on a segment you do not own.")
    cl.add_argument("--yes", action="store_true", help="confirm")
    _output_options(cl, suppress=True)
    cl.set_defaults(func=cmd_clear)

    d = sub.add_parser("delete", help="remove one entry", description="Remove the entry under KEY (a str key). "
                       "Needs --yes; refused on a segment you do not own.")
    d.add_argument("key", metavar="KEY")
    d.add_argument("--yes", action="store_true", help="confirm")
    _output_options(d, suppress=True)
    d.set_defaults(func=cmd_delete)
    p.set_defaults(func=cmd_summary, command=None)
    return p, cmds


def _split(argv):
    """(options and NAME, the command and its arguments)."""
    head, i = [], 0
    named = False
    while i < len(argv):
        t = argv[i]
        if t == "--" and not named and i + 1 < len(argv):
            head += argv[i:i + 2]
            named = True
            i += 2
            continue
        if t.startswith("-") and t != "-":
            head.append(t)
        elif not named:
            head.append(t)
            named = True
        else:
            break
        i += 1
    return head, argv[i:]


# ------------------------------------------------------------------- main


def main(argv=None):
    """Run apcstat; return its exit status."""
    p, cmds = parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    head, rest = _split(argv)
    try:
        args = p.parse_args(head)
        if rest:
            cmds.parse_args(rest, namespace=args)
    except SystemExit as e:  # argparse: 2 for usage errors, 0 for --help
        return e.code if isinstance(e.code, int) else 2
    if args.list:
        if args.name or args.command:
            p.print_usage(sys.stderr)
            print("apcstat: --list takes no segment name or command", file=sys.stderr)
            return 2
        func = cmd_list
    elif not args.name:
        p.print_usage(sys.stderr)
        print("apcstat: name a segment, or use --list to see which exist", file=sys.stderr)
        return 2
    else:
        func = args.func
    if args.prometheus and func is not cmd_summary:
        print("apcstat: --prometheus works with the summary only (apcstat NAME --prometheus)", file=sys.stderr)
        return 2
    from ..errors import CacheError

    try:
        return func(args)
    except StatError as e:
        print(f"apcstat: {e}", file=sys.stderr)
        return e.code
    except CacheError as e:  # the segment broke while it was being read
        print(f"apcstat: cannot read segment {_bare(args.name or '')!r}: {e}; 'apcstat {_bare(args.name or '')} "
              "check' lists what is broken", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0


def _console():
    from rich.console import Console

    return Console(highlight=False, emoji=False, markup=False)


def _print(con, renderable):
    """Print a renderable.  Off a terminal, nothing is cropped or folded (the
    width grows to what the content needs) and the padding rich leaves at
    the ends of lines is stripped, so the output greps and diffs well."""
    if con.is_terminal:
        con.print(renderable)
        return
    from rich.measure import Measurement

    need = Measurement.get(con, con.options.update_width(1 << 16), renderable).maximum
    if need > con.width:
        con.width = need
    with con.capture() as cap:
        con.print(renderable)
    sys.stdout.write("".join(line.rstrip() + "\n" for line in cap.get().splitlines()))
    sys.stdout.flush()


def _json(obj):
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")
    sys.stdout.flush()


def _bare(name):
    return name.lstrip("/")


def no_such_segment(name):
    segs, _ = C.list_segments()
    if segs:
        names = ", ".join(s["name"] for s in segs)
        return f"no segment named {name!r}; the apccache segments on this host are: {names}"
    return f"no segment named {name!r}, and there are no apccache segments on this host (is the cache running?)"


def _who(uid):
    user = C._user(uid)
    return f"{user} (uid {uid})" if user else f"uid {uid}"


def attach(name, purpose=None):
    """Attach the segment, turning every failure into a StatError in words.

    Without purpose, for the read-only views: a segment that fails the
    trust check (another user's, or writable by others) is still shown,
    through a handle that never loads a value.  With purpose (a verb:
    "clear"), the handle will write, and only a trusted segment is attached
    (the check is fstat of the descriptor that is mapped)."""
    import apccache

    try:
        if purpose is None:
            return apccache.Cache.attach(name, timeout=0.5, _inspect=True)
        return apccache.Cache.attach(name, timeout=0.5)
    except apccache.UntrustedSegmentError as e:
        raise StatError(f"refusing to {purpose or 'open'} segment {_bare(name)!r}: {e}") from None
    except FileNotFoundError:
        raise StatError(no_such_segment(_bare(name))) from None
    except PermissionError:
        owner = C.owner_of(_bare(name))
        whose = f"it belongs to {_who(owner[0])} with mode {owner[2]}" if owner else "it is not readable"
        raise StatError(f"permission denied opening segment {_bare(name)!r}: {whose}; run apcstat as its "
                        "owner (or root)") from None
    except (apccache.IncompatibleSegmentError, apccache.CorruptSegmentError) as e:
        raise StatError(str(e)) from None
    except ValueError as e:  # an invalid name
        raise StatError(str(e), 2) from None
    except OSError as e:
        raise StatError(f"cannot open segment {_bare(name)!r}: {e.strerror or e}") from None


# --------------------------------------------------------------- commands


def cmd_summary(args):
    cache = attach(args.name)
    try:
        st = C.collect(cache)
    finally:
        cache.close()
    if args.json:
        _json(st)
    elif args.prometheus:
        try:
            from ..metrics import exposition
        except ImportError:
            raise StatError("--prometheus needs prometheus_client: pip install 'apccache[metrics]'") from None
        sys.stdout.write(exposition(st))
        sys.stdout.flush()
    else:
        from .render import summary

        _print(_console(), summary(st))
    return 0


def _sort_key(field):
    if field == "key":
        return lambda r: (r["key"],)
    if field == "ttl":
        return lambda r: (r["expires"] is None, r["expires"] or 0, r["key"])
    f = _SORT_FIELD[field]
    return lambda r: (-r[f], r["key"])


def cmd_entries(args):
    cache = attach(args.name)
    now = int(time.time())
    try:
        table = C.TABLE_FILES if args.files else 0
        recs = C.entry_records(cache, table, C.SNAP_DELETED if args.deleted else C.SNAP_LIVE)
    finally:
        cache.close()
    if args.deleted:
        rows = [C.entry_dict(r, k, now) for r, k in recs if r.flags & C.REC_DELETED]
    else:
        rows = [C.entry_dict(r, k, now) for r, k in recs if not r.flags & (C.REC_EXPIRED | C.REC_DELETED)]
    if args.filter is not None:
        rows = [r for r in rows if args.filter.search(r["key"])]
    rows.sort(key=_sort_key(args.sort), reverse=args.reverse)
    total = len(rows)
    limit = args.limit if args.limit is not None else (0 if args.json else HUMAN_LIMIT)
    if limit:
        rows = rows[:limit]
    if args.json:
        _json({"apcstat": C.SCHEMA, "time": now, "segment": _bare(args.name),
               "table": "files" if args.files else "user", "deleted": args.deleted, "sort": args.sort,
               "reverse": args.reverse, "filter": args.filter.pattern if args.filter else None, "total": total,
               "entries": rows})
        return 0
    from .render import entries_table

    con = _console()
    what = "deleted entries on the GC list" if args.deleted else "entries"
    if not rows:
        con.print(f"no {what}" + (f" match {args.filter.pattern!r}" if args.filter and total == 0 else ""))
        return 0
    _print(con, entries_table(rows, now, deleted=args.deleted))
    order = {"key": "A to Z", "ttl": "soonest expiry first"}.get(args.sort, "largest or newest first")
    if args.reverse:
        order += ", reversed"
    more = "; --limit 0 shows all" if len(rows) < total else ""
    con.print(f"{len(rows):,} of {total:,} {what}, by {args.sort} ({order}){more}")
    return 0


def _interval(prev, cur, seconds):
    """Per-second rates between two snapshots (a counter that went down was reset: count from zero)."""
    def delta(k):
        a, b = prev["user"][k], cur["user"][k]
        return b - a if b >= a else b

    hits, misses, inserts = delta("hits"), delta("misses"), delta("inserts")
    req = hits + misses
    s = max(seconds, 1e-6)
    return {"seconds": seconds, "requests": req / s, "hits": hits / s, "misses": misses / s, "inserts": inserts / s,
            "hit_rate": hits / req if req else None}


def cmd_watch(args):
    held = [attach(args.name)]  # _watch_loop swaps in a new handle if the segment is replaced
    try:
        con = _console()
        if args.json:
            return _watch_loop(held, args, False, lambda st, iv: _json_line(dict(st, interval=iv)))
        if args.lines or not con.is_terminal:
            shown = [0]

            def emit(st, iv):
                if shown[0] % 20 == 0:
                    from .render import line_header

                    sys.stdout.write(line_header() + "\n")
                from .render import line

                sys.stdout.write(line(st, iv) + "\n")
                sys.stdout.flush()
                shown[0] += 1

            return _watch_loop(held, args, False, emit)
        from rich.live import Live

        from .render import summary

        with Live(console=con, auto_refresh=False, redirect_stdout=False, redirect_stderr=False) as live:
            return _watch_loop(held, args, True, lambda st, iv: live.update(summary(st, iv), refresh=True))
    finally:
        held[0].close()


def _json_line(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _inode(name):
    try:
        st = os.stat(os.path.join(C.SHM_DIR, _bare(name)))
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _watch_loop(held, args, detail, emit):
    """Collect and emit every interval.  A mapping outlives its name, so each
    tick also checks that the segment is still there: if it was removed,
    watching stops (exit 1); if it was replaced (a supervisor restarted), the
    new one is attached and the rates start over."""
    prev = None
    ticks = 0
    inode = _inode(args.name)
    try:
        while True:
            now_inode = _inode(args.name)
            if now_inode is None:
                raise StatError(f"segment {_bare(args.name)!r} was removed while it was being watched")
            if now_inode != inode:
                held[0].close()
                held[0] = attach(args.name)
                inode, prev = now_inode, None
            t = time.monotonic()
            st = C.collect(held[0], detail=detail)
            iv = _interval(prev[1], st, t - prev[0]) if prev else None
            emit(st, iv)
            prev = (t, st)
            ticks += 1
            if args.count and ticks >= args.count:
                return 0
            time.sleep(max(0.0, args.interval - (time.monotonic() - t)))
    except KeyboardInterrupt:
        return 0


def cmd_check(args):
    import apccache

    name = _bare(args.name)
    try:
        cache = attach(args.name)
    except StatError as e:
        code = UNKNOWN
        if "truncated" in str(e) or "corrupt" in str(e).lower():
            code = CRITICAL
        return _check_report(args, name, code, [str(e)], [], None)
    try:
        problems = cache.check()
        try:
            st = C.collect(cache, detail=False)
        except apccache.CacheError as e:
            problems = problems or [str(e)]
            st = None
    finally:
        cache.close()
    warnings = []
    if st is not None:
        u, a = st["user"], st["allocator"]
        if (args.warn_hit_rate is not None and u["hit_rate"] is not None and u["requests"] >= args.min_requests
                and u["hit_rate"] * 100 < args.warn_hit_rate):
            warnings.append(f"hit rate {u['hit_rate'] * 100:.1f}% is below {args.warn_hit_rate:g}% "
                            f"({u['hits']:,} hits, {u['misses']:,} misses)")
        free = a["free"] / a["arena_size"] * 100 if a["arena_size"] else 0.0
        if args.warn_free is not None and free < args.warn_free:
            warnings.append(f"{free:.1f}% of the arena is free, below {args.warn_free:g}% "
                            f"({a['free']:,} of {a['arena_size']:,} bytes)")
        seg = st["segment"]
        if seg["mode"] and int(seg["mode"], 8) & 0o002:
            # Absolute, whoever looks: others may write it, so no process
            # trusts it (another user's segment is only untrusted by us).
            warnings.append(f"mode {seg['mode']} lets others write the segment, so every process refuses to "
                            f"attach it: chmod 600 {seg['path']} if its contents are trusted, or remove it")
        sv = st["supervisor"]
        if sv and "error" not in sv and sv["state"] in ("starting", "running", "reloading") and not sv["master_alive"]:
            warnings.append(f"the scoreboard says the supervisor is {sv['state']} but its master pid "
                            f"{sv['master_pid']} is gone")
    code = CRITICAL if problems else WARNING if warnings else OK
    return _check_report(args, name, code, problems, warnings, st)


def _check_report(args, name, code, problems, warnings, st):
    status = STATUS[code]
    if args.json:
        obj = {"apcstat": C.SCHEMA, "segment": name, "status": status, "code": code, "problems": problems,
               "warnings": warnings}
        if st is not None:
            obj.update(entries=st["user"]["entries"], hit_rate=st["user"]["hit_rate"],
                       memory_free=st["allocator"]["free"], memory_limit=st["allocator"]["arena_size"])
        _json(obj)
        return code
    if st is None:
        summary = problems[0] if problems else "cannot read the segment"
        print(f"APCCACHE {status} - {summary}")
        for p in problems[1:]:
            print(p)
        return code
    u, a = st["user"], st["allocator"]
    free = a["free"] / a["arena_size"] * 100 if a["arena_size"] else 0.0
    hit = f"{u['hit_rate'] * 100:.1f}%" if u["hit_rate"] is not None else "-"
    if problems:
        head = f"{len(problems)} broken invariant{'s' if len(problems) != 1 else ''}: {problems[0]}"
    elif warnings:
        head = "; ".join(warnings)
    else:
        head = "sound"
    perf = f"entries={u['entries']} hits={u['hits']}c misses={u['misses']}c free_bytes={a['free']}B"
    if u["hit_rate"] is not None:
        perf += f" hit_rate={u['hit_rate'] * 100:.1f}%"
    print(f"APCCACHE {status} - {name!r}: {head}; {u['entries']:,} entries, hit rate {hit}, {free:.1f}% free "
          f"| {perf}")
    for p in problems[1:]:
        print(p)
    return code


def _require_owner(name, action):
    owner = C.owner_of(name)
    if owner is None:
        raise StatError(no_such_segment(name))
    uid = os.geteuid()
    if owner[0] != uid:
        raise StatError(f"refusing to {action} segment {name!r}: it belongs to {_who(owner[0])}, not to you "
                        f"({_who(uid)}); run apcstat as its owner")


def cmd_clear(args):
    name = _bare(args.name)
    _require_owner(name, "clear")
    if not args.yes:
        raise StatError(f"clearing {name!r} removes every entry of its user cache for every process: add --yes "
                        "to confirm", 2)
    cache = attach(args.name, "clear")
    try:
        before = cache.info(limited=True)["num_entries"]
        cache.clear()
    finally:
        cache.close()
    if args.json:
        _json({"apcstat": C.SCHEMA, "segment": name, "cleared": True, "entries_removed": before})
    else:
        print(f"cleared {name!r}: removed {before:,} entries (the file cache keeps its entries)")
    return 0


def cmd_delete(args):
    name = _bare(args.name)
    _require_owner(name, "delete from")
    if not args.yes:
        raise StatError(f"deleting {args.key!r} from {name!r} removes it for every process: add --yes to confirm", 2)
    cache = attach(args.name, "delete from")
    try:
        try:
            found = cache.delete(args.key)
        except (TypeError, ValueError) as e:
            raise StatError(f"cannot delete {args.key!r}: {e}", 2) from None
    finally:
        cache.close()
    if args.json:
        _json({"apcstat": C.SCHEMA, "segment": name, "key": args.key, "deleted": found})
    elif found:
        print(f"deleted {args.key!r} from {name!r}")
    if not found:
        if not args.json:
            print(f"apcstat: no live entry under {args.key!r} in {name!r} (apcstat {name} entries --filter "
                  "REGEX finds keys)", file=sys.stderr)
        return 1
    return 0


def cmd_list(args):
    segs, unreadable = C.list_segments()
    if args.json:
        _json({"apcstat": C.SCHEMA, "segments": segs, "unreadable": unreadable})
        return 0
    con = _console()
    if segs:
        from .render import segment_list

        _print(con, segment_list(segs, int(time.time())))
    else:
        con.print(f"no apccache segments in {C.SHM_DIR}")
    if unreadable:
        con.print(f"({unreadable} other file{'s' if unreadable != 1 else ''} in {C.SHM_DIR} could not be read, so "
                  "they were not checked; run as root to see every segment)")
    return 0
