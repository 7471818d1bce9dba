"""PEFT adapters in and out: an imported LoRA answers as PeftModel does; an exported task loads with PEFT
and equals SLM at the weights it was frozen at; every refusal names its reason and changes nothing."""

import copy
import json

import pytest
import torch

from scalable_lm import sharing, store
from scalable_lm.adapters.causal import CausalLM
from scalable_lm.adapters.inject import routed
from scalable_lm.encoder import QueryEncoder, mean_pool
from scalable_lm.methods.generative import GenerativeSLM
from scalable_lm.sharing import AdapterError
from tests.conftest import tiny_bert, tiny_query_model
from tests.methods.test_generative import instruction_task, lm_tokenizer, make_generative, tiny_llama  # noqa: F401
from tests.test_store import _snapshot

peft = pytest.importorskip("peft")


def _generative_loader(tok):
    def load(directory):
        encoder = QueryEncoder(tiny_query_model(), tok, name="tiny-encoder", max_length=24)
        return store.load(directory, backbone=(tiny_llama(), tok), encoder=encoder)
    return load


def _peft_lora(tok, task, r=2, alpha=4.0, targets=("o_proj",), steps=25, **extra):
    """A LoRA trained with PEFT alone on ``task`` (no code of ours in the training loop's model)."""
    model = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets),
                                                              lora_dropout=0.0, **extra))
    lm = CausalLM(model, tok, max_length=32)  # (the wrapper freezes the model: unfreeze the LoRA factors)
    params = [p.requires_grad_(True) for n, p in model.named_parameters() if "lora_" in n]
    opt = torch.optim.AdamW(params, lr=2e-2)
    torch.manual_seed(0)
    for step in range(steps):
        batch = lm.training_batch([p for p, _ in task.train[:16]], [a for _, a in task.train[:16]])
        loss = lm.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _logits(model, tok, prompts):
    batch = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@pytest.fixture(scope="module")
def two_task_dir(lm_tokenizer, tmp_path_factory):
    directory = tmp_path_factory.mktemp("gen") / "m"
    slm = make_generative(lm_tokenizer)
    slm.config.train.epochs = 4
    for task in (instruction_task("fruit", "sweet"), instruction_task("vehicle", "fast", seed=1)):
        slm.learn(task, progress=False)
    store.save(slm, directory)
    return directory


def test_imported_peft_lora_answers_exactly_as_peft_model(lm_tokenizer, two_task_dir, tmp_path):
    import shutil

    directory = tmp_path / "m"
    shutil.copytree(two_task_dir, directory)
    weather = instruction_task("weather", "cold", seed=2)
    peft_model = _peft_lora(lm_tokenizer, weather)
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    load = _generative_loader(lm_tokenizer)
    fruit_prompts = [p for p, _ in instruction_task("fruit", "sweet").test]
    before = [p.label for p in load(directory).predict(fruit_prompts)]

    report = sharing.import_adapter(directory, "weather", tmp_path / "adapter", [p for p, _ in weather.train],
                                    loader=load)
    assert report["rank"] == 2 and len(report["modules"]) == 2
    slm = load(directory)
    assert slm.task_names == ["fruit", "vehicle", "weather"]
    prompts = [p for p, _ in weather.test]
    preds = slm.predict(prompts)  # no task named
    assert [p.task for p in preds] == ["weather"] * len(prompts)
    reference = CausalLM(peft_model, lm_tokenizer, max_length=32).generate(prompts, slm.max_new_tokens)
    assert [p.label for p in preds] == [text for text, _ in reference]
    # the logits, to float rounding: every mixture of the task's entries is the adapter itself
    entries, weights = slm.route(slm.encoder.encode(prompts))
    with routed(slm.layers, entries, weights):
        ours = _logits(slm.lm.model, lm_tokenizer, prompts)
    assert torch.allclose(ours, _logits(peft_model, lm_tokenizer, prompts), atol=1e-5)
    assert [p.label for p in slm.predict(fruit_prompts)] == before  # the other tasks answer as before
    entry = store.read_manifest(directory)["tasks"][2]
    assert entry["imported_from"] == str(tmp_path / "adapter") and entry["adapter_rank"] == 2


@pytest.mark.parametrize("make, message", [
    (lambda tok: peft.get_peft_model(tiny_llama(), peft.IA3Config(target_modules=["o_proj"], feedforward_modules=[])),
     "is a IA3 adapter; only LoRA"),
    (lambda tok: peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=2, target_modules=["q_proj"])),
     "targets modules the bank cannot hold"),
    (lambda tok: peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=8, target_modules=["o_proj"])),
     "rank 8, more than the bank's rank 4"),
    (lambda tok: peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=2, target_modules=["o_proj"], use_dora=True)),
     "LoRA options the bank cannot hold: use_dora=True"),
    (lambda tok: peft.get_peft_model(_wider_llama(), peft.LoraConfig(r=2, target_modules=["o_proj"])),
     "the adapter is for another base model"),
    (lambda tok: peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=2, target_modules=["o_proj"],
                                                                   base_model_name_or_path="org/another-model")),
     "trained on base model 'org/another-model'.*--trust-base"),
])
def test_import_refusals_leave_the_directory_as_it_was(lm_tokenizer, two_task_dir, tmp_path, make, message):
    adapter = make(lm_tokenizer)
    adapter.save_pretrained(str(tmp_path / "adapter"))
    if "org/another-model" in message:  # PEFT writes the base model's own name; set the one we test
        cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
        cfg["base_model_name_or_path"] = "org/another-model"
        (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(cfg))
    before = _snapshot(two_task_dir)
    with pytest.raises(AdapterError, match=message):
        sharing.import_adapter(two_task_dir, "new", tmp_path / "adapter", ["describe it\n\nrain snow"],
                               loader=_generative_loader(lm_tokenizer))
    assert _snapshot(two_task_dir) == before


def test_pickled_adapter_never_loaded(two_task_dir, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    (tmp_path / "a" / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(AdapterError, match="pickle.*never loaded"):
        sharing.import_adapter(two_task_dir, "new", tmp_path / "a", ["x"])
    with pytest.raises(AdapterError, match="not a PEFT adapter directory"):
        sharing.import_adapter(two_task_dir, "new", tmp_path, ["x"])


def _wider_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=30522, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128))


def test_exported_task_loads_with_peft_and_equals_slm_at_its_weights(lm_tokenizer, two_task_dir, tmp_path):
    load = _generative_loader(lm_tokenizer)
    slm = load(two_task_dir)
    out = sharing.export_task(two_task_dir, "fruit", tmp_path / "fruit", slm=slm)
    assert out["rank"] == 4 * 4 and sorted((tmp_path / "fruit").iterdir()) == sorted(
        tmp_path / "fruit" / n for n in ("adapter_config.json", "adapter_model.safetensors", "slm_task.json"))
    assert abs(sum(out["weights"]) - 1) < 1e-5
    model = peft.PeftModel.from_pretrained(tiny_llama(), str(tmp_path / "fruit")).eval()  # PEFT alone
    prompts = [p for p, _ in instruction_task("fruit", "sweet").test]
    # SLM with the task's entries at the exported weights = the exported adapter
    t, p = slm.task_index("fruit"), slm.bank.entries_per_task
    entries = torch.arange(t * p, t * p + p)[None].expand(len(prompts), -1)
    weights = torch.tensor(out["weights"])[None].expand(len(prompts), -1)
    with routed(slm.layers, entries, weights):
        ours = _logits(slm.lm.model, lm_tokenizer, prompts)
    assert torch.allclose(ours, _logits(model, lm_tokenizer, prompts), atol=1e-5)
    exported = [a for a, _ in CausalLM(model, lm_tokenizer, max_length=32).generate(prompts, slm.max_new_tokens)]
    with routed(slm.layers, entries, weights):
        assert exported == [a for a, _ in slm.lm.generate(prompts, slm.max_new_tokens)]
    # SLM-TI weights each prompt by its own query, so its answers may differ: benchmarks/share measures how often
    with pytest.raises(AdapterError, match="exists and is not an empty directory"):
        sharing.export_task(two_task_dir, "fruit", tmp_path / "fruit", slm=slm)


def _classifier_loader(tokenizer):
    def load(directory):
        encoder = QueryEncoder(tiny_query_model(), tokenizer, name="tiny-encoder", max_length=24)
        return store.load(directory, backbone=(tiny_bert(0), tokenizer), encoder=encoder)
    return load


def test_classifier_task_round_trips_through_peft(make_slm, toy_stream, tokenizer, tmp_path):
    from safetensors.torch import load_file

    slm = make_slm()
    for task in toy_stream:
        slm.learn(task, progress=False)
    slm.temperatures[1] = 0.6  # as if calibrated (the toy tasks have too few validation rows): it travels too
    store.save(slm, tmp_path / "m")
    out = sharing.export_task(tmp_path / "m", "vehicle", tmp_path / "vehicle", slm=slm)
    # what a user writes (README "Sharing skills"): PEFT + mean pooling + the head
    model = peft.PeftModel.from_pretrained(tiny_bert(0), str(tmp_path / "vehicle")).eval()
    head = load_file(str(tmp_path / "vehicle" / "head.safetensors"))
    meta = json.loads((tmp_path / "vehicle" / "slm_task.json").read_text())
    texts = [x for x, _ in toy_stream[1].test]
    batch = tokenizer(texts, padding=True, truncation=True, max_length=meta["max_length"], return_tensors="pt")
    with torch.no_grad():
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        logits = mean_pool(hidden, batch["attention_mask"]) @ head["weight"].T + head["bias"]
    peft_labels = [meta["label_names"][i] for i in logits.argmax(-1).tolist()]
    t, p = 1, slm.bank.entries_per_task
    entries = torch.arange(t * p, t * p + p)[None].expand(len(texts), -1)
    with torch.no_grad(), routed(slm.layers, entries, torch.tensor(out["weights"])[None].expand(len(texts), -1)):
        ours = slm.classifier.head_logits(slm.classifier.features(slm.classifier.tokenize(texts, 24)), t)
    assert torch.allclose(ours, logits, atol=1e-5)
    agree = sum(a == b.label for a, b in zip(peft_labels, slm.predict(texts, task="vehicle"))) / len(texts)
    assert agree >= 0.9

    # and back in: a directory that never learned 'vehicle' imports the export and gets the task back as SLM
    # had it (the entries split out again, mixed per input), its keys rebuilt from example inputs
    other = make_slm()
    other.learn(toy_stream[0], progress=False)
    store.save(other, tmp_path / "n")
    sharing.import_adapter(tmp_path / "n", "vehicle", tmp_path / "vehicle", [x for x, _ in toy_stream[1].train],
                           loader=_classifier_loader(tokenizer))
    back = _classifier_loader(tokenizer)(tmp_path / "n")
    original, restored = slm.task_state("vehicle"), back.task_state("vehicle")
    for name in original:
        if name.startswith(("values.", "head.")):
            assert torch.allclose(original[name], restored[name], atol=1e-6), name
    assert back.temperatures[-1] == pytest.approx(0.6)
    assert [q.label for q in back.predict(texts, task="vehicle")] == [q.label for q in slm.predict(texts, task="vehicle")]
    routed_right = [q for q in back.predict(texts) if q.task == "vehicle"]
    assert len(routed_right) >= 0.9 * len(texts)

    # a classifier adapter without a head is refused
    (tmp_path / "vehicle" / "head.safetensors").unlink()
    with pytest.raises(AdapterError, match="no classifier head"):
        sharing.import_adapter(tmp_path / "n", "vehicle2", tmp_path / "vehicle", ["car fast"],
                               loader=_classifier_loader(tokenizer))


def _peft_sequence_classifier(tokenizer, task, num_labels=2, steps=30, id2label=None, layers=None):
    """PEFT's sequence-classification recipe, as its docs write it: ``BertForSequenceClassification`` on the
    same backbone weights + ``LoraConfig(task_type="SEQ_CLS")`` (the head goes to ``modules_to_save``)."""
    from transformers import BertForSequenceClassification

    backbone = tiny_bert(0) if layers is None else tiny_bert(0, layers=layers)
    config = copy.deepcopy(backbone.config)
    config.num_labels = num_labels
    if id2label:
        config.id2label, config.label2id = id2label, {v: k for k, v in id2label.items()}
    torch.manual_seed(1)
    model = BertForSequenceClassification(config)
    model.bert.load_state_dict(backbone.state_dict())  # the frozen base model, pooler included
    model = peft.get_peft_model(model, peft.LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4,
                                                       target_modules=["attention.output.dense", "output.dense"],
                                                       lora_dropout=0.0))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    texts, labels = [x for x, _ in task.train], torch.tensor([y for _, y in task.train])
    model.train()
    for step in range(steps):
        idx = torch.arange(step * 8, step * 8 + 8) % len(texts)
        batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=24, return_tensors="pt")
        loss = model(**batch, labels=labels[idx]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _answers_as_peft(slm, model, tokenizer, texts):
    """``slm.predict(texts)`` with no task named: every text routed to 'weather' and answered with the PEFT
    sequence classifier ``model``'s label and confidence. Returns the predictions."""
    batch = tokenizer(texts, padding=True, truncation=True, max_length=24, return_tensors="pt")
    with torch.no_grad():
        reference = torch.softmax(model(**batch).logits, dim=-1)
    preds = slm.predict(texts)
    assert [p.task for p in preds] == ["weather"] * len(texts)
    assert [p.label for p in preds] == [["cold", "warm"][i] for i in reference.argmax(-1).tolist()]
    assert [p.confidence for p in preds] == pytest.approx(reference.max(-1).values.tolist(), abs=1e-5)
    return preds


def test_peft_sequence_classifier_imports_and_answers_as_peft(make_slm, toy_stream, tokenizer, tmp_path):
    """Issue 38: a LoRA trained with PEFT's SEQ_CLS recipe, saved the standard way, imports as it is."""
    slm = make_slm()
    for task in toy_stream[:2]:
        slm.learn(task, progress=False)
    store.save(slm, tmp_path / "m")
    weather = toy_stream[2]
    model = _peft_sequence_classifier(tokenizer, weather, id2label={0: "cold", 1: "warm"})
    model.save_pretrained(str(tmp_path / "adapter"))
    model.config.save_pretrained(str(tmp_path / "adapter"))  # config.json: where id2label lives
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["task_type"] == "SEQ_CLS" and "classifier" in saved["modules_to_save"]  # the recipe as PEFT saves it
    load = _classifier_loader(tokenizer)
    old_texts = [x for task in toy_stream[:2] for x, _ in task.test]
    before = [(p.label, p.task) for p in load(tmp_path / "m").predict(old_texts)]
    old_state = {name: load(tmp_path / "m").task_state(name) for name in ("fruit", "vehicle")}

    report = sharing.import_adapter(tmp_path / "m", "weather", tmp_path / "adapter",
                                    [x for x, _ in weather.train], loader=load)
    assert report["label_names"] == ["cold", "warm"] and report["labels_from"].endswith("config.json")
    back = load(tmp_path / "m")
    texts = [x for x, _ in weather.test]
    preds = _answers_as_peft(back, model, tokenizer, texts)
    # the other tasks: tensors bit-identical, answers unchanged
    for name, state in old_state.items():
        after = back.task_state(name)
        assert all(torch.equal(state[k], after[k]) for k in state), name
    assert [(p.label, p.task) for p in back.predict(old_texts)] == before

    # it exports and imports again as the same first-token head
    sharing.export_task(tmp_path / "m", "weather", tmp_path / "weather_out", slm=back)
    other = make_slm()
    other.learn(toy_stream[0], progress=False)
    store.save(other, tmp_path / "n")
    sharing.import_adapter(tmp_path / "n", "weather", tmp_path / "weather_out", [x for x, _ in weather.train],
                           loader=load)
    again = load(tmp_path / "n")
    assert [p.label for p in again.predict(texts, task="weather")] == [p.label for p in preds]


def test_sequence_classifier_labels_and_unreadable_heads(make_slm, toy_stream, tokenizer, tmp_path):
    slm = make_slm()
    slm.learn(toy_stream[0], progress=False)
    store.save(slm, tmp_path / "m")
    model = _peft_sequence_classifier(tokenizer, toy_stream[2], num_labels=3, steps=2)
    model.save_pretrained(str(tmp_path / "adapter"))
    load, inputs = _classifier_loader(tokenizer), [x for x, _ in toy_stream[2].train]
    before = _snapshot(tmp_path / "m")
    with pytest.raises(AdapterError, match="2 label names from given .* for a head of 3 classes"):
        sharing.import_adapter(tmp_path / "m", "w", tmp_path / "adapter", inputs, loader=load, label_names=["a", "b"])
    # a hand-written slm_task.json without label_names (issue 38, item 2): transformers' default names
    (tmp_path / "adapter" / "slm_task.json").write_text(json.dumps({"note": "hand-written"}))
    assert _snapshot(tmp_path / "m") == before
    report = sharing.import_adapter(tmp_path / "m", "w", tmp_path / "adapter", inputs, loader=load)
    assert report["label_names"] == ["LABEL_0", "LABEL_1", "LABEL_2"] and report["labels_from"] == "default"
    # a saved module that is not a head it knows is refused by name
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    tensors["base_model.model.classifier.extra.weight"] = torch.zeros(2, 2)
    save_file(tensors, str(tmp_path / "adapter" / "adapter_model.safetensors"))
    with pytest.raises(AdapterError, match="modules_to_save holds .*classifier.extra.weight"):
        sharing.import_adapter(tmp_path / "m", "w2", tmp_path / "adapter", inputs, loader=load)


@pytest.mark.parametrize("command", ["import", "remove"])
def test_a_mistyped_model_directory_leaves_nothing_behind(tmp_path, command):
    """Issue 38, item 3: refused, and no directory (or lock file in an existing one) is created."""
    from scalable_lm import cli

    (tmp_path / "adapter").mkdir()
    (tmp_path / "inputs.txt").write_text("a text\n")
    (tmp_path / "notes").mkdir()
    for target in (tmp_path / "typo", tmp_path / "notes"):
        argv = {"import": ["import", "--model", str(target), "--task", "t", "--adapter", str(tmp_path / "adapter"),
                           "--data", str(tmp_path / "inputs.txt")],
                "remove": ["remove", "--model", str(target), "--task", "t"]}[command]
        assert cli.main(["-q", *argv]) != 0
        assert not (tmp_path / "typo").exists()
        assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == []


def test_a_shared_prefix_task_exports_to_peft_and_imports_back(make_shared_slm, toy_stream, tokenizer, tmp_path):
    """With ``--encoder shared-l1`` the exported adapter holds only the blocks above 1, loads with PEFT, and
    equals SLM at the task's frozen weights; imported into another shared-prefix directory, it answers as before."""
    from safetensors.torch import load_file

    slm = make_shared_slm()
    for task in toy_stream:
        slm.learn(task, progress=False)
    store.save(slm, tmp_path / "m")
    out = sharing.export_task(tmp_path / "m", "vehicle", tmp_path / "vehicle", slm=slm)
    targets = json.loads((tmp_path / "vehicle" / "adapter_config.json").read_text())["target_modules"]
    assert sorted(targets) == sorted(slm.layers) and not any(".layer.0." in m for m in targets)
    model = peft.PeftModel.from_pretrained(tiny_bert(0, layers=3), str(tmp_path / "vehicle")).eval()
    head = load_file(str(tmp_path / "vehicle" / "head.safetensors"))
    texts = [x for x, _ in toy_stream[1].test]
    batch = tokenizer(texts, padding=True, truncation=True, max_length=24, return_tensors="pt")
    with torch.no_grad():
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        logits = mean_pool(hidden, batch["attention_mask"]) @ head["weight"].T + head["bias"]
    t, p = 1, slm.bank.entries_per_task
    entries = torch.arange(t * p, t * p + p)[None].expand(len(texts), -1)
    with torch.no_grad(), routed(slm.layers, entries, torch.tensor(out["weights"])[None].expand(len(texts), -1)):
        ours = slm.classifier.head_logits(slm.classifier.features(slm.classifier.tokenize(texts, 24)), t)
    assert torch.allclose(ours, logits, atol=1e-5)

    other = make_shared_slm()
    other.learn(toy_stream[0], progress=False)
    store.save(other, tmp_path / "n")

    def load(directory):
        return store.load(directory, backbone=(tiny_bert(0, layers=3), tokenizer))

    sharing.import_adapter(tmp_path / "n", "vehicle", tmp_path / "vehicle", [x for x, _ in toy_stream[1].train],
                           loader=load)
    back = load(tmp_path / "n")
    assert [q.label for q in back.predict(texts, task="vehicle")] == [q.label for q in slm.predict(texts, task="vehicle")]
    assert sum(q.task == "vehicle" for q in back.predict(texts)) >= 0.9 * len(texts)


def test_a_peft_adapter_on_every_block_imports_into_a_shared_prefix_directory(make_shared_slm, toy_stream, tokenizer,
                                                                              tmp_path):
    """PEFT's usual targets (every block, the query's own block included) enter a ``shared-lN`` directory: the
    query is read on the frozen blocks, and the rows routed to the task are answered again with all its
    increments; the answers equal the PEFT model's. Saved, loaded, exported and imported again, they stay so."""
    slm = make_shared_slm()
    for task in toy_stream[:2]:
        slm.learn(task, progress=False)
    store.save(slm, tmp_path / "m")
    weather = toy_stream[2]
    model = _peft_sequence_classifier(tokenizer, weather, id2label={0: "cold", 1: "warm"}, layers=3)
    model.save_pretrained(str(tmp_path / "adapter"))
    model.config.save_pretrained(str(tmp_path / "adapter"))

    def load(directory):
        return store.load(directory, backbone=(tiny_bert(0, layers=3), tokenizer))

    old_texts = [x for task in toy_stream[:2] for x, _ in task.test]
    before = [(p.label, p.task, p.confidence) for p in load(tmp_path / "m").predict(old_texts)]
    report = sharing.import_adapter(tmp_path / "m", "weather", tmp_path / "adapter", [x for x, _ in weather.train],
                                    loader=load)
    assert any(".layer.0." in m for m in report["modules"])  # below the query's block (shared-l1)
    back = load(tmp_path / "m")
    assert back.deep_tasks() == [2] and any(name.startswith("values.below.") for name in back.task_state("weather"))
    texts = [x for x, _ in weather.test]
    preds = _answers_as_peft(back, model, tokenizer, texts)
    mixed = back.predict(old_texts + texts)  # one batch of both: the second pass touches the weather rows only
    assert [(p.label, p.task) for p in mixed[:len(old_texts)]] == [b[:2] for b in before]
    assert [p.confidence for p in mixed[:len(old_texts)]] == pytest.approx([b[2] for b in before], abs=1e-6)
    assert [p.confidence for p in mixed[len(old_texts):]] == pytest.approx([p.confidence for p in preds], abs=1e-6)

    # exported, the increments below the query go with it; PEFT loads it and answers the same
    sharing.export_task(tmp_path / "m", "weather", tmp_path / "weather_out", slm=back)
    targets = json.loads((tmp_path / "weather_out" / "adapter_config.json").read_text())["target_modules"]
    assert any(".layer.0." in m for m in targets)
    other = make_shared_slm()
    other.learn(toy_stream[0], progress=False)
    store.save(other, tmp_path / "n")
    sharing.import_adapter(tmp_path / "n", "weather", tmp_path / "weather_out", [x for x, _ in weather.train],
                           loader=load)
    again = load(tmp_path / "n").predict(texts, task="weather")
    assert [p.confidence for p in again] == pytest.approx([p.confidence for p in preds], abs=1e-5)

    # removing an earlier task re-adds this one (now task 1) with its increments below the query
    back.remove_task("fruit")
    assert back.deep_tasks() == [1]
    assert [p.confidence for p in back.predict(texts)] == pytest.approx([p.confidence for p in preds], abs=1e-6)
