import torch

from scalable_lm.baselines.olora import OLoRA
from scalable_lm.config import BankConfig, TrainConfig
from tests.conftest import tiny_bert

TRAIN = TrainConfig(epochs=2, batch_size=8, max_length=24, lr=1e-2)


def test_olora_freezes_old_loras_and_penalises_overlap(tokenizer, toy_stream):
    bank = BankConfig(rank=4, alpha=8.0, targets=["attention.output.dense"])
    method = OLoRA((tiny_bert(0), tokenizer), TRAIN, bank)
    method.learn(toy_stream[0], progress=False)
    layer = next(iter(method.layers.values()))
    old = (layer.lora_A[0].clone(), layer.lora_B[0].clone())
    report = method.learn(toy_stream[1], progress=False)
    assert torch.equal(layer.lora_A[0], old[0]) and torch.equal(layer.lora_B[0], old[1])
    assert report["orthogonality"] > 0 and method.num_tasks == 2
    preds = method.predict([x for x, _ in toy_stream[0].test])
    assert {p.task for p in preds} <= {"fruit", "vehicle"} and not preds[0].entries
