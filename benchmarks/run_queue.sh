#!/usr/bin/env bash
# Run several benchmark configs one after another (one at a time: this machine has 2 cores), then the report.
# Usage: benchmarks/run_queue.sh [--bench cl5|fewshot|instruct3|fewshot_smollm2|mmlu_check] DATA_DIR CONFIG_STEM...
#   CONFIG_STEM names benchmarks/configs/<bench>/<stem>.json; the default bench is cl5.
# Logs go to benchmarks/results/<bench>/logs/ (not committed).
set -uo pipefail
cd "$(dirname "$0")/.."
BENCH=cl5
if [ "${1:-}" = "--bench" ]; then BENCH=$2; shift 2; fi
case $BENCH in
  cl5|fewshot) RUNNER=benchmarks/run.py ;;
  instruct3|fewshot_smollm2|mmlu_check) RUNNER=benchmarks/instruct/run.py ;;
  *) echo "unknown benchmark '$BENCH' (expected cl5, fewshot, instruct3, fewshot_smollm2 or mmlu_check)" >&2; exit 2 ;;
esac
DATA=$1; shift
mkdir -p benchmarks/results/$BENCH/logs
for cfg in "$@"; do
  echo "$(date -u +%H:%M:%S) start $cfg"
  .venv/bin/python $RUNNER benchmarks/configs/$BENCH/$cfg.json --data-dir "$DATA" \
    > benchmarks/results/$BENCH/logs/$cfg.log 2>&1 && tail -1 benchmarks/results/$BENCH/logs/$cfg.log || echo "FAILED $cfg"
done
.venv/bin/python benchmarks/report.py $BENCH > /dev/null
echo "$(date -u +%H:%M:%S) done"
