import pytest
import torch

from scalable_lm.core.bank import KnowledgeBank


def test_entries_owners_and_eligibility():
    bank = KnowledgeBank(dim=12, groups=3, entries_per_task=2)
    with pytest.raises(RuntimeError, match="empty"):
        bank.retrieve(torch.randn(1, 12), 2)
    for _ in range(3):
        bank.add_task()
    assert bank.all_keys().shape == (6, 3, 4)
    assert bank.entry_task().tolist() == [0, 0, 1, 1, 2, 2]
    assert bank.eligible(upto=1).tolist() == [True] * 4 + [False] * 2
    assert bank.eligible(only=2).tolist() == [False] * 4 + [True] * 2
    idx, w = bank.retrieve(torch.randn(5, 12), 2, eligible=bank.eligible(only=1))
    assert set(idx.flatten().tolist()) <= {2, 3} and w.shape == (5, 2)


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match="divisible"):
        KnowledgeBank(10, 3, 2)
    with pytest.raises(ValueError, match="exceeds"):
        KnowledgeBank(12, 6, 3)


def test_routing_within_each_rows_task_equals_masking_the_whole_bank():
    """The fast paths (cached unit keys, per-row task scoring, projected means) pick the same entries and
    weights as scoring every entry and masking all but the chosen task's."""
    from scalable_lm.core import retrieval, routers

    g = torch.Generator().manual_seed(0)
    bank = KnowledgeBank(dim=12, groups=3, entries_per_task=4)
    for t in range(6):
        bank.add_task(g).requires_grad_(False)
        bank.set_statistics(t, routers.task_statistics(torch.randn(30, 12, generator=g) + t))
    q = torch.randn(9, 12, generator=g)
    scores = bank.task_scores(q, 0.1)
    precision = routers.shared_precision([s[1] for s in bank.stats], [s[2] for s in bank.stats], 0.1)
    means = torch.stack([s[0] for s in bank.stats])
    diff = q.double()[:, None] - means[None]
    direct = -torch.einsum("btd,de,bte->bt", diff, precision, diff)
    assert torch.allclose(scores.double(), direct, atol=1e-3)
    full = retrieval.entry_scores(q, bank.all_keys())
    for only in (None, 4):
        owner = bank.entry_task()
        chosen = scores.argmax(-1) if only is None else torch.full((9,), only)
        expected = retrieval.select_top_k(full, 2, owner[None] == chosen[:, None])
        got = bank.route(q, 2, "gaussian", only=only)
        assert torch.equal(got[0], expected[0]) and torch.allclose(got[1], expected[1], atol=1e-6)
    dtkr = bank.route(q, 3, "dtkr", upto=3)
    expected = retrieval.select_top_k(full, 3, owner <= 3)
    assert torch.equal(dtkr[0], expected[0]) and torch.allclose(dtkr[1], expected[1], atol=1e-6)
    with pytest.raises(ValueError, match="not in the bank"):
        bank.route(q, 2, "gaussian", only=6)


def test_fallback_zeroes_the_weights_of_unfamiliar_rows_only():
    from scalable_lm.core import routers

    g = torch.Generator().manual_seed(0)
    centres = [torch.randn(12, generator=g) * 3 for _ in range(3)]
    bank = KnowledgeBank(dim=12, groups=3, entries_per_task=2)
    for t, c in enumerate(centres):
        bank.add_task(g).requires_grad_(False)
        q = c + 0.2 * torch.randn(40, 12, generator=g)
        bank.set_statistics(t, routers.task_statistics(q))
        bank.set_novelty(t, routers.novelty_statistics(q))
    familiar = torch.stack([c + 0.2 * torch.randn(12, generator=g) for c in centres])
    queries = torch.cat([familiar, -familiar])  # the opposite directions belong to no task
    plain = bank.route(queries, 2, "gaussian")
    entries, weights = bank.route(queries, 2, "gaussian", fallback=3.0)
    assert torch.equal(entries, plain[0]) and torch.equal(weights[:3], plain[1][:3])
    assert (weights[3:] == 0).all() and (plain[1][3:] > 0).any()
    assert (bank.route(queries, 2, "gaussian", only=1, fallback=3.0)[1] > 0).all()  # task named (SLM-TI): no fallback
    bank.truncate(2)
    assert len(bank.novelty) == 2
    unknown = KnowledgeBank(dim=12, groups=3, entries_per_task=2)  # statistics from before the fallback existed
    unknown.add_task(g).requires_grad_(False)
    unknown.set_statistics(0, routers.task_statistics(centres[0] + 0.2 * torch.randn(40, 12, generator=g)))
    unknown.set_novelty(0, None)
    assert (unknown.route(-familiar, 2, "gaussian", fallback=3.0)[1] > 0).all()
