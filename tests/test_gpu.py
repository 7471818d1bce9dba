"""The device round trips on a CUDA GPU (skipped where there is none; this project's CI machines have none).

Run on a GPU machine with ``python -m pytest -m gpu tests/test_gpu.py``.
"""

from __future__ import annotations

import pytest
import torch

from scalable_lm import store
from scalable_lm.encoder import QueryEncoder
from scalable_lm.methods.slm import SLM
from tests.conftest import tiny_bert, tiny_config, tiny_query_model

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")]


def _slm(tokenizer, device, dtype="float32") -> SLM:
    encoder = QueryEncoder(tiny_query_model(), tokenizer, name="tiny-encoder", max_length=24)
    return SLM(tiny_config(), backbone=(tiny_bert(0), tokenizer), encoder=encoder, device=device, dtype=dtype)


def _load(directory, tokenizer, device, dtype="float32") -> SLM:
    encoder = QueryEncoder(tiny_query_model(), tokenizer, name="tiny-encoder", max_length=24)
    return store.load(directory, backbone=(tiny_bert(0), tokenizer), encoder=encoder, device=device, dtype=dtype)


def test_learned_on_cuda_loads_on_cpu_with_the_same_answers(tokenizer, toy_stream, tmp_path):
    gpu = _slm(tokenizer, "cuda")
    for task in toy_stream[:2]:
        gpu.learn(task, progress=False)
    placed = {p.device.type for p in gpu.backbone_module.parameters()} | {k.device.type for k in gpu.bank.keys}
    assert placed == {"cuda"}
    store.save(gpu, tmp_path / "m")
    cpu = _load(tmp_path / "m", tokenizer, "cpu")
    back = _load(tmp_path / "m", tokenizer, "cuda")
    texts = [x for task in toy_stream[:2] for x, _ in task.test]
    answers = [(p.label, p.task) for p in gpu.predict(texts)]
    assert [(p.label, p.task) for p in cpu.predict(texts)] == answers
    assert [(p.label, p.task) for p in back.predict(texts)] == answers
    for name, tensor in gpu.task_state(0).items():
        assert torch.equal(cpu.task_state(0)[name], tensor), name


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_on_cuda_learns(tokenizer, toy_stream, dtype):
    slm = _slm(tokenizer, "cuda", dtype)
    for task in toy_stream[:2]:
        slm.learn(task, progress=False)
    texts = [x for task in toy_stream[:2] for x, _ in task.test]
    labels = [task.label_names[y] for task in toy_stream[:2] for _, y in task.test]
    preds = slm.predict(texts)
    assert sum(p.label == y for p, y in zip(preds, labels)) / len(preds) >= 0.75
