"""Calibrated confidences and abstention of the SLM classifier on CL-5 (issue 19, item 4).

Usage:
    python benchmarks/calibration.py [--data-dir ../shared/datasets] [--train 500] [--test 500] [--ood 200]

Learns CL-5 order 4 with SLM's default configuration (the rows, epochs and length of
benchmarks/configs/cl5/slm_gaussian_l4_order4.json), saving the model directory after each task
(runs/calibration/model; a rerun resumes from it). Each head's temperature is fitted on that task's
validation rows (carved from its training rows) when it is learned; the test rows are used only here:

- calibration: expected calibration error (15 bins) of every CL-5 task's test rows, answered without a
  task-ID, before (temperature 1: the raw softmax) and after (the fitted temperatures); an answer counts as
  right when both its task and its label are right (the strict score of the CL-5 tables);
- abstention: the share of answers that `predict(..., abstain=z)` turns into "unknown", for a grid of z, on
  the CL-5 test rows (in-task: every one of them is a wrong abstention) and on rows of datasets the model
  never learned (out-of-task: sentence pairs, a sentiment set, finance news, patient questions, science and
  common-sense questions from ../shared/datasets). One z is checked end to end through `predict`.

Writes benchmarks/results/calibration/calibration.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from run import build_stream, provenance  # noqa: E402

ORDER = ["agnews", "yelp", "amazon", "yahoo", "dbpedia"]
# slm_gaussian_l4_order4.json, with the heads' temperatures fitted (train.calibrate; off by default)
CONFIG = {"model": {"encoder": "minilm-l4"}, "bank": {"router": "gaussian"}, "train": {"calibrate": True}}
# datasets never learned here, with the file and the field that holds the input text
OUT_OF_TASK = {"mnli": ("test.jsonl", "text"), "qqp": ("test.jsonl", "text"), "rte": ("test.jsonl", "text"),
               "boolq": ("test.jsonl", "text"), "sst2": ("test.jsonl", "text"), "finance_fpb": ("test.jsonl", "text"),
               "medical_chatdoctor5k": ("test.jsonl", "input"), "arc_easy": ("test.jsonl", "question"),
               "piqa": ("validation.jsonl", "question"), "mmlu": ("test.jsonl", "question")}
Z_GRID = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0]
CHECKED_Z = 3.0


def out_of_task_rows(data_dir: Path, n: int, seed: int) -> tuple[dict[str, list[str]], dict[str, int]]:
    """``n`` seeded texts of each OUT_OF_TASK set, and per set the lines that are not JSON (skipped: the local
    mmlu file has a row cut in two)."""
    out, skipped = {}, {}
    for name, (file, field) in OUT_OF_TASK.items():
        rows, skipped[name] = [], 0
        for line in (data_dir / name / file).read_text().split("\n"):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    skipped[name] += 1
        texts = [r[field] for r in rows if isinstance(r.get(field), str) and r[field].strip()]
        out[name] = random.Random(seed).sample(texts, min(n, len(texts)))
    return out, skipped


def learned_model(stream, model_dir: Path, seed: int):
    """The model after the stream, learning (and saving after) each task not yet in ``model_dir``."""
    from scalable_lm import store
    from scalable_lm.config import SLMConfig
    from scalable_lm.methods.slm import SLM

    base = SLMConfig().to_dict()
    for section, values in CONFIG.items():
        base[section].update(values)
    base["train"]["seed"] = seed
    if (model_dir / store.MANIFEST).exists():
        slm = store.load(model_dir, device="cpu")
    else:
        slm = SLM(SLMConfig.from_dict(base), device="cpu")
    for task in stream:
        if task.name in slm.task_names:
            continue
        start = time.perf_counter()
        report = slm.learn(task, progress=sys.stderr.isatty())
        info = {k: report[k] for k in ("temperature", "val_nll", "val_nll_calibrated", "val_rows", "best_val_accuracy")
                if k in report}
        store.save(slm, model_dir, {task.name: {**info, "learn_s": round(time.perf_counter() - start, 1)}})
        print(f"learned {task.name}: {info}", file=sys.stderr)
    return slm


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent.parent / "shared" / "datasets")
    parser.add_argument("--train", type=int, default=500, help="training rows per task (default: 500)")
    parser.add_argument("--test", type=int, default=500, help="test rows per task (default: 500)")
    parser.add_argument("--ood", type=int, default=200, help="rows per out-of-task dataset (default: 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-dir", type=Path, default=ROOT.parent / "runs" / "calibration" / "model")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "calibration" / "calibration.json")
    args = parser.parse_args(argv)

    import torch

    from scalable_lm import store
    from scalable_lm.metrics import expected_calibration_error

    torch.set_num_threads(2)
    cfg = {"order": ORDER, "train_per_task": args.train, "test_per_task": args.test, "seed": args.seed}
    stream = build_stream(cfg, args.data_dir)
    slm = learned_model(stream, args.model_dir, args.seed)
    manifest = store.read_manifest(args.model_dir)

    start = time.perf_counter()
    texts = [x for task in stream for x, _ in task.test]
    gold = [(task.name, task.label_names[y]) for task in stream for _, y in task.test]
    fitted = list(slm.temperatures)
    calibrated = slm.predict(texts, batch_size=64)
    slm.temperatures = [1.0] * len(fitted)
    raw = slm.predict(texts, batch_size=64)
    slm.temperatures = fitted
    assert [p.label for p in raw] == [p.label for p in calibrated]
    right = [(p.task, p.label) == g for p, g in zip(calibrated, gold)]
    per_task, offset = {}, 0
    for task, temperature in zip(stream, fitted):
        n = len(task.test)
        rows = slice(offset, offset + n)
        entry = next(t for t in manifest["tasks"] if t["name"] == task.name)
        per_task[task.name] = {
            "rows": n, "accuracy": round(sum(right[rows]) / n, 4), "temperature": round(temperature, 4),
            "ece_before": round(expected_calibration_error([p.confidence for p in raw[rows]], right[rows]), 4),
            "ece_after": round(expected_calibration_error([p.confidence for p in calibrated[rows]], right[rows]), 4),
            "mean_confidence_before": round(sum(p.confidence for p in raw[rows]) / n, 4),
            "mean_confidence_after": round(sum(p.confidence for p in calibrated[rows]) / n, 4),
            "val_rows": entry.get("val_rows"), "val_nll_before": entry.get("val_nll"),
            "val_nll_after": entry.get("val_nll_calibrated")}
        offset += n
    overall = {"rows": len(texts), "accuracy": round(sum(right) / len(right), 4),
               "ece_before": round(expected_calibration_error([p.confidence for p in raw], right), 4),
               "ece_after": round(expected_calibration_error([p.confidence for p in calibrated], right), 4)}

    # abstention: the decision is KnowledgeBank.unfamiliar(query, routed task, z), as in predict; the grid is
    # computed from one encoding, and z = CHECKED_Z is checked against predict(abstain=z) itself
    ood, skipped = out_of_task_rows(args.data_dir, args.ood, args.seed)
    ood_texts = [x for rows in ood.values() for x in rows]
    ood_preds = slm.predict(ood_texts, batch_size=64)

    def far(preds, inputs, z):
        queries = slm.encoder.encode(inputs)
        tasks = torch.tensor([slm.task_index(p.task) for p in preds], device=queries.device)
        return slm.bank.unfamiliar(queries, tasks, z).tolist()

    grid = []
    for z in Z_GRID:
        inside, outside = far(calibrated, texts, z), far(ood_preds, ood_texts, z)
        by_set, offset = {}, 0
        for name, rows in ood.items():
            by_set[name] = round(sum(outside[offset:offset + len(rows)]) / len(rows), 4)
            offset += len(rows)
        kept_right = sum(r for r, f in zip(right, inside) if not f)
        grid.append({"z": z, "in_task_abstained": round(sum(inside) / len(inside), 4),
                     "out_of_task_abstained": round(sum(outside) / len(outside), 4),
                     "out_of_task_by_set": by_set,
                     "in_task_accuracy_of_answered": round(kept_right / max(1, len(inside) - sum(inside)), 4),
                     "in_task_wrongly_abstained_right_answers": sum(r and f for r, f in zip(right, inside))})
    checked_in = [p.abstained for p in slm.predict(texts, batch_size=64, abstain=CHECKED_Z)]
    checked_out = [p.abstained for p in slm.predict(ood_texts, batch_size=64, abstain=CHECKED_Z)]
    row = next(g for g in grid if g["z"] == CHECKED_Z)
    check = {"z": CHECKED_Z, "in_task_abstained": round(sum(checked_in) / len(checked_in), 4),
             "out_of_task_abstained": round(sum(checked_out) / len(checked_out), 4)}
    check["matches_grid"] = (check["in_task_abstained"], check["out_of_task_abstained"]) == \
        (row["in_task_abstained"], row["out_of_task_abstained"])

    result = {
        "command": "python benchmarks/calibration.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"), "order": ORDER, "config": CONFIG,
        "train_per_task": args.train, "test_per_task": args.test, "ood_per_set": args.ood, "seed": args.seed,
        "scoring": "right = right task and right label, no task-ID given", "ece_bins": 15,
        "calibration": {"overall": overall, "per_task": per_task},
        "abstain": {"out_of_task_sets": {k: len(v) for k, v in ood.items()}, "skipped_lines": skipped, "grid": grid,
                    "predict_check": check},
        "eval_s": round(time.perf_counter() - start, 1),
        "learn_s": {t["name"]: t.get("learn_s") for t in manifest["tasks"]},
        "provenance": provenance(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"calibration": overall, "abstain": [(g["z"], g["in_task_abstained"], g["out_of_task_abstained"])
                                                          for g in grid], "check": check}, indent=1))


if __name__ == "__main__":
    main()
