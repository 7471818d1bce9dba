import torch

from scalable_lm.baselines.gainlora import GainLoRA, pooled_embeddings
from scalable_lm.config import BankConfig, TrainConfig
from tests.conftest import tiny_bert
from tests.methods.test_generative import instruction_task, lm_tokenizer, tiny_config, tiny_llama  # noqa: F401

TRAIN = TrainConfig(epochs=2, batch_size=8, max_length=24, lr=1e-2)
BANK = BankConfig(rank=4, alpha=8.0, targets=["attention.output.dense"])


def test_pooled_embeddings_ignore_padding(tokenizer):
    model = tiny_bert(0)
    one = pooled_embeddings(model, tokenizer, ["a red apple"], 24)
    padded = pooled_embeddings(model, tokenizer, ["a red apple", "a much longer sentence about a fast bus"], 24)
    assert torch.allclose(one[0], padded[0], atol=1e-6)


def test_gainlora_gates_old_tasks_and_keeps_them_frozen(tokenizer, toy_stream):
    method = GainLoRA((tiny_bert(0), tokenizer), TRAIN, BANK, gate_hidden=16)
    first = method.learn(toy_stream[0], progress=False)
    assert first["own_gate"] > 0.5
    layer = next(iter(method.layers.values()))
    old_lora = (layer.lora_A[0].clone(), layer.lora_B[0].clone())
    old_texts = [x for x, _ in toy_stream[0].test]
    old_gate = method.gate_table(old_texts)[:, 0].clone()
    method.learn(toy_stream[1], progress=False)
    assert torch.equal(layer.lora_A[0], old_lora[0]) and torch.equal(layer.lora_B[0], old_lora[1])
    table = method.gate_table(old_texts)
    assert table.shape == (len(old_texts), 2)
    assert torch.allclose(table[:, 0], old_gate)  # the old gate is frozen
    preds = method.predict(old_texts)
    assert len(preds) == len(old_texts) and {p.task for p in preds} <= {"fruit", "vehicle"}


def test_gainlora_generator_learns_two_tasks_without_task_id(lm_tokenizer):
    from scalable_lm.baselines.gainlora import GainLoRAGenerator

    config = tiny_config(targets=["o_proj"])
    config.train.epochs = 2
    method = GainLoRAGenerator(config, backbone=(tiny_llama(), lm_tokenizer), max_new_tokens=2, gate_hidden=16)
    fruit, vehicle = instruction_task("fruit", "sweet"), instruction_task("vehicle", "fast", seed=1)
    report = method.learn(fruit, progress=False)
    assert report["penalties"] == [0.0, 0.0] and report["old_gates"] == []  # nothing to be orthogonal to yet
    layer = next(iter(method.layers.values()))
    first = layer.lora_A[0].clone()
    report = method.learn(vehicle, progress=False)
    assert len(report["old_gates"]) == 1 and 0.0 <= report["old_gates"][0] <= 1.0
    assert all(0.0 < p <= loss for p, loss in zip(report["penalties"], report["losses"]))
    assert method.num_slots == 2 and torch.equal(layer.lora_A[0], first) and method.gates.num_tasks == 2
    assert len(method.predict([p for p, _ in fruit.test[:3]], batch_size=2)) == 3
    rows = [{"question": "What is red?", "choices": ["apple", "a car"]}]
    assert len(method.multiple_choice("arc_easy", rows)) == 1
