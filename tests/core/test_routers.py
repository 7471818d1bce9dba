import torch

from scalable_lm.core import routers
from scalable_lm.core.bank import KnowledgeBank


def test_statistics_and_mahalanobis_match_the_formulas():
    torch.manual_seed(0)
    q = torch.randn(50, 6)
    mean, scatter, count = routers.task_statistics(q)
    assert count == 50 and torch.allclose(mean.float(), q.mean(0), atol=1e-6)
    assert torch.allclose((scatter / 49).float(), torch.cov(q.T), atol=1e-5)
    precision = routers.shared_precision([scatter], [count], shrinkage=0.0)
    x = torch.randn(3, 6)
    diff = (x.double() - mean)
    expected = -torch.stack([d @ precision @ d for d in diff])
    assert torch.allclose(routers.mahalanobis_scores(x, mean[None], precision)[:, 0].double(), expected, atol=1e-4)


def test_shared_covariance_separates_elongated_clusters_that_cosine_confuses():
    gen = torch.Generator().manual_seed(0)
    stretch = torch.tensor([10.0, 0.3, 0.3, 0.3])  # large shared noise along the first axis

    def cluster(centre):
        return torch.randn(200, 4, generator=gen) * stretch + torch.tensor(centre)

    a, b = cluster([0.0, 1.0, 0.0, 0.0]), cluster([0.0, -1.0, 0.0, 0.0])
    bank = KnowledgeBank(dim=4, groups=1, entries_per_task=2)
    for t, q in enumerate([a, b]):
        bank.add_task()
        bank.set_statistics(t, routers.task_statistics(q))
    test_a, test_b = cluster([0.0, 1.0, 0.0, 0.0]), cluster([0.0, -1.0, 0.0, 0.0])
    scores = bank.task_scores(torch.cat([test_a, test_b]), shrinkage=0.1)
    predicted = scores.argmax(-1)
    truth = torch.tensor([0] * 200 + [1] * 200)
    assert (predicted == truth).float().mean() > 0.95
    bank.truncate(1)
    assert len(bank.stats) == 1 and bank.task_scores(test_a, 0.1).shape == (200, 1)


def test_novelty_spread_is_measured_on_held_out_folds():
    gen = torch.Generator().manual_seed(0)
    centre = torch.randn(16, generator=gen)
    q = centre + 0.3 * torch.randn(60, 16, generator=gen)
    mean_unit, spread = routers.novelty_statistics(q, folds=5)
    unit = torch.nn.functional.normalize(q.double(), dim=-1)
    assert torch.allclose(mean_unit, unit.mean(0))
    held = torch.cat([((unit[k::5] - unit[[i for i in range(60) if i % 5 != k]].mean(0)) ** 2).sum(-1) for k in range(5)])
    assert torch.allclose(spread, torch.stack([held.mean(), held.std()]))
    # held-out distances are larger than in-sample ones: the spread describes unseen inputs
    assert spread[0] > routers.unit_distances(q, mean_unit.expand(60, -1)).mean()
    fresh = centre + 0.3 * torch.randn(500, 16, generator=gen)
    far = torch.randn(500, 16, generator=gen) * centre.norm()
    limit = spread[0] + 3 * spread[1]
    assert (routers.unit_distances(fresh, mean_unit.expand(500, -1)) > limit).float().mean() < 0.02
    assert (routers.unit_distances(far, mean_unit.expand(500, -1)) > limit).float().mean() > 0.98
    _, none = routers.novelty_statistics(q[:2])  # too few queries to estimate: nothing is ever unfamiliar
    assert none[1] == float("inf")
