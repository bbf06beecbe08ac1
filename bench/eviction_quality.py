"""Eviction quality: apccache's hit ratio on a Zipf trace against an exact
LRU of the same byte budget, and how full the arena is when it first evicts.

The trace: Zipf(0.99) over 12x more 1 KiB values than fit in the segment;
each request fetches, and a miss stores the value (a read-through cache).
The exact LRU is an OrderedDict that holds as many bytes as the segment's
arena, each entry costing what it costs in apccache (its block), so the two
differ only in what they choose to evict.

Run: ``python bench/eviction_quality.py [--requests N] [--size MiB]``; writes
bench/results/eviction_quality.md.
"""
from __future__ import annotations

import argparse
import bisect
import itertools
import os
import random
import sys
from collections import OrderedDict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib as bl  # noqa: E402

import apccache  # noqa: E402

VALUE = 1024


def zipf_cdf(n, s):
    weights = [1 / (k ** s) for k in range(1, n + 1)]
    total = sum(weights)
    return list(itertools.accumulate(w / total for w in weights))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--size", type=int, default=16, help="segment size in MiB")
    ap.add_argument("--skew", type=float, default=0.99)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    name = f"{bl.PREFIX}evict-{os.getpid()}"
    c = apccache.Cache.create(name, size=args.size << 20)
    try:
        arena = c.sma_info()["seg_size"]
        c.store(b"probe", b"v" * VALUE)
        per_entry = c.key_info(b"probe")["mem_size"]
        c.delete(b"probe")
        fits = arena // per_entry
        nkeys = 12 * fits
        rnd = random.Random(args.seed)
        ids = list(range(nkeys))
        rnd.shuffle(ids)  # popularity unrelated to key order
        cdf = zipf_cdf(nkeys, args.skew)
        value = os.urandom(VALUE)

        lru, lru_bytes, lru_hits = OrderedDict(), 0, 0
        hits = 0
        fill_at_first_eviction = None
        for i in range(args.requests):
            rank = bisect.bisect_left(cdf, rnd.random())
            key = b"k%d" % ids[min(rank, nkeys - 1)]
            # apccache, read-through
            if c.fetch(key) is not None:
                hits += 1
            else:
                if fill_at_first_eviction is None:
                    used = arena - c.sma_info(limited=True)["avail_mem"]
                c.store(key, value)
                if fill_at_first_eviction is None and c.info(limited=True)["evictions"]:
                    fill_at_first_eviction = used / arena
            # exact LRU of the same byte budget
            if key in lru:
                lru.move_to_end(key)
                lru_hits += 1
            else:
                lru[key] = True
                lru_bytes += per_entry
                while lru_bytes > arena:
                    lru.popitem(last=False)
                    lru_bytes -= per_entry
        info = c.info(limited=True)
    finally:
        c.unlink()
        c.close()

    ratio, lru_ratio = hits / args.requests, lru_hits / args.requests
    lines = [
        "# Eviction quality",
        "",
        bl.machine_line(),
        "",
        f"Zipf({args.skew}) over {nkeys:,} keys of {VALUE} B values ({nkeys / fits:.0f}x what fits: "
        f"{fits:,} entries of {per_entry} B in a {arena / 2**20:.1f} MiB arena), {args.requests:,} "
        "read-through requests, seed {seed}.".format(seed=args.seed),
        "",
        "| | hit ratio |",
        "| --- | --- |",
        f"| apccache | {ratio:.4f} |",
        f"| exact LRU, same byte budget | {lru_ratio:.4f} |",
        f"| apccache / exact LRU | **{ratio / lru_ratio:.3f}x** |",
        "",
        f"Arena in use when the first entry was evicted: **{100 * fill_at_first_eviction:.1f}%**"
        if fill_at_first_eviction is not None else "No entry was evicted.",
        "",
        f"Evictions: {info['evictions']:,} entries in {info['expunges']:,} stores that had to make room.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(bl.RESULTS_DIR, exist_ok=True)
    (bl.RESULTS_DIR / "eviction_quality.md").write_text(text)


if __name__ == "__main__":
    main()
