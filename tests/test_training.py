"""Temperature scaling (``training.fit_temperature``)."""

import pytest
import torch

from scalable_lm import training


@pytest.mark.parametrize("true_t", [0.4, 1.0, 3.0])
def test_fit_temperature_recovers_the_temperature_labels_were_drawn_at(true_t):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6000, 4, generator=g) * 3
    labels = torch.multinomial(torch.softmax(logits / true_t, dim=-1), 1, generator=g)[:, 0]
    fitted = training.fit_temperature(logits, labels)
    assert fitted == pytest.approx(true_t, rel=0.1)
    nll = [float(torch.nn.functional.cross_entropy(logits / t, labels)) for t in (1.0, fitted)]
    assert nll[1] <= nll[0] + 1e-9  # never worse than the raw logits on the rows it was fitted on


def test_fit_temperature_without_rows_or_beyond_its_range():
    assert training.fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)) == 1.0
    # every row right with a wide margin: the NLL falls as T falls (to 0 in float64 well before T = 0.05), so
    # the search ends far below 1, never below its lower bound
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0]])
    assert 0.05 <= training.fit_temperature(logits, torch.tensor([0, 1]), low=0.05) < 0.2
    # every row wrong: the flattest answers (the upper bound) are the least wrong
    assert training.fit_temperature(logits, torch.tensor([1, 0]), high=20.0) == pytest.approx(20.0, rel=1e-3)
