"""Sequential LoRA, multitask LoRA and Arrow (PEFT) on tiny in-code BERTs."""

import pytest
import torch

from scalable_lm.baselines.arrow import Arrow
from scalable_lm.baselines.lora import MultitaskLoRA, SequentialLoRA
from scalable_lm.config import BankConfig, TrainConfig
from scalable_lm.data.tasks import DataError
from scalable_lm.runner import evaluate
from tests.conftest import tiny_bert

TRAIN = TrainConfig(epochs=2, batch_size=8, max_length=24, lr=1e-2)
BANK = BankConfig(rank=4, alpha=8.0, targets=["attention.output.dense"])


def test_sequential_lora_keeps_training_one_lora(tokenizer, toy_stream):
    method = SequentialLoRA((tiny_bert(0), tokenizer), TRAIN, BANK)
    method.learn(toy_stream[0], progress=False)
    layer = next(iter(method.layers.values()))
    first = layer.lora_B[0].clone()
    method.learn(toy_stream[1], progress=False)
    assert method.num_slots == 1 and not torch.equal(first, layer.lora_B[0])  # the same LoRA moved on
    with pytest.raises(DataError, match="already learned"):
        method.learn(toy_stream[0], progress=False)
    assert {p.task for p in method.predict([x for x, _ in toy_stream[0].test])} <= {"fruit", "vehicle"}


def test_multitask_trains_once_on_all_tasks(tokenizer, toy_stream):
    method = MultitaskLoRA((tiny_bert(0), tokenizer), TRAIN, BANK)
    for task in toy_stream:
        method.learn(task, progress=False)
    assert method.num_slots == 0  # nothing trained until asked to predict
    scores = evaluate(method, toy_stream, batch_size=16)
    assert method.report["tasks"] == [t.name for t in toy_stream]
    assert method.num_slots == 1 and method.trained_on == 3
    assert sum(s["accuracy"] for s in scores.values()) / 3 > 0.5


def test_arrow_routes_through_peft_without_task_id(tokenizer, toy_stream):
    method = Arrow((tiny_bert(0), tokenizer), TRAIN, BANK, top_k=2)
    method.learn(toy_stream[0], progress=False)
    first = [p.task for p in method.predict([x for x, _ in toy_stream[0].test[:3]])]
    assert first == ["fruit"] * 3
    adapter0 = {n: p.clone() for n, p in method.peft.named_parameters() if "task_0" in n}
    method.learn(toy_stream[1], progress=False)  # the router is rebuilt over both adapters
    preds = method.predict([x for t in toy_stream[:2] for x, _ in t.test[:4]])
    assert {p.task for p in preds} <= {"fruit", "vehicle"} and all(len(p.weights) == 2 for p in preds)
    assert all(abs(sum(p.weights) - 1) < 1e-4 for p in preds)
    for n, p in method.peft.named_parameters():
        if n in adapter0:
            assert torch.equal(p, adapter0[n]), n  # earlier adapters untouched
