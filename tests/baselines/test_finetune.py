import pytest
import torch

from scalable_lm.baselines.finetune import SequentialFineTune
from scalable_lm.config import TrainConfig
from scalable_lm.data.tasks import DataError
from scalable_lm.runner import run_stream
from tests.conftest import tiny_bert

TRAIN = TrainConfig(epochs=2, batch_size=8, max_length=24, lr=1e-2)


def test_sequential_finetune_contract_and_union_head(tokenizer, toy_stream):
    method = SequentialFineTune((tiny_bert(0), tokenizer), TRAIN, lr=1e-3)
    with pytest.raises(RuntimeError):
        method.predict(["x"])
    result = run_stream(method, toy_stream[:2], progress=False)
    assert len(method.outputs) == 4 and method.head.linear.out_features == 4
    assert result.R[1][1] is not None and result.metrics["retrieval_accuracy"] is None
    with pytest.raises(DataError):
        method.learn(toy_stream[0], progress=False)


def test_replay_keeps_one_percent_and_trains_on_it(tokenizer, toy_stream):
    method = SequentialFineTune((tiny_bert(0), tokenizer), TRAIN, lr=1e-3, replay_fraction=0.05)
    assert method.name == "replay"
    first = method.learn(toy_stream[0], progress=False)
    assert first["replayed_rows"] == 0 and len(method.buffer) == 2  # 5% of 36 rows, rounded
    second = method.learn(toy_stream[1], progress=False)
    assert second["replayed_rows"] == 2 and all(y < 2 for _, y in method.buffer[:2])


def test_ewc_penalty_anchors_parameters(tokenizer, toy_stream):
    method = SequentialFineTune((tiny_bert(0), tokenizer), TRAIN, lr=1e-3, ewc_lambda=10.0, fisher_rows=16)
    method.learn(toy_stream[0], progress=False)
    with torch.no_grad():
        assert method.name == "ewc" and float(method._ewc_penalty()) == 0.0  # at the anchor
        assert sum(float(f.sum()) for f in method.fisher) > 0
        next(iter(method.classifier.backbone.parameters())).add_(1.0)
        assert float(method._ewc_penalty()) > 0
