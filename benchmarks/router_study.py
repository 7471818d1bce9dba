"""Why SLM forgets on CL-5, and which router fixes it: task routing as the stream grows, on training rows only.

Usage:
    python benchmarks/router_study.py [--data-dir ../shared/datasets] [--seeds 0 1 2] [--folds 5]

SLM's forgetting on CL-5 (about 1 point) is routing: an old task's input is sent to a later task's entries
and head. Routing depends only on the frozen query encoder and the per-task query statistics, so this
measures it without training any increment: for every order (4-7) and seed, after each task of the stream,
the share of each seen task's inputs routed to their own task. Candidates are scored by k-fold
cross-validation over each task's training rows (statistics from the other folds; the stream's order and
rows as in benchmarks/run.py), so the choice of router uses no test row. The test rows are then routed
once by the current and the chosen router, as a check reported apart. With them, where the forgotten test rows
go (``misroutes``: to a task learned later or earlier, and the final routing confusion).

Candidates (all built from what the bank already stores per task: mean, scatter, count):
  - lda_a: the current router: one shared covariance (pooled scatter), shrunk by a towards a scaled identity;
  - qda_l_a: each task its own covariance, blended with the pooled one by l (regularised discriminant
    analysis, Friedman 1989), shrunk by a towards a scaled identity, scored by the Gaussian log-likelihood
    (Mahalanobis distance plus log-determinant);
  - lda_a_rc: the current router with a recency prior: task t's score is lowered by c*t (t = its place in
    the stream), so a newer task takes an input only when it is closer than the older ones by c per step
    (in squared-Mahalanobis units; c = 2 log of the prior ratio). A stability knob: old tasks keep inputs
    that sit between them and a newer task, and a new task gives up its own inputs that sit there.
  - mix_m_a: each task a mixture of m Gaussians (k-means on its queries when it is learned; the bank would
    store m means and counts per task instead of one), all components sharing one covariance (the pooled
    within-component scatter), shrunk by a; a task's score is the log of its mixture density. A broad task
    (amazon: reviews of every kind of product; yahoo: questions on every topic) gets several narrow modes
    instead of one wide mean that sits near a narrower task's inputs.
  - scaled_a: the current router with one spread per task: task t's covariance is s_t times the shared one,
    s_t the mean squared Mahalanobis distance of its own queries (under the shared covariance) over d, and
    the score is the Gaussian log-likelihood (-D^2 / s_t - d log s_t). A one-number-per-task middle way between
    one shared covariance (a broad task's inputs look as tight as a narrow one's) and a full covariance per
    task (which 450 queries cannot estimate).
Output: benchmarks/results/router/router_study.json (and a table on standard output).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, build_stream, provenance  # noqa: E402

from scalable_lm.config import TrainConfig  # noqa: E402
from scalable_lm.core import routers  # noqa: E402
from scalable_lm.data.tasks import split_validation  # noqa: E402
from scalable_lm.encoder import QueryEncoder  # noqa: E402

ORDERS = {
    4: ["agnews", "yelp", "amazon", "yahoo", "dbpedia"],
    5: ["yelp", "yahoo", "amazon", "dbpedia", "agnews"],
    6: ["dbpedia", "yahoo", "agnews", "amazon", "yelp"],
    7: ["yelp", "agnews", "dbpedia", "amazon", "yahoo"],
}
CANDIDATES = {
    **{f"lda_{a}": ("lda", 0.0, a) for a in (0.02, 0.05, 0.1, 0.2, 0.4)},
    **{f"qda_{lam}_{a}": ("qda", lam, a) for lam in (0.3, 0.5, 0.7, 0.9) for a in (0.02, 0.1)},
    **{f"lda_0.1_r{c}": ("lda", 0.0, 0.1, c) for c in (1, 2, 4, 8, 16)},
    **{f"mix_{m}_{a}": ("mix", float(m), a) for m in (2, 4, 8) for a in (0.02, 0.1)},
    **{f"scaled_{a}": ("scaled", 0.0, a) for a in (0.02, 0.1)},
}
CURRENT = "lda_0.1"


def kmeans(queries: torch.Tensor, m: int, iters: int = 25) -> torch.Tensor:
    """``[N]`` component of each of one task's queries ``[N, d]``: Lloyd's k-means with m centres, started
    deterministically from farthest points (the first centre is the query nearest the mean). Written here
    because scikit-learn's KMeans would add a random-state dependency to a 20-line loop on tensors."""
    q = queries.double()
    centres = [q[((q - q.mean(0)) ** 2).sum(-1).argmin()]]
    for _ in range(1, m):
        dist = torch.cdist(q, torch.stack(centres)).min(-1).values
        centres.append(q[dist.argmax()])
    centres = torch.stack(centres)
    for _ in range(iters):
        assign = torch.cdist(q, centres).argmin(-1)
        centres = torch.stack([q[assign == k].mean(0) if (assign == k).any() else centres[k] for k in range(m)])
    return torch.cdist(q, centres).argmin(-1)


def components(queries: torch.Tensor, m: int) -> list[tuple]:
    """One task's mixture, fitted once when it is learned: ``(mean, scatter, count)`` of each non-empty
    k-means component of its queries ``[N, d]``."""
    assign = kmeans(queries, m)
    return [routers.task_statistics(queries[assign == k]) for k in range(m) if bool((assign == k).any())]


def task_stats(queries: list[torch.Tensor], candidate: tuple) -> list:
    """What the bank would store per task for ``candidate``: ``(mean, scatter, count)``, or for a mixture
    (``kind == "mix"``, m in the blend slot) the list of its components' statistics."""
    if candidate[0] == "mix":
        return [components(q, int(candidate[1])) for q in queries]
    return [routers.task_statistics(q) for q in queries]


def mixture_scorer(stats: list[list[tuple]], shrinkage: float):
    """``queries [B, d] -> scores [B, T]``: task t's log mixture density, its components ``stats[t]``
    (``components``) all sharing one covariance."""
    comps = [(t, *c) for t, task in enumerate(stats) for c in task]  # (task, mean, scatter, count)
    precision = routers.shared_precision([c[2] for c in comps], [c[3] for c in comps], shrinkage)
    means = torch.stack([c[1] for c in comps])
    task = torch.tensor([c[0] for c in comps])
    totals = [sum(c[2] for c in t) for t in stats]
    log_weight = torch.stack([torch.log(c[3] / totals[c[0]]) for c in comps])

    def score(q):
        per_comp = 0.5 * routers.mahalanobis_scores(q.double(), means, precision) + log_weight  # [B, C]
        return torch.stack([torch.logsumexp(per_comp[:, task == t], dim=-1) for t in range(len(stats))], dim=1)

    return score


def scorer(stats: list[tuple], kind: str, blend: float, shrinkage: float, recency: float = 0.0):
    """A function ``queries [B, d] -> scores [B, T]`` (higher = more likely) from per-task statistics,
    task t's score lowered by ``recency * t``. For ``kind == "mix"`` ``stats`` are each task's components
    (``task_stats``)."""
    if kind == "mix":
        return mixture_scorer(stats, shrinkage)
    prior = recency * torch.arange(len(stats), dtype=torch.float64)
    if kind in ("lda", "scaled"):
        precision = routers.shared_precision([s[1] for s in stats], [s[2] for s in stats], shrinkage)
        means = torch.stack([s[0] for s in stats])
        if kind == "lda":
            return lambda q: routers.mahalanobis_scores(q.double(), means, precision) - prior
        d = means.shape[1]
        # each task's mean squared Mahalanobis distance to its own mean, over d: tr(P S_t) / n_t / d
        spread = torch.stack([torch.trace(precision @ s[1]) / s[2] / d for s in stats])
        return lambda q: routers.mahalanobis_scores(q.double(), means, precision) / spread - d * torch.log(spread) - prior
    pooled = torch.stack([s[1] for s in stats]).sum(0) / torch.stack([s[2] for s in stats]).sum()
    d = pooled.shape[0]
    parts = []
    for mean, scatter, count in stats:
        cov = (1 - blend) * scatter / count + blend * pooled
        cov = (1 - shrinkage) * cov + shrinkage * torch.eye(d, dtype=cov.dtype) * torch.trace(cov) / d
        chol = torch.linalg.cholesky(cov)
        parts.append((mean, chol, 2 * torch.log(torch.diagonal(chol)).sum()))

    def score(q):
        q = q.double()
        out = []
        for mean, chol, logdet in parts:
            z = torch.linalg.solve_triangular(chol, (q - mean).T, upper=False)
            out.append(-(z * z).sum(0) - logdet)
        return torch.stack(out, dim=1) - prior

    return score


def staged_accuracy(train_q: list[torch.Tensor], eval_q: list[torch.Tensor] | None, folds: int,
                    candidate: tuple) -> list[list[float]]:
    """``acc[s][i]``: share of task i's held-out inputs routed to task i once tasks 0..s are learned.

    ``eval_q=None``: k-fold cross-validation over ``train_q`` (the statistics of the fold's other rows);
    otherwise statistics from all of ``train_q`` and ``eval_q`` routed."""
    T = len(train_q)
    right = [[0.0] * T for _ in range(T)]
    rounds = range(folds) if eval_q is None else [None]
    for k in rounds:
        if k is None:
            fit, held = train_q, eval_q
        else:
            masks = [torch.arange(len(q)) % folds == k for q in train_q]
            fit = [q[~m] for q, m in zip(train_q, masks)]
            held = [q[m] for q, m in zip(train_q, masks)]
        stats = task_stats(fit, candidate)
        for s in range(T):
            score = scorer(stats[: s + 1], *candidate)
            for i in range(s + 1):
                right[s][i] += float((score(held[i]).argmax(-1) == i).sum())
    totals = [len(q) if eval_q is None else len(eval_q[i]) for i, q in enumerate(train_q)]
    return [[right[s][i] / totals[i] if i <= s else None for i in range(T)] for s in range(T)]


def misroutes(train_q: list[torch.Tensor], eval_q: list[torch.Tensor], candidate: tuple) -> dict:
    """Where the forgotten inputs go: each task's ``eval_q`` rows routed when the task was learned and at the end.

    Returns ``confusion[i][j]`` (rows of task i routed to task j at the end of the stream) and the counts of rows
    routed right when their task was learned but wrong at the end, split by whether they went to a task learned
    *later* (competition from new statistics) or *earlier* (the old tasks' boundaries moving, e.g. through the
    shared covariance), with the rows that went the other way (wrong when learned, right at the end)."""
    T = len(train_q)
    stats = task_stats(train_q, candidate)
    end = [scorer(stats, *candidate)(q).argmax(-1) for q in eval_q]
    out = {"confusion": [[int((end[i] == j).sum()) for j in range(T)] for i in range(T)],
           "to_later": 0, "to_earlier": 0, "recovered": 0, "rows": sum(len(q) for q in eval_q[:-1])}
    for i in range(T - 1):
        at_learning = scorer(stats[: i + 1], *candidate)(eval_q[i]).argmax(-1)
        lost = (at_learning == i) & (end[i] != i)
        out["to_later"] += int((lost & (end[i] > i)).sum())
        out["to_earlier"] += int((lost & (end[i] < i)).sum())
        out["recovered"] += int(((at_learning != i) & (end[i] == i)).sum())
    return out


def summary(acc: list[list[float]]) -> dict:
    """Final mean routing accuracy and routing forgetting (max earlier minus final, over all but the last task)."""
    T = len(acc)
    drops = [max(acc[s][i] for s in range(i, T - 1)) - acc[T - 1][i] for i in range(T - 1)]
    return {"final": sum(acc[T - 1]) / T, "forgetting": sum(drops) / len(drops), "drops": drops}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent.parent / "shared" / "datasets")
    parser.add_argument("--encoder", default="minilm-l4", help="query encoder (SLM's default: minilm-l4)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--train-per-task", type=int, default=500)
    parser.add_argument("--test-per-task", type=int, default=500)
    args = parser.parse_args(argv)
    out = ROOT / "results" / "router"
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    encoder = QueryEncoder.from_name(args.encoder)
    cache = encoder.default_cache_path()
    encoder.load_cache(cache)
    runs = []
    for seed in args.seeds:
        for order, names in ORDERS.items():
            cfg = {"order": names, "train_per_task": args.train_per_task, "test_per_task": args.test_per_task,
                   "seed": seed}
            stream = build_stream(cfg, args.data_dir)
            val_fraction = TrainConfig().val_fraction
            train_q, test_q = [], []
            for t, task in enumerate(stream):  # SLM's statistics use its training rows, not the validation split
                rows, _ = split_validation(task.train, val_fraction, seed + t)
                train_q.append(encoder.encode([x for x, _ in rows]))
                test_q.append(encoder.encode([x for x, _ in task.test]))
            encoder.save_cache(cache)
            run = {"seed": seed, "order": order, "tasks": names, "cv": {}, "test": {}}
            for name, cand in CANDIDATES.items():
                run["cv"][name] = {"accuracy": (acc := staged_accuracy(train_q, None, args.folds, cand)), **summary(acc)}
            runs.append(run)
            print(f"seed {seed} order {order}: encoded and scored ({time.perf_counter() - start:.0f}s)", flush=True)
            run["_test_q"], run["_train_q"] = test_q, train_q
    mean = {name: {key: sum(r["cv"][name][key] for r in runs) / len(runs) for key in ("final", "forgetting")}
            for name in CANDIDATES}
    # the choice: the highest cross-validated final routing accuracy; forgetting is reported, not optimised
    chosen = max(mean, key=lambda n: mean[n]["final"])
    for r in runs:
        for name in dict.fromkeys([CURRENT, chosen]):
            acc = staged_accuracy(r["_train_q"], r["_test_q"], 1, CANDIDATES[name])
            r["test"][name] = {"accuracy": acc, **summary(acc),
                               "misroutes": misroutes(r["_train_q"], r["_test_q"], CANDIDATES[name])}
        del r["_test_q"], r["_train_q"]
    test_mean = {name: {key: sum(r["test"][name][key] for r in runs) / len(runs) for key in ("final", "forgetting")}
                 for name in dict.fromkeys([CURRENT, chosen])}
    print(f"{'router':<16} {'cv final':>9} {'cv forgetting':>14}")
    for name, m in sorted(mean.items(), key=lambda kv: -kv[1]["final"]):
        print(f"{name:<16} {100 * m['final']:9.2f} {100 * m['forgetting']:14.2f}")
    for name, m in test_mean.items():
        print(f"test rows, {name}: final {100 * m['final']:.2f}, forgetting {100 * m['forgetting']:.2f}")
        moved = {key: sum(r["test"][name]["misroutes"][key] for r in runs) for key in ("to_later", "to_earlier",
                                                                                      "recovered", "rows")}
        print(f"  of {moved['rows']} test rows of not-last tasks: right when learned, wrong at the end: "
              f"{moved['to_later']} to a later task, {moved['to_earlier']} to an earlier one; "
              f"{moved['recovered']} went the other way")
        test_mean[name]["misroutes"] = moved
    record = {
        "command": "python benchmarks/router_study.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": {"encoder": args.encoder, "seeds": args.seeds, "folds": args.folds, "orders": ORDERS,
                   "train_per_task": args.train_per_task, "test_per_task": args.test_per_task,
                   "candidates": CANDIDATES, "current": CURRENT},
        "cv_mean": mean, "chosen_by_cv": chosen, "test_mean": test_mean, "runs": runs,
        "seconds": time.perf_counter() - start, "provenance": provenance(),
    }
    (out / "router_study.json").write_text(json.dumps(record, indent=1))
    print(f"-> {out / 'router_study.json'}")


if __name__ == "__main__":
    main()
