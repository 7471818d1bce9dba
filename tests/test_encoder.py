"""The query encoder's on-disk cache: append-only shards, bounded, safe with several writers."""

import pytest
import torch

from scalable_lm import encoder as encoder_module
from scalable_lm.encoder import QueryEncoder
from tests.conftest import tiny_query_model


def _encoder(tokenizer) -> QueryEncoder:
    return QueryEncoder(tiny_query_model(), tokenizer, max_length=24)


def _shards(path):
    return sorted(p.name for p in path.iterdir() if p.suffix == ".safetensors")


def test_each_save_adds_a_shard_of_new_queries_only(tmp_path, tokenizer):
    cache = tmp_path / "queries-x"
    a, b = _encoder(tokenizer), _encoder(tokenizer)  # two processes, each with its own queries
    qa = a.encode(["apple sweet", "car fast"])
    b.encode(["car fast", "rain cold"])
    assert a.save_cache(cache) == 2 and b.save_cache(cache) == 2  # neither overwrites the other
    assert len(_shards(cache)) == 2
    assert a.save_cache(cache) == 0 and len(_shards(cache)) == 2  # nothing new: nothing written
    c = _encoder(tokenizer)
    assert c.load_cache(cache) == 4  # "car fast" is in both shards
    assert torch.equal(c.encode(["apple sweet", "car fast"]), qa)
    c.encode(["snow warm"])
    assert c.save_cache(cache) == 1  # only the query it computed itself


def test_cache_is_bounded_and_keeps_the_newest(tmp_path, tokenizer):
    cache = tmp_path / "queries-x"
    for i in range(4):
        enc = _encoder(tokenizer)
        enc.encode([f"text {i} a", f"text {i} b"])
        enc.save_cache(cache, max_queries=5)
    fresh = _encoder(tokenizer)
    assert fresh.load_cache(cache) == 5
    kept = {t for t in [f"text {i} {s}" for i in range(4) for s in "ab"] if encoder_module.text_key(t) in fresh._cache}
    assert kept == {"text 1 b", "text 2 a", "text 2 b", "text 3 a", "text 3 b"}


def test_many_shards_are_merged_and_a_damaged_one_is_dropped(tmp_path, tokenizer, monkeypatch):
    cache = tmp_path / "queries-x"
    monkeypatch.setattr(encoder_module, "MAX_SHARDS", 3)
    for i in range(3):
        enc = _encoder(tokenizer)
        enc.encode([f"text {i}"])
        enc.save_cache(cache)
    (cache / "00000000000000000001-1.safetensors").write_bytes(b"not a safetensors file")  # the oldest shard
    fresh = _encoder(tokenizer)
    assert fresh.load_cache(cache) == 3  # the damaged shard is skipped
    fresh.encode(["text 3"])
    fresh.save_cache(cache)  # a fifth shard: more than MAX_SHARDS, so all are merged into one
    shards = _shards(cache)
    assert len(shards) == 1 and shards[0].endswith("-merged.safetensors")
    assert _encoder(tokenizer).load_cache(cache) == 4


def test_a_cache_file_from_before_shards_is_read_and_moved_into_a_shard(tmp_path, tokenizer):
    cache = tmp_path / "queries-x"
    old = _encoder(tokenizer)
    q = old.encode(["apple sweet"])
    old.save_cache(tmp_path / "queries-x.safetensors")  # the one-file format: still written when asked for
    new = _encoder(tokenizer)
    assert new.load_cache(cache) == 1 and torch.equal(new.encode(["apple sweet"]), q)
    new.save_cache(cache)
    assert not (tmp_path / "queries-x.safetensors").exists() and _encoder(tokenizer).load_cache(cache) == 1


# ---- the shared prefix: queries from the backbone's own blocks (--encoder shared-lN) ------------------------
def test_shared_prefix_query_is_the_truncated_backbones_pooled_state(make_shared_slm, toy_stream, tokenizer):
    """``shared-lN`` = the masked mean of the backbone's hidden state after block N: the same as a separate
    encoder made of the backbone's first N blocks, whether read by ``encode`` (a pass stopped at block N) or
    inside the full routed forward pass, before and after tasks are learned (nothing below N ever changes)."""
    import copy

    from scalable_lm.encoder import SharedPrefixEncoder
    from tests.conftest import shared_config

    for depth in (1, 2):
        slm = make_shared_slm(shared_config(depth))
        assert isinstance(slm.encoder, SharedPrefixEncoder) and slm.encoder.model is slm.classifier.backbone
        texts = [x for task in toy_stream for x, _ in task.test[:5]] + ["a much longer text about a truck " * 3]
        truncated = copy.deepcopy(slm.classifier.backbone)
        truncated.encoder.layer = truncated.encoder.layer[:depth]
        separate = QueryEncoder(truncated, tokenizer, max_length=24).encode(texts)
        assert torch.allclose(slm.encoder.encode(texts), separate, atol=1e-6)
        slm.learn(toy_stream[0], progress=False)
        slm.learn(toy_stream[1], progress=False)
        with slm.encoder.cold():
            assert torch.allclose(slm.encoder.encode(texts), separate, atol=1e-6)
        inside = slm._features(texts)[3]  # the query the one-pass forward routed with
        assert torch.allclose(inside, separate, atol=1e-5)
        assert not slm.classifier.backbone.training  # encode() does not leave the backbone in another mode


def test_shared_prefix_depth_and_stack_are_checked(tokenizer):
    from transformers import T5Config, T5ForConditionalGeneration

    from scalable_lm.encoder import SharedPrefixEncoder, layer_stack, shared_prefix_depth
    from tests.conftest import tiny_bert

    assert shared_prefix_depth("minilm-l4") is None and shared_prefix_depth("shared-l3") == 3
    for bad in ("shared-l0", "shared-lx", "shared-l"):
        with pytest.raises(ValueError, match="expected shared-lN with N >= 1"):
            shared_prefix_depth(bad)
    model = tiny_bert(0, layers=3)
    assert layer_stack(model)[0] == "encoder.layer"
    for depth in (0, 3):  # block 3 of 3 would leave no block for increments
        with pytest.raises(ValueError, match="the backbone has 3 blocks"):
            SharedPrefixEncoder(model, tokenizer, depth)
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=100, d_model=16, d_ff=32, num_layers=2, num_heads=2, d_kv=8))
    with pytest.raises(ValueError, match="2 stacks of 2 blocks .*needs exactly one"):
        layer_stack(t5)


def test_the_default_classifier_query_is_the_minilm_l4_encoders():
    """On the packaged MiniLM, ``shared-l4`` (the default classifier's query) equals the separate ``minilm-l4``
    encoder's query (0.2.0's default), so routing is unchanged by sharing the blocks."""
    from scalable_lm.backbones import load_encoder
    from scalable_lm.encoder import SharedPrefixEncoder

    texts = ["My parcel never arrived", "The battery died after two days, avoid it", "Stocks fell on Monday " * 20]
    separate = QueryEncoder.from_name("minilm-l4").encode(texts)
    shared = SharedPrefixEncoder(*load_encoder("minilm"), depth=4).encode(texts)
    assert torch.allclose(shared, separate, atol=1e-5)
