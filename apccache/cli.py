"""The ``apccache`` command.

``apccache supervise CONFIG``   run the supervisor (see apccache.supervisor)
``apccache status NAME``        print the supervisor scoreboard of a live segment
``apccache fleet listen SEGMENT --redis URL --namespace NS``
                                run a fleet invalidation listener (apccache.fleet)

Exit codes of ``supervise`` are ``apccache.supervisor.ExitCode``; ``status``
exits 0, or 1 when the segment does not exist or has no scoreboard.
"""

import argparse
import json
import logging
import sys
import time

__all__ = ["main"]

LOG_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(message)s"


def main(argv=None):
    """Run the command line; return the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return args.func(args)


def _parser():
    p = argparse.ArgumentParser(prog="apccache", description="apccache: an APC-style shared-memory cache.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser(
        "supervise",
        help="run pools of worker processes that share one cache",
        description="Create the cache segment in CONFIG's [cache], run its [init] command, then keep "
        "its [pools.*] of worker processes running. SIGHUP reloads, SIGTERM/SIGINT stop gracefully "
        "(a second one stops at once), SIGTTIN/SIGTTOU add/remove a worker per pool.",
    )
    s.add_argument("config", metavar="CONFIG", help="the TOML configuration file")
    s.add_argument("--duration", type=_positive_seconds, metavar="SECONDS",
                   help="stop gracefully after SECONDS, as on SIGTERM")
    keep = s.add_mutually_exclusive_group()
    keep.add_argument("--keep-cache", dest="keep_cache", action="store_true", default=None,
                      help="leave the segment in place on exit (overrides [cache] keep)")
    keep.add_argument("--no-keep-cache", dest="keep_cache", action="store_false",
                      help="remove the segment on exit (overrides [cache] keep)")
    s.add_argument("--check", action="store_true", help="validate CONFIG, import each pool's target in a child process, and exit "
                   "(78 if either fails)")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="log verbosity (default: info)")
    s.set_defaults(func=_supervise)

    st = sub.add_parser("status", help="show the supervisor's pools and workers of a live segment",
                        description="Read the supervisor scoreboard of segment NAME without disturbing it.")
    st.add_argument("name", metavar="NAME", help="the segment's name ([cache] name)")
    st.add_argument("--json", action="store_true", help="print the scoreboard as JSON")
    st.add_argument("--watch", type=_positive_seconds, metavar="SECONDS",
                    help="redraw every SECONDS until interrupted")
    st.set_defaults(func=_status)

    fl = sub.add_parser("fleet", help="the two-tier cache on Redis (apccache.fleet)",
                        description="Commands of the fleet tier: Redis as the shared store, this host's "
                        "segment as the near cache.")
    flsub = fl.add_subparsers(dest="fleet_command", metavar="COMMAND", required=True)
    li = flsub.add_parser(
        "listen", help="keep SEGMENT's near copies of a namespace coherent with Redis",
        description="Hold a CLIENT TRACKING (broadcast) connection to Redis (one per primary of a "
        "cluster) and delete the near copies of every key of namespace NS that changes; keep the "
        "heartbeat that readers check. Runs in the foreground until SIGTERM or SIGINT.")
    li.add_argument("segment", metavar="SEGMENT", help="the host's cache segment (it must exist)")
    li.add_argument("--redis", required=True, metavar="URL", help="redis://[user:password@]host:port[/db]")
    li.add_argument("--namespace", required=True, metavar="NS", help="the FleetCache namespace")
    li.add_argument("--max-lag", type=_positive_seconds, default=0.05, metavar="SECONDS",
                    help="readers trust near copies only while the last confirmed sync is this recent "
                    "(default: 0.05)")
    li.add_argument("--ping-interval", type=_positive_seconds, default=0.01, metavar="SECONDS",
                    help="PING period on each tracking connection (default: 0.01)")
    li.add_argument("--dead-after", type=_positive_seconds, default=1.0, metavar="SECONDS",
                    help="reconnect when a PING is unanswered this long (default: 1)")
    li.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                    help="log verbosity (default: info)")
    li.set_defaults(func=_fleet_listen)
    return p


def _fleet_listen(args):
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), format=LOG_FORMAT, stream=sys.stderr)
    from .fleet import listener

    try:
        return listener.main(args.segment, args.redis, args.namespace, max_lag=args.max_lag,
                             ping_interval=args.ping_interval, dead_after=args.dead_after)
    except FileNotFoundError:
        print(f"apccache: no segment named {args.segment!r}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"apccache: {e}", file=sys.stderr)
        return 2


def _positive_seconds(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds (got {text!r})") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0 (got {text!r})")
    return value


def _supervise(args):
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), format=LOG_FORMAT, stream=sys.stderr)
    from .supervisor import ExitCode, Supervisor, load_config
    from .supervisor.errors import ConfigError

    if args.check:
        try:
            cfg = load_config(args.config)
        except ConfigError as e:
            print(f"apccache: {e}", file=sys.stderr)
            return ExitCode.CONFIG_ERROR
        from .supervisor.config import check_targets

        problems = check_targets(cfg)
        for line in problems:
            print(f"apccache: {args.config}: {line}", file=sys.stderr)
        if problems:
            return ExitCode.CONFIG_ERROR
        pools = ", ".join(f"{p.name} ({p.workers})" for p in cfg.pools)
        print(f"{args.config}: ok: cache {cfg.cache.name!r}, pools {pools}")
        return ExitCode.OK
    return int(Supervisor(args.config, duration=args.duration, keep_cache=args.keep_cache).run())


def _status(args):
    import apccache
    from .supervisor import scoreboard

    try:
        # Read-only: a segment that fails the trust check is still shown,
        # through a handle that never loads a value.
        cache = apccache.Cache.attach(args.name, _inspect=True)
    except FileNotFoundError:
        print(f"apccache: no segment named {args.name!r} (is the supervisor running?)", file=sys.stderr)
        return 1
    try:
        while True:
            try:
                board = scoreboard.read(cache)
            except scoreboard.ScoreboardError as e:
                print(f"apccache: {e}", file=sys.stderr)
                return 1
            if board is None:
                print(f"apccache: segment {args.name!r} has no supervisor scoreboard", file=sys.stderr)
                return 1
            if args.json:
                print(json.dumps(board, indent=2, sort_keys=True))
            else:
                if args.watch:
                    sys.stdout.write("\x1b[H\x1b[2J")
                sys.stdout.write(format_board(board, args.name))
            sys.stdout.flush()
            if not args.watch:
                return 0
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0
    finally:
        cache.close()


def format_board(board, name=""):
    """Render a scoreboard dict as titled sections of "Name: value" lines and a worker table."""
    now = time.time()
    out = []
    out.append(f"Supervisor{f' of {name!r}' if name else ''}")
    out.append(f"  Master pid: {board['master_pid']}{'' if board['master_alive'] else ' (not running)'}")
    out.append(f"  State: {board['state']}")
    out.append(f"  Generation: {board['generation']}")
    if board["last_reload"]:
        out.append(f"  Last reload: {board['last_reload']} (generation {board['reload_generation']})")
    out.append(f"  Up: {_ago(now - board['started'])}")
    out.append(f"  Heartbeat: {_ago(now - board['updated'])} ago")
    for pool in board["pools"].values():
        out.append("")
        out.append(f"Pool {pool['name']}")
        out.append(f"  State: {pool['state']}")
        out.append(f"  Workers: {pool['ready']} ready of {pool['workers']}")
        for k in ("jobs", "job_errors", "time_limits", "time_limit_kills", "crashes", "lost_jobs", "rotations",
                  "restarts"):
            out.append(f"  {k.replace('_', ' ').capitalize()}: {pool[k]}")
    out.append("")
    out.append("Workers")
    header = f"  {'POOL':<12} {'ID':>3} {'PID':>7} {'GEN':>4} {'STATE':<9} {'JOBS':>7} {'ERR':>5} {'MEM':>9} " \
             f"{'RESTARTS':>8}  JOB"
    out.append(header)
    for w in board["workers"]:
        job = ""
        if w["job"] is not None:
            job = f"{w['job']} ({_ago(now - w['job_started'])})" if w["job_started"] else w["job"]
        mem = f"{w['memory'] / (1 << 20):.1f}M" if w["memory"] else "-"
        out.append(f"  {w['pool']:<12} {w['worker_id']:>3} {w['pid']:>7} {w['generation']:>4} {w['state']:<9} "
                   f"{w['jobs']:>7} {w['job_errors']:>5} {mem:>9} {w['restarts']:>8}  {job}")
        if w["last_exit"]:
            out.append(f"  {'':<12} {'':>3} last exit: {w['last_exit']}")
    out.append("")
    return "\n".join(out)


def _ago(seconds):
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


if __name__ == "__main__":
    sys.exit(main())
