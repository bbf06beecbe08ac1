#!/usr/bin/env python3
"""Invalidation lag of the fleet tier, measured by the coherence checker.

Usage: python bench/fleet_coherence.py [--md PATH]

Runs the checker scenarios of ``tests/fleet/test_coherence.py`` and
``tests/fleet/test_cluster.py`` at their full durations (three simulated
hosts, each a segment with its own listener and worker, one redis-server or
a 3-node Redis Cluster, and a writer that bypasses apccache), and collects
the line each prints: reads, writes, stale reads within the bound,
violations, and the p50/p99/max of the observed invalidation lag per
(write, host).  The observed lag is the start of the last read on a host that
still returned an older version, less the write's acknowledgement, so it is
an upper bound quantised by how often that host read the key.
"""

import argparse
import os
import re
import subprocess
import sys

import benchlib as bl


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--md", default=str(bl.RESULTS_DIR / "fleet_coherence.md"))
    args = ap.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if k != "CI"}  # full durations
    cmd = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
           "tests/fleet/test_coherence.py", "tests/fleet/test_cluster.py"]
    proc = subprocess.run(cmd, cwd=bl.REPO_DIR, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if re.search(r"reads, \d+ writes", ln)]
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "(no output)"
    out = ["## Fleet coherence (`bench/fleet_coherence.py`)", "", bl.machine_line(), "",
           "Bound under test: 50 ms (the listeners' max_lag). Each line is one checker run:", ""]
    out += [f"- {ln.lstrip('.').strip()}" for ln in lines]
    out += ["", f"pytest: {summary}", ""]
    text = "\n".join(out)
    print(text)
    if proc.returncode != 0:
        print(proc.stdout[-5000:], proc.stderr[-2000:], file=sys.stderr)
        return 1
    with open(args.md, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
