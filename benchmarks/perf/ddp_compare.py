"""Compare the banks learned by 1 and N processes (benchmarks/perf/run_ddp.sh writes both).

Usage: python benchmarks/perf/ddp_compare.py DIR_1PROC DIR_NPROC [--out benchmarks/results/perf/ddp.json]
Reports the largest absolute difference per tensor, the validation accuracy of each, and whether the two
models answer the demo task's test inputs alike.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> None:
    from scalable_lm import store
    from scalable_lm.data.demo import demo_stream

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("single", type=Path)
    parser.add_argument("multi", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results" / "perf" / "ddp.json")
    args = parser.parse_args(argv)
    timings = [json.loads((d / "timing.json").read_text()) for d in (args.single, args.multi)]
    name = timings[0]["task"]
    a = store.read_task(args.single / "model", name)
    b = store.read_task(args.multi / "model", name)
    diffs = {k: float((a[k].double() - b[k].double()).abs().max()) for k in sorted(a)}
    scale = {k: float(a[k].double().abs().max()) for k in sorted(a)}
    dropout = timings[0].get("dropout", True)
    record = {"command": "benchmarks/perf/run_ddp.sh" + ("" if dropout else " --no-dropout"), "timings": timings, "max_abs_diff": diffs, "max_abs_value": scale}
    if name == demo_stream()[0].name:
        texts = [x for x, _ in demo_stream()[0].test]
        p1 = store.load(args.single / "model").predict(texts)
        p2 = store.load(args.multi / "model").predict(texts)
        record["same_answer_share"] = sum(x.label == y.label for x, y in zip(p1, p2)) / len(texts)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    worst = max(diffs, key=diffs.get)
    print(f"largest difference {diffs[worst]:.2e} in {worst} (values up to {scale[worst]:.2e}); "
          f"val accuracy {timings[0]['best_val_accuracy']:.3f} vs {timings[1]['best_val_accuracy']:.3f}; "
          f"same answers {record.get('same_answer_share')}")


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
