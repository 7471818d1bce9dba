"""The router-only load a front uses when its engine holds the model (``ModelWatcher(router_only=True)``,
``store.load(..., router_only=True)``): no backbone weights read or needed, the same routes and the same
exported adapters as the whole model."""

import pytest
import torch

from scalable_lm import sharing, store
from scalable_lm.encoder import QueryEncoder
from scalable_lm.methods.generative import GenerativeSLM
from scalable_lm.serving.front import route
from scalable_lm.serving.watcher import ModelWatcher
from tests.conftest import tiny_config, tiny_query_model
from tests.methods.test_generative import instruction_task, lm_tokenizer, tiny_llama  # noqa: F401


def _encoder(tok):
    return QueryEncoder(tiny_query_model(), tok, name="tiny-encoder", max_length=24)


@pytest.fixture
def llm_dir(lm_tokenizer, tmp_path):
    """A generative directory of two tasks whose backbone is a local folder (config, tokenizer, weights)."""
    base = tmp_path / "base"
    tiny_llama().save_pretrained(base)
    lm_tokenizer.save_pretrained(base)
    config = tiny_config(router="gaussian", targets=["o_proj"])
    config.model.backbone = str(base)
    config.train.epochs, config.train.lr = 2, 2e-2
    slm = GenerativeSLM(config, encoder=_encoder(lm_tokenizer), max_new_tokens=3)
    for name, answer in (("fruit", "sweet"), ("vehicle", "fast")):
        slm.learn(instruction_task(name, answer), progress=False)
    store.save(slm, tmp_path / "llm")
    return tmp_path / "llm", base, slm


def test_a_router_only_load_needs_no_backbone_weights_and_routes_and_exports_the_same(llm_dir, lm_tokenizer, tmp_path):
    directory, base, full = llm_dir
    prompts = ["describe it: apple banana", "describe it: car truck", "hello there"]
    models = ["auto", "auto", "base"]
    expected = full.route_rows(prompts, models)[2]
    sharing.export_task(directory, "vehicle", tmp_path / "full-export", slm=full)
    weights = sorted(base.glob("*.safetensors"))
    assert weights
    for f in weights:  # the front's machine has only the backbone's config and tokenizer
        f.unlink()

    router = store.load(directory, encoder=_encoder(lm_tokenizer), router_only=True)
    assert next(router.backbone_module.parameters()).is_meta
    assert router.route_rows(prompts, models)[2] == expected
    assert router.lm.clip(list(range(500))) == full.lm.clip(list(range(500)))
    sharing.export_task(directory, "vehicle", tmp_path / "router-export", slm=router)
    from safetensors.torch import load_file

    a, b = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("full-export", "router-export"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not list(base.glob("*.safetensors"))  # nothing recreated
    with pytest.raises(store.ModelDirError, match="router_only"):
        store.save(router, tmp_path / "copy")


def test_the_watcher_of_an_engine_that_holds_the_model_loads_the_router(llm_dir, lm_tokenizer):
    directory, base, _ = llm_dir
    for f in base.glob("*.safetensors"):
        f.unlink()
    import functools

    # as the CLI gives it: store.load with options; the watcher asks it for the router only
    loader = functools.partial(store.load, encoder=_encoder(lm_tokenizer), device="cpu")
    loaded = ModelWatcher(directory, interval=0, router_only=True, loader=loader).load_now()
    assert next(loaded.slm.backbone_module.parameters()).is_meta
    infos = route(loaded, ["describe it: car truck", "x"], ["vehicle", "base"])[2]
    assert infos[0]["task"] == "vehicle" and infos[1]["fallback"] is False


def test_a_router_only_load_of_a_shared_query_reads_the_first_blocks_only(lm_tokenizer, tmp_path):
    base = tmp_path / "base"
    tiny_llama().save_pretrained(base)
    lm_tokenizer.save_pretrained(base)
    config = tiny_config(router="gaussian", targets=["o_proj"])
    config.model.backbone, config.model.encoder = str(base), "shared-l1"
    config.train.epochs, config.train.lr = 2, 2e-2
    full = GenerativeSLM(config, max_new_tokens=3)
    for name, answer in (("fruit", "sweet"), ("vehicle", "fast")):
        full.learn(instruction_task(name, answer), progress=False)
    store.save(full, tmp_path / "llm")
    prompts, models = ["describe it: apple banana", "describe it: car truck"], ["auto", "auto"]

    loaded = ModelWatcher(tmp_path / "llm", interval=0, router_only=True).load_now()
    router, blocks = loaded.slm, loaded.slm.backbone_module.model.layers
    assert not any(p.is_meta for p in blocks[0].parameters())  # the query's block, read
    above = [p for name, p in blocks[1].named_parameters() if "lora_" not in name]  # the frozen weights above it
    assert above and all(p.is_meta for p in above) and loaded.slm.lm.model.lm_head.weight.is_meta
    assert loaded.request_tokenizer is not router.encoder.tokenizer  # the routing thread tokenizes too
    assert torch.allclose(router.encoder.encode(prompts), full.encoder.encode(prompts), atol=1e-6)
    assert router.route_rows(prompts, models)[2] == full.route_rows(prompts, models)[2]
    with pytest.raises(store.ModelDirError, match="router_only"):
        store.save(router, tmp_path / "copy")
