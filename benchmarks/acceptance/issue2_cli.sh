#!/usr/bin/env bash
# Acceptance run of the foundation issue: `slm learn` three times, `slm eval` after each, on real data.
# agnews -> yelp -> dbpedia, 500 training rows per task (seeded subset), every local test row.
# Usage: benchmarks/acceptance/issue2_cli.sh [DATA_DIR [OUT_NAME [extra `slm learn` options...]]]
#   defaults: ../shared/datasets, issue2_cli, none (e.g. `... issue2_cli_gaussian --router gaussian`)
# Writes benchmarks/results/OUT_NAME/{after_<task>.json,log.txt}; the accuracy matrix is the
# sequence of after_*.json files (row i = scores after learning task i).
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-../shared/datasets}
OUT=benchmarks/results/${2:-issue2_cli}
shift $(( $# > 2 ? 2 : $# ))
MODEL=$(mktemp -d)/model
export SLM_CACHE_DIR=$(mktemp -d)   # a fresh query cache, so the timings include encoding
mkdir -p "$OUT"
SLM=.venv/bin/slm
seen=()
{
  echo "options: --max-train 500 $*  (commit $(git rev-parse --short HEAD))"
  for task in agnews yelp dbpedia; do
    /usr/bin/time -f "learn $task: %e s" $SLM -q learn --model "$MODEL" --task $task \
      --data "$DATA/$task/train.jsonl" --max-train 500 "$@"
    seen+=("$task=$DATA/$task/test.jsonl")
    /usr/bin/time -f "eval after $task: %e s" $SLM -q eval --model "$MODEL" --json "$OUT/after_$task.json" \
      --data "${seen[@]}"
  done
  $SLM info "$MODEL"
} 2>&1 | tee "$OUT/log.txt"
