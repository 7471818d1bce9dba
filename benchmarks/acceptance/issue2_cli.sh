#!/usr/bin/env bash
# Acceptance run of the foundation issue: `slm learn` three times, `slm eval` after each, on real data.
# agnews -> yelp -> dbpedia, 500 training rows per task (seeded subset), every local test row.
# Usage: benchmarks/acceptance/issue2_cli.sh [DATA_DIR]   (default ../shared/datasets)
# Writes benchmarks/results/issue2_cli/{after_<task>.json,log.txt}; the accuracy matrix is the
# sequence of after_*.json files (row i = scores after learning task i).
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-../shared/datasets}
OUT=benchmarks/results/issue2_cli
MODEL=$(mktemp -d)/model
export SLM_CACHE_DIR=$(mktemp -d)   # a fresh query cache, so the timings include encoding
mkdir -p "$OUT"
SLM=.venv/bin/slm
seen=()
{
  for task in agnews yelp dbpedia; do
    /usr/bin/time -f "learn $task: %e s" $SLM -q learn --model "$MODEL" --task $task \
      --data "$DATA/$task/train.jsonl" --max-train 500
    seen+=("$task=$DATA/$task/test.jsonl")
    /usr/bin/time -f "eval after $task: %e s" $SLM -q eval --model "$MODEL" --json "$OUT/after_$task.json" \
      --data "${seen[@]}"
  done
  $SLM info "$MODEL"
} 2>&1 | tee "$OUT/log.txt"
