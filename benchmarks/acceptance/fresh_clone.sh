#!/usr/bin/env bash
# Time the README's two commands on a fresh clone of this repository (set-up included).
# Usage: benchmarks/acceptance/fresh_clone.sh   Writes benchmarks/results/fresh_clone/{timings.json,*.log}.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=$PWD/benchmarks/results/fresh_clone
mkdir -p "$OUT"
CLONE=$(mktemp -d)
git clone -q . "$CLONE"
cd "$CLONE"
t0=$(date +%s.%N); make demo > "$OUT/make_demo.log" 2>&1; t1=$(date +%s.%N)
make test > "$OUT/make_test.log" 2>&1; t2=$(date +%s.%N)
grep -v "^WARNING: Location" "$OUT/make_demo.log" > "$OUT/make_demo.tmp" && mv "$OUT/make_demo.tmp" "$OUT/make_demo.log"
grep -v "^WARNING: Location" "$OUT/make_test.log" > "$OUT/make_test.tmp" && mv "$OUT/make_test.tmp" "$OUT/make_test.log"
python3 - "$t0" "$t1" "$t2" "$(git rev-parse HEAD)" "$OUT/timings.json" <<'PY'
import json, sys
t0, t1, t2 = map(float, sys.argv[1:4])
json.dump({"command": "benchmarks/acceptance/fresh_clone.sh", "commit": sys.argv[4],
           "make_demo_s (venv + install + demo)": round(t1 - t0, 1),
           "make_test_s (set-up already done + tests)": round(t2 - t1, 1)}, open(sys.argv[5], "w"), indent=2)
PY
cat "$OUT/timings.json"
