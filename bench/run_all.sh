#!/usr/bin/env bash
# Run the whole benchmark suite and write its results under bench/results/:
#
#   micro.json       pytest-benchmark JSON of the micro benchmarks (+ "apcbench" summary)
#   multiproc.json   the multi-process mixes       multiproc.md  their tables
#   peers.json       the side-by-side peer run     peers.md      its table
#   latest.md        all of the above with the machine, the commit and the targets
#
# Usage: bench/run_all.sh [--strict] [--quick] [--wait-quiet]
#   --strict      exit 1 unless every performance target passed
#   --quick       fewer rounds (a smoke run; do not commit its figures)
#   --wait-quiet  first wait (at most 10 minutes) for the 1-minute load
#                 average to drop below 0.5, so other work does not skew
#                 the figures; the run starts anyway when time is up
# Environment: PYTHON (default: python3 on PATH, e.g. an activated venv).
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=bench/results
STRICT=()
WAIT_QUIET=0
MICRO_ARGS=()
MULTI_ARGS=()
PEER_ARGS=()
for arg in "$@"; do
  case "$arg" in
    --strict) STRICT=(--strict) ;;
    --wait-quiet) WAIT_QUIET=1 ;;
    --quick)
      MICRO_ARGS=(--benchmark-max-time=0.2 --benchmark-min-rounds=5)
      MULTI_ARGS=(--rounds 2 --duration 0.5)
      PEER_ARGS=(--rounds 5) ;;
    *) echo "usage: $0 [--strict] [--quick] [--wait-quiet]" >&2; exit 2 ;;
  esac
done

mkdir -p "$OUT"
"$PY" - <<'PY'
import importlib, sys
missing = [m for m in ("pytest_benchmark", "lmdb", "diskcache", "cffi") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit("missing benchmark dependencies: " + ", ".join(missing) + " (pip install -r bench/requirements.txt)")
PY

if [ "$WAIT_QUIET" = 1 ]; then
  "$PY" - <<'PY'
import os, time
deadline = time.monotonic() + 600
while os.getloadavg()[0] >= 0.5 and time.monotonic() < deadline:
    print(f"waiting for a quiet machine: load average {os.getloadavg()[0]:.2f}", flush=True)
    time.sleep(15)
print(f"starting at load average {os.getloadavg()[0]:.2f}", flush=True)
PY
fi

echo "== micro benchmarks (pytest-benchmark)"
"$PY" -m pytest bench/ --benchmark-only --benchmark-json="$OUT/micro.json" "${MICRO_ARGS[@]}"

echo "== multi-process mixes"
"$PY" bench/multiproc.py --json "$OUT/multiproc.json" --md "$OUT/multiproc.md" "${MULTI_ARGS[@]}"

echo "== peers side by side"
"$PY" bench/peers.py --json "$OUT/peers.json" --md "$OUT/peers.md" "${PEER_ARGS[@]}"

echo "== report"
status=0
"$PY" bench/report.py "$OUT" "${STRICT[@]}" || status=$?

left=$(ls /dev/shm 2>/dev/null | grep '^apcbench-' || true)
if [ -n "$left" ]; then
  echo "warning: apcbench-* entries left in /dev/shm (another run, or a leak):" $left >&2
fi
exit "$status"
