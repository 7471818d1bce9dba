"""(c) save → load → predict is identical; (d) corrupted, edited, mismatched or half-written directories
are refused with a clear message and never damaged."""

import json

import pytest
import torch

from scalable_lm import store
from scalable_lm.store import ModelDirError
from tests.conftest import tiny_bert, tiny_query_model
from scalable_lm.encoder import QueryEncoder


def _snapshot(directory):
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def saved(make_slm, toy_stream, tmp_path):
    slm = make_slm()
    slm.learn(toy_stream[0], progress=False)
    store.save(slm, tmp_path / "m")
    return slm, tmp_path / "m"


def _load(directory, tokenizer, backbone_seed=0):
    encoder = QueryEncoder(tiny_query_model(), tokenizer, name="tiny-encoder", max_length=24)
    return store.load(directory, backbone=(tiny_bert(backbone_seed), tokenizer), encoder=encoder)


@pytest.mark.parametrize("router", ["dtkr", "gaussian"])
def test_save_load_predict_identical(make_slm, toy_stream, tokenizer, tmp_path, router):
    from tests.conftest import tiny_config

    slm, directory = make_slm(tiny_config(router=router)), tmp_path / "m"
    slm.learn(toy_stream[0], progress=False)
    store.save(slm, directory)
    slm.learn(toy_stream[1], progress=False)
    store.save(slm, directory)
    texts = [x for t in toy_stream for x, _ in t.test]
    again = _load(directory, tokenizer)
    assert again.task_names == slm.task_names and again.label_names == slm.label_names
    for a, b in zip(slm.predict(texts), again.predict(texts)):
        assert (a.label, a.task, a.entries, a.weights, a.confidence) == (b.label, b.task, b.entries, b.weights,
                                                                         b.confidence)
    manifest = json.loads((directory / "manifest.json").read_text())
    assert [t["name"] for t in manifest["tasks"]] == ["fruit", "vehicle"] and manifest["versions"]["torch"]


def test_adding_a_task_leaves_earlier_files_untouched(saved, toy_stream):
    slm, directory = saved
    first = _snapshot(directory / "tasks")
    slm.learn(toy_stream[1], progress=False)
    assert store.save(slm, directory) == ["vehicle"]
    after = _snapshot(directory / "tasks")
    assert all(after[name] == data for name, data in first.items()) and len(after) == 2


def test_truncated_or_edited_task_file_refused(saved, tokenizer):
    _, directory = saved
    task_file = next((directory / "tasks").iterdir())
    data = task_file.read_bytes()
    task_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelDirError, match="corrupted"):
        _load(directory, tokenizer)
    task_file.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ModelDirError, match="checksum"):
        _load(directory, tokenizer)
    task_file.unlink()
    with pytest.raises(ModelDirError, match="missing"):
        _load(directory, tokenizer)


def test_directory_from_before_the_fallback_statistics_still_loads_and_grows(saved, toy_stream, tokenizer):
    """Task files written before ``novelty.*`` existed (and manifests without the ``fallback`` option) load
    with the fallback off for those tasks; new tasks are added beside them."""
    from safetensors.torch import load_file, save_file

    slm, directory = saved
    task_file = next((directory / "tasks").iterdir())
    assert {"novelty.centre", "novelty.spread"} <= set(load_file(str(task_file)))
    old = {k: v for k, v in load_file(str(task_file)).items() if not k.startswith("novelty.")}
    save_file(old, str(task_file), metadata={"task": "fruit"})
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["tasks"][0]["sha256"] = store.sha256(task_file)
    del manifest["config"]["bank"]["fallback"]
    (directory / "manifest.json").write_text(json.dumps(manifest))
    again = _load(directory, tokenizer)
    assert again.bank.novelty[0][1][1] == float("inf")
    again.learn(toy_stream[1], progress=False)
    assert store.save(again, directory) == ["vehicle"]
    assert _load(directory, tokenizer).task_names == ["fruit", "vehicle"]


def test_other_backbone_refused(saved, tokenizer):
    _, directory = saved
    with pytest.raises(ModelDirError, match="backbone"):
        _load(directory, tokenizer, backbone_seed=7)


def test_interrupted_save_keeps_directory_loadable(saved, toy_stream, tokenizer, monkeypatch):
    slm, directory = saved
    before = _snapshot(directory)
    slm.learn(toy_stream[1], progress=False)

    def crash(tensors, path, metadata=None):
        open(path, "wb").write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        store.save(slm, directory)
    assert _snapshot(directory) == before  # temp file removed, manifest and task files as they were
    assert _load(directory, tokenizer).task_names == ["fruit"]


def test_not_a_model_dir(tmp_path, make_slm):
    with pytest.raises(ModelDirError, match="not a model directory"):
        store.read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(ModelDirError, match="not valid JSON"):
        store.read_manifest(tmp_path)
    (tmp_path / "other.txt").write_text("x")
    slm = make_slm()
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(ModelDirError, match="not empty"):
        store.save(slm, tmp_path)


def test_query_cache_roundtrip(tmp_path, tokenizer):
    encoder = QueryEncoder(tiny_query_model(), tokenizer, max_length=24)
    q = encoder.encode(["apple sweet", "car fast"])
    encoder.save_cache(tmp_path / "c.safetensors")
    other = QueryEncoder(tiny_query_model(), tokenizer, max_length=24)
    assert other.load_cache(tmp_path / "c.safetensors") == 2
    assert torch.equal(other.encode(["apple sweet", "car fast"]), q)


def test_read_task_reads_one_task_lazily_and_checks_it(tmp_path, make_slm, toy_stream):
    from scalable_lm.store import read_task

    slm = make_slm()
    for task in toy_stream[:2]:
        slm.learn(task, progress=False)
    store.save(slm, tmp_path / "m")
    keys = read_task(tmp_path / "m", toy_stream[1].name, ["keys"])
    assert list(keys) == ["keys"] and torch.equal(keys["keys"], slm.bank.keys[1])
    assert "head.weight" in read_task(tmp_path / "m", toy_stream[0].name)
    with pytest.raises(ModelDirError, match="no task 'nope'"):
        read_task(tmp_path / "m", "nope")
    with pytest.raises(ModelDirError, match="no tensors"):
        read_task(tmp_path / "m", toy_stream[0].name, ["bogus"])


def test_files_get_the_mode_a_plain_write_would(saved):
    import os
    import stat

    _, directory = saved  # written under the test process's umask
    mask = os.umask(0o022)
    os.umask(mask)
    for path in [directory / "manifest.json", *(directory / "tasks").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path  # not mkstemp's 0600
