#!/usr/bin/env python3
"""Assemble ``bench/results/latest.md`` from one run's result files.

Usage: python bench/report.py [RESULTS_DIR] [--strict]

Reads ``micro.json`` (pytest-benchmark's JSON, with this suite's summary
under ``apcbench``), ``multiproc.json``/``.md`` and ``peers.json``/``.md`` from
RESULTS_DIR (default ``bench/results``), writes ``latest.md`` there and
prints one line per target. It also drops the raw per-round timings from
``micro.json`` (about 1 MB; the statistics stay) so the committed file
stays small enough to review; ``--keep-raw`` keeps them. With ``--strict`` the exit status is 1 when a
target failed or was not measured.

The verdict of each latency target is the micro suite's paired ratio (from
``test_targets_paired``), of the scaling targets ``multiproc.py``'s; the
peers run's paired ratio is shown beside them as a cross-check.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import benchlib as bl

MICRO_COLUMNS = ["apccache", "apccache-str-key", "dict", "lmdb", "diskcache"]
BASELINE_LABELS = {
    "baseline-cffi-10B": "cffi call returning 10 B",
    "baseline-cffi-bare": "bare cffi call",
    "baseline": "bytes(memoryview) 1 MiB",
    "baseline-python-noop": "Python no-op call",
}


def load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def micro_section(micro: dict) -> tuple[str, list]:
    summary = micro.get("apcbench") or {}
    table = summary.get("table", [])
    out = ["## Micro benchmarks (`pytest bench/ --benchmark-only`)", ""]
    if summary.get("machine"):
        out += [bl.machine_line(summary["machine"]), ""]
    out.append("Median time per operation (pytest-benchmark, one run); in brackets the ratio to "
               "apccache's median in the same group (>1x: slower than apccache).")
    out.append("")
    groups: dict[str, dict] = {}
    order = []
    for row in table:
        g = row["group"]
        if g not in groups:
            groups[g] = {}
            order.append(g)
        groups[g][row["impl"]] = row
    present = [c for c in MICRO_COLUMNS if any(c in groups[g] for g in order)]
    rows = []
    for g in order:
        cells = [g]
        for col in present:
            r = groups[g].get(col)
            if r is None:
                cells.append("-")
            elif col == "apccache" or not r.get("vs_apccache"):
                cells.append(bl.fmt_time(r["median_s"]))
            else:
                cells.append(f"{bl.fmt_time(r['median_s'])} ({r['vs_apccache']:.2f}x)")
        base = [
            f"{bl.fmt_time(r['median_s'])} {BASELINE_LABELS.get(impl, impl)}"
            + (f" ({r['vs_apccache']:.2f}x)" if r.get("vs_apccache") else "")
            for impl, r in groups[g].items() if impl.startswith("baseline")
        ]
        cells.append("; ".join(base) or "-")
        rows.append(cells)
    out.append(bl.md_table(["operation"] + present + ["baseline"], rows))
    out.append("")
    return "\n".join(out), summary.get("targets", [])


def targets_section(micro_targets, peers_targets, multi_targets) -> tuple[str, list[str], bool]:
    """The targets table: each verdict with the figures behind it."""
    peers_by = {t["name"]: t for t in peers_targets or []}
    rows, ok = [], True
    judged = list(micro_targets or []) + list(multi_targets or [])

    def x(v):
        return "-" if v is None else f"{v:.2f}x"

    def spread(t):
        if t.get("ratio_q1") is None:
            return ""
        return f"; middle half {t['ratio_q1']:.2f}-{t['ratio_q3']:.2f}x"

    for t in judged:
        cross = peers_by.get(t["name"])
        if t["kind"] == "multi" and t.get("unit") == "x":
            def fig(v):
                return "-" if v is None else f"{v:.2f}x scaling"
            source = "multiproc.py, paired"
        elif t["kind"] == "multi":
            def fig(v):
                return "-" if v is None else f"{v / 1e3:,.0f}k ops/s"
            source = "multiproc.py, paired"
        else:
            fig = bl.fmt_time
            source = "micro, paired" if t.get("paired") else "micro, medians"
        rows.append([
            t["name"], fig(t.get("num_value")), fig(t.get("den_value")), x(t.get("benchmark_ratio")),
            f"**{x(t.get('ratio'))}** ({source}{spread(t)})", x(cross.get("ratio")) if cross else "-",
            t["verdict"], t.get("note", ""),
        ])
        ok = ok and t["verdict"] == "PASS"
    md = [
        "## Targets", "",
        "Verdicts use the paired ratio: both sides timed in interleaved rounds, the median of the "
        "per-round ratios, with the middle half of the rounds' ratios as a measure of the noise. "
        "*apccache* and *reference* are the medians of that paired run (ops/s, or a scaling, for the "
        "multi-process targets). Beside it, for comparison: the ratio of the pytest-benchmark "
        "medians (measured one after the other) and `peers.py`'s own paired ratio.", "",
        bl.md_table(["target", "apccache", "reference", "pytest-benchmark ratio", "judged ratio",
                     "peers.py ratio", "verdict", "note"], rows),
        "",
    ]
    return "\n".join(md), bl.target_lines(judged), ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="?", default=str(bl.RESULTS_DIR))
    ap.add_argument("--strict", action="store_true", help="exit 1 unless every target passed")
    ap.add_argument("--keep-raw", action="store_true", help="keep raw timings in micro.json")
    args = ap.parse_args(argv)
    res = Path(args.results)

    micro = load(res / "micro.json")
    # The machine as the run found it at its start (the micro suite runs first).
    info = ((micro or {}).get("apcbench") or {}).get("machine") or bl.machine_info()
    parts = ["# apccache benchmark results", "",
             f"Written by `bench/run_all.sh`. {bl.machine_line(info)}.", "",
             "Every figure below was measured in this one run; see `bench/README.md` for what each "
             "scenario does and how to read the ratios.", ""]
    if micro and not args.keep_raw:
        for bench in micro.get("benchmarks", []):
            bench.get("stats", {}).pop("data", None)
        (res / "micro.json").write_text(json.dumps(micro, indent=1) + "\n")
    micro_targets = []
    if micro:
        section, micro_targets = micro_section(micro)
    else:
        section = "## Micro benchmarks\n\nnot run (no micro.json)\n"
    multi = load(res / "multiproc.json")
    peers = load(res / "peers.json")
    tsec, lines, ok = targets_section(micro_targets, (peers or {}).get("targets"), (multi or {}).get("targets"))
    parts += [tsec, section]
    for name in ("multiproc.md", "peers.md"):
        path = res / name
        parts.append(path.read_text() if path.exists() else f"## {name}\n\nnot run\n")
    text = "\n".join(parts).rstrip() + "\n"
    (res / "latest.md").write_text(text)
    print(f"wrote {res / 'latest.md'}")
    for line in lines:
        print(line)
    return 1 if (args.strict and not ok) else 0


if __name__ == "__main__":
    sys.exit(main())
