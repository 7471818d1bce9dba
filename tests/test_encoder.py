"""The query encoder's on-disk cache: append-only shards, bounded, safe with several writers."""

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
