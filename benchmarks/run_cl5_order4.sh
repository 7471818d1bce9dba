#!/usr/bin/env bash
# CL-5 order 4 at CPU scale (500 train / 500 test rows per task), every committed method config in turn,
# then the table and plots. Usage: benchmarks/run_cl5_order4.sh [DATA_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/datasets}
for cfg in slm_gaussian_order4 slm_dtkr_order4 oracle_lora_order4 finetune_order4; do
  .venv/bin/python benchmarks/run.py benchmarks/configs/cl5/$cfg.json --data-dir "$DATA"
done
.venv/bin/python benchmarks/report.py cl5
