import pytest
import torch

from scalable_lm.config import KeyConfig
from scalable_lm.core import retrieval
from scalable_lm.training import train_keys


def test_entry_scores_are_mean_group_cosines():
    torch.manual_seed(0)
    q, keys = torch.randn(3, 12), torch.randn(5, 4, 3)
    scores = retrieval.entry_scores(q, keys)
    assert scores.shape == (3, 5)
    manual = torch.nn.functional.cosine_similarity(q.reshape(3, 1, 4, 3), keys[None], dim=-1).mean(-1)
    assert torch.allclose(scores, manual, atol=1e-6)


def test_split_groups_rejects_indivisible_dim():
    with pytest.raises(ValueError, match="divisible"):
        retrieval.split_groups(torch.randn(2, 10), 3)


def test_top_k_weights_normalised_and_eligibility_respected():
    scores = torch.tensor([[0.9, 0.1, 0.8, 0.5], [0.2, 0.7, 0.3, 0.6]])
    idx, w = retrieval.select_top_k(scores, 2)
    assert idx.tolist() == [[0, 2], [1, 3]]
    assert torch.allclose(w.sum(-1), torch.ones(2))
    assert torch.allclose(w[0], torch.tensor([0.9, 0.8]) / 1.7)
    idx, _ = retrieval.select_top_k(scores, 4, eligible=torch.tensor([False, True, True, False]))
    assert idx.shape == (2, 2) and set(idx[0].tolist()) == {1, 2}
    _, w = retrieval.select_top_k(scores, 2, weighting="softmax", temperature=0.1)
    assert torch.allclose(w.sum(-1), torch.ones(2))
    with pytest.raises(ValueError, match="no eligible"):
        retrieval.select_top_k(scores, 2, eligible=torch.zeros(4, dtype=torch.bool))


def test_init_keys_orthonormal_within_group():
    keys = retrieval.init_keys(3, 4, 8, torch.Generator().manual_seed(0))
    for g in range(3):
        assert torch.allclose(keys[g] @ keys[g].T, torch.eye(4), atol=1e-5)


def test_key_loss_handles_full_mask_and_training_lowers_it():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(64, 12, generator=gen) + 2.0  # queries share a direction the keys can learn
    keys = torch.nn.Parameter(retrieval.init_keys(4, 3, 3, gen))
    assert torch.isfinite(retrieval.key_preparation_loss(q, keys, mask_prob=1.0, generator=gen))
    before = retrieval.key_preparation_loss(q, keys, mask_prob=0.0).item()
    history = train_keys(keys, q, KeyConfig(key_epochs=20, key_lr=1e-2, mask_prob=0.25), gen)
    after = retrieval.key_preparation_loss(q, keys, mask_prob=0.0).item()
    assert after < before - 0.2 and history[-1] < history[0]
    assert not keys.requires_grad  # frozen after the preparation stage


def test_step_decay():
    factors = [retrieval.step_decay(e, 30) for e in range(30)]
    assert factors[:21] == [1.0] * 21 and factors[21:] == pytest.approx([0.1] * 9)


def test_scores_within_tasks_equal_the_full_scores_of_each_rows_task():
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(5 * 3, 4, 6, generator=g)  # 5 tasks x P=3 entries, G=4 groups of 6
    queries = torch.randn(7, 24, generator=g)
    tasks = torch.tensor([0, 4, 2, 2, 1, 3, 0])
    unit = retrieval.scoring_keys(keys)
    full = retrieval.scores_from_unit_keys(queries, unit).view(7, 5, 3)
    within = retrieval.scores_within_tasks(queries, unit, tasks, 3)
    assert torch.allclose(within, full[torch.arange(7), tasks], atol=1e-6)
