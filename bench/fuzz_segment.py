"""The long segment fuzz: 2,500 seeded runs of the suite's fuzzer.

Same harness as tests/test_fuzz.py (tests/segfuzz.py): each run fills a
segment in a child process, damages it and uses it; the parent classifies
the run (signal, hang, undocumented exception, wrong value, ok).  Odd seeds
use segments made with checksums=True (when the engine has them).

    python bench/fuzz_segment.py                 # seeds 0..2499, writes bench/results/fuzz.md
    python bench/fuzz_segment.py 100 200 -v      # seeds 100..199, print every bad run
    python bench/fuzz_segment.py 0 2500 --jobs 2 --timeout 10 --out FILE

The report counts runs by outcome, with and without checksums, lists what
each bad run did to its segment (to replay: the same seed), and which
exceptions the engine raised on purpose.
"""
import argparse
import collections
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
sys.path.insert(0, HERE)

import segfuzz  # noqa: E402
from benchlib import machine_line  # noqa: E402

OUTCOMES = ["ok", "stale", "wrong", "undocumented", "signal", "hang", "harness error"]


def report(results, args, seconds):
    lines = ["## Segment fuzzing (`bench/fuzz_segment.py`)", ""]
    lines.append(machine_line())
    lines.append("")
    lines.append(
        f"Seeds {args.first}..{args.last - 1} ({len(results)} runs), {args.jobs} at a time, "
        f"per-run timeout {args.timeout:g} s, {seconds:.0f} s in all. Each run: a 1 MiB segment "
        "filled with every kind of value (and a GC list and a fragmented arena), damaged in 1-3 "
        "ways, then about 40 operations of every kind, then the next writer's repair and `check()`. "
        "Odd seeds use `checksums=True`"
        + ("" if segfuzz.HAS_CHECKSUMS else " (not in this build: every run is without)") + ".")
    lines.append("")
    lines.append("| outcome | without checksums | with checksums | all |")
    lines.append("|---|---|---|---|")
    by = collections.Counter((r["outcome"], bool(r.get("checksums"))) for r in results)
    for o in OUTCOMES:
        a, b = by[(o, False)], by[(o, True)]
        lines.append(f"| {o} | {a} | {b} | {a + b} |")
    n_off = sum(1 for r in results if not r.get("checksums"))
    lines.append(f"| runs | {n_off} | {len(results) - n_off} | {len(results)} |")
    lines.append("")
    detected = sum(1 for r in results if r.get("detected"))
    noticed = sum(1 for r in results if r.get("noticed"))
    lines.append(f"- runs in which the engine noticed the damage (a repair, a corrupt read counted, "
                 f"or CorruptSegmentError): {noticed}; with CorruptSegmentError raised: {detected}")
    repaired = [r for r in results if "after_repair" in r and r["after_repair"] is not None]
    sound = sum(1 for r in repaired if not r["after_repair"])
    lines.append(f"- runs whose segment `check()` found sound after the next writer's repair: "
                 f"{sound} of {len(repaired)}")
    clean = sum(1 for r in results if r.get("final_check") == 0)
    finished = sum(1 for r in results if r.get("final_check") is not None)
    lines.append(f"- runs whose `check()` found nothing wrong before that repair (damage no operation "
                 f"walked into stays until something does): {clean} of {finished}")
    errs = collections.Counter()
    for r in results:
        errs.update(r.get("errors") or {})
    if errs:
        lines.append("- exceptions raised by operations (all runs): "
                     + ", ".join(f"{k} {v}" for k, v in errs.most_common()))
    kinds = collections.Counter()
    for r in results:
        for c in r.get("corruptions") or []:
            kinds[c.split(":")[0]] += 1
    lines.append("- damage applied: " + ", ".join(f"{k} {v}" for k, v in kinds.most_common()))
    lines.append("")
    bad = [r for r in results if r["outcome"] not in ("ok", "wrong", "stale") or
           (r["outcome"] == "wrong" and r.get("checksums")) or r.get("after_repair")]
    lines.append(f"### Failures ({len(bad)}: signal, hang, undocumented exception, harness error, "
                 "a wrong value with checksums, or unsound after a repair)")
    lines.append("")
    if not bad:
        lines.append("None.")
    for r in bad[:200]:
        what = r.get("signal") or ""
        if r.get("undocumented"):
            what = r["undocumented"][0].splitlines()[0]
        elif r.get("wrong"):
            what = r["wrong"][0]
        elif r.get("harness_error"):
            what = r["harness_error"].strip().splitlines()[-1]
        elif r.get("after_repair"):
            what = "after a repair: " + r["after_repair"][0]
        elif r.get("hang"):
            stack = [s.strip() for s in r.get("stacks", "").splitlines() if s.strip().startswith("File")]
            what = "hung in " + (stack[0] if stack else "?")
        lines.append(f"- seed {r['seed']} ({'checksums' if r.get('checksums') else 'no checksums'}): "
                     f"**{r['outcome']}** {what[:300]}; damage: {'; '.join(r.get('corruptions') or ['?'])[:400]}")
    if len(bad) > 200:
        lines.append(f"- ... and {len(bad) - 200} more")
    lines.append("")
    wrong_plain = sum(1 for r in results if r["outcome"] == "wrong" and not r.get("checksums"))
    stale = sum(1 for r in results if r["outcome"] == "stale")
    lines.append(f"Wrong values without checksums ({wrong_plain} runs) are expected: flipped value "
                 "bytes come back as stored unless the segment keeps checksums. Stale values "
                 f"({stale} runs) are values once stored under the key and since replaced or "
                 "deleted, linked back in by the damage: genuine entries, which no checksum tells "
                 "from current ones.")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("first", type=int, nargs="?", default=0)
    ap.add_argument("last", type=int, nargs="?", default=2500, help="one past the last seed")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "fuzz.md"))
    ap.add_argument("--json", help="also write every run's result here")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()

    done = [0]
    t0 = time.monotonic()

    def progress(r):
        done[0] += 1
        if args.verbose and r["outcome"] != "ok":
            print(json.dumps(r, indent=1)[:3000], flush=True)
        elif done[0] % 250 == 0:
            print(f"{done[0]} runs, {time.monotonic() - t0:.0f} s", flush=True)

    results = segfuzz.run_seeds(range(args.first, args.last), jobs=args.jobs, timeout=args.timeout,
                                progress=progress)
    results.sort(key=lambda r: r["seed"])
    text = report(results, args, time.monotonic() - t0)
    if args.out != "-":
        with open(args.out, "w") as f:
            f.write(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f)
    print(text)
    bad = [r for r in results if r["outcome"] not in ("ok", "wrong", "stale") or
           (r["outcome"] == "wrong" and r.get("checksums")) or r.get("after_repair")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
