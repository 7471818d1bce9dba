"""SLM on a tiny LLaMA built in code: two instruction tasks learned in sequence, answered without task-ID."""

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from scalable_lm.adapters.causal import CausalLM
from scalable_lm.data.instructions import InstructionTask, load_instruction_task, prompt_text
from scalable_lm.data.tasks import DataError
from scalable_lm.encoder import QueryEncoder
from scalable_lm.methods.generative import GenerativeSLM
from tests.conftest import _DOMAINS, tiny_config, tiny_query_model


@pytest.fixture(scope="module")
def lm_tokenizer():
    from transformers import AutoTokenizer

    from scalable_lm.backbones import resolve

    tok = AutoTokenizer.from_pretrained(resolve("minilm"))
    tok = copy.deepcopy(tok)
    tok.eos_token = "[SEP]"
    return tok


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=30522, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(config).eval()


def instruction_task(name: str, answer: str, n: int = 40, seed: int = 0) -> InstructionTask:
    import random

    nouns, _ = _DOMAINS[name]
    rng = random.Random(seed)
    rows = [(prompt_text("describe it", f"{rng.choice(nouns)} {rng.choice(nouns)}"), answer) for _ in range(n)]
    return InstructionTask(name, rows[: n - 8], rows[n - 8:])


def make_generative(tok):
    config = tiny_config(router="gaussian", targets=["o_proj"])
    config.train.epochs, config.train.lr = 8, 2e-2
    encoder = QueryEncoder(tiny_query_model(), tok, name="tiny-encoder", max_length=24)
    return GenerativeSLM(config, backbone=(tiny_llama(), tok), encoder=encoder, max_new_tokens=3)


def test_answer_only_loss_masks_the_prompt(lm_tokenizer):
    lm = CausalLM(tiny_llama(), lm_tokenizer, max_length=32)
    batch = lm.training_batch(["apple banana", "a much longer prompt about a car and a truck"], ["sweet", "fast"])
    answer_ids = lm_tokenizer("sweet", add_special_tokens=False)["input_ids"]
    kept = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert kept == answer_ids + [lm_tokenizer.eos_token_id]
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    assert torch.isfinite(lm.loss(batch))


def test_two_tasks_in_sequence_answer_in_their_own_format(lm_tokenizer):
    slm = make_generative(lm_tokenizer)
    fruit, vehicle = instruction_task("fruit", "sweet"), instruction_task("vehicle", "fast", seed=1)
    slm.learn(fruit, progress=False)
    before = [t.clone() for t in slm._values(0)]
    slm.learn(vehicle, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, slm._values(0)))  # earlier task untouched
    prompts = [p for p, _ in fruit.test[:4]] + [p for p, _ in vehicle.test[:4]]
    preds = slm.predict(prompts, batch_size=8)  # one mixed batch, no task-ID
    assert [p.task for p in preds] == ["fruit"] * 4 + ["vehicle"] * 4
    assert [p.label.split()[0] for p in preds] == ["sweet"] * 4 + ["fast"] * 4, [p.label for p in preds]
    alone = slm.predict(prompts[-1:])[0]  # per-row routing: the batch does not change an answer
    assert (alone.label, alone.entries) == (preds[-1].label, preds[-1].entries)


def test_a_prompt_of_none_of_the_tasks_is_answered_by_the_base_model(lm_tokenizer):
    from scalable_lm.methods.generative import BASE_MODEL

    slm = make_generative(lm_tokenizer)
    slm.config.train.epochs = 2
    fruit, vehicle = instruction_task("fruit", "sweet"), instruction_task("vehicle", "fast", seed=1)
    slm.learn(fruit, progress=False)
    slm.learn(vehicle, progress=False)
    other = "Which planet in the solar system has the largest number of known moons?"
    preds = slm.predict([fruit.test[0][0], other, vehicle.test[0][0]])
    assert [p.task for p in preds] == ["fruit", BASE_MODEL, "vehicle"]
    assert preds[1].entries == [] and preds[1].weights == []
    base_answer = slm.lm.generate([other], slm.max_new_tokens)[0][0]  # no route set: the frozen model
    assert preds[1].label == base_answer
    slm.config.bank.fallback = 0.0  # off: every prompt gets its nearest task's increments
    assert slm.predict([other])[0].task in ("fruit", "vehicle")


def test_instruction_files_are_checked(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"instruction": "Say hi", "input": "", "output": "hi"}\n{"instruction": "x", "output": ""}\n')
    with pytest.raises(DataError, match="row 2: empty or missing output"):
        load_instruction_task("t", path)
    path.write_text('{"prompt": "Say hi", "output": "hi"}\n')
    with pytest.raises(DataError, match="column 'instruction' missing"):
        load_instruction_task("t", path)
    path.write_text('{"instruction": "Say hi", "input": "Bob", "output": "hi Bob"}\n')
    assert load_instruction_task("t", path).train == [("Say hi\n\nBob", "hi Bob")]


def tiny_t5(seed: int = 0):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = T5Config(vocab_size=30522, d_model=48, d_kv=12, d_ff=96, num_layers=2, num_decoder_layers=2,
                      num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=102)
    return T5ForConditionalGeneration(config).eval()


def test_encoder_decoder_learns_two_tasks_and_answers_without_task_id(lm_tokenizer):
    config = tiny_config(router="gaussian")
    config.bank.targets = ["SelfAttention.o", "EncDecAttention.o"]
    config.train.epochs, config.train.lr = 8, 2e-2
    encoder = QueryEncoder(tiny_query_model(), lm_tokenizer, name="tiny-encoder", max_length=24)
    slm = GenerativeSLM(config, backbone=(tiny_t5(), lm_tokenizer), encoder=encoder, max_new_tokens=3)
    assert len(slm.layers) == 2 * 2 + 2  # encoder self-attention, decoder self- and cross-attention
    fruit, vehicle = instruction_task("fruit", "sweet"), instruction_task("vehicle", "fast", seed=1)
    slm.learn(fruit, progress=False)
    slm.learn(vehicle, progress=False)
    prompts = [p for p, _ in fruit.test[:4]] + [p for p, _ in vehicle.test[:4]]
    preds = slm.predict(prompts, batch_size=8)
    assert [p.task for p in preds] == ["fruit"] * 4 + ["vehicle"] * 4
    assert [p.label.split()[0] if p.label else "" for p in preds] == ["sweet"] * 4 + ["fast"] * 4, [p.label for p in preds]


def test_generative_model_directory_round_trip(lm_tokenizer, tmp_path):
    from scalable_lm import store

    slm = make_generative(lm_tokenizer)
    slm.config.train.epochs = 2
    fruit, vehicle = instruction_task("fruit", "sweet"), instruction_task("vehicle", "fast", seed=1)
    for task in (fruit, vehicle):
        slm.learn(task, progress=False)
    store.save(slm, tmp_path / "m")
    assert store.read_manifest(tmp_path / "m")["kind"] == "generative"
    encoder = QueryEncoder(tiny_query_model(), lm_tokenizer, name="tiny-encoder", max_length=24)
    loaded = store.load(tmp_path / "m", backbone=(tiny_llama(), lm_tokenizer), encoder=encoder)
    assert isinstance(loaded, GenerativeSLM) and loaded.task_names == ["fruit", "vehicle"]
    prompts = [p for p, _ in fruit.test[:2]] + [p for p, _ in vehicle.test[:2]]
    before, after = slm.predict(prompts), loaded.predict(prompts)
    assert [(p.label, p.entries) for p in before] == [(p.label, p.entries) for p in after]


def test_sequential_lora_generator_overwrites_the_first_task(lm_tokenizer):
    from scalable_lm.baselines.generative import SequentialLoRAGenerator

    config = tiny_config(targets=["o_proj"])
    config.train.epochs, config.train.lr = 8, 2e-2
    method = SequentialLoRAGenerator(config, backbone=(tiny_llama(), lm_tokenizer), max_new_tokens=3)
    fruit, vehicle = instruction_task("fruit", "sweet"), instruction_task("vehicle", "fast", seed=1)
    method.learn(fruit, progress=False)
    assert method.predict([p for p, _ in fruit.test[:2]])[0].label.split()[0] == "sweet"
    method.learn(vehicle, progress=False)  # one shared LoRA: the old answer format is overwritten
    assert [p.label.split()[0] for p in method.predict([p for p, _ in fruit.test[:2]])] == ["fast", "fast"]
    replay = SequentialLoRAGenerator(config, backbone=(tiny_llama(), lm_tokenizer), replay_fraction=0.1)
    replay.learn(fruit, progress=False)
    assert replay.learn(vehicle, progress=False)["replayed_rows"] == 3


def test_zero_shot_loglikelihood_matches_a_manual_forward(lm_tokenizer):
    from scalable_lm import zeroshot

    model = tiny_llama()
    pairs, normalise = zeroshot.multiple_choice_pairs("arc_easy", {"question": "What is red?", "choices": ["apple", "a car"]})
    assert normalise and pairs[0] == ("Question: What is red?\nAnswer:", " apple")
    scores = zeroshot.loglikelihoods(model, lm_tokenizer, pairs)
    ids = lm_tokenizer(pairs[1][0], add_special_tokens=False)["input_ids"]
    cont = lm_tokenizer(pairs[1][1], add_special_tokens=False)["input_ids"]
    logits = model(input_ids=torch.tensor([ids + cont])).logits.log_softmax(-1)[0]
    manual = sum(float(logits[len(ids) - 1 + i, t]) for i, t in enumerate(cont))
    assert scores[1][0] == pytest.approx(manual, abs=1e-4) and scores[1][1] == len(cont)
    wino, norm = zeroshot.multiple_choice_pairs("winogrande", {"question": "Ann beat Bo so _ won.", "choices": ["Ann", "Bo"]})
    assert not norm and wino == [("Ann beat Bo so Ann", " won."), ("Ann beat Bo so Bo", " won.")]
    slm = make_generative(lm_tokenizer)
    assert len(slm.multiple_choice("arc_easy", [{"question": "What is red?", "choices": ["apple", "a car"]}])) == 1


def test_olora_generator_keeps_old_loras_frozen(lm_tokenizer):
    from scalable_lm.baselines.generative import OLoRAGenerator

    config = tiny_config(targets=["o_proj"])
    config.train.epochs = 2
    method = OLoRAGenerator(config, backbone=(tiny_llama(), lm_tokenizer), max_new_tokens=2)
    fruit, vehicle = instruction_task("fruit", "sweet"), instruction_task("vehicle", "fast", seed=1)
    method.learn(fruit, progress=False)
    layer = next(iter(method.layers.values()))
    first = layer.lora_A[0].clone()
    method.learn(vehicle, progress=False)
    assert method.num_slots == 2 and torch.equal(layer.lora_A[0], first) and float(method._penalty()) > 0
    assert len(method.predict([p for p, _ in fruit.test[:2]])) == 2


def test_arrow_generator_routes_through_peft(lm_tokenizer):
    from scalable_lm.baselines.generative import ArrowGenerator

    config = tiny_config(targets=["o_proj"])
    config.train.epochs = 2
    method = ArrowGenerator(config, backbone=(tiny_llama(), lm_tokenizer), top_k=2, max_new_tokens=2)
    fruit, vehicle = instruction_task("fruit", "sweet"), instruction_task("vehicle", "fast", seed=1)
    method.learn(fruit, progress=False)
    assert len(method.predict([p for p, _ in fruit.test[:2]])) == 2
    method.learn(vehicle, progress=False)  # the router is rebuilt over both adapters
    assert len(method.predict([p for p, _ in vehicle.test[:3]])) == 3
    assert method.peft.peft_config["arrow_router"].arrow_config.task_adapter_names == ["task_0", "task_1"]


def test_dolly_style_rows_are_instruction_rows(tmp_path):
    from scalable_lm.data.instructions import is_instruction_row

    path = tmp_path / "dolly.jsonl"
    path.write_text('{"instruction": "Summarise", "context": "A long text.", "response": "Short.", "category": "x"}\n')
    assert is_instruction_row({"instruction": "x", "response": "y"}) and not is_instruction_row({"text": "x"})
    assert load_instruction_task("t", path).train == [("Summarise\n\nA long text.", "Short.")]


def test_a_decoder_reads_its_query_from_its_own_first_block(lm_tokenizer, tmp_path):
    """``--encoder shared-l1`` on a decoder: no second model; the query is the prompt's mean hidden state after
    block 1 (the same with or without padding beside it), increments only above it; two tasks answered in
    their own format without task-ID, the first left bit-identical, and a saved directory answers the same."""
    from scalable_lm import store
    from scalable_lm.encoder import SharedPrefixEncoder, mean_pool

    config = tiny_config(router="gaussian", targets=["o_proj"])
    config.train.epochs, config.train.lr = 8, 2e-2
    config.model.encoder = "shared-l1"
    slm = GenerativeSLM(config, backbone=(tiny_llama(), lm_tokenizer), max_new_tokens=3)
    assert isinstance(slm.encoder, SharedPrefixEncoder) and list(slm.layers) == ["model.layers.1.self_attn.o_proj"]
    fruit, vehicle = instruction_task("fruit", "sweet"), instruction_task("vehicle", "fast", seed=1)
    prompts = [p for p, _ in fruit.test[:4]] + [p for p, _ in vehicle.test[:4]]
    ids = lm_tokenizer(prompts[0], truncation=True, max_length=config.train.max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = slm.lm.model(**ids, output_hidden_states=True).hidden_states[1]  # after block 1 (0: embeddings)
    assert torch.allclose(slm.encoder.encode(prompts)[0], mean_pool(hidden, ids["attention_mask"])[0], atol=1e-5)
    slm.learn(fruit, progress=False)
    before = [t.clone() for t in slm._values(0)]
    slm.learn(vehicle, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, slm._values(0)))
    preds = slm.predict(prompts, batch_size=8)
    assert [p.task for p in preds] == ["fruit"] * 4 + ["vehicle"] * 4
    assert [p.label.split()[0] for p in preds] == ["sweet"] * 4 + ["fast"] * 4, [p.label for p in preds]
    store.save(slm, tmp_path / "m")
    loaded = store.load(tmp_path / "m", backbone=(tiny_llama(), lm_tokenizer))
    assert [(p.label, p.entries) for p in loaded.predict(prompts)] == [(p.label, p.entries) for p in preds]
