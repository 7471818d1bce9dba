"""The causal-LM adapter on model families other than LLaMA: a base model (no chat template, BOS first) and a
tiny Gemma-3 built in code; the GGUF tokenizer repair that the packaged Gemma 3 needs."""

import json

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

from scalable_lm.adapters.causal import BASE_FORMAT, CausalLM, Seq2SeqLM
from scalable_lm.backbones import bpe_from_scores
from scalable_lm.encoder import QueryEncoder
from scalable_lm.methods.generative import GenerativeSLM, micro_batches
from scalable_lm.serving import prompt_tokens
from tests.conftest import tiny_config, tiny_query_model
from tests.methods.test_generative import instruction_task, lm_tokenizer  # noqa: F401


def bos_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer that puts <bos> first, as Gemma's and LLaMA's do (no chat template)."""
    words = ["<pad>", "<eos>", "<bos>", "<unk>", "Answer:", "describe", "it", "sweet", "fast", "apple", "car", "\n"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")


def tiny_gemma3(vocab: int = 30522, seed: int = 0) -> Gemma3ForCausalLM:
    torch.manual_seed(seed)
    config = Gemma3TextConfig(vocab_size=vocab, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=12, max_position_embeddings=128,
                              sliding_window=16, query_pre_attn_scalar=12)
    return Gemma3ForCausalLM(config).eval()


def test_bpe_from_scores_merges_the_best_scoring_pair_first():
    vocab = [["<pad>", -1000.0], ["<unk>", -1000.0], ["<0x41>", 0.0], ["a", -1.0], ["b", -2.0], ["c", -3.0],
             ["ab", -4.0], ["bc", -5.0], ["abc", -6.0], ["cb", -7.0]]
    unigram = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
               "pre_tokenizer": None, "post_processor": None, "decoder": None,
               "model": {"type": "Unigram", "unk_id": 1, "vocab": vocab, "byte_fallback": True}}
    fixed = bpe_from_scores(unigram)
    assert fixed["model"]["type"] == "BPE" and ["a", "b"] in fixed["model"]["merges"]
    assert fixed["model"]["merges"].index(["a", "b"]) < fixed["model"]["merges"].index(["b", "c"])
    tok = Tokenizer.from_str(json.dumps(fixed))
    assert tok.encode("abc").tokens == ["abc"]  # a+b first (score -4 beats b+c's -5), then ab+c
    assert tok.encode("cbc").tokens == ["c", "bc"]  # b+c (-5) beats c+b (-7)
    assert bpe_from_scores(fixed) is fixed  # already BPE: unchanged


def test_a_base_model_reads_prompt_then_answer_with_bos_first():
    tok = bos_tokenizer()
    lm = CausalLM(tiny_gemma3(vocab=len(tok)), tok, max_length=8, prompt_format=BASE_FORMAT)
    assert not lm.chat and lm.render("describe it") == "describe it\nAnswer:"
    assert lm.start_ids == [tok.bos_token_id]
    ids = lm.prompt_ids("describe it")
    assert ids[0] == tok.bos_token_id and tok.convert_ids_to_tokens(ids)[-1] == "Answer:"
    long = lm.prompt_ids("describe it " * 10)  # cut from the left, BOS kept
    assert len(long) == 8 and long[0] == tok.bos_token_id
    batch = lm.training_batch(["describe it"], ["sweet"])
    kept = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert kept == [tok.convert_tokens_to_ids("sweet"), tok.eos_token_id]
    assert batch["input_ids"][0][0] == tok.bos_token_id
    assert prompt_tokens(tok, lm, "describe it", None) == ids  # the server reads the same tokens


def test_a_chat_model_gets_no_extra_bos(lm_tokenizer):
    lm = CausalLM(tiny_gemma3(), lm_tokenizer)
    assert lm.start_ids == []  # MiniLM's tokenizer has no BOS
    assert lm.render("x") == "x\n"  # the plain format unless one is given


def test_gemma3_reads_the_base_format_and_a_config_can_choose_another(lm_tokenizer):
    from scalable_lm.config import SLMConfig
    from scalable_lm.methods.generative import generative_backbone

    config = SLMConfig()
    config.model.backbone = "gemma3"
    _, lm = generative_backbone(config, backbone=(tiny_gemma3(), lm_tokenizer))
    assert lm.prompt_format == BASE_FORMAT
    config.model.prompt_format = "Q: {prompt}\nA:"
    _, lm = generative_backbone(config, backbone=(tiny_gemma3(), lm_tokenizer))
    assert lm.render("x") == "Q: x\nA:"
    config.model.prompt_format = "no placeholder"
    with pytest.raises(ValueError, match="--prompt-format"):
        config.validate()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tiny_gemma3_learns_two_tasks_and_answers_without_task_id(lm_tokenizer, dtype):
    config = tiny_config(router="gaussian", targets=["o_proj"])  # the attention output, as for LLaMA
    config.train.epochs, config.train.lr = 8, 2e-2
    encoder = QueryEncoder(tiny_query_model(), lm_tokenizer, name="tiny-encoder", max_length=24)
    slm = GenerativeSLM(config, backbone=(tiny_gemma3(), lm_tokenizer), encoder=encoder, max_new_tokens=3,
                        dtype=dtype)
    assert slm.layers and all(name.endswith("self_attn.o_proj") for name in slm.layers)
    assert slm.lm.model.config.tie_word_embeddings  # Gemma ties its output layer to the embeddings
    fruit, vehicle = instruction_task("fruit", "sweet"), instruction_task("vehicle", "fast", seed=1)
    slm.learn(fruit, progress=False)
    slm.learn(vehicle, progress=False)
    prompts = [p for p, _ in fruit.test[:4]] + [p for p, _ in vehicle.test[:4]]
    preds = slm.predict(prompts, batch_size=8)
    assert [p.task for p in preds] == ["fruit"] * 4 + ["vehicle"] * 4
    assert [p.label.split()[0] if p.label else "" for p in preds] == ["sweet"] * 4 + ["fast"] * 4, [p.label for p in preds]


def _full_logits_loss(lm, batch) -> torch.Tensor:
    """The loss as 0.2.0 computed it: the LM head over every position of the whole batch, then float32."""
    if isinstance(lm, Seq2SeqLM):
        logits = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          labels=batch["labels"]).logits
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(),
                                                 ignore_index=-100)
    logits = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(),
                                             ignore_index=-100)


def _lms(tok):
    from tests.methods.test_generative import tiny_llama, tiny_t5

    gemma = tiny_gemma3()
    gemma.config.final_logit_softcapping = 30.0  # an element-wise step after the head must still apply
    return {"llama": CausalLM(tiny_llama(), tok, max_length=32), "gemma3": CausalLM(gemma, tok, max_length=32),
            "t5": Seq2SeqLM(tiny_t5(), tok, max_length=32)}


@pytest.mark.parametrize("family", ["llama", "gemma3", "t5"])
def test_answer_positions_only_and_micro_batches_give_the_whole_batch_loss_and_gradients(lm_tokenizer, family):
    lm = _lms(lm_tokenizer)[family]
    trainable = [p for n, p in lm.model.named_parameters() if n.endswith(("o_proj.weight", "SelfAttention.o.weight"))]
    assert trainable
    for p in trainable:
        p.requires_grad_(True)
    prompts = ["describe it apple", "a much longer prompt about a car and a fast car", "it", "sweet apple car"]
    answers = ["sweet", "fast fast car", "apple", "car it"]
    batch = lm.training_batch(prompts, answers)

    reference = _full_logits_loss(lm, batch)
    expected = torch.autograd.grad(reference, trainable)
    whole = lm.loss(batch)
    assert torch.allclose(whole, reference, atol=1e-6)
    n = lm.answer_tokens(batch)
    for budget in (0, 1, 40):  # whole batch, one row per part, two rows per part
        parts = micro_batches(batch, budget)
        assert len(parts) == {0: 1, 1: 4, 40: -(-4 // max(1, 40 // _width(batch)))}[budget]
        total = sum(lm.loss(micro, reduction="sum") / n for _, micro in parts)
        got = torch.autograd.grad(total, trainable)
        assert torch.allclose(total, reference, atol=1e-6)
        for g, e in zip(got, expected):
            assert torch.allclose(g, e, atol=1e-6, rtol=1e-4)


def _width(batch) -> int:
    w = batch["input_ids"].shape[1]
    return w + batch["labels"].shape[1] if batch["labels"].shape[1] != w else w


@pytest.mark.parametrize("family", ["llama", "gemma3", "t5"])
def test_the_head_sees_only_the_answer_positions(lm_tokenizer, family):
    lm = _lms(lm_tokenizer)[family]
    seen = []
    handle = lm.model.get_output_embeddings().register_forward_hook(lambda m, a, out: seen.append(out.shape))
    batch = lm.training_batch(["a much longer prompt about a car and a fast car", "it"], ["sweet", "fast car"])
    lm.loss(batch)
    handle.remove()
    assert seen == [torch.Size([1, lm.answer_tokens(batch), lm.model.config.vocab_size])]


def test_a_learned_task_is_the_same_with_or_without_micro_batches(lm_tokenizer):
    from tests.methods.test_generative import instruction_task, make_generative

    values = []
    for budget in (0, 24):
        slm = make_generative(lm_tokenizer)
        slm.config.train.epochs, slm.config.train.micro_batch_tokens = 2, budget
        slm.learn(instruction_task("fruit", "sweet"), progress=False)
        values.append([p.detach().clone() for p in slm._values(0)])
    for a, b in zip(*values):
        assert torch.allclose(a, b, atol=1e-5)
