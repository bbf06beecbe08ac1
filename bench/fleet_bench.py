#!/usr/bin/env python3
"""The fleet tier against its peers, in one run on one machine.

Usage: python bench/fleet_bench.py [--rounds N] [--batch-ms MS] [--md PATH] [--quick]

1. A hit, interleaved (see benchlib.interleave): FleetCache near hit,
   Cache.fetch of the same value, redis-py GET, and redis-py's own
   client-side cache (protocol=3, cache_config) on a hit; for a 10-byte
   value and for a small dict (the Redis peers unpickle it, as a cache
   client must).
2. Memory: 8 worker processes each read the same 2,000 values of 1 KiB,
   through FleetCache (one near copy per host, in the segment) and through
   redis-py's client-side cache (one copy per process); the sum of the
   workers' PSS growth (/proc/PID/smaps_rollup) for each.
3. Redis command rate: 8 worker processes read Zipf-distributed keys (10,000
   keys, s = 1.1) for a few seconds while another client rewrites 50 keys/s;
   the commands the server processed for the host (INFO's
   total_commands_processed, less the writer's own), per second and per
   thousand reads, for FleetCache (its listener's PINGs included) and for
   redis-py's client-side cache.

A redis-server is started on a free loopback port and stopped at the end;
the listener is the real ``apccache fleet listen``.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import benchlib as bl

NS = "fleetbench"


# --- servers ----------------------------------------------------------------------

@contextlib.contextmanager
def redis_server():
    exe = shutil.which("redis-server")
    if exe is None:
        sys.exit("fleet_bench: redis-server is not installed (apt-get install redis-server)")
    from peers import free_loopback_port

    port = free_loopback_port()
    d = tempfile.mkdtemp(prefix="apcbench-redis-")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", d, "--protected-mode", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import redis

        r = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                r.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        yield port
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def host(apccache, port):
    """A segment with a listener on it (and a FleetCache for this process)."""
    from apccache.fleet import FleetCache

    with bl.apccache_segment(apccache) as cache:
        listener = subprocess.Popen([sys.executable, "-m", "apccache", "fleet", "listen", cache.name,
                                     "--redis", f"redis://127.0.0.1:{port}/0", "--namespace", NS,
                                     "--log-level", "warning"])
        try:
            fc = FleetCache(cache, f"redis://127.0.0.1:{port}/0", NS)
            deadline = time.monotonic() + 20
            while not fc.status()["trusted"]:
                if time.monotonic() > deadline:
                    raise RuntimeError("the listener did not start")
                time.sleep(0.01)
            yield cache, fc
        finally:
            listener.send_signal(signal.SIGTERM)
            listener.wait(10)


def csc_client(port):
    """redis-py's client-side cache.  redis-py refuses it below Redis 7.4 as
    a compatibility policy; what it uses (RESP3, CLIENT TRACKING in default
    mode) exists since Redis 6.0, so on Debian's 7.0 this process lowers that
    gate (and the results say so)."""
    import redis
    import redis.connection
    from redis.cache import CacheConfig

    redis.connection.CacheProxyConnection.MIN_ALLOWED_VERSION = "6.0.0"
    return redis.Redis(port=port, protocol=3, cache_config=CacheConfig(max_size=100_000))


# --- 1. a hit -------------------------------------------------------------------

def hit_latency(apccache, port, rounds, batch_s, log):
    import redis

    plain = redis.Redis(port=port)
    csc = csc_client(port)
    loads = pickle.loads
    rows = []
    ratios = {}
    with host(apccache, port) as (cache, fc):
        for label, key, value in (("10 B", "hit:10b", bl.VALUE_10B), ("small dict", "hit:dict", bl.SMALL_DICT)):
            fc.store(key, value)
            assert fc.fetch(key) == value and fc.fetch(key) == value
            cache.store("plain:" + key, value)
            rkey = f"peer:{key}".encode()
            plain.set(rkey, value if isinstance(value, bytes) else pickle.dumps(value))
            assert csc.get(rkey) is not None
            if isinstance(value, bytes):
                peers = [("redis-py GET", plain.get, (rkey,)), ("redis-py cache hit", csc.get, (rkey,))]
            else:
                peers = [("redis-py GET", lambda k: loads(plain.get(k)), (rkey,)),
                         ("redis-py cache hit", lambda k: loads(csc.get(k)), (rkey,))]
            contestants = [("FleetCache near hit", fc.fetch, (key,)),
                           ("Cache.fetch", cache.fetch, ("plain:" + key,)), *peers]
            log(f"hit {label}: {rounds} rounds")
            samples, _ = bl.interleave([(c[0], c[1], c[2]) for c in contestants], rounds, batch_s)
            base = samples["FleetCache near hit"]
            row = [label]
            for cid, _, _ in contestants:
                med = sorted(samples[cid])[len(samples[cid]) // 2]
                r = bl.paired_ratio(samples[cid], base)
                ratios[(label, cid)] = r
                row.append(f"{bl.fmt_time(med)} ({r:.2f}x)")
            rows.append(row)
        header = ["value"] + [c[0] for c in contestants]
    csc.close()
    plain.close()
    return bl.md_table(header, rows), ratios


# --- 2. memory ----------------------------------------------------------------------

def _pss(pid):
    """(Pss, Pss_Anon, Pss_Shmem) of a process, in bytes."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("Pss", "Pss_Anon", "Pss_Shmem"):
                out[name] = int(rest.split()[0]) * 1024
    return (out.get("Pss", 0), out.get("Pss_Anon", 0), out.get("Pss_Shmem", 0))


def _pss_sum(pids):
    rows = [_pss(pid) for pid in pids]
    return tuple(sum(r[i] for r in rows) for i in range(3))


def _mem_worker(kind, seg, port, keys, ready, go, done):
    import apccache

    if kind == "fleet":
        from apccache.fleet import FleetCache

        cache = apccache.Cache.attach(seg)
        fc = FleetCache(cache, f"redis://127.0.0.1:{port}/0", NS)
        get = fc.fetch
    else:
        c = csc_client(port)
        get = c.get
    get(keys[0])
    ready.put(os.getpid())
    go.wait()
    for _ in range(2):
        for k in keys:
            get(k)
    done.put(os.getpid())
    time.sleep(3600)  # measured, then killed


def memory(apccache, port, log, nproc=8, nkeys=2000, size=1024):
    import redis

    ctx = multiprocessing.get_context("spawn")  # no copy-on-write noise from a forked parent
    plain = redis.Redis(port=port)
    out = {}
    with host(apccache, port) as (cache, fc):
        value = os.urandom(size)
        for i in range(nkeys):
            fc.store(f"m:{i}", value)
            plain.set(f"csc:{i}", value)
        for kind in ("fleet", "redis-py cache"):
            keys = [f"m:{i}" for i in range(nkeys)] if kind == "fleet" else [f"csc:{i}" for i in range(nkeys)]
            ready, done, go = ctx.Queue(), ctx.Queue(), ctx.Event()
            procs = [ctx.Process(target=_mem_worker, args=(kind, cache.name, port, keys, ready, go, done))
                     for _ in range(nproc)]
            for p in procs:
                p.start()
            pids = [ready.get(timeout=60) for _ in procs]
            before = _pss_sum(pids)
            go.set()
            for _ in procs:
                done.get(timeout=120)
            after = _pss_sum(pids)
            for p in procs:
                p.kill()
                p.join()
            out[kind] = tuple(a - b for a, b in zip(after, before))
            log(f"memory {kind}: {out[kind][0] / bl.MiB:.1f} MiB over {nproc} workers "
                f"(anon {out[kind][1] / bl.MiB:.1f}, shmem {out[kind][2] / bl.MiB:.1f})")
    plain.close()
    return out, nkeys * size


# --- 3. command rate ------------------------------------------------------------------

def _zipf_keys(n, s, count, seed):
    rnd = random.Random(seed)
    weights = [1 / (i + 1) ** s for i in range(n)]
    return rnd.choices(range(n), weights=weights, k=count)


def _rate_worker(kind, seg, port, prefix, seconds, seed, go, done):
    import apccache

    if kind == "fleet":
        from apccache.fleet import FleetCache

        fc = FleetCache(apccache.Cache.attach(seg), f"redis://127.0.0.1:{port}/0", NS)
        get = fc.fetch
    else:
        get = csc_client(port).get
    keys = [f"{prefix}{i}" for i in _zipf_keys(10_000, 1.1, 200_000, seed)]
    go.wait()
    n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for k in keys[n % 199_000: n % 199_000 + 1000]:
            get(k)
        n += 1000
    done.put(n)


def command_rate(apccache, port, log, nproc=8, seconds=5.0, writes_per_s=50):
    import redis

    ctx = multiprocessing.get_context("spawn")  # no copy-on-write noise from a forked parent
    admin = redis.Redis(port=port)
    out = {}
    with host(apccache, port) as (cache, fc):
        pipe = admin.pipeline(transaction=False)
        for i in range(10_000):
            pipe.set(f"{NS}:z:{i}", b"\x00b" + b"v" * 100)
            pipe.set(f"zc:{i}", b"v" * 100)
        pipe.execute()
        for kind, prefix, wprefix in (("fleet", "z:", f"{NS}:z:"), ("redis-py cache", "zc:", "zc:")):
            go, done = ctx.Event(), ctx.Queue()
            procs = [ctx.Process(target=_rate_worker, args=(kind, cache.name, port, prefix, seconds, s, go, done))
                     for s in range(nproc)]
            for p in procs:
                p.start()
            time.sleep(1.0)
            writer = redis.Redis(port=port)
            c0 = admin.info("stats")["total_commands_processed"]
            t0 = time.monotonic()
            go.set()
            writes = 0
            hot = _zipf_keys(100, 1.1, 100_000, 1)
            while time.monotonic() < t0 + seconds:
                k = hot[writes % len(hot)]
                writer.set(f"{wprefix}{k}", b"\x00b" + b"w" * 100 if kind == "fleet" else b"w" * 100)
                writes += 1
                time.sleep(1 / writes_per_s)
            reads = sum(done.get(timeout=60) for _ in procs)
            c1 = admin.info("stats")["total_commands_processed"]
            elapsed = time.monotonic() - t0
            for p in procs:
                p.join(10)
            cmds = c1 - c0 - writes - 1  # less the writer's SETs and our own INFO
            out[kind] = {"reads": reads, "commands": cmds, "seconds": elapsed, "writes": writes}
            log(f"rate {kind}: {cmds / elapsed:.0f} commands/s for {reads / elapsed:.0f} reads/s")
            writer.close()
    admin.close()
    return out


# --- main ----------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--batch-ms", type=float, default=15.0)
    ap.add_argument("--md", default=str(bl.RESULTS_DIR / "fleet.md"))
    ap.add_argument("--quick", action="store_true", help="fewer rounds, shorter runs (do not commit)")
    args = ap.parse_args(argv)
    bl.exit_on_sigterm()
    rounds = 5 if args.quick else args.rounds
    seconds = 2.0 if args.quick else 5.0

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    apccache, why = bl.import_apccache()
    if apccache is None:
        sys.exit(f"fleet_bench: {why}")
    info = bl.machine_info()
    with redis_server() as port:
        import redis

        info["redis_server"] = "Redis " + redis.Redis(port=port).info("server")["redis_version"]
        table, ratios = hit_latency(apccache, port, rounds, args.batch_ms / 1000, log)
        mem, one_copy = memory(apccache, port, log)
        rate = command_rate(apccache, port, log, seconds=seconds)

    lines = ["## The fleet tier (`bench/fleet_bench.py`)", "", bl.machine_line(info), ""]
    lines += [f"### A hit ({rounds} interleaved rounds; median time, and in brackets the median over rounds of "
              "contestant / FleetCache near hit in the same round)", "", table, ""]
    lines += ["- Cache.fetch: the same value under a plain key of the same segment",
              "- redis-py GET: redis-server on loopback, TCP; the dict is unpickled after the GET",
              "- redis-py cache hit: `Redis(protocol=3, cache_config=CacheConfig(max_size=100000))`, "
              "a key already in its cache: it sends no command, the time is its own check of the socket "
              "for pending invalidations (redis-py asks for Redis >= 7.4 as a policy; this run's "
              f"server is {info.get('redis_server', '?')}, so the bench lowers that gate in its own process: "
              "the tracking it uses exists since Redis 6.0)", ""]
    lines += ["### Memory of 8 worker processes reading the same 2,000 values of 1 KiB", "",
              bl.md_table(["client", "sum of the workers' PSS growth", "of which private (Pss_Anon)",
                           "of which shared memory (Pss_Shmem)", "copies of the data (PSS growth / data)"],
                          [[k, f"{v[0] / bl.MiB:.2f} MiB", f"{v[1] / bl.MiB:.2f} MiB", f"{v[2] / bl.MiB:.2f} MiB",
                            f"{v[0] / one_copy:.1f}"] for k, v in mem.items()]),
              "", f"- the data: {one_copy / bl.MiB:.2f} MiB; FleetCache's copies live in the segment, "
              "whose pages count once, split among the processes that touch them", ""]
    lines += [f"### Redis commands sent by one host of 8 workers: Zipf reads (10,000 keys, s = 1.1), "
              f"another client rewriting the hottest 100 keys at 50/s", "",
              bl.md_table(["client", "reads/s", "commands/s", "commands per 1,000 reads"],
                          [[k, f"{v['reads'] / v['seconds']:,.0f}", f"{v['commands'] / v['seconds']:,.0f}",
                            f"{1000 * v['commands'] / max(1, v['reads']):.2f}"] for k, v in rate.items()]),
              "", "- FleetCache's count includes its listener's PINGs (100/s) and the host's misses (one per key "
              "per invalidation, shared by all workers); redis-py's, each process's own misses and re-reads "
              "after invalidation", ""]
    dict_ratio = {k[1]: v for k, v in ratios.items() if k[0] == "small dict"}
    b_ratio = {k[1]: v for k, v in ratios.items() if k[0] == "10 B"}

    def target(ok, text):
        return f"    TARGET {'PASS' if ok else 'FAIL'}  {text}"

    lines += ["Targets (paired ratios from this run):", ""]
    for label, rr in (("10 B", b_ratio), ("small dict", dict_ratio)):
        near_vs_fetch = 1 / rr["Cache.fetch"]
        lines.append(target(near_vs_fetch <= 1.3,
                            f"near hit {label} <= 1.3x Cache.fetch: measured {near_vs_fetch:.2f}x"))
        lines.append(target(rr["redis-py GET"] >= 100,
                            f"near hit {label} >= 100x faster than redis-py GET: measured {rr['redis-py GET']:.0f}x"))
        lines.append(target(rr["redis-py cache hit"] > 1, f"near hit {label} faster than a redis-py cache hit: "
                            f"measured {rr['redis-py cache hit']:.2f}x"))
    lines.append(target(mem["fleet"][2] < 1.5 * one_copy,
                        f"8 workers hold one copy: FleetCache's shared memory {mem['fleet'][2] / one_copy:.1f} "
                        f"copies of the data; redis-py cache {mem['redis-py cache'][0] / one_copy:.1f} copies"))
    lines.append(target(3 * mem["fleet"][0] < mem["redis-py cache"][0],
                        f"8 workers' whole PSS growth under a third of redis-py cache's: measured "
                        f"{mem['fleet'][0] / mem['redis-py cache'][0]:.2f}x"))
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        with open(args.md, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
