#!/usr/bin/env bash
# Run several CL-5 configs one after another (one at a time: this machine has 2 cores), then the report.
# Usage: benchmarks/run_queue.sh DATA_DIR CONFIG_STEM... ; logs go to benchmarks/results/cl5/logs/ (not committed)
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=$1; shift
mkdir -p benchmarks/results/cl5/logs
for cfg in "$@"; do
  echo "$(date -u +%H:%M:%S) start $cfg"
  .venv/bin/python benchmarks/run.py benchmarks/configs/cl5/$cfg.json --data-dir "$DATA" \
    > benchmarks/results/cl5/logs/$cfg.log 2>&1 && tail -1 benchmarks/results/cl5/logs/$cfg.log || echo "FAILED $cfg"
done
.venv/bin/python benchmarks/report.py cl5
echo "$(date -u +%H:%M:%S) done"
