#!/usr/bin/env bash
# SLM-TI (task-ID given, an upper bound) on the model that issue2_cli.sh built; its path is in
# benchmarks/results/issue2_cli/log.txt ("learned ... into DIR"). Usage: issue2_task_id.sh MODEL_DIR [DATA_DIR]
# Writes benchmarks/results/issue2_cli/task_id.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=$1
DATA=${2:-../shared/datasets}
.venv/bin/slm -q eval --task-id --model "$MODEL" --json benchmarks/results/issue2_cli/task_id.json \
  --data agnews="$DATA/agnews/test.jsonl" yelp="$DATA/yelp/test.jsonl" dbpedia="$DATA/dbpedia/test.jsonl"
