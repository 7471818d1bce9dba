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
