#!/usr/bin/env bash
# One NVIDIA GPU, at most about 10 minutes: the CUDA tests, a Standard CL order learned on the 1.5B model in
# bfloat16, and `slm serve` against `slm serve --engine vllm` on the directory it learned. Writes one JSON.
#
# Usage: benchmarks/gpu/run.sh [--out FILE] [--data-dir DIR] [--config CONFIG] [--vllm-python PY] [--skip STEP]...
#                              [--dry-run]
#   --out        results JSON (default benchmarks/results/gpu/gpu.json)
#   --data-dir   the shared datasets (default ../shared/datasets)
#   --config     the learning run (default benchmarks/configs/gpu/standard_cl_qwen_order1.json: make qwen)
#   --vllm-python the interpreter with the `vllm` package (default: .venv-vllm/bin/python, made by `make vllm`,
#                which installs `vllm` where nvidia-smi is found)
#   --skip       tests | learn | serve (repeat to skip several)
#   --dry-run    check the arguments and print the steps; run nothing (works without a GPU)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=benchmarks/results/gpu/gpu.json
DATA=../shared/datasets
CONFIG=benchmarks/configs/gpu/standard_cl_qwen_order1.json
VLLM_PY=.venv-vllm/bin/python
SKIP=()
DRY=0
usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case $1 in
    --out) OUT=${2:?--out needs a file}; shift 2 ;;
    --data-dir) DATA=${2:?--data-dir needs a folder}; shift 2 ;;
    --config) CONFIG=${2:?--config needs a file}; shift 2 ;;
    --vllm-python) VLLM_PY=${2:?--vllm-python needs a path}; shift 2 ;;
    --skip)
      case ${2:-} in tests|learn|serve) SKIP+=("$2") ;; *) echo "run.sh: --skip takes tests, learn or serve, not '${2:-}'" >&2; exit 2 ;; esac
      shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ -f "$CONFIG" ] || { echo "run.sh: no config $CONFIG" >&2; exit 2; }
skipped() { local s; for s in "${SKIP[@]:-}"; do [ "$s" = "$1" ] && return 0; done; return 1; }
PY=.venv/bin/python
MODEL_DIR=runs/gpu/model
LOGS=$(dirname "$OUT")/logs
STEPS=()
skipped tests || STEPS+=("tests: $PY -m pytest -q -m gpu tests/test_gpu.py")
skipped learn || STEPS+=("learn: $PY benchmarks/instruct/run.py $CONFIG --data-dir $DATA --out $(dirname "$OUT")/learn.json --keep-model $MODEL_DIR")
skipped serve || STEPS+=("serve: $PY benchmarks/serve/vllm_front.py --model $MODEL_DIR --vllm-python $VLLM_PY --out $(dirname "$OUT")/serve.json")
if [ $DRY = 1 ]; then
  echo "would run, in order, writing $OUT (logs in $LOGS):"
  printf '  %s\n' "${STEPS[@]}"
  exit 0
fi
command -v nvidia-smi >/dev/null 2>&1 || { echo "run.sh: no NVIDIA GPU here (nvidia-smi not found); --dry-run shows the steps" >&2; exit 3; }
mkdir -p "$LOGS" "$(dirname "$MODEL_DIR")"
declare -A RC SECONDS_OF
for step in "${STEPS[@]}"; do
  name=${step%%:*}; cmd=${step#*: }
  echo "$(date -u +%H:%M:%S) $name: $cmd"
  start=$(date +%s)
  bash -c "$cmd" > "$LOGS/$name.log" 2>&1; RC[$name]=$?
  SECONDS_OF[$name]=$(( $(date +%s) - start ))
  echo "$(date -u +%H:%M:%S) $name: exit ${RC[$name]} in ${SECONDS_OF[$name]} s"
done
$PY - "$OUT" "$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1)" \
  "$(for n in "${!RC[@]}"; do echo "$n=${RC[$n]}:${SECONDS_OF[$n]}"; done)" <<'EOF'
import json, sys, pathlib
out, gpu, steps = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3].split()
record = {"command": "benchmarks/gpu/run.sh", "gpu": gpu,
          "steps": {s.split("=")[0]: {"exit": int(s.split("=")[1].split(":")[0]), "seconds": int(s.split(":")[1])}
                    for s in steps}}
for part in ("learn", "serve"):
    path = out.parent / f"{part}.json"
    if path.exists():
        record[part] = json.loads(path.read_text())
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(record, indent=2) + "\n")
print(f"wrote {out}")
EOF
