#!/usr/bin/env python3
"""Multi-process mixes: how one shared cache scales from 1 process to 2, and to 8 on 2 cores.

Usage: python bench/multiproc.py [--rounds N] [--duration S] [--mixes NAME,...]
                                 [--no-lmdb] [--json PATH] [--md PATH]

What it measures: the throughput of one shared cache when one process uses it
and when several use it at once, for apccache and for LMDB (on /dev/shm,
``writemap=True, sync=False, metasync=False``, one transaction per
operation) in the same run, in six mixes (``--mixes`` picks a subset):

- ``mix90``: 90% fetch / 10% store on 10,000 keys, 2 processes vs 1.
- ``read100``: 100% fetch on 10,000 keys, 2 processes vs 1.
- ``mix50``: 50% fetch / 50% store on 10,000 keys, 2 processes vs 1.
- ``hot10``: 90% fetch / 10% store on ten hot keys that both processes
  share, 2 processes vs 1: every operation meets the other process on the
  same few entries, the worst case for a lock.
- ``oversub``: the 90/10 mix of ``mix90`` in 8 processes on a 2-core
  machine vs the same mix in 2: six processes are always waiting for a core,
  so a lock holder is often preempted; a lock whose waiters queue behind a
  sleeping holder (a convoy) makes the aggregate collapse.
- ``hot1``: 100% fetch of one key by every process, 2 processes vs 1: every
  fetch writes that entry's line (its pin and its exact hit count), so the
  two cores hand the line back and forth on every read.  Beside
  ``read100`` it says what an exact per-entry hit count costs on a hot key
  (no target: it is reported, not judged).

The 2-vs-1 scaling says whether readers serialise: on a 2-core machine a
cache whose reads never block each other approaches 2.0x (writes are
serialised by both engines). The 8-vs-2 ratio of ``oversub`` approaches
1.0x for a cache that does not convoy.

Each trial also records its workers' CPU share: their CPU time over their
wall time, divided by the number of cores they could use (one per worker, at
most the machine's cores). A trial whose workers got well under 100% was
sharing the machine with other work (or sleeping on a lock), and the run
says so in a note.

How: the parent creates the cache, stores all 10,000 keys (32-byte values),
and starts the worker processes (eight; two when ``oversub`` is not run;
spawned, so nothing is inherited), which attach by name and stay up for the
whole run. Each worker follows its own fixed pseudo-random plan of keys per
mix (seeded, the same in every trial), doing a store with the mix's
probability and a fetch otherwise, for ``--duration`` seconds. A trial runs
the first 1, 2 or 8 workers at once with a common start time; the others
wait on their pipes. One round runs every trial (each mix's process counts
for apccache, lmdb and dict; the 2-process 90/10 trial serves both
``mix90`` and ``oversub``) in an order that rotates every round (by about
1/rounds of the list, so each trial takes its turn early and late).
Reported per mix: the median ops/s of each trial over the rounds, and the
scaling as the median over rounds of (ops/s with more processes / ops/s with
fewer, in the same round).

A third contestant, a per-process dict (the same mix on each worker's own
dict, shared with nobody), measures the machine's own ceiling in the same
run: on a quiet 2-core machine it scales about 2.0x from 1 process to 2 and
stays about 1.0x from 2 to 8. A scaling figure counts only when the dict
scaled too: when the dict's 2-vs-1 scaling in that mix is below 1.5x (8-vs-2
below 0.85x for ``oversub``), or a target fails while the dict itself stayed
below the target's limit, the hypervisor or other work did not give the
processes their cores, and the target is reported INCONCLUSIVE rather than
passed or failed.

The segment and the LMDB directory are removed at the end, on failure too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import random
import statistics
import sys
import time

import benchlib as bl

NUM_KEYS = 10_000
HOT_KEYS = 10
PLAN_LEN = 20_000
CHUNK = 500  # ops between clock checks
VALUE = b"v" * 32

# A workload is what one worker does: how many keys its plan draws from (the
# first ``keys`` of the 10,000, the same ones in every process) and which
# fraction of its operations are stores.
WORKLOADS = {
    "mix90": {"keys": NUM_KEYS, "stores": 0.10},
    "read100": {"keys": NUM_KEYS, "stores": 0.0},
    "mix50": {"keys": NUM_KEYS, "stores": 0.50},
    "hot10": {"keys": HOT_KEYS, "stores": 0.10},
    "hot1": {"keys": 1, "stores": 0.0},
}

# A mix is a workload and the two process counts it compares. ``gate`` is the
# scaling the per-process dict must reach in the same run for the mix's
# targets to count.
MIXES = {
    "mix90": {"workload": "mix90", "procs": (1, 2), "gate": 1.5,
              "title": f"90% fetch / 10% store, {NUM_KEYS:,} keys"},
    "read100": {"workload": "read100", "procs": (1, 2), "gate": 1.5,
                "title": f"100% fetch, {NUM_KEYS:,} keys"},
    "mix50": {"workload": "mix50", "procs": (1, 2), "gate": 1.5,
              "title": f"50% fetch / 50% store, {NUM_KEYS:,} keys"},
    "hot10": {"workload": "hot10", "procs": (1, 2), "gate": 1.5,
              "title": f"90% fetch / 10% store, {HOT_KEYS} hot keys shared by every process"},
    "oversub": {"workload": "mix90", "procs": (2, 8), "gate": 0.85,
                "title": f"90% fetch / 10% store, {NUM_KEYS:,} keys, oversubscribed"},
    "hot1": {"workload": "hot1", "procs": (1, 2), "gate": 1.5,
             "title": "100% fetch of one key shared by every process"},
}


def key_of(i: int) -> bytes:
    return b"mix:%05d" % i


def make_plan(workload: str, seed: int, keys: list[bytes]) -> tuple[list[bytes], bytes]:
    """A fixed plan: its keys, uniform over the workload's first keys, and one is-a-store flag per key.

    The plan holds references to ``keys`` (the worker's own key objects, which
    its dict shares) and one byte per operation, so a worker's private memory
    stays under a megabyte. A plan of tuples (5.6 MB per worker) made the
    8-process trials miss the shared L3 cache: every engine, the dict too, lost
    a third of its throughput to the harness's own memory traffic.
    """
    w = WORKLOADS[workload]
    rng = random.Random(seed)
    keys = keys[:w["keys"]]
    return ([rng.choice(keys) for _ in range(PLAN_LEN)],
            bytes(rng.random() < w["stores"] for _ in range(PLAN_LEN)))


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


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
    keys, stores = plan
    ops, pos, n = 0, 0, len(keys)
    while True:
        for key, is_store in zip(keys[pos:pos + CHUNK], stores[pos:pos + CHUNK]):
            if is_store:
                store(key, VALUE)
            else:
                fetch(key)
        ops += min(CHUNK, n - pos)
        pos = (pos + CHUNK) % n
        now = time.perf_counter()
        if now >= deadline:
            return ops, now - t0, time.process_time() - c0


def worker(index: int, conn, segment_name, lmdb_path, workloads) -> None:
    """A worker process: attach to the caches, then run trials on command."""
    engines, handles = {}, []
    try:
        if segment_name:
            import apccache

            cache = apccache.Cache.attach(segment_name)
            handles.append(cache.close)
            engines["apccache"] = (cache.fetch, cache.store)
        if lmdb_path:
            env = bl.open_lmdb(lmdb_path)
            handles.append(env.close)
            ops = bl.LmdbOps(env)
            engines["lmdb"] = (ops.get, ops.put)
        keys = [key_of(i) for i in range(NUM_KEYS)]
        local = dict.fromkeys(keys, VALUE)
        engines["dict"] = (local.get, local.__setitem__)
        seeds = {w: 1000 + 100 * i for i, w in enumerate(WORKLOADS)}  # the same whatever --mixes picks
        plans = {w: make_plan(w, seeds[w] + index, keys) for w in workloads}
        for fetch, store in engines.values():  # warm up every engine on every plan
            for plan in plans.values():
                run_mix(fetch, store, plan, 0.05, 0)
        conn.send(("ready", sorted(engines)))
        while True:
            msg = conn.recv()
            if msg[0] == "stop":
                break
            _, engine, workload, duration, start_at = msg
            fetch, store = engines[engine]
            conn.send(("done",) + run_mix(fetch, store, plans[workload], duration, start_at))
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
    """Long-lived spawned worker processes, driven over pipes.

    ``workloads[i]`` lists the workloads worker ``i`` builds a plan for (the
    workers beyond the second only ever run the oversubscribed 90/10 mix).
    """

    def __init__(self, segment_name, lmdb_path, workloads, timeout=60.0):
        ctx = mp.get_context("spawn")
        self.timeout = timeout
        self.cores = usable_cores()
        self.procs, self.conns = [], []
        self.engines = None
        try:
            for i, names in enumerate(workloads):
                parent, child = ctx.Pipe()
                p = ctx.Process(target=worker, args=(i, child, segment_name, lmdb_path, names), daemon=True)
                p.start()
                child.close()
                self.procs.append(p)
                self.conns.append(parent)
            for conn in self.conns:
                msg = self._recv(conn)
                self.engines = msg[1]
        except BaseException:
            self.close()  # no worker outlives a failed start
            raise

    def _recv(self, conn):
        if not conn.poll(self.timeout):
            raise RuntimeError(f"a worker did not answer within {self.timeout:.0f} s")
        msg = conn.recv()
        if msg[0] == "error":
            raise RuntimeError(f"worker failed: {msg[1]}")
        return msg

    def trial(self, engine: str, workload: str, nproc: int, duration: float) -> tuple[float, float]:
        """Total ops/s of ``nproc`` workers running ``workload`` at once, and their CPU share.

        The CPU share is the workers' CPU time over their mean wall time x the
        cores they could use (``nproc``, at most the machine's): near 1.0 when
        they had those cores; lower when other work on the machine (or a
        worker sleeping on a lock) took their time.
        """
        start_at = time.monotonic() + 0.05
        for conn in self.conns[:nproc]:
            conn.send(("run", engine, workload, duration, start_at))
        total, cpu, wall = 0.0, 0.0, 0.0
        for conn in self.conns[:nproc]:
            _, ops, secs, cpu_secs = self._recv(conn)
            total += ops / secs
            cpu += cpu_secs
            wall += secs
        return total, cpu / (wall / nproc * min(nproc, self.cores))

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
        self.procs, self.conns = [], []


def plan_trials(mixes: list[str], engines: list[str]) -> list[tuple[str, str, int]]:
    """Every (workload, engine, processes) trial the mixes need, each once.

    Grouped by workload, then engine, so that the trials a ratio pairs run
    close together in a round.
    """
    procs: dict[str, set] = {}
    for m in mixes:
        procs.setdefault(MIXES[m]["workload"], set()).update(MIXES[m]["procs"])
    order = {"apccache": 0, "lmdb": 1, "dict": 2}
    return [(w, e, n) for w in procs for e in sorted(engines, key=order.get) for n in sorted(procs[w])]


def run(rounds: int, duration: float, mixes: list[str] | None = None, use_lmdb: bool = True, log=print) -> dict:
    mixes = list(mixes or MIXES)
    notes = []
    apccache, reason = bl.import_apccache()
    if apccache is None:
        notes.append(f"apccache skipped: {reason}")
    if not use_lmdb:
        notes.append("lmdb skipped (--no-lmdb)")
    needed = {MIXES[m]["workload"] for m in mixes}
    nmax = max(n for m in mixes for n in MIXES[m]["procs"])
    # Workers 0 and 1 run every workload; the rest only the oversubscribed one.
    wide = [w for w in WORKLOADS if w in needed]
    only_many = [w for w in wide if any(MIXES[m]["workload"] == w and max(MIXES[m]["procs"]) > 2 for m in mixes)]
    workloads = [wide if i < 2 else only_many for i in range(nmax)]
    with contextlib.ExitStack() as stack:
        segment_name = None
        if apccache is not None:
            cache = stack.enter_context(bl.apccache_segment(apccache))
            for i in range(NUM_KEYS):
                cache.store(key_of(i), VALUE)
            segment_name = cache.name
        lmdb_path = None
        if use_lmdb:
            lmdb_path = stack.enter_context(bl.shm_tempdir())
            env = bl.open_lmdb(lmdb_path)
            with env.begin(write=True) as txn:
                for i in range(NUM_KEYS):
                    txn.put(key_of(i), VALUE)
            env.close()  # the parent holds no LMDB handle while workers use it

        workers = Workers(segment_name, lmdb_path, workloads)
        stack.callback(workers.close)
        cores = workers.cores
        trials = plan_trials(mixes, workers.engines)
        samples = {t: [] for t in trials}
        shares = {t: [] for t in trials}
        for r in range(rounds):
            # Rotate the order, spreading the starting point over the whole list.
            shift = (r * len(trials) // rounds) % len(trials)
            for t in trials[shift:] + trials[:shift]:
                w, engine, nproc = t
                ops_s, share = workers.trial(engine, w, nproc, duration)
                samples[t].append(ops_s)
                shares[t].append(share)
            for w in dict.fromkeys(w for w, _, _ in trials):
                log(f"  round {r + 1}/{rounds} {w}: " + ", ".join(
                    f"{e} x{n} {samples[(w2, e, n)][-1] / 1e3:.0f}k ops/s ({shares[(w2, e, n)][-1]:.0%} CPU)"
                    for w2, e, n in trials if w2 == w))

    result = {"notes": notes, "rounds": rounds, "duration_s": duration, "cores": cores,
              "lmdb": use_lmdb, "mixes": {}}
    values, ratios = {}, {}
    for m in mixes:
        spec = MIXES[m]
        w, (lo, hi) = spec["workload"], spec["procs"]
        mix = {"title": spec["title"], "workload": w, "procs": [lo, hi], "engines": {}}
        for engine in dict.fromkeys(e for w2, e, _ in trials if w2 == w):
            few, many = samples[(w, engine, lo)], samples[(w, engine, hi)]
            r = {
                f"ops_s_{lo}": statistics.median(few), f"ops_s_{hi}": statistics.median(many),
                "scaling": bl.paired_ratio(many, few),
                "scaling_q1_q3": bl.paired_spread(many, few),
                f"samples_{lo}": few, f"samples_{hi}": many,
                f"cpu_share_{lo}": statistics.median(shares[(w, engine, lo)]),
                f"cpu_share_{hi}": statistics.median(shares[(w, engine, hi)]),
            }
            mix["engines"][engine] = r
            values[f"multiproc:{m}:{engine}:{lo}"] = r[f"ops_s_{lo}"]
            values[f"multiproc:{m}:{engine}:{hi}"] = r[f"ops_s_{hi}"]
            ratios[(f"multiproc:{m}:{engine}:{hi}", f"multiproc:{m}:{engine}:{lo}")] = (
                (r["scaling"],) + tuple(r["scaling_q1_q3"]))
            share = r[f"cpu_share_{hi}"]
            if engine != "dict" and share < 0.9:
                notes.append(
                    f"{m}, {engine}: its {hi}-process trials got {share:.0%} of {min(hi, cores)} cores (median): "
                    "other work on the machine, or workers waiting on a lock, took the rest, so its "
                    "scaling understates what free cores give")
        mix["ceiling"] = mix["engines"].get("dict", {}).get("scaling")
        result["mixes"][m] = mix
        # The scaling against the dict's own scaling in the same round.
        apc, ref = mix["engines"].get("apccache"), mix["engines"].get("dict")
        if apc and ref:
            num, den = f"multiproc:{m}:apccache:scaling", f"multiproc:{m}:dict:scaling"
            values[num], values[den] = apc["scaling"], ref["scaling"]
            per_round = [
                (a2 / a1) / (d2 / d1) for a1, a2, d1, d2 in zip(
                    apc[f"samples_{lo}"], apc[f"samples_{hi}"], ref[f"samples_{lo}"], ref[f"samples_{hi}"])]
            ratios[(num, den)] = (statistics.median(per_round),) + bl.paired_spread(per_round, [1.0] * len(per_round))

    targets = [t for t in bl.evaluate_targets(values, "multi", ratios=ratios) if t.get("mix") in result["mixes"]]
    for t in targets:
        mix = result["mixes"][t["mix"]]
        ceiling, gate = mix["ceiling"], MIXES[t["mix"]]["gate"]
        lo, hi = mix["procs"]
        if ceiling is None or t["verdict"] == "SKIP":
            continue
        if ceiling < gate:
            need = gate
        elif t["verdict"] == "FAIL" and t.get("unit") != "x" and ceiling < t["limit"]:
            need = t["limit"]
        else:
            continue
        # The machine itself did not give the processes their cores.
        t["note"] = (f"would be {t['verdict']}; machine busy: a per-process dict, which shares nothing, went only "
                     f"{ceiling:.2f}x from {lo} to {hi} processes in this run, below the {need:.2f}x it must "
                     "reach for this figure to count; rerun on a quiet machine")
        t["verdict"] = "INCONCLUSIVE"
    result["targets"] = targets
    return result


def render(info, result) -> str:
    out = ["## Multi-process mixes (`bench/multiproc.py`)", "", bl.machine_line(info), ""]
    out.append(f"{len(VALUE)}-byte values; {result['rounds']} rounds of {result['duration_s']:.1f} s trials, "
               f"interleaved, on {result['cores']} cores. Throughput = median over rounds; scaling = median over "
               "rounds of the ops/s with more processes / with fewer in the same round. CPU share = the "
               "workers' CPU time / (wall time x the cores they could use).")
    out.append("")
    for m, mix in result["mixes"].items():
        lo, hi = mix["procs"]
        out.append(f"### `{m}`: {mix['title']}, {hi} processes vs {lo}")
        out.append("")
        rows = []
        apc = mix["engines"].get("apccache")
        for engine, r in mix["engines"].items():
            vs = ""
            if apc and engine not in ("apccache", "dict"):
                vs = f" ({r[f'ops_s_{hi}'] / apc[f'ops_s_{hi}']:.2f}x apccache)"
            label = "dict (per process, shares nothing: the machine's ceiling)" if engine == "dict" else engine
            rows.append([label, f"{r[f'ops_s_{lo}'] / 1e3:,.0f}k", f"{r[f'ops_s_{hi}'] / 1e3:,.0f}k{vs}",
                         f"{r['scaling']:.2f}x", f"{r[f'cpu_share_{lo}']:.0%} / {r[f'cpu_share_{hi}']:.0%}"])

        def procs(n):
            return f"{n} process" + ("es" if n > 1 else "")

        out.append(bl.md_table(["engine", f"{procs(lo)} ops/s", f"{procs(hi)} ops/s", f"{hi}-vs-{lo} scaling",
                                f"CPU share {lo}p / {hi}p"], rows))
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
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    ap.add_argument("--duration", type=float, default=0.3, help="seconds per trial (default 0.3)")
    ap.add_argument("--mixes", default=",".join(MIXES),
                    help=f"comma-separated subset of {', '.join(MIXES)} (default: all)")
    ap.add_argument("--no-lmdb", action="store_true", help="leave LMDB out (about a third less time)")
    ap.add_argument("--json", help="write the figures to this JSON file")
    ap.add_argument("--md", help="write the markdown section to this file")
    args = ap.parse_args(argv)
    if not (1 <= args.rounds <= 100 and 0.05 <= args.duration <= 60):
        ap.error("rounds must be 1..100 and duration 0.05..60 s")
    mixes = [m.strip() for m in args.mixes.split(",") if m.strip()]
    unknown = [m for m in mixes if m not in MIXES]
    if unknown or not mixes:
        ap.error(f"--mixes takes a comma-separated subset of {', '.join(MIXES)}; got {args.mixes!r}")
    mixes = [m for m in MIXES if m in mixes]
    bl.exit_on_sigterm()
    info = bl.machine_info()
    print(bl.machine_line(info), flush=True)
    result = run(args.rounds, args.duration, mixes, use_lmdb=not args.no_lmdb, log=lambda m: print(m, flush=True))
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
