"""How much two tasks' inputs overlap under the Gaussian router, measured and estimated (issue 42).

SLM routes by the content of the input: when two tasks' inputs look alike, some inputs of each go to the
other, and no content router can do better than the inputs allow. When a task ``t`` is learned, two shares
tell the user whether it overlaps an older task ``j``:

- ``routes_to[j]``: the share of ``t``'s own inputs that go to ``j``. Measured on ``t``'s held-out queries:
  its validation rows, routed by the bank as it is, and its training rows by ``folds``-fold cross-validation
  (each fold routed by the bank with ``t``'s statistics fitted on the other folds). Held-out, because a
  Gaussian fitted on a few hundred queries in hundreds of dimensions routes its own training queries home
  far more often than new inputs; and all of them, because the validation split alone (20 rows of a
  200-row task) cannot tell 1% from 5%.
- ``captures[j]``: the share of ``j``'s inputs that ``t`` now takes, without any of ``j``'s data (no replay):
  estimated from the task means and the router's pooled covariance (``pooled_captures``); how well it holds,
  and the other estimators tried, in benchmarks/results/overlap.

Pure torch on the statistics ``routers.task_statistics`` makes; the method layer calls it after learning.
"""

from __future__ import annotations

import math

import torch

from scalable_lm.core import routers


def _scores(queries: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    return routers.mahalanobis_scores(queries.to(precision.dtype), means, precision)


def held_out_routes(means: torch.Tensor, others: tuple[torch.Tensor, torch.Tensor], task: int,
                    train_queries: torch.Tensor, val_queries: torch.Tensor | None, shrinkage: float,
                    folds: int = 5) -> torch.Tensor:
    """``[N_held]`` index of the task each held-out query of task ``task`` goes to, under the Gaussian router.

    Args:
        means: ``[T, d]`` every task's mean query (``task``'s the mean of ``train_queries``).
        others: ``(Σ scatter [d, d], Σ count [])`` of every task but ``task`` (``routers.pool``).
        task: the task whose inputs are routed.
        train_queries: ``[N, d]`` the queries ``task``'s statistics were fitted on.
        val_queries: ``[M, d]`` its validation queries, or ``None``.

    Validation queries are routed by the router as it is; each of ``folds`` interleaved folds of the training
    queries by the router with ``task``'s mean and scatter (hence the pool) fitted on the other folds. Fewer
    than ``2 * folds`` training queries: the validation queries only (a fold too small to refit on).
    """
    dtype, device = means.dtype, means.device
    scatter_others, count_others = (x.to(device=device, dtype=dtype) for x in others)
    q = train_queries.to(device=device, dtype=dtype)
    out = []
    if val_queries is not None and len(val_queries):
        _, scatter, count = routers.task_statistics(q)
        precision = routers.pooled_precision(scatter_others + scatter, count_others + count, shrinkage)
        out.append(_scores(val_queries.to(device), means, precision).argmax(-1))
    if len(q) >= 2 * folds:
        for k in range(folds):
            held = torch.zeros(len(q), dtype=torch.bool, device=device)
            held[k::folds] = True
            mean, scatter, count = routers.task_statistics(q[~held])
            precision = routers.pooled_precision(scatter_others + scatter, count_others + count, shrinkage)
            fold_means = means.clone()
            fold_means[task] = mean.to(dtype)
            out.append(_scores(q[held], fold_means, precision).argmax(-1))
    if not out:
        return torch.zeros(0, dtype=torch.long, device=device)
    return torch.cat(out)


def shares(routes: torch.Tensor, num_tasks: int) -> torch.Tensor:
    """``[T]`` share of rows routed to each task, from ``routes [N]`` (0 everywhere when ``N == 0``)."""
    counts = torch.bincount(routes, minlength=num_tasks)[:num_tasks].to(torch.float64)
    return counts / max(1, len(routes))


def gaussian_captures(stats: list[tuple], shrinkage: float) -> torch.Tensor:
    """``[T-1]`` the textbook estimate ``Phi(-Delta_jt / 2)`` of the share of each older task ``j``'s inputs that
    the newest task ``t`` takes, ``Delta`` the Mahalanobis distance between the two means under the router's
    shared covariance (two equal-covariance Gaussians, the rest of the bank ignored)."""
    precision = routers.pooled_precision(*routers.pool([s[1] for s in stats], [s[2] for s in stats]), shrinkage)
    return _pairwise_share(torch.stack([s[0] for s in stats]), precision, 1.0)


def above(pairs: list[dict], threshold: float) -> list[dict]:
    """The overlap pairs (``{"task", "other", "routes_to", "captures"}``, shares 0-1) where either share passes
    ``threshold`` (a share, 0-1), largest first: what a warning and ``slm info`` show."""
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold is a share of inputs between 0 and 1, got {threshold}")
    return sorted((p for p in pairs if max(p["routes_to"], p["captures"]) > threshold),
                  key=lambda p: -max(p["routes_to"], p["captures"]))


def _pairwise_share(means: torch.Tensor, precision: torch.Tensor, inflation: float) -> torch.Tensor:
    """``[T-1]`` ``Phi(-Delta_jt / (2 sqrt(inflation)))``: the share of draws from ``N(mean_j, inflation * Sigma)``
    that score the newest task ``t`` above ``j`` (``Sigma`` the inverse of ``precision``; exact for two tasks)."""
    diff = means[:-1] - means[-1]
    delta = ((diff @ precision) * diff).sum(-1).clamp_min(0).sqrt()
    return 0.5 * torch.erfc(delta / (2 * math.sqrt(inflation)) / math.sqrt(2))


def sampled_captures(stats: list[tuple], shrinkage: float, inflation: float = 1.0, samples: int = 2000,
                     seed: int = 0) -> torch.Tensor:
    """``[T-1]`` share of draws from each older task ``j``'s own Gaussian (its scatter over its count, shrunk as
    the router shrinks, times ``inflation``) that the router over every task sends to the newest one. Reads every
    task's scatter, so ``slm learn`` does not use it (benchmarks/overlap.py compares it)."""
    pooled = routers.pool([s[1] for s in stats], [s[2] for s in stats])
    means = torch.stack([s[0] for s in stats])
    precision = routers.pooled_precision(*pooled, shrinkage)
    T, d = means.shape
    generator = torch.Generator(device="cpu").manual_seed(seed)
    out = torch.zeros(T - 1, dtype=means.dtype, device=means.device)
    for j in range(T - 1):
        cov = routers.shrunk_covariance(stats[j][1] / stats[j][2].clamp_min(1.0), shrinkage)
        chol = torch.linalg.cholesky(cov * inflation)
        z = torch.randn(samples, d, generator=generator, dtype=means.dtype).to(means.device)
        draws = means[j] + z @ chol.T
        out[j] = (_scores(draws, means, precision).argmax(-1) == T - 1).to(out.dtype).mean()
    return out


# ``pooled_captures``' inflation for ``captures``, chosen on validation rows of the shared datasets by a rule
# written down first (benchmarks/results/overlap/notes.md): the largest of 1-4 tried, within 1% false warnings.
CAPTURE_INFLATION = 4.0


class InflatedPool:
    """The router's pooled covariance factorised once for the draws of ``pooled_captures`` and
    ``pooled_routes``: ``precision [d, d]`` (the router's, ``routers.pooled_precision``) and ``cholesky [d, d]``
    of ``inflation`` times its shrunk covariance. ``pooled``: ``(Σ scatter [d, d], Σ count [])``; the Cholesky
    factor is computed when first used (``pooled_captures`` needs none when no older task is near)."""

    def __init__(self, pooled: tuple[torch.Tensor, torch.Tensor], shrinkage: float,
                 inflation: float = CAPTURE_INFLATION):
        self.pooled, self.shrinkage, self.inflation = pooled, shrinkage, inflation
        self.precision = routers.pooled_precision(*pooled, shrinkage)
        self._cholesky: torch.Tensor | None = None

    @property
    def cholesky(self) -> torch.Tensor:
        if self._cholesky is None:
            dtype = self.precision.dtype
            scatter, count = (x.to(dtype) for x in self.pooled)
            cov = routers.shrunk_covariance(scatter / count.clamp_min(1.0), self.shrinkage)
            self._cholesky = torch.linalg.cholesky(cov * self.inflation)
        return self._cholesky


def pooled_captures(means: torch.Tensor, pooled: tuple[torch.Tensor, torch.Tensor], shrinkage: float,
                    inflation: float = CAPTURE_INFLATION, samples: int = 1000, seed: int = 0,
                    floor: float = 0.0025, most: int = 32, pool: InflatedPool | None = None) -> torch.Tensor:
    """``[T-1]`` estimated share of each older task's inputs that the newest task (last of ``means [T, d]``)
    takes: the share of draws from ``N(mean_j, inflation * Sigma)`` that the router over every task sends to it,
    ``Sigma`` the router's own shrunk shared covariance (from ``pooled``: ``(Σ scatter, Σ count)``).

    The inflation stands for what the fitted covariance misses: a few hundred queries in hundreds of dimensions
    make tasks look farther apart than new inputs show them to be (the plain ``gaussian_captures`` is ~10x low).
    Reads only the means and the pool, no task's own statistics. Cost: the pairwise share,
    ``Phi(-Delta_jt / (2 sqrt(inflation)))``, is exact for two tasks and an upper bound with more, so draws are
    made only for the older tasks whose bound reaches ``floor``, at most the ``most`` of them with the largest
    bounds; the others keep the bound (an overestimate, so a warning errs towards being given). Of a sampled
    task's draws, only those the newest task wins against it (about its bound) are scored against every task.
    ``pool``: the factorised pool (``InflatedPool``), given to reuse one over many calls (``pooled``,
    ``shrinkage`` and ``inflation`` are then its own and not read).
    """
    pool = pool if pool is not None else InflatedPool(pooled, shrinkage, inflation)
    precision = pool.precision
    means = means.to(precision.dtype)
    T, d = means.shape
    out = _pairwise_share(means, precision, pool.inflation)
    order = torch.argsort(out, descending=True)[:most]
    near = sorted(order[out[order] >= floor].tolist())
    if not near:
        return out
    chol = pool.cholesky
    generator = torch.Generator(device="cpu").manual_seed(seed)
    projected = routers.project_means(means, precision)
    for j in near:
        z = torch.randn(samples, d, generator=generator, dtype=chol.dtype).to(chol.device)
        draws = means[j] + z @ chol.T
        # only a draw the newest task wins against j can be routed to it: score the rest against every task
        pair = routers.mahalanobis_scores(draws, means[[j, T - 1]], precision)
        contested = draws[pair[:, 1] > pair[:, 0]]
        won = routers.mahalanobis_scores(contested, means, precision, projected).argmax(-1) == T - 1
        out[j] = won.sum().to(out.dtype) / samples
    return out


def pooled_routes(means: torch.Tensor, pooled: tuple[torch.Tensor, torch.Tensor], shrinkage: float,
                  inflation: float = CAPTURE_INFLATION, samples: int = 1000, seed: int = 0,
                  pool: InflatedPool | None = None) -> torch.Tensor:
    """``[T-1]`` estimated share of the newest task's inputs that go to each older task: draws from
    ``N(mean_t, inflation * Sigma)`` (as ``pooled_captures`` draws, the other way round) routed over every task.
    For where the newest task's held-out rows are not at hand (``slm merge``); ``slm learn`` measures this share
    instead (``held_out_routes``). The inflation was chosen for ``captures`` and is not checked against test rows
    for this direction. Two tasks with the same mean tie, and a tie goes to the older task, as in routing.
    ``pool``: as in ``pooled_captures``."""
    pool = pool if pool is not None else InflatedPool(pooled, shrinkage, inflation)
    means = means.to(pool.precision.dtype)
    T, d = means.shape
    generator = torch.Generator(device="cpu").manual_seed(seed)
    z = torch.randn(samples, d, generator=generator, dtype=pool.cholesky.dtype).to(pool.cholesky.device)
    routes = _scores(means[-1] + z @ pool.cholesky.T, means, pool.precision).argmax(-1)
    return shares(routes, T)[:-1]
