#!/usr/bin/env python3
"""Multi-process mix: 90% fetch / 10% store on 10,000 keys, 1 vs 2 processes.

Usage: python bench/multiproc.py [--rounds N] [--duration S] [--json PATH] [--md PATH]

What it measures: the throughput of one shared cache when one process uses it
and when two processes use it at once, for apccache and for LMDB (on
/dev/shm, ``writemap=True, sync=False, metasync=False``, one transaction per
operation) in the same run. The 2-vs-1 scaling says whether readers
serialise: on a 2-core machine a cache whose reads never block each other
approaches 2.0x (writes, 10% of the mix, are serialised by both engines).

Each trial also records its workers' CPU share (CPU time over wall time
per worker): a 2-process trial whose workers got well under 100% of two
cores was sharing the machine with other work (or sleeping on a lock), and
the run says so in a note.

How: the parent creates the cache, stores all 10,000 keys (32-byte values),
and starts two worker processes (spawned, so nothing is inherited), which
attach by name and stay up for the whole run. Each worker follows its own
fixed pseudo-random plan of keys (seeded, the same in every trial), doing a
store every tenth operation on average and a fetch otherwise, for
``--duration`` seconds. A trial runs one worker (1 process) or both at once
(2 processes) with a common start time. One round runs every trial
(apccache, lmdb and dict, each with 1 and 2 processes) in an order that
rotates every round. Reported: the median ops/s of each trial over the rounds, and the
scaling as the median over rounds of (2-process ops/s / 1-process ops/s in
the same round).

A third contestant, a per-process dict (the same mix on each worker's own
dict, shared with nobody), measures the machine's own ceiling in the same
run: on a quiet 2-core machine it scales about 2.0x. When even it stays
below the 1.5x target, the hypervisor or other work did not give two
processes two cores, and the scaling target is reported INCONCLUSIVE
rather than failed.

The segment and the LMDB directory are removed at the end, on failure too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import random
import statistics
import sys
import time

import benchlib as bl

NUM_KEYS = 10_000
STORE_FRACTION = 0.10
PLAN_LEN = 100_000
CHUNK = 500  # ops between clock checks
VALUE = b"v" * 32


def key_of(i: int) -> bytes:
    return b"mix:%05d" % i


def make_plan(seed: int) -> list[tuple[bytes, bool]]:
    """A fixed list of (key, is_store): 10% stores, keys uniform over 10,000."""
    rng = random.Random(seed)
    keys = [key_of(i) for i in range(NUM_KEYS)]
    return [(rng.choice(keys), rng.random() < STORE_FRACTION) for _ in range(PLAN_LEN)]


def run_mix(fetch, store, plan, duration: float, start_at: float) -> tuple[int, float, float]:
    """Run the plan (cycling) from ``start_at`` for ``duration`` s.

    Returns (ops, wall seconds, CPU seconds of this process): the CPU share
    tells whether the worker had a core to itself or other work took turns.
    """
    while True:  # wait for the common start
        left = start_at - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(left, 0.001) if left > 0.002 else 0)
    t0 = time.perf_counter()
    c0 = time.process_time()
    deadline = t0 + duration
    ops, pos, n = 0, 0, len(plan)
    while True:
        for key, is_store in plan[pos:pos + CHUNK]:
            if is_store:
                store(key, VALUE)
            else:
                fetch(key)
        ops += min(CHUNK, n - pos)
        pos = (pos + CHUNK) % n
        now = time.perf_counter()
        if now >= deadline:
            return ops, now - t0, time.process_time() - c0


def worker(index: int, conn, segment_name, lmdb_path) -> None:
    """A worker process: attach to both caches, then run trials on command."""
    engines, handles = {}, []
    try:
        if segment_name:
            import apccache

            cache = apccache.Cache.attach(segment_name)
            handles.append(cache.close)
            engines["apccache"] = (cache.fetch, cache.store)
        env = bl.open_lmdb(lmdb_path)
        handles.append(env.close)
        ops = bl.LmdbOps(env)
        engines["lmdb"] = (ops.get, ops.put)
        local = {key_of(i): VALUE for i in range(NUM_KEYS)}
        engines["dict"] = (local.get, local.__setitem__)
        plan = make_plan(seed=1000 + index)
        for fetch, store in engines.values():  # warm up every engine
            run_mix(fetch, store, plan, 0.05, 0)
        conn.send(("ready", sorted(engines)))
        while True:
            msg = conn.recv()
            if msg[0] == "stop":
                break
            _, engine, duration, start_at = msg
            fetch, store = engines[engine]
            conn.send(("done",) + run_mix(fetch, store, plan, duration, start_at))
    except Exception as exc:  # report, so the parent does not wait forever
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        except Exception:
            pass
    finally:
        for close in reversed(handles):
            try:
                close()
            except Exception:
                pass
        conn.close()


class Workers:
    """Two long-lived spawned worker processes, driven over pipes."""

    def __init__(self, segment_name, lmdb_path, count=2, timeout=60.0):
        ctx = mp.get_context("spawn")
        self.timeout = timeout
        self.procs, self.conns = [], []
        for i in range(count):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=worker, args=(i, child, segment_name, lmdb_path), daemon=True)
            p.start()
            child.close()
            self.procs.append(p)
            self.conns.append(parent)
        self.engines = None
        for conn in self.conns:
            msg = self._recv(conn)
            self.engines = msg[1]

    def _recv(self, conn):
        if not conn.poll(self.timeout):
            raise RuntimeError(f"a worker did not answer within {self.timeout:.0f} s")
        msg = conn.recv()
        if msg[0] == "error":
            raise RuntimeError(f"worker failed: {msg[1]}")
        return msg

    def trial(self, engine: str, nproc: int, duration: float) -> tuple[float, float]:
        """Total ops/s of ``nproc`` workers running the mix at once, and their CPU share.

        The CPU share is the workers' CPU time over ``nproc`` x wall time: near
        1.0 when each had a core; lower when other work on the machine (or a
        worker sleeping on a lock) took its time.
        """
        start_at = time.monotonic() + 0.05
        for conn in self.conns[:nproc]:
            conn.send(("run", engine, duration, start_at))
        total, cpu, wall = 0.0, 0.0, 0.0
        for conn in self.conns[:nproc]:
            _, ops, secs, cpu_secs = self._recv(conn)
            total += ops / secs
            cpu += cpu_secs
            wall += secs
        return total, cpu / wall

    def close(self):
        for conn in self.conns:
            try:
                conn.send(("stop",))
            except Exception:
                pass
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        for conn in self.conns:
            conn.close()


def run(rounds: int, duration: float, log=print) -> dict:
    notes = []
    apccache, reason = bl.import_apccache()
    if apccache is None:
        notes.append(f"apccache skipped: {reason}")
    with contextlib.ExitStack() as stack:
        segment_name = None
        if apccache is not None:
            cache = stack.enter_context(bl.apccache_segment(apccache))
            for i in range(NUM_KEYS):
                cache.store(key_of(i), VALUE)
            segment_name = cache.name
        lmdb_path = stack.enter_context(bl.shm_tempdir())
        env = bl.open_lmdb(lmdb_path)
        with env.begin(write=True) as txn:
            for i in range(NUM_KEYS):
                txn.put(key_of(i), VALUE)
        env.close()  # the parent holds no LMDB handle while workers use it

        workers = Workers(segment_name, lmdb_path)
        stack.callback(workers.close)
        order = {"apccache": 0, "lmdb": 1, "dict": 2}
        trials = [(e, n) for e in sorted(workers.engines, key=order.get) for n in (1, 2)]
        samples = {t: [] for t in trials}
        shares = {t: [] for t in trials}
        for r in range(rounds):
            shift = r % len(trials)
            for engine, nproc in trials[shift:] + trials[:shift]:
                ops_s, share = workers.trial(engine, nproc, duration)
                samples[(engine, nproc)].append(ops_s)
                shares[(engine, nproc)].append(share)
            log(f"  round {r + 1}/{rounds}: " + ", ".join(
                f"{e} x{n} {samples[(e, n)][-1] / 1e3:.0f}k ops/s ({shares[(e, n)][-1]:.0%} CPU)" for e, n in trials))

    result = {"notes": notes, "rounds": rounds, "duration_s": duration, "engines": {}}
    for engine in dict.fromkeys(e for e, _ in trials):
        one, two = samples[(engine, 1)], samples[(engine, 2)]
        result["engines"][engine] = {
            "ops_s_1": statistics.median(one), "ops_s_2": statistics.median(two),
            "scaling": bl.paired_ratio(two, one),
            "scaling_q1_q3": bl.paired_spread(two, one),
            "samples_1": one, "samples_2": two,
            "cpu_share_1": statistics.median(shares[(engine, 1)]),
            "cpu_share_2": statistics.median(shares[(engine, 2)]),
        }
        if engine != "dict" and result["engines"][engine]["cpu_share_2"] < 0.9:
            notes.append(
                f"{engine}: its 2-process trials got {result['engines'][engine]['cpu_share_2']:.0%} of two "
                "cores (median): other work on the machine, or workers waiting on a lock, took the "
                "rest, so its scaling understates what two free cores give")
    values = {"multiproc:apccache:1": None, "multiproc:apccache:2": None}
    ratios = {}
    for engine, r in result["engines"].items():
        values[f"multiproc:{engine}:1"] = r["ops_s_1"]
        values[f"multiproc:{engine}:2"] = r["ops_s_2"]
        ratios[(f"multiproc:{engine}:2", f"multiproc:{engine}:1")] = (r["scaling"],) + tuple(r["scaling_q1_q3"])
    result["targets"] = bl.evaluate_targets(values, "multi", ratios=ratios)
    ceiling = result["engines"].get("dict", {}).get("scaling")
    result["machine_ceiling"] = ceiling
    for t in result["targets"]:
        if ceiling is not None and ceiling < t["limit"] and t["verdict"] == "FAIL":
            # The machine itself could not give two processes two cores.
            t["verdict"] = "INCONCLUSIVE"
            t["note"] = (f"a per-process dict, which shares nothing, scaled only {ceiling:.2f}x in this run: "
                         "the machine did not give two processes two cores; rerun on a quiet machine")
    return result


def render(info, result) -> str:
    out = ["## Multi-process mix (`bench/multiproc.py`)", "", bl.machine_line(info), ""]
    out.append(f"90% fetch / 10% store, {NUM_KEYS:,} keys, {len(VALUE)}-byte values; "
               f"{result['rounds']} rounds of {result['duration_s']:.1f} s trials, interleaved. "
               "Throughput = median over rounds; scaling = median over rounds of 2-process / 1-process "
               "ops/s in the same round.")
    out.append("")
    rows = []
    apc = result["engines"].get("apccache")
    for engine, r in result["engines"].items():
        vs = ""
        if apc and engine not in ("apccache", "dict"):
            vs = f" ({r['ops_s_2'] / apc['ops_s_2']:.2f}x apccache)"
        label = "dict (per process, shares nothing: the machine's ceiling)" if engine == "dict" else engine
        rows.append([label, f"{r['ops_s_1'] / 1e3:,.0f}k", f"{r['ops_s_2'] / 1e3:,.0f}k{vs}", f"{r['scaling']:.2f}x",
                     f"{r['cpu_share_1']:.0%} / {r['cpu_share_2']:.0%}"])
    out.append(bl.md_table(["engine", "1 process ops/s", "2 processes ops/s", "2-vs-1 scaling",
                            "CPU share 1p / 2p"], rows))
    out.append("")
    for n in result["notes"]:
        out.append(f"- note: {n}")
    if result["notes"]:
        out.append("")
    out.append("Targets:")
    out.append("")
    out += [f"    {line}" for line in bl.target_lines(result["targets"])]
    out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--duration", type=float, default=1.0, help="seconds per trial (default 1.0)")
    ap.add_argument("--json", help="write the figures to this JSON file")
    ap.add_argument("--md", help="write the markdown section to this file")
    args = ap.parse_args(argv)
    if not (1 <= args.rounds <= 100 and 0.05 <= args.duration <= 60):
        ap.error("rounds must be 1..100 and duration 0.05..60 s")
    bl.exit_on_sigterm()
    info = bl.machine_info()
    print(bl.machine_line(info), flush=True)
    result = run(args.rounds, args.duration, log=lambda m: print(m, flush=True))
    md = render(info, result)
    print()
    print(md)
    if args.md:
        with open(args.md, "w") as f:
            f.write(md)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, **result}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
