#!/usr/bin/env bash
# Run several benchmark configs one after another (one at a time: this machine has 2 cores), then the report.
# Usage: benchmarks/run_queue.sh [--bench cl5|long10|fewshot|long_input|instruct3|fewshot_smollm2|standard_cl|standard_cl_select|mmlu_check|long_sequence] [--results NAME]
#                                DATA_DIR CONFIG_STEM...
#   CONFIG_STEM names benchmarks/configs/<bench>/<stem>.json; the default bench is cl5.
#   --results NAME writes benchmarks/results/NAME/<stem>.json instead of results/<bench>/, skips every config
#   whose result file is already there (a queue cut short resumes where it stopped), and reports on NAME.
#   Within a config, an SLM run cut short goes on from its last finished task (benchmarks/run.py checkpoints).
# Logs go to benchmarks/results/<bench or NAME>/logs/ (not committed).
set -uo pipefail
cd "$(dirname "$0")/.."
BENCH=cl5
RESULTS=
while [ $# -gt 0 ]; do
  case $1 in
    --bench) BENCH=$2; shift 2 ;;
    --results) RESULTS=$2; shift 2 ;;
    *) break ;;
  esac
done
case $BENCH in
  cl5|long10|fewshot|long_input) RUNNER=benchmarks/run.py ;;
  instruct3|fewshot_smollm2|standard_cl|standard_cl_select|mmlu_check|long_sequence) RUNNER=benchmarks/instruct/run.py ;;
  *) echo "unknown benchmark '$BENCH' (expected cl5, long10, fewshot, long_input, instruct3, fewshot_smollm2, standard_cl, standard_cl_select, mmlu_check or long_sequence)" >&2; exit 2 ;;
esac
DATA=$1; shift
OUT=${RESULTS:-$BENCH}
mkdir -p benchmarks/results/$OUT/logs
for cfg in "$@"; do
  extra=()
  if [ -n "$RESULTS" ]; then
    if [ -f "benchmarks/results/$OUT/$cfg.json" ]; then echo "$(date -u +%H:%M:%S) skip $cfg (done)"; continue; fi
    extra=(--out "benchmarks/results/$OUT/$cfg.json")
  fi
  echo "$(date -u +%H:%M:%S) start $cfg"
  .venv/bin/python $RUNNER benchmarks/configs/$BENCH/$cfg.json --data-dir "$DATA" "${extra[@]}" \
    > benchmarks/results/$OUT/logs/$cfg.log 2>&1 && tail -1 benchmarks/results/$OUT/logs/$cfg.log || echo "FAILED $cfg"
done
.venv/bin/python benchmarks/report.py $OUT > /dev/null
echo "$(date -u +%H:%M:%S) done"
