#!/usr/bin/env python3
"""Side-by-side get/set medians: apccache, dict, lmdb, diskcache, Redis, memcached.

Usage: python bench/peers.py [--rounds N] [--batch-ms MS] [--json PATH] [--md PATH]

Every peer runs the same operations (get hit of 10 B, 10 KiB and 1 MiB, get
miss, set of 10 B and 10 KiB) on the same bytes keys and values, in one
process, one operation per call. The measurement is interleaved: each round
times one batch of every (peer, operation) pair, in an order that rotates
from round to round, so a slow spell of the machine hits every peer alike.
A batch lasts about ``--batch-ms`` (its length is calibrated once per pair).
The table gives each pair's median time per operation over the rounds and
its ratio to apccache: the median over rounds of (peer batch / apccache batch
of the same round), so ">1x" means slower than apccache.

Redis and memcached are started by this script on a free loopback port
(127.0.0.1 only) when ``redis-server`` / ``memcached`` and the ``redis`` /
``pymemcache`` clients are installed, and stopped at the end; a missing one
is skipped with a note saying what to install. The run is bounded: rounds x
pairs x batch length, about 30 s with the defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import benchlib as bl

OPS = [
    # (op id, label, key, value for a set or None for a get, expected result length or None)
    ("get_10b", "get hit 10 B", bl.KEY_10B, None),
    ("get_miss", "get miss", bl.KEY_MISS, None),
    ("set_10b", "set 10 B", bl.KEY_STORE_10B, bl.VALUE_10B),
    ("get_10kib", "get hit 10 KiB", bl.KEY_10K, None),
    ("set_10kib", "set 10 KiB", bl.KEY_STORE_10K, bl.VALUE_10K),
    ("get_1mib", "get hit 1 MiB", bl.KEY_1M, None),
]

# Which peer op feeds which target (the micro suite's scenario ids).
TARGET_IDS = {"get_10b": "fetch_hit_10b", "get_miss": "fetch_miss", "set_10b": "store_10b", "get_1mib": "fetch_1mib"}

PRELOAD = [(bl.KEY_10B, bl.VALUE_10B), (bl.KEY_10K, bl.VALUE_10K), (bl.KEY_1M, bl.VALUE_1M)]


class Peer:
    """A named pair of callables, ``get(key)`` and ``set(key, value)``."""

    def __init__(self, name, get, set_, note="", calls=None):
        self.name, self.get, self.set, self.note = name, get, set_, note
        self.calls = calls  # baselines: op id -> (callable, args), no get/set

    def call_for(self, op_id):
        """What to time for ``op_id``: ``(callable, args)``, or None when n/a."""
        if self.calls is not None:
            return self.calls.get(op_id)
        for oid, _, key, value in OPS:
            if oid == op_id:
                if value is None:
                    return (self.get, (key,)) if self.get else None
                return (self.set, (key, value)) if self.set else None
        raise KeyError(op_id)


# --- servers --------------------------------------------------------------------


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


@contextlib.contextmanager
def server(argv: list[str], port: int):
    """Run a server process for the duration of the block; always stop it."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        try:
            wait_for_port(port, proc)
        except RuntimeError as exc:
            err = b""
            if proc.poll() is not None and proc.stderr:
                err = proc.stderr.read()[-500:]
            raise RuntimeError(f"{argv[0]}: {exc} {err.decode(errors='replace').strip()}") from None
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc.stderr:
            proc.stderr.close()


# --- peer set-up -------------------------------------------------------------------


def setup_peers(stack: contextlib.ExitStack, notes: list[str], baseline: bool = True) -> list[Peer]:
    peers = []

    apccache, reason = bl.import_apccache()
    if apccache is None:
        notes.append(f"apccache skipped: {reason}")
    else:
        try:
            cache = stack.enter_context(bl.apccache_segment(apccache))
        except Exception as exc:  # an engine that cannot create a segment: measure the rest
            notes.append(f"apccache skipped: Cache.create failed ({type(exc).__name__}: {exc})")
        else:
            peers.append(Peer("apccache", cache.fetch, cache.store, "64 MiB segment, fetch returns a copy"))

    d = bl.DictOps()
    peers.append(Peer("dict", d.get, d.put, "per-process, returns a reference"))

    try:
        import lmdb  # noqa: F401

        path = stack.enter_context(bl.shm_tempdir())
        env = bl.open_lmdb(path)
        stack.callback(env.close)
        ops = bl.LmdbOps(env)
        peers.append(Peer("lmdb", ops.get, ops.put, "/dev/shm, writemap, no sync, 1 txn/op"))
    except ImportError:
        notes.append("lmdb skipped: pip install lmdb")

    try:
        dc = stack.enter_context(bl.diskcache_on_shm())
        peers.append(Peer("diskcache", dc.get, dc.set, "SQLite on /dev/shm"))
    except ImportError:
        notes.append("diskcache skipped: pip install diskcache")

    peers += setup_redis(stack, notes)
    peers += setup_memcached(stack, notes)

    if baseline:
        base = bl.CffiBaseline()
        view = stack.enter_context(bl.shm_copy_source(bl.MiB))
        calls = {
            "get_10b": (base.ret10, (bl.KEY_10B,)),
            "get_miss": (base.bare, ()),
            "get_1mib": (bytes, (view,)),
        }
        note = (
            "get 10 B: one cffi call copying 10 bytes out + ffi.unpack; get miss: a bare cffi call; "
            f"get 1 MiB: bytes(memoryview) of shared memory ({base.describe()})"
        )
        peers.append(Peer("baseline", None, None, note, calls))
    return peers


def setup_redis(stack, notes) -> list[Peer]:
    binary = shutil.which("redis-server")
    if not binary:
        notes.append("redis skipped: redis-server not installed (apt-get install redis-server)")
        return []
    try:
        import redis
    except ImportError:
        notes.append("redis skipped: the redis client is not installed (pip install redis)")
        return []
    port = free_loopback_port()
    workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix=bl.PREFIX + "redis-"))
    stack.enter_context(server([
        binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
        "--protected-mode", "yes", "--daemonize", "no", "--dir", workdir, "--logfile", "",
    ], port))
    client = redis.Redis(host="127.0.0.1", port=port)
    stack.callback(client.close)
    client.ping()
    return [Peer("redis", client.get, client.set, f"redis-server on 127.0.0.1:{port}, TCP")]


def setup_memcached(stack, notes) -> list[Peer]:
    binary = shutil.which("memcached")
    if not binary:
        notes.append("memcached skipped: memcached not installed (apt-get install memcached)")
        return []
    try:
        from pymemcache.client.base import Client
    except ImportError:
        notes.append("memcached skipped: the pymemcache client is not installed (pip install pymemcache)")
        return []
    port = free_loopback_port()
    argv = [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "256", "-I", "4m", "-t", "2"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        argv += ["-u", "root"]  # memcached refuses to run as root without naming a user
    stack.enter_context(server(argv, port))
    client = Client(("127.0.0.1", port), no_delay=True, connect_timeout=5, timeout=5)
    stack.callback(client.close)
    # pymemcache's set defaults to noreply=True (fire and forget); wait for the
    # reply so a set costs a round trip here, as it does for Redis.
    return [Peer("memcached", client.get, functools.partial(client.set, noreply=False),
                 f"memcached on 127.0.0.1:{port}, TCP, set waits for the reply")]


def loopback_rtt(pings: int = 300) -> float:
    """Median-free quick figure: seconds per 10-byte TCP echo over 127.0.0.1.

    A child process echoes; this is the floor under any get from Redis or
    memcached on this machine (its cross-process wake-up latency included).
    """
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    pid = os.fork()
    if pid == 0:  # the echo child: serves one connection, then exits
        try:
            conn, _ = srv.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while True:
                data = conn.recv(64)
                if not data:
                    break
                conn.sendall(data)
        finally:
            os._exit(0)
    srv.close()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as cl:
            cl.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            batches = []
            for _ in range(3):
                t0 = time.perf_counter()
                for _ in range(pings // 3):
                    cl.sendall(b"0123456789")
                    got = 0
                    while got < 10:
                        got += len(cl.recv(64))
                batches.append((time.perf_counter() - t0) / (pings // 3))
    finally:
        os.waitpid(pid, 0)
    return statistics.median(batches)


# --- measurement ----------------------------------------------------------------------


def pairs_for(peers):
    pairs = []
    for peer in peers:
        for op_id, *_ in OPS:
            call = peer.call_for(op_id)
            if call is not None:
                pairs.append((peer.name, op_id, call[0], call[1]))
    return pairs


def measure(peers, rounds: int, batch_s: float, log=print) -> dict:
    for peer in peers:
        if peer.set is not None:
            for key, value in PRELOAD:
                peer.set(key, value)
        if peer.get is not None:
            got = peer.get(bl.KEY_10B)
            assert got == bl.VALUE_10B, f"{peer.name}: preload check failed ({got!r})"
            assert peer.get(bl.KEY_MISS) is None, f"{peer.name}: a miss returned a value"
    pairs = pairs_for(peers)
    contestants = [((name, op_id), fn, args) for name, op_id, fn, args in pairs]
    samples, sizes = bl.interleave(contestants, rounds, batch_s, log=log)
    return {"samples": samples, "sizes": sizes}


def summarize(peers, measured) -> dict:
    samples = measured["samples"]
    rows = []
    for op_id, label, *_ in OPS:
        apc = samples.get(("apccache", op_id))
        for peer in peers:
            s = samples.get((peer.name, op_id))
            if not s:
                continue
            ratio = None
            if apc:
                ratio = bl.paired_ratio(s, apc)
            rows.append({
                "op": op_id, "label": label, "peer": peer.name,
                "median_s": statistics.median(s), "min_s": min(s), "rounds": len(s),
                "batch": measured["sizes"][(peer.name, op_id)], "vs_apccache": ratio,
            })
    # Re-key the samples the targets use by the micro suite's scenario ids.
    by_target_id = {}
    for op_id, scen in TARGET_IDS.items():
        for peer in ("apccache", "lmdb", "baseline"):
            if samples.get((peer, op_id)):
                by_target_id[f"{peer}:{scen}"] = samples[(peer, op_id)]
    values = {k: statistics.median(v) for k, v in by_target_id.items()}
    ratios = bl.paired_target_ratios(by_target_id)
    targets = bl.evaluate_targets(values, "single", ratios=ratios)
    return {"rows": rows, "targets": targets}


def render(info, peers, summary, notes, rounds, batch_s, rtt=None) -> str:
    out = ["## Peers side by side (`bench/peers.py`)", "", bl.machine_line(info), ""]
    out.append(f"Interleaved: {rounds} rounds, each timing one ~{batch_s * 1e3:.0f} ms batch of every "
               "(peer, operation) pair. Time = median per operation; ratio = median over rounds of "
               "peer / apccache in the same round (>1x: slower than apccache).")
    out.append("")
    names = [p.name for p in peers]
    header = ["operation"] + names
    rows = []
    by = {(r["op"], r["peer"]): r for r in summary["rows"]}
    for op_id, label, *_ in OPS:
        row = [label]
        for name in names:
            r = by.get((op_id, name))
            if r is None:
                row.append("-")
            elif r["vs_apccache"] is None or name == "apccache":
                row.append(bl.fmt_time(r["median_s"]))
            else:
                row.append(f"{bl.fmt_time(r['median_s'])} ({r['vs_apccache']:.2f}x)")
        rows.append(row)
    out.append(bl.md_table(header, rows))
    out.append("")
    if rtt is not None:
        out.append(f"- loopback TCP echo round trip on this machine: {bl.fmt_time(rtt)} "
                   "(the floor under every Redis/memcached get here)")
    for p in peers:
        if p.note:
            out.append(f"- {p.name}: {p.note}")
    for n in notes:
        out.append(f"- note: {n}")
    out.append("")
    out.append("Targets (paired ratios from this run):")
    out.append("")
    out += [f"    {line}" for line in bl.target_lines(summary["targets"])]
    out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    ap.add_argument("--batch-ms", type=float, default=15.0, help="length of one timed batch (default 15 ms)")
    ap.add_argument("--json", help="write the figures to this JSON file")
    ap.add_argument("--md", help="write the markdown section to this file")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.rounds > 1000 or not (0.1 <= args.batch_ms <= 1000):
        ap.error("rounds must be 1..1000 and batch-ms 0.1..1000")
    bl.exit_on_sigterm()

    info = bl.machine_info()
    print(bl.machine_line(info), flush=True)
    notes: list[str] = []
    with contextlib.ExitStack() as stack:
        peers = setup_peers(stack, notes)
        for n in notes:
            print("note:", n, flush=True)
        print(f"peers: {', '.join(p.name for p in peers)}; {args.rounds} rounds", flush=True)
        batch_s = args.batch_ms / 1e3
        measured = measure(peers, args.rounds, batch_s, log=lambda m: print(m, flush=True))
        summary = summarize(peers, measured)
        rtt = loopback_rtt()
        md = render(info, peers, summary, notes, args.rounds, batch_s, rtt)
    print()
    print(md)
    if args.md:
        with open(args.md, "w") as f:
            f.write(md)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({
                "machine": info, "rounds": args.rounds, "batch_ms": args.batch_ms,
                "peers": [{"name": p.name, "note": p.note} for p in peers], "notes": notes,
                "loopback_rtt_s": rtt,
                "rows": summary["rows"], "targets": summary["targets"],
            }, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
