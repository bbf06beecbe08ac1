"""Every operation against a store: inc, add, delete and exists each cost
about what a 10-byte store costs, and a pickled value costs what pickle
costs plus a 10-byte fetch or store, not more.

Run: ``python bench/ops.py [--rounds N]``; writes bench/results/ops.md.

Each contestant is one Python call (``Cache.inc``, ``Cache.exists``...),
timed in batches of about 50 ms, interleaved with every other contestant in
each round so that a slow spell of the machine falls on all of them alike
(``benchlib.interleave``).  A target's ratio is the median over rounds of
the two sides' ratio within a round, with the middle half of the rounds'
ratios as its spread.

The operations: ``inc`` of a counter; ``add`` of a key that exists (refused)
and of a fresh key (timed as one ``add`` plus one ``delete`` of the same key,
per operation: half the pair); ``delete`` of a key that exists (the same
pair) and of one that does not; ``exists`` of a key that exists and of one
that does not.  The store they are held against replaces a 10-byte value.
A pickled small dict (``benchlib.SMALL_DICT``, 5 fields) is fetched and
stored against ``pickle.loads`` + a 10-byte fetch and ``pickle.dumps`` + a
10-byte store of the same bytes, each side one Python function, so that
both pay one frame.
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib as bl  # noqa: E402

import apccache  # noqa: E402

FRESH = b"bench:fresh"
STORE_DICT = b"bench:store:dict"
STORE_REF = b"bench:store:ref"  # each store contestant replaces its own key


def contestants(c):
    pickled = pickle.dumps(bl.SMALL_DICT)
    fetch, store, loads, dumps, d = c.fetch, c.store, pickle.loads, pickle.dumps, bl.SMALL_DICT

    def add_delete():
        c.add(FRESH, bl.VALUE_10B)
        c.delete(FRESH)

    def store_delete():
        c.store(FRESH, bl.VALUE_10B)
        c.delete(FRESH)

    def fetch_dict():
        return fetch(bl.KEY_DICT)

    def loads_and_fetch():
        loads(pickled)
        return fetch(bl.KEY_10B)

    def store_dict():
        return store(STORE_DICT, d)

    def dumps_and_store():
        dumps(d)
        return store(STORE_REF, bl.VALUE_10B)

    return [
        ("store 10 B", c.store, (bl.KEY_STORE_10B, bl.VALUE_10B)),
        ("inc", c.inc, (bl.KEY_INC,)),
        ("add (exists)", c.add, (bl.KEY_10B, bl.VALUE_10B)),
        ("add + delete (fresh key)", add_delete, ()),
        ("store + delete (fresh key)", store_delete, ()),
        ("delete (missing)", c.delete, (bl.KEY_MISS,)),
        ("exists (hit)", c.exists, (bl.KEY_10B,)),
        ("exists (miss)", c.exists, (bl.KEY_MISS,)),
        ("fetch small dict", fetch_dict, ()),
        ("pickle.loads + fetch 10 B", loads_and_fetch, ()),
        ("store small dict", store_dict, ()),
        ("pickle.dumps + store 10 B", dumps_and_store, ()),
    ]


# (label, numerator, denominator, how many operations the numerator's call is, limit)
TARGETS = [
    ("inc <= 1.5x store 10 B", "inc", "store 10 B", 1, 1.5),
    ("add (key exists) <= 1.5x store 10 B", "add (exists)", "store 10 B", 1, 1.5),
    ("add + delete of a fresh key, per operation <= 1.5x store 10 B",
     "add + delete (fresh key)", "store 10 B", 2, 1.5),
    ("store + delete of a fresh key, per operation <= 1.5x store 10 B",
     "store + delete (fresh key)", "store 10 B", 2, 1.5),
    ("delete (missing) <= 1.5x store 10 B", "delete (missing)", "store 10 B", 1, 1.5),
    ("exists (hit) <= 1.5x store 10 B", "exists (hit)", "store 10 B", 1, 1.5),
    ("exists (miss) <= 1.5x store 10 B", "exists (miss)", "store 10 B", 1, 1.5),
    ("fetch small dict <= 1.15x pickle.loads + fetch 10 B", "fetch small dict",
     "pickle.loads + fetch 10 B", 1, 1.15),
    ("store small dict <= 1.15x pickle.dumps + store 10 B", "store small dict",
     "pickle.dumps + store 10 B", 1, 1.15),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--batch", type=float, default=0.05, help="seconds per batch (default 0.05)")
    args = ap.parse_args()
    name = f"{bl.PREFIX}ops-{os.getpid()}"
    c = apccache.Cache.create(name, size=16 << 20)
    try:
        c.store(bl.KEY_10B, bl.VALUE_10B)
        c.store(bl.KEY_DICT, bl.SMALL_DICT)
        c.store(bl.KEY_STORE_10B, bl.VALUE_10B)
        c.store(STORE_DICT, bl.SMALL_DICT)
        c.store(STORE_REF, bl.VALUE_10B)
        c.store(bl.KEY_INC, 0)
        samples, _ = bl.interleave(contestants(c), args.rounds, args.batch)
    finally:
        c.unlink()
        c.close()

    med = {k: sorted(v)[len(v) // 2] for k, v in samples.items()}
    lines = [
        "# Every operation against a store",
        "",
        bl.machine_line(),
        "",
        f"{args.rounds} interleaved rounds; median time per call, and paired ratios (median of "
        "the per-round ratios, middle half in brackets). See `bench/ops.py` for what each "
        "contestant does.",
        "",
        "| call | median |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {bl.fmt_time(v)} |" for k, v in med.items()]
    lines += ["", "Targets:", ""]
    for label, num, den, nops, limit in TARGETS:
        a = [x / nops for x in samples[num]]
        b = samples[den]
        r = bl.paired_ratio(a, b)
        lo, hi = bl.paired_spread(a, b)
        verdict = "PASS" if r <= limit else "FAIL"
        lines.append(f"    TARGET {verdict}  {label}: measured {r:.2f}x (middle half {lo:.2f}-{hi:.2f}x)")
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(bl.RESULTS_DIR, exist_ok=True)
    (bl.RESULTS_DIR / "ops.md").write_text(text)


if __name__ == "__main__":
    main()
