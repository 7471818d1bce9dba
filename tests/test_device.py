"""One device and dtype per model (``scalable_lm.device``, ``GrowsByTask.to``): every tensor where it should be,
bfloat16 on the CPU learns and predicts, and model directories are device- and dtype-free.

This machine has no GPU: device *placement* is checked on the CPU, plus a check that routing and mixing create
no tensor without a device (run under ``torch.device("meta")`` as the default, a tensor made without an explicit
device lands on "meta" and fails against the model's CPU tensors). ``tests/test_gpu.py`` runs the same round
trips on CUDA where there is one.
"""

from __future__ import annotations

import json

import pytest
import torch

from scalable_lm import store
from scalable_lm.adapters.inject import BankLinear, routed
from scalable_lm.device import resolve_device, resolve_dtype
from scalable_lm.encoder import QueryEncoder
from scalable_lm.methods.slm import SLM
from tests.conftest import tiny_bert, tiny_config, tiny_query_model


def test_resolve_device_and_dtype():
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("CPU") == torch.device("cpu")
    with pytest.raises(ValueError, match="'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda:0")
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("float16") is torch.float16
    assert resolve_dtype(torch.float32) is torch.float32
    with pytest.raises(ValueError, match="'int8'.*float32, bfloat16, float16"):
        resolve_dtype("int8")


def _slm(tokenizer, dtype="float32", **bank) -> SLM:
    encoder = QueryEncoder(tiny_query_model(), tokenizer, name="tiny-encoder", max_length=24)
    return SLM(tiny_config(**bank), backbone=(tiny_bert(0), tokenizer), encoder=encoder, device="cpu", dtype=dtype)


def _placement(slm) -> dict[str, tuple[str, torch.dtype]]:
    """Every tensor of the model: ``name -> (device type, dtype)``."""
    out = {f"backbone.{n}": (p.device.type, p.dtype) for n, p in slm.backbone_module.named_parameters()}
    out.update({f"backbone.{n}": (b.device.type, b.dtype) for n, b in slm.backbone_module.named_buffers()})
    out.update({f"encoder.{n}": (p.device.type, p.dtype) for n, p in slm.encoder.model.named_parameters()})
    out.update({f"heads.{n}": (p.device.type, p.dtype) for n, p in slm.classifier.heads.named_parameters()})
    out.update({f"keys.{i}": (k.device.type, k.dtype) for i, k in enumerate(slm.bank.keys)})
    for i, stats in enumerate(slm.bank.stats + slm.bank.novelty):
        out.update({f"stats.{i}.{j}": (s.device.type, s.dtype) for j, s in enumerate(stats)})
    return out


def test_bfloat16_puts_each_tensor_in_its_dtype_and_learns(tokenizer, toy_stream):
    slm = _slm(tokenizer, "bfloat16")
    for task in toy_stream[:2]:
        slm.learn(task, progress=False)
    placed = _placement(slm)
    assert {device for device, _ in placed.values()} == {"cpu"}
    for name, (_, dtype) in placed.items():
        if ".lora_" in name or name.startswith(("heads.", "keys.")):
            assert dtype == torch.float32, name  # trained: float32 masters (and float32 optimiser state)
        elif name.startswith("stats."):
            assert dtype == torch.float64, name
        elif name.startswith(("backbone.", "encoder.")) and dtype.is_floating_point:
            assert dtype == torch.bfloat16, name
    # a routed forward runs in bfloat16, its routes and answers are well-formed
    seen = []
    layer = next(iter(slm.layers.values()))
    handle = layer.register_forward_hook(lambda m, i, o: seen.append((i[0].dtype, o.dtype)))
    texts = [x for task in toy_stream[:2] for x, _ in task.test]
    preds = slm.predict(texts)
    handle.remove()
    assert seen and all(d == (torch.bfloat16, torch.bfloat16) for d in seen)
    labels = [task.label_names[y] for task in toy_stream[:2] for _, y in task.test]
    tasks = [task.name for task in toy_stream[:2] for _ in task.test]
    accuracy = sum(p.label == y and p.task == t for p, y, t in zip(preds, labels, tasks)) / len(preds)
    # the same model in float32 (same seeds and rows): bfloat16 should lose little on this easy stream
    reference = _slm(tokenizer)
    for task in toy_stream[:2]:
        reference.learn(task, progress=False)
    ref = reference.predict(texts)
    ref_accuracy = sum(p.label == y and p.task == t for p, y, t in zip(ref, labels, tasks)) / len(ref)
    agreement = sum(a.label == b.label and a.task == b.task for a, b in zip(preds, ref)) / len(ref)
    # measured: 0.75 both, 100% agreement (0.875 before the validation split was stratified: other training
    # rows); the float32 model must have learned (>= 0.7, as the toy stream's test asks); stated tolerance:
    # within 10 points, 85% of answers the same
    assert ref_accuracy >= 0.7 and accuracy >= ref_accuracy - 0.1 and agreement >= 0.85, (accuracy, ref_accuracy, agreement)


def test_directories_are_dtype_free(tokenizer, toy_stream, tmp_path):
    """Learned in bfloat16, loaded in float32 (and back): the same task tensors, bit for bit, and the same
    identity (the fingerprint is taken before the cast)."""
    half = _slm(tokenizer, "bfloat16")
    half.learn(toy_stream[0], progress=False)
    store.save(half, tmp_path / "m")

    def load(dtype):
        encoder = QueryEncoder(tiny_query_model(), tokenizer, name="tiny-encoder", max_length=24)
        return store.load(tmp_path / "m", backbone=(tiny_bert(0), tokenizer), encoder=encoder, device="cpu", dtype=dtype)

    full = load("float32")
    assert full.dtype == torch.float32 and next(full.backbone_module.parameters()).dtype == torch.float32
    for name, tensor in half.task_state(0).items():
        assert torch.equal(full.task_state(0)[name], tensor), name
    again = load("bfloat16")
    texts = [x for x, _ in toy_stream[0].test]
    assert [p.label for p in again.predict(texts)] == [p.label for p in half.predict(texts)]
    fp32 = _slm(tokenizer)
    fp32.learn(toy_stream[0], progress=False)
    store.save(fp32, tmp_path / "f")
    identity = [json.loads((tmp_path / d / "manifest.json").read_text())[role]["fingerprint"]
                for d in ("m", "f") for role in ("backbone", "encoder")]
    assert identity[:2] == identity[2:]


def test_to_moves_a_learned_model_without_changing_its_tasks(tokenizer, toy_stream):
    slm = _slm(tokenizer)
    slm.learn(toy_stream[0], progress=False)
    texts = [x for x, _ in toy_stream[0].test]
    before, state = slm.predict(texts), slm.task_state(0)
    slm.to(dtype="bfloat16").to(dtype="float32")  # the factors were kept out of the cast: nothing rounded
    for name, tensor in slm.task_state(0).items():
        assert torch.equal(tensor, state[name]), name
    assert [(p.label, p.task) for p in slm.predict(texts)] == [(p.label, p.task) for p in before]


@pytest.mark.parametrize("router", ["gaussian", "dtkr"])
def test_routing_and_mixing_create_no_tensor_without_a_device(tokenizer, toy_stream, router):
    slm = _slm(tokenizer, router=router)
    for task in toy_stream[:2]:
        slm.learn(task, progress=False)
    queries = slm.encoder.encode([x for x, _ in toy_stream[1].test])
    layer: BankLinear = next(iter(slm.layers.values()))
    x = torch.randn(len(queries), 5, layer.base_layer.in_features)
    with torch.device("meta"):  # the default device for tensors made without one
        entries, weights = slm.route(queries)
        only = slm.route(queries, task=toy_stream[0].name)
        with routed(slm.layers, entries, weights):
            y = layer(x)
        with torch.no_grad(), routed(slm.layers, *only):
            y_only = layer(x)
            y_cached = layer(x)  # the inference route cache
    for t in (entries, weights, *only, y, y_only, y_cached):
        assert t.device.type == "cpu"
    assert torch.equal(y_only, y_cached)


def test_cli_device_and_dtype_flags_checked(tmp_path, capsys):
    from scalable_lm import cli

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"text": "a", "label": "x"}) + "\n")
    code = cli.main(["learn", "--model", str(tmp_path / "m"), "--task", "t", "--data", str(data), "--dtype", "int8"])
    assert code == cli.EXIT_ERROR and "unknown dtype 'int8'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        code = cli.main(["learn", "--model", str(tmp_path / "m"), "--task", "t", "--data", str(data), "--device", "cuda"])
        assert code == cli.EXIT_ERROR and "no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_generative_model_in_bfloat16_learns_and_answers(tmp_path):
    from tests.methods.test_generative import instruction_task, make_generative

    from transformers import AutoTokenizer

    from scalable_lm.backbones import resolve

    tok = AutoTokenizer.from_pretrained(resolve("minilm"))
    tok.eos_token = "[SEP]"
    slm = make_generative(tok).to(dtype="bfloat16")
    fruit, vehicle = instruction_task("fruit", "sweet"), instruction_task("vehicle", "fast", seed=1)
    slm.learn(fruit, progress=False)
    slm.learn(vehicle, progress=False)
    dtypes = {n: p.dtype for n, p in slm.lm.model.named_parameters()}
    assert all(d == torch.float32 for n, d in dtypes.items() if ".lora_" in n)
    assert all(d == torch.bfloat16 for n, d in dtypes.items() if ".lora_" not in n)
    prompts = [p for p, _ in fruit.test[:4]] + [p for p, _ in vehicle.test[:4]]
    preds = slm.predict(prompts)
    assert [p.task for p in preds] == ["fruit"] * 4 + ["vehicle"] * 4
    right = sum(p.label.split()[:1] == [a] for p, a in zip(preds, ["sweet"] * 4 + ["fast"] * 4))
    assert right >= 7, [p.label for p in preds]  # measured 8 of 8; float32 answers the same (test_generative)
    # the serving decode loop, per-row settings, on the same routes
    entries, weights, _ = slm.route_rows(prompts[:2], ["auto", "auto"])
    with routed(slm.layers, entries, weights):
        tokens = slm.lm.decode([slm.lm.prompt_ids(p) for p in prompts[:2]], [3, 3], [0.0, 0.0])
    assert [tok.decode(t).split()[:1] for t in tokens] == [["sweet"], ["sweet"]]
