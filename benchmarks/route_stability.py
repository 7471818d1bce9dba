"""What can move when a task is added: the routes of old inputs, measured on CL-5 (issue 36).

Usage:
    python benchmarks/route_stability.py [--data-dir ../shared/datasets] [--seeds 0 1 2]

An old task's tensors never change when a task is added; its inputs' routes can. For every order (4-7) and
seed, each time a task is added, every test row of the tasks before it is routed before and after, and counted
as: kept (same task), taken by the new task (competition: the new task's inputs look like it), or moved to
another *old* task (drift: with the Gaussian router the shared covariance is re-estimated with every task, so
the boundary between two old tasks moves). Routing only (no increment is trained): it depends on the frozen
MiniLM-L4 queries and the per-task statistics the bank stores, exactly as SLM routes.

Routers: the current one (one shared covariance, shrinkage 0.1) and ``frozen``: each task scored by the Gaussian
log-likelihood under the shared covariance as it stood when that task was learned (the pool of its own and the
earlier tasks' scatters, shrunk the same way), so adding a task changes no old task's score and no old input can
move between old tasks; only the new task can take inputs. Accuracy of both: 5-fold cross-validation on training
rows (as benchmarks/router_study.py: the choice uses no test row), with the test rows reported beside.
Output: benchmarks/results/router/route_stability.json and a table on standard output.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from router_study import ORDERS, scorer, staged_accuracy, summary  # noqa: E402
from run import ROOT, build_stream, provenance  # noqa: E402

import router_study  # noqa: E402
from scalable_lm.config import TrainConfig  # noqa: E402
from scalable_lm.core import routers  # noqa: E402
from scalable_lm.data.tasks import split_validation  # noqa: E402
from scalable_lm.encoder import QueryEncoder  # noqa: E402

SHRINKAGE = 0.1
CANDIDATES = {"current": ("lda", 0.0, SHRINKAGE), "frozen": ("frozen", 0.0, SHRINKAGE)}


def frozen_scorer(stats: list[tuple], shrinkage: float):
    """``queries [B, d] -> scores [B, T]``: task t's Gaussian log-likelihood (up to a constant shared by all
    tasks) under the shrunk pooled covariance of tasks 0..t, i.e. the one the current router used when t was
    learned; nothing of task t's score depends on a later task."""
    parts = []
    for t, (mean, _, _) in enumerate(stats):
        precision = routers.shared_precision([s[1] for s in stats[: t + 1]], [s[2] for s in stats[: t + 1]], shrinkage)
        logdet = -torch.linalg.slogdet(precision)[1]  # log det of the covariance
        parts.append((mean, precision, logdet))

    def score(q):
        q = q.double()
        return torch.stack([routers.mahalanobis_scores(q, mean[None], precision)[:, 0] - logdet
                            for mean, precision, logdet in parts], dim=1)

    return score


def any_scorer(stats, kind, blend, shrinkage):
    return frozen_scorer(stats, shrinkage) if kind == "frozen" else scorer(stats, kind, blend, shrinkage)


def movements(train_q: list[torch.Tensor], test_q: list[torch.Tensor], candidate: tuple) -> list[dict]:
    """Per added task s >= 1: of the test rows of tasks 0..s-1, how many kept their route, were taken by task
    s, or moved to another old task."""
    stats = [routers.task_statistics(q) for q in train_q]
    steps = []
    for s in range(1, len(train_q)):
        old = torch.cat(test_q[:s])
        before = any_scorer(stats[:s], *candidate)(old).argmax(-1)
        after = any_scorer(stats[: s + 1], *candidate)(old).argmax(-1)
        steps.append({"added": s, "rows": len(old), "kept": int((after == before).sum()),
                      "taken_by_new": int((after == s).sum()),
                      "moved_between_old": int(((after != before) & (after != s)).sum())})
    return steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent.parent / "shared" / "datasets")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    encoder = QueryEncoder.from_name("minilm-l4")
    cache = encoder.default_cache_path()
    encoder.load_cache(cache)
    original = router_study.scorer
    router_study.scorer = any_scorer  # staged_accuracy scores through router_study.scorer
    runs = []
    try:
        for seed in args.seeds:
            for order, names in ORDERS.items():
                stream = build_stream({"order": names, "train_per_task": 500, "test_per_task": 500, "seed": seed},
                                      args.data_dir)
                train_q, test_q = [], []
                for t, task in enumerate(stream):  # the statistics come from training rows, as in SLM
                    rows, _ = split_validation(task.train, TrainConfig().val_fraction, seed + t)
                    train_q.append(encoder.encode([x for x, _ in rows]))
                    test_q.append(encoder.encode([x for x, _ in task.test]))
                encoder.save_cache(cache)
                run = {"seed": seed, "order": order, "tasks": names}
                for name, cand in CANDIDATES.items():
                    cv = staged_accuracy(train_q, None, args.folds, cand)
                    test = staged_accuracy(train_q, test_q, 1, cand)
                    run[name] = {"cv": summary(cv), "test": summary(test), "test_accuracy": test,
                                 "steps": movements(train_q, test_q, cand)}
                runs.append(run)
                print(f"seed {seed} order {order} ({time.perf_counter() - start:.0f}s)", flush=True)
    finally:
        router_study.scorer = original
    totals = {}
    for name in CANDIDATES:
        steps = [s for r in runs for s in r[name]["steps"]]
        totals[name] = {key: sum(s[key] for s in steps) for key in ("rows", "kept", "taken_by_new", "moved_between_old")}
        for part in ("cv", "test"):
            for key in ("final", "forgetting"):
                totals[name][f"{part}_{key}"] = sum(r[name][part][key] for r in runs) / len(runs)
    print(f"{'router':<8} {'cv final':>9} {'cv forget':>10} {'test final':>11} {'test forget':>12} "
          f"{'old rows':>9} {'taken by new':>13} {'moved old->old':>15}")
    for name, t in totals.items():
        print(f"{name:<8} {100 * t['cv_final']:9.2f} {100 * t['cv_forgetting']:10.2f} {100 * t['test_final']:11.2f} "
              f"{100 * t['test_forgetting']:12.2f} {t['rows']:9d} {t['taken_by_new']:13d} {t['moved_between_old']:15d}")
    record = {"command": "python benchmarks/route_stability.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "candidates": CANDIDATES, "seeds": args.seeds, "folds": args.folds, "totals": totals, "runs": runs,
              "seconds": time.perf_counter() - start, "provenance": provenance()}
    out = ROOT / "results" / "router" / "route_stability.json"
    out.write_text(json.dumps(record, indent=1))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
