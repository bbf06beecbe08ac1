"""Django's cache API on apccache beside Django's usual backends, in one run.

    python bench/integrations_django.py [--rounds 15 --batch-ms 15] [--md FILE] [--json FILE]

Backends: apccache (``apccache.integrations.django.ApcCache``), LocMem
(per-process), Redis (``django.core.cache.backends.redis``, redis-server on
127.0.0.1, started here) and file-based (a directory on /dev/shm, so that no
disk is timed).  Each operation goes through ``django.core.cache.caches``,
as an application calls it: key prefixing and validation included.  The
async rows compare ``await cache.aget()``: apccache's calls the engine
directly, the others go through Django's ``sync_to_async`` thread hop.
Rounds are interleaved; ratio = median over rounds of backend / apccache.
"""
import argparse
import asyncio
import contextlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402
from peers import free_loopback_port, server  # noqa: E402

VALUE = {"id": 1234, "name": "alice", "roles": ["admin", "dev"], "active": True, "score": 9.5}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--batch-ms", type=float, default=15)
    ap.add_argument("--md")
    ap.add_argument("--json")
    args = ap.parse_args()
    bl.exit_on_sigterm()

    with contextlib.ExitStack() as stack:
        seg = bl.random_name()
        filedir = stack.enter_context(bl.shm_tempdir())
        caches = {
            "apccache": {"BACKEND": "apccache.integrations.django.ApcCache", "LOCATION": seg,
                         "OPTIONS": {"size": "64M"}},
            "locmem": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "b"},
            "file": {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache", "LOCATION": filedir},
        }
        notes = [f"file-based: {filedir} (tmpfs)"]
        binary = shutil.which("redis-server")
        if binary:
            port = free_loopback_port()
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix=bl.PREFIX + "redis-"))
            stack.enter_context(server([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                        "--appendonly", "no", "--daemonize", "no", "--dir", workdir,
                                        "--logfile", ""], port))
            caches["redis"] = {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                               "LOCATION": f"redis://127.0.0.1:{port}"}
            notes.append(f"redis: redis-server on 127.0.0.1:{port}, TCP, redis-py client")
        else:
            notes.append("redis skipped: redis-server not installed")

        from django.conf import settings

        settings.configure(CACHES={"default": caches["locmem"], **caches}, USE_TZ=True)
        import django

        django.setup()
        from django.core.cache import caches as dj

        stack.callback(lambda: _unlink(seg))
        names = list(caches)
        loop = asyncio.new_event_loop()
        stack.callback(loop.close)
        contestants = []
        for n in names:
            c = dj[n]
            c.set("hit", VALUE, None)
            c.set("counter", 0, None)
            ops = {
                "get hit (small dict)": (c.get, ("hit",)),
                "get miss": (c.get, ("never-set",)),
                "set (small dict)": (c.set, ("k", VALUE, 300)),
                "incr": (c.incr, ("counter",)),
                "get_many (3 keys)": (c.get_many, (["hit", "counter", "never-set"],)),
                "await aget hit": (lambda c=c: loop.run_until_complete(c.aget("hit")), ()),
            }
            for op, (fn, a) in ops.items():
                contestants.append(((n, op), fn, a))
        # the bare event-loop round trip, to subtract from the async rows by eye
        async def nothing():
            return None

        contestants.append(((("loop",), "await aget hit"), lambda: loop.run_until_complete(nothing()), ()))
        samples, _ = bl.interleave(contestants, args.rounds, args.batch_ms / 1000)
    _report("Django cache backends", names, samples, notes, args, loop_row=True)


def _unlink(seg):
    try:
        Path("/dev/shm", seg).unlink()
    except FileNotFoundError:
        pass


def _report(title, names, samples, notes, args, loop_row=False):
    import statistics

    ops = []
    for (n, op) in samples:
        if op not in ops:
            ops.append(op)
    rows = []
    for op in ops:
        base = samples.get(("apccache", op))
        row = [op]
        for n in names:
            s = samples.get((n, op))
            if s is None:
                row.append("-")
            elif n == "apccache":
                row.append(bl.fmt_time(statistics.median(s)))
            else:
                row.append(f"{bl.fmt_time(statistics.median(s))} ({bl.paired_ratio(s, base):.1f}x)")
        rows.append(row)
    loop = samples.get((("loop",), "await aget hit"))
    md = [f"## {title} (`bench/{Path(sys.argv[0]).name}`)", "", bl.machine_line(), "",
          f"Interleaved: {args.rounds} rounds of ~{args.batch_ms:g} ms batches. Time = median per operation; "
          "(ratio) = median over rounds of backend / apccache in the same round (>1x: slower than apccache).", "",
          bl.md_table(["operation"] + names, rows), ""]
    md += [f"- {n}" for n in notes]
    if loop:
        md.append(f"- an empty coroutine run on the same loop (the floor under the async rows): "
                  f"{bl.fmt_time(statistics.median(loop))}")
    text = "\n".join(md) + "\n"
    print(text)
    if args.md:
        Path(args.md).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": bl.machine_info(), "rounds": args.rounds,
            "samples": {f"{n}|{op}": s for (n, op), s in samples.items() if isinstance(n, str)},
        }, indent=1))


if __name__ == "__main__":
    main()
