#!/usr/bin/env bash
# The main job: the supervisor runs the example pools (examples/supervisor.toml)
# whose workers share one cache; while they work, apcstat reads the live
# segment; then the supervisor stops gracefully and removes the segment.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-12}
apccache supervise supervisor.toml --duration "$seconds" &
sup=$!
trap 'kill -TERM $sup 2>/dev/null || true; wait $sup 2>/dev/null || true' EXIT

sleep $(( seconds / 2 ))
apcstat apccache-example

wait $sup
trap - EXIT
