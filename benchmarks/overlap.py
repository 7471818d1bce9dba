"""When a new task overlaps an old one: the shares `slm learn` records, against what test rows show (issue 42).

Usage:
    python benchmarks/overlap.py [--data-dir ../shared/datasets] [--train-rows 200] [--test-rows 400]

Routing only (no increment is trained: routes depend on the frozen MiniLM-L4 queries and the per-task statistics
alone, as in SLM): the 72-task stream of benchmarks/scale/stream.py (11 classification datasets, 4 multiple-choice
sets, MMLU's 57 subjects), each task's training rows split as `slm learn` splits them (10% validation,
seeded by the task's position), plus the pairs yelp/amazon and mnli/rte learned on their own.

After each task t is added, for every older task j:
- routes_to[j]: share of t's inputs that go to j. Recorded (as `slm learn` does): t's held-out queries,
  validation rows plus cross-validated training rows (``core.overlap.held_out_routes``); also shown: the
  validation rows alone, and t's training queries routed in-sample.
- captures[j]: share of j's inputs that t now takes. Estimators tried: ``gaussian`` (Phi(-Delta/2) from the two
  means and the shared covariance), ``mirror`` (t's recorded routes_to[j]: what t loses to j, j loses to t),
  ``sampled`` at several inflations (draws from j's own shrunk Gaussian, routed by the whole bank).
Ground truth: test rows (the shares measured on held-out test rows of t and of j, with the bank of tasks 0..t).
The choice (estimator and inflation) is made on validation ground truth: j's held-out queries (its validation
rows and cross-validated training rows), never test rows; test rows are scored after.

Per estimator: for pairs whose measured share is above 2%, how many are within 3 points and the largest error;
for pairs measured under 1%, how many would warn (estimate >= 2%, the `slm learn` default threshold).
Output: benchmarks/results/overlap/overlap.json and README.md (`python benchmarks/report.py overlap`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "scale"))
sys.path.insert(0, str(HERE))  # first: `run` is benchmarks/run.py
import stream as stream_module  # noqa: E402
from run import provenance  # noqa: E402

from scalable_lm.config import SLMConfig  # noqa: E402
from scalable_lm.core import overlap, routers  # noqa: E402
from scalable_lm.data.tasks import load_task, split_validation  # noqa: E402
from scalable_lm.encoder import QueryEncoder  # noqa: E402

OUT = HERE / "results" / "overlap"
INFLATIONS = (1.0, 1.5, 2.0, 3.0)  # j's own covariance (reads every old task's scatter)
POOLED = (1.0, 2.0, 3.0, 4.0)  # the router's shared covariance (reads nothing per task)
PAIRS = {"yelp/amazon": ("yelp", "amazon"), "amazon/yelp": ("amazon", "yelp"), "mnli/rte": ("mnli", "rte"),
         "rte/mnli": ("rte", "mnli")}


def score(pairs: list[dict], key: str, truth: str, n_key: str, above: float = 0.02, within: float = 0.03,
          under: float = 0.01, warn: float = 0.02) -> dict:
    """How well estimate ``key`` agrees with measured ``truth`` over ``pairs``."""
    big = [p for p in pairs if p[truth] > above]
    small = [p for p in pairs if p[truth] < under]
    errors = [abs(p[key] - p[truth]) for p in big]

    def sampling_se(p: dict) -> float:  # binomial standard error of the measured share (its rows are few)
        n = p.get(n_key, 0) or 1
        return (p[truth] * (1 - p[truth]) / n) ** 0.5
    return {"pairs_above_2pct": len(big), "within_3_points": sum(e <= within for e in errors),
            "within_3_points_or_2se": sum(e <= max(within, 2 * sampling_se(p)) for e, p in zip(errors, big)),
            "max_error_above_2pct": max(errors, default=0.0),
            "mean_error_above_2pct": sum(errors) / len(errors) if errors else 0.0,
            "pairs_under_1pct": len(small), "false_warnings": sum(p[key] >= warn for p in small),
            "missed_warnings": sum(p[key] < warn for p in big)}


def run_stream(names: list[str], train_q: list[torch.Tensor], val_q: list[torch.Tensor], test_q: list[torch.Tensor],
               shrinkage: float, folds: int, progress: str, seed0: int = 0) -> tuple[list[dict], list[dict]]:
    """(routes_to pairs, captures pairs) of a stream: every (t, j < t) with its estimates and measured shares."""
    stats: list[tuple] = []
    routes_pairs, capture_pairs = [], []
    start = time.perf_counter()
    for t, name in enumerate(names):
        stats.append(routers.task_statistics(train_q[t]))
        T = t + 1
        if T == 1:
            continue
        precision = routers.pooled_precision(*routers.pool([s[1] for s in stats], [s[2] for s in stats]), shrinkage)
        means = torch.stack([s[0] for s in stats])

        def test_routes(q):
            return routers.mahalanobis_scores(q.to(precision.dtype), means, precision).argmax(-1)

        pool_s, pool_n = routers.pool([s[1] for s in stats], [s[2] for s in stats])

        def held_out(j: int) -> torch.Tensor:  # shares of task j's held-out queries, with the bank of tasks 0..t
            others = (pool_s - stats[j][1], pool_n - stats[j][2])
            return overlap.shares(overlap.held_out_routes(means, others, j, train_q[j], val_q[j], shrinkage, folds), T)

        held = held_out(t)
        n_held = len(val_q[t]) + (len(train_q[t]) if len(train_q[t]) >= 2 * folds else 0)
        val_only = overlap.shares(test_routes(val_q[t]), T) if len(val_q[t]) else torch.zeros(T, dtype=torch.float64)
        in_sample = overlap.shares(test_routes(train_q[t]), T)
        measured = overlap.shares(test_routes(test_q[t]), T)
        gauss = overlap.gaussian_captures(stats, shrinkage)
        sampled = {f"sampled_x{c:g}": overlap.sampled_captures(stats, shrinkage, c, seed=t) for c in INFLATIONS}
        # pooled_x4 is what `slm learn` records (core.overlap.CAPTURE_INFLATION, seeded as learn seeds task t)
        sampled.update({f"pooled_x{c:g}": overlap.pooled_captures(means, (pool_s, pool_n), shrinkage, c, seed=seed0 + t)
                        for c in POOLED})
        for j in range(t):
            routes_pairs.append({"new": name, "old": names[j], "at": T, "recorded": float(held[j]),
                                 "n_held_out": int(n_held), "n_test": len(test_q[t]),
                                 "validation_only": float(val_only[j]), "in_sample": float(in_sample[j]),
                                 "test": float(measured[j])})
            # ground truth for the choice: j's held-out queries routed by the bank of tasks 0..t (no test row)
            j_held = held_out(j)
            n_held_j = len(val_q[j]) + (len(train_q[j]) if len(train_q[j]) >= 2 * folds else 0)
            j_test = overlap.shares(test_routes(test_q[j]), T)
            capture_pairs.append({"new": name, "old": names[j], "at": T, "validation": float(j_held[t]),
                                  "test": float(j_test[t]), "gaussian": float(gauss[j]), "mirror": float(held[j]),
                                  "n_test_new": len(test_q[t]), "n_test_old": len(test_q[j]),
                                  "n_held_out_old": n_held_j,
                                  **{k: float(v[j]) for k, v in sampled.items()}})
        print(f"{progress} [{T}/{len(names)}] {name}: self {100 * float(held[t]):.1f}% held out, "
              f"{100 * float(measured[t]):.1f}% test ({time.perf_counter() - start:.0f}s)", flush=True)
    return routes_pairs, capture_pairs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=HERE.parents[1] / "shared" / "datasets")
    parser.add_argument("--train-rows", type=int, default=200)
    parser.add_argument("--test-rows", type=int, default=400)
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    config = SLMConfig()
    shrinkage, seed0, fraction = config.bank.shrinkage, config.train.seed, config.train.val_fraction
    stream_module.RUNS = HERE.parent / "runs" / "overlap"  # its own copies of the task files
    files = stream_module.tasks(args.data_dir, args.train_rows, args.test_rows)
    encoder = QueryEncoder.from_name("minilm-l4")
    cache = encoder.default_cache_path()
    encoder.load_cache(cache)
    loaded = {}
    for name, train, test in files:
        task = load_task(name, train, test)
        loaded[name] = task

    def queries(names: list[str]):
        tr, va, te = [], [], []
        for t, name in enumerate(names):  # split as `slm learn` splits the t-th task of a directory
            rows, val = split_validation(loaded[name].train, fraction, seed0 + t)
            tr.append(encoder.encode([x for x, _ in rows]))
            va.append(encoder.encode([x for x, _ in val]))
            te.append(encoder.encode([x for x, _ in loaded[name].test]))
        encoder.save_cache(cache)
        return tr, va, te

    names = [n for n, _, _ in files]
    record = {"command": "python benchmarks/overlap.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "tasks": names, "shrinkage": shrinkage, "folds": args.folds, "train_rows": args.train_rows,
              "test_rows": args.test_rows, "sizes": {n: {"train": len(loaded[n].train), "test": len(loaded[n].test)}
                                                     for n in names},
              "provenance": provenance(), "streams": {}}
    streams = {"stream72": names, **{k: list(v) for k, v in PAIRS.items()}}
    for key, order in streams.items():
        routes_pairs, capture_pairs = run_stream(order, *queries(order), shrinkage, args.folds, key, seed0)
        record["streams"][key] = {"tasks": order, "routes_to": routes_pairs, "captures": capture_pairs}
    estimators = ["gaussian", "mirror", *[f"sampled_x{c:g}" for c in INFLATIONS], *[f"pooled_x{c:g}" for c in POOLED]]
    everything = {"routes_to": [p for s in record["streams"].values() for p in s["routes_to"]],
                  "captures": [p for s in record["streams"].values() for p in s["captures"]]}
    for p in everything["captures"]:  # blends: what t loses to j beside what j's Gaussian loses to t
        for other in ("sampled_x2", "pooled_x2"):
            p[f"mirror+{other}"] = (p["mirror"] + p[other]) / 2
    estimators += ["mirror+sampled_x2", "mirror+pooled_x2"]
    record["scores"] = {
        "routes_to": {k: score(everything["routes_to"], k, "test", "n_test")
                      for k in ("recorded", "validation_only", "in_sample")},
        "captures_validation": {k: score(everything["captures"], k, "validation", "n_held_out_old") for k in estimators},
        "captures_test": {k: score(everything["captures"], k, "test", "n_test_old") for k in estimators}}
    record["chosen_captures"] = f"pooled_x{overlap.CAPTURE_INFLATION:g}"
    record["seconds"] = time.perf_counter() - start
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "overlap.json").write_text(json.dumps(record, indent=1))
    for part, table in record["scores"].items():
        print(part)
        for k, v in table.items():
            print(f"  {k:18s} {v}")


if __name__ == "__main__":
    main()
