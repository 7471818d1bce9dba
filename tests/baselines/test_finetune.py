import pytest

from scalable_lm.baselines.finetune import SequentialFineTune
from scalable_lm.config import TrainConfig
from scalable_lm.data.tasks import DataError
from scalable_lm.runner import run_stream
from tests.conftest import tiny_bert


def test_sequential_finetune_contract_and_union_head(tokenizer, toy_stream):
    method = SequentialFineTune((tiny_bert(0), tokenizer), TrainConfig(epochs=2, batch_size=8, max_length=24), lr=1e-3)
    with pytest.raises(RuntimeError):
        method.predict(["x"])
    result = run_stream(method, toy_stream[:2], progress=False)
    assert len(method.outputs) == 4 and method.head.out_features == 4
    assert result.R[1][1] is not None and result.metrics["retrieval_accuracy"] is None
    with pytest.raises(DataError):
        method.learn(toy_stream[0], progress=False)
