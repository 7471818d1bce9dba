#!/usr/bin/env bash
# SLM's fine-tune stage on 1 and on 2 CPU processes (accelerate, gloo), then the comparison.
# Usage: benchmarks/perf/run_ddp.sh [--no-dropout] [extra ddp_finetune.py args]
#   -> benchmarks/results/perf/ddp.json (ddp_no_dropout.json with --no-dropout)
set -euo pipefail
cd "$(dirname "$0")/../.."
TMP=$(mktemp -d)
# one process; then two through accelerate's multi-process launcher (torchrun underneath). On a machine
# without GPUs the processes join a gloo group (`--cpu` alone would run a single process).
.venv/bin/accelerate launch --cpu --num_processes 1 --mixed_precision no --dynamo_backend no \
  benchmarks/perf/ddp_finetune.py --out "$TMP/p1" "$@"
.venv/bin/accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \
  benchmarks/perf/ddp_finetune.py --out "$TMP/p2" "$@"
OUT=benchmarks/results/perf/ddp.json
[[ " $* " == *" --no-dropout "* ]] && OUT=benchmarks/results/perf/ddp_no_dropout.json
.venv/bin/python benchmarks/perf/ddp_compare.py "$TMP/p1" "$TMP/p2" --out "$OUT"
rm -rf "$TMP"
