"""What checksums=True costs: fetch and store of 10 B, 10 KiB and 1 MiB
values on a segment with checksums and on one without, timed in the same
run, interleaved, with dict.get as the yardstick of the machine's speed.

Run: ``python bench/checksums.py [--rounds N]``; writes
bench/results/checksums.md.  Each round times every case once (the median of
a few thousand calls, or tens for 1 MiB); the table gives the medians over
rounds and the paired ratio checksums/plain per round, median and spread.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib as bl  # noqa: E402

import apccache  # noqa: E402

SIZES = {"10 B": bl.VALUE_10B, "10 KiB": bl.VALUE_10K, "1 MiB": bl.VALUE_1M}


def per_call(fn, arg, n):
    """Median of 5 batches of n calls, in ns per call."""
    out = []
    for _ in range(5):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn(arg)
        out.append((time.perf_counter_ns() - t0) / n)
    return statistics.median(out)


def per_store(fn, key, value, n):
    out = []
    for _ in range(5):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn(key, value)
        out.append((time.perf_counter_ns() - t0) / n)
    return statistics.median(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    names = [f"{bl.PREFIX}{os.getpid()}-{flag}" for flag in ("plain", "sum")]
    caches = {
        False: apccache.Cache.create(names[0], size=16 << 20),
        True: apccache.Cache.create(names[1], size=16 << 20, checksums=True),
    }
    try:
        for c in caches.values():
            for label, v in SIZES.items():
                c.store(label.encode(), v)
        d = {b"k": bl.VALUE_10B}
        rows = {}  # (op, size, checksums) -> [ns per round]
        for _ in range(args.rounds):
            rows.setdefault(("dict.get", "10 B", False), []).append(per_call(d.get, b"k", 20000))
            for label, v in SIZES.items():
                n = 20000 if len(v) < 100_000 else 200
                for flag, c in caches.items():
                    rows.setdefault(("fetch", label, flag), []).append(per_call(c.fetch, label.encode(), n))
                    rows.setdefault(("store", label, flag), []).append(
                        per_store(c.store, label.encode(), v, n))
    finally:
        for c in caches.values():
            c.unlink()
            c.close()

    lines = [
        "# What checksums=True costs",
        "",
        bl.machine_line(),
        "",
        f"{args.rounds} interleaved rounds; medians over rounds; ratio = checksums / plain, paired per round "
        "(median, and the middle half of the rounds).",
        "",
        f"dict.get of 10 B in the same run: {statistics.median(rows[('dict.get', '10 B', False)]):.0f} ns",
        "",
        "| operation | value | plain | checksums | ratio (paired) | middle half |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for op in ("fetch", "store"):
        for label in SIZES:
            plain, summed = rows[(op, label, False)], rows[(op, label, True)]
            ratios = sorted(s / p for s, p in zip(summed, plain))
            q = len(ratios) // 4
            lines.append(
                f"| {op} | {label} | {fmt(statistics.median(plain))} | {fmt(statistics.median(summed))} | "
                f"{statistics.median(ratios):.2f}x | {ratios[q]:.2f}x - {ratios[-q - 1]:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(bl.RESULTS_DIR, exist_ok=True)
    (bl.RESULTS_DIR / "checksums.md").write_text(text)


def fmt(ns):
    return f"{ns / 1000:.1f} us" if ns >= 1000 else f"{ns:.0f} ns"


if __name__ == "__main__":
    main()
