import math

import pytest
import torch

from scalable_lm.core import overlap, routers


def _tasks(centres, n=300, d=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=gen) + torch.tensor(c) for c in centres]


def _routes(queries, shrinkage=0.1):
    """Held-out routes of the newest task of ``queries`` (its training queries), as ``_measure_routing`` does."""
    stats = [routers.task_statistics(q) for q in queries]
    means = torch.stack([s[0] for s in stats])
    others = routers.pool([s[1] for s in stats[:-1]], [s[2] for s in stats[:-1]])
    return overlap.held_out_routes(means, others, len(stats) - 1, queries[-1], None, shrinkage)


def test_held_out_shares_of_two_overlapping_gaussians_match_the_theory():
    # unit-variance Gaussians whose means are 1.0 apart: Phi(-1/2) = 30.9% of either side crosses the midpoint
    d = 8
    a, b = _tasks([[0.0] * d, [1.0] + [0.0] * (d - 1)], n=2000, d=d)
    routes = _routes([a, b], shrinkage=0.0)
    shares = overlap.shares(routes, 2)
    assert len(routes) == 2000 and math.isclose(float(shares.sum()), 1.0)
    expected = 0.5 * math.erfc(0.5 / math.sqrt(2))
    assert abs(float(shares[0]) - expected) < 0.04 and abs(float(shares[1]) - (1 - expected)) < 0.04
    # the textbook estimate from the statistics alone agrees here (equal covariances, two tasks, many rows)
    stats = [routers.task_statistics(q) for q in (a, b)]
    assert abs(float(overlap.gaussian_captures(stats, 0.0)[0]) - expected) < 0.04


def test_far_apart_tasks_share_nothing_and_validation_rows_are_routed_too():
    a, b, c = _tasks([[0.0] * 8, [8.0] + [0.0] * 7, [0.0, 8.0] + [0.0] * 6])
    stats = [routers.task_statistics(q) for q in (a, b, c)]
    means = torch.stack([s[0] for s in stats])
    others = routers.pool([s[1] for s in stats[:2]], [s[2] for s in stats[:2]])
    val = torch.randn(40, 8, generator=torch.Generator().manual_seed(5)) + torch.tensor([0.0, 8.0] + [0.0] * 6)
    routes = overlap.held_out_routes(means, others, 2, c, val, 0.1)
    assert len(routes) == 300 + 40 and overlap.shares(routes, 3).tolist() == [0.0, 0.0, 1.0]


def test_cross_validation_sees_the_overfitting_that_in_sample_routing_hides():
    # 40 queries in 32 dimensions per task, the same distribution: in sample, each task's own points sit nearer
    # its own fitted mean; held out, half go to the other task, as they must
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(40, 32, generator=gen), torch.randn(40, 32, generator=gen)
    stats = [routers.task_statistics(q) for q in (a, b)]
    means = torch.stack([s[0] for s in stats])
    precision = routers.pooled_precision(*routers.pool([s[1] for s in stats], [s[2] for s in stats]), 0.1)
    in_sample = overlap.shares(routers.mahalanobis_scores(b, means, precision).argmax(-1), 2)
    held = overlap.shares(_routes([a, b]), 2)
    assert float(in_sample[1]) > 0.7 and 0.3 < float(held[1]) < 0.7


def test_too_few_training_rows_for_folds_use_the_validation_rows_only():
    a, b = _tasks([[0.0] * 8, [4.0] + [0.0] * 7], n=6)
    stats = [routers.task_statistics(q) for q in (a, b)]
    means = torch.stack([s[0] for s in stats])
    routes = overlap.held_out_routes(means, stats[0][1:], 1, b, None, 0.1)
    assert len(routes) == 0 and overlap.shares(routes, 2).tolist() == [0.0, 0.0]
    assert len(overlap.held_out_routes(means, stats[0][1:], 1, b, b[:3], 0.1)) == 3


def test_pooled_captures_is_the_inflated_pairwise_share_for_two_tasks_and_less_with_a_task_between():
    a, b = _tasks([[0.0] * 8, [2.0] + [0.0] * 7], n=2000)
    stats = [routers.task_statistics(q) for q in (a, b)]
    means = torch.stack([s[0] for s in stats])
    pooled = routers.pool([s[1] for s in stats], [s[2] for s in stats])
    precision = routers.pooled_precision(*pooled, 0.1)
    diff = means[0] - means[1]
    delta = float(diff @ precision @ diff) ** 0.5
    for inflation in (1.0, 4.0):
        expected = 0.5 * math.erfc(delta / (2 * math.sqrt(inflation)) / math.sqrt(2))
        got = float(overlap.pooled_captures(means, pooled, 0.1, inflation, samples=4000)[0])
        assert abs(got - expected) < 0.02, (inflation, got, expected)
    # a third task halfway takes part of what the newest would take from the first
    c = _tasks([[1.0] + [0.0] * 7], n=2000, seed=3)[0]
    stats3 = [stats[0], routers.task_statistics(c), stats[1]]
    means3 = torch.stack([s[0] for s in stats3])
    pooled3 = routers.pool([s[1] for s in stats3], [s[2] for s in stats3])
    three = overlap.pooled_captures(means3, pooled3, 0.1, 4.0)
    assert float(three[0]) < float(overlap.pooled_captures(means, pooled, 0.1, 4.0)[0]) - 0.05
    # far tasks are not sampled: their pairwise bound, below the floor, is returned
    far = torch.stack([means[0], means[0] + 100.0])
    assert float(overlap.pooled_captures(far, pooled, 0.1)[0]) < 0.0025


def test_pooled_routes_mirrors_pooled_captures_and_a_duplicate_task_routes_to_the_older_copy():
    a, b = _tasks([[0.0] * 8, [2.0] + [0.0] * 7], n=2000)
    stats = [routers.task_statistics(q) for q in (a, b)]
    means = torch.stack([s[0] for s in stats])
    pooled = routers.pool([s[1] for s in stats], [s[2] for s in stats])
    # two tasks, one covariance: the newest's draws cross to the older as often as the older's cross to it
    routes = float(overlap.pooled_routes(means, pooled, 0.1, samples=4000)[0])
    captures = float(overlap.pooled_captures(means, pooled, 0.1, samples=4000)[0])
    assert 0.05 < routes and abs(routes - captures) < 0.03, (routes, captures)
    # the same task twice (merged from two directories): every draw ties, and a tie routes to the older
    same = torch.stack([means[0], means[0]])
    assert float(overlap.pooled_routes(same, pooled, 0.1)[0]) == 1.0
    assert float(overlap.pooled_routes(torch.stack([means[0], means[0] + 100.0]), pooled, 0.1)[0]) == 0.0
    # one factorised pool serves many calls (slm merge): the same draws, the same shares
    pool = overlap.InflatedPool(pooled, 0.1)
    for f in (overlap.pooled_routes, overlap.pooled_captures):
        assert torch.equal(f(means, None, 0.1, seed=5, pool=pool), f(means, pooled, 0.1, seed=5))


def test_pairs_above_a_threshold_largest_first_and_a_threshold_is_a_share():
    pairs = [{"task": "b", "other": "a", "routes_to": 0.01, "captures": 0.03},
             {"task": "c", "other": "a", "routes_to": 0.2, "captures": 0.0},
             {"task": "c", "other": "b", "routes_to": 0.02, "captures": 0.0}]
    assert [(p["task"], p["other"]) for p in overlap.above(pairs, 0.02)] == [("c", "a"), ("b", "a")]
    with pytest.raises(ValueError, match="between 0 and 1"):
        overlap.above(pairs, 2.0)
