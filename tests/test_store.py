"""(c) save → load → predict is identical; (d) corrupted, edited, mismatched or half-written directories
are refused with a clear message and never damaged."""

import json
import logging

import pytest
import torch

from scalable_lm import store
from scalable_lm.store import ModelDirError
from tests.conftest import tiny_bert, tiny_config, tiny_query_model
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


def test_single_entry_gaussian_bank_with_default_k_prep_loads_again(make_slm, toy_stream, tokenizer, tmp_path):
    # The per-task oracle (one entry per task, top-1) keeps the default k_prep = 2: harmless under the Gaussian
    # router (the key loss takes min(k_prep, entries)), so its saved directory must load; under DTKR it is refused.
    from tests.conftest import tiny_config

    config = tiny_config(entries_per_task=1, top_k=1)
    assert config.keys.k_prep == 2 and config.bank.router == "gaussian"
    slm = make_slm(config.validate())
    slm.learn(toy_stream[0], progress=False)
    store.save(slm, tmp_path / "m")
    again = _load(tmp_path / "m", tokenizer)
    texts = [x for x, _ in toy_stream[0].test]
    assert [p.label for p in again.predict(texts)] == [p.label for p in slm.predict(texts)]
    config.bank.router = "dtkr"
    with pytest.raises(ValueError, match="--k-prep must be at most --entries-per-task \\(1\\) with the dtkr router"):
        config.validate()


def test_save_pretrained_and_from_pretrained_are_save_and_load(saved, toy_stream, tokenizer, tmp_path):
    from scalable_lm import GenerativeSLM, SLM

    slm, _ = saved
    assert slm.save_pretrained(tmp_path / "p") == ["fruit"]
    encoder = QueryEncoder(tiny_query_model(), tokenizer, name="tiny-encoder", max_length=24)
    again = SLM.from_pretrained(tmp_path / "p", backbone=(tiny_bert(0), tokenizer), encoder=encoder, device="cpu")
    texts = [x for x, _ in toy_stream[0].test]
    assert [p.label for p in again.predict(texts)] == [p.label for p in slm.predict(texts)]
    with pytest.raises(ModelDirError, match="holds a classifier model: load it with SLM.from_pretrained"):
        GenerativeSLM.from_pretrained(tmp_path / "p")


def test_adding_a_task_leaves_earlier_files_untouched(saved, toy_stream):
    slm, directory = saved
    first = _snapshot(directory / "tasks")
    slm.learn(toy_stream[1], progress=False)
    assert store.save(slm, directory) == ["vehicle"]
    after = _snapshot(directory / "tasks")
    assert all(after[name] == data for name, data in first.items()) and len(after) == 2


def test_saving_the_same_model_twice_writes_nothing_and_says_so(saved, caplog, tokenizer):
    slm, directory = saved
    before = _snapshot(directory)
    with caplog.at_level(logging.INFO, logger="scalable_lm.store"):
        assert store.save(slm, directory) == []
    assert _snapshot(directory) == before
    assert "already holds every task of this model (1), unchanged: nothing written" in caplog.text
    loaded = _load(directory, tokenizer)  # a model read from the directory is the same model too
    assert store.save(loaded, directory) == [] and _snapshot(directory) == before


def test_a_task_of_the_same_name_learned_from_other_data_is_refused(make_slm, toy_stream, saved, tmp_path):
    _, directory = saved
    before = _snapshot(directory)
    config = tiny_config()
    config.train.seed = 1
    other = make_slm(config)  # the same task name, other initialisation and shuffling: other weights
    other.learn(toy_stream[0], progress=False)
    other.learn(toy_stream[1], progress=False)
    with pytest.raises(ModelDirError, match="already holds a task 'fruit' that differs from this model's"):
        store.save(other, directory)
    assert _snapshot(directory) == before
    copy = make_slm()  # learned again from the same data with the same seed: the same tensors, accepted
    copy.learn(toy_stream[0], progress=False)
    copy.learn(toy_stream[1], progress=False)
    assert store.save(copy, directory) == ["vehicle"]


def test_truncated_or_edited_task_file_refused(saved, tokenizer):
    _, directory = saved
    task_file = next((directory / "tasks").iterdir())
    data = task_file.read_bytes()
    task_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelDirError, match="task file .*000-fruit.safetensors is corrupted or truncated"):
        _load(directory, tokenizer)
    task_file.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    slm = _load(directory, tokenizer)  # mapped, not read: verified when a route first uses the task
    with pytest.raises(ModelDirError, match="corrupted or was edited \\(checksum mismatch\\)"):
        slm.predict(["apple sweet banana"])
    with pytest.raises(ModelDirError, match="checksum"):
        slm.task_state("fruit")
    index = (directory / "index.safetensors").read_bytes()
    (directory / "index.safetensors").unlink()  # without the index every file is verified at load, as before
    with pytest.raises(ModelDirError, match="checksum"):
        _load(directory, tokenizer)
    (directory / "index.safetensors").write_bytes(index)
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
    manifest["format"] = "scalable-lm/1"  # as that release wrote it: no index
    del manifest["index"]
    (directory / "index.safetensors").unlink()
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


def test_add_tasks_puts_named_tasks_into_an_existing_model(make_slm, toy_stream, tokenizer, tmp_path):
    full = _learn_into(make_slm, toy_stream, tmp_path / "m")
    texts = [x for t in toy_stream[:2] for x, _ in t.test]
    slm = make_slm()
    assert store.add_tasks(slm, tmp_path / "m", ["fruit", "vehicle"]) == ["fruit", "vehicle"]
    assert slm.task_names == ["fruit", "vehicle"]
    two = _learn_into(make_slm, toy_stream[:2], tmp_path / "two")
    assert [p.label for p in slm.predict(texts)] == [p.label for p in two.predict(texts)]
    assert store.add_tasks(slm, tmp_path / "m", ["weather"]) == ["weather"] and slm.task_names == full.task_names
    with pytest.raises(ModelDirError, match="'fruit' is already in the bank"):
        store.add_tasks(slm, tmp_path / "m", ["fruit"])
    with pytest.raises(ModelDirError, match="has no task 'snow'"):
        store.add_tasks(make_slm(), tmp_path / "m", ["snow"])
    with pytest.raises(ModelDirError, match="backbone"):
        store.add_tasks(make_slm(backbone_seed=7), tmp_path / "m")
    other = make_slm()
    (tmp_path / "m" / store.read_manifest(tmp_path / "m")["tasks"][1]["file"]).write_bytes(b"edited")
    with pytest.raises(ModelDirError, match="checksum"):
        store.add_tasks(other, tmp_path / "m")
    assert other.task_names == []  # every file is checked before any task is added


def test_interrupted_save_keeps_directory_loadable(saved, toy_stream, tokenizer, monkeypatch):
    slm, directory = saved
    before = _snapshot(directory)
    slm.learn(toy_stream[1], progress=False)

    def crash(tensors, path, metadata=None):
        open(path, "wb").write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr("safetensors.torch.save_file", crash)  # store imports it when it writes
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


# ---- remove, merge: exact with the Gaussian router -----------------------------------------------------
def _predictions(slm, texts):
    return [(p.label, p.task, p.confidence, p.entries, p.weights) for p in slm.predict(texts)]


def _assert_index_is_the_models(directory, slm):
    """The directory's index (routing state) equals, bit for bit, the one of ``slm`` learned in memory."""
    from safetensors.torch import load_file

    index, mine = load_file(str(directory / store.INDEX)), store.index_tensors(slm)
    assert sorted(index) == sorted(mine)
    assert all(torch.equal(index[k], mine[k]) for k in index), [k for k in index if not torch.equal(index[k], mine[k])]


def _learn_into(make_slm, tasks, directory, seed=0, config=None, **bank):
    from tests.conftest import tiny_config

    config = config or tiny_config(**bank)
    config.train.seed = seed
    slm = make_slm(config)
    for task in tasks:
        slm.learn(task, progress=False)
    store.save(slm, directory)
    return slm


def test_remove_gives_the_directory_that_never_learned_the_task(make_slm, toy_stream, tokenizer, tmp_path):
    fruit, vehicle, weather = toy_stream
    texts = [x for t in (fruit, weather) for x, _ in t.test]
    full = _learn_into(make_slm, toy_stream, tmp_path / "full")
    # the reference never saw 'vehicle'; 'weather' gets the seed it had as third task (seed + index = 0 + 2)
    never = make_slm()
    never.learn(fruit, progress=False)
    never.config.train.seed = 1
    never.learn(weather, progress=False)
    result = store.remove(tmp_path / "full", "vehicle")
    assert result == {"removed": "vehicle", "file": "tasks/001-vehicle.safetensors", "exact": True}
    after = _load(tmp_path / "full", tokenizer)
    assert after.task_names == ["fruit", "weather"]
    assert _predictions(after, texts) == _predictions(never, texts)  # bit for bit: labels, p, entries, weights
    for name in ("fruit", "weather"):
        assert all(torch.equal(a, b) for a, b in zip(after.task_state(name).values(), never.task_state(name).values()))
    _assert_index_is_the_models(tmp_path / "full", never)  # the pooled statistics too, bit for bit
    # nothing of 'vehicle' is left in the directory: no file, no manifest entry, no statistic
    assert not (tmp_path / "full" / "tasks" / "001-vehicle.safetensors").exists()
    assert all(b"vehicle" not in p.read_bytes() and "vehicle" not in p.name
               for p in (tmp_path / "full").rglob("*") if p.is_file())
    # the same in memory
    full.remove_task("vehicle")
    assert _predictions(full, texts) == _predictions(never, texts)
    with pytest.raises(ModelDirError, match="no task 'vehicle'"):
        store.remove(tmp_path / "full", "vehicle")


def test_remove_with_dtkr_refused_unless_last_or_forced(make_slm, toy_stream, tokenizer, tmp_path):
    _learn_into(make_slm, toy_stream, tmp_path / "m", router="dtkr")
    before = _snapshot(tmp_path / "m")
    with pytest.raises(ModelDirError, match="dtkr router: tasks learned after 'fruit' \\(vehicle, weather\\)"):
        store.remove(tmp_path / "m", "fruit")
    assert _snapshot(tmp_path / "m") == before
    assert store.remove(tmp_path / "m", "weather")["exact"]  # nothing was trained beside the last task
    assert store.remove(tmp_path / "m", "fruit", force=True) == {"removed": "fruit", "exact": False,
                                                                 "file": "tasks/000-fruit.safetensors"}
    assert _load(tmp_path / "m", tokenizer).task_names == ["vehicle"]


def test_merge_equals_learning_in_sequence(make_slm, toy_stream, tokenizer, tmp_path, caplog):
    texts = [x for t in toy_stream for x, _ in t.test]
    sequential = _learn_into(make_slm, toy_stream, tmp_path / "seq")
    _learn_into(make_slm, toy_stream[:2], tmp_path / "a")
    _learn_into(make_slm, toy_stream[2:], tmp_path / "b", seed=2)  # its first task gets seed 2 + 0, as third in seq
    with caplog.at_level(logging.WARNING, logger="scalable_lm"):
        assert store.merge([tmp_path / "a", tmp_path / "b"], tmp_path / "ab").names == ["fruit", "vehicle", "weather"]
    assert "seed" not in caplog.text  # every task keeps the seed learning it third would give it
    merged = _load(tmp_path / "ab", tokenizer)
    assert _predictions(merged, texts) == _predictions(sequential, texts)
    _assert_index_is_the_models(tmp_path / "ab", sequential)
    manifest = store.read_manifest(tmp_path / "ab")
    assert manifest["tasks"][2]["merged_from"] == str(tmp_path / "b") and manifest["tasks"][2]["seed"] == 2
    # the merged directory grows like any other
    merged.learn(toy_task_named("fruit", "fruit2"), progress=False)
    assert store.save(merged, tmp_path / "ab") == ["fruit2"]


def test_merge_estimates_the_overlap_of_tasks_from_different_directories(make_slm, toy_stream, tmp_path):
    _learn_into(make_slm, toy_stream[:2], tmp_path / "a")
    merged = store.merge([tmp_path / "a", tmp_path / "a"], tmp_path / "aa",
                         rename={"fruit": "fruit-2", "vehicle": "vehicle-2"})
    records = {t["name"]: store.routing_record(t) for t in store.read_manifest(tmp_path / "aa")["tasks"]}
    original = {t["name"]: store.routing_record(t) for t in store.read_manifest(tmp_path / "a")["tasks"]}
    assert records["fruit"] == original["fruit"] and records["vehicle"] == original["vehicle"]  # first copy as it was
    # the second copy of each task routes all its inputs to the first (a tie goes to the older task) ...
    assert records["fruit-2"]["routes_to"]["fruit"] == 1.0 and records["vehicle-2"]["routes_to"]["vehicle"] == 1.0
    # ... and nothing to the other task, beyond what it measured when it was learned
    assert "vehicle" not in records["fruit-2"]["routes_to"]
    assert records["vehicle-2"]["routes_to"].get("fruit-2") == original["vehicle"]["routes_to"].get("fruit")
    # the merge returns what it estimated (the pairs across the two copies), as recorded
    assert {(p["task"], p["other"]) for p in merged.overlaps(0.5)} >= {("fruit-2", "fruit"), ("vehicle-2", "vehicle")}
    for p in merged.estimated:
        assert records[p["task"]]["routes_to"].get(p["other"], 0.0) == p["routes_to"] or p["routes_to"] < 0.005


def toy_task_named(domain, name):
    from tests.conftest import toy_task

    task = toy_task(domain, seed=9)
    task.name = name
    return task


def test_merge_refusals_and_rename(make_slm, toy_stream, tokenizer, tmp_path, caplog):
    _learn_into(make_slm, toy_stream[:1], tmp_path / "a")
    _learn_into(make_slm, toy_stream[:2], tmp_path / "b")
    with pytest.raises(ModelDirError, match="task 'fruit' is in more than one directory.*--rename fruit:NEW_NAME"):
        store.merge([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # a refused merge leaves nothing
    with caplog.at_level(logging.WARNING, logger="scalable_lm"):
        names = store.merge([tmp_path / "a", tmp_path / "b"], tmp_path / "out", rename={"fruit": "fruit-b"}).names
    assert names == ["fruit", "fruit-b", "vehicle"]
    # b's tasks were learned first and second (seeds 0, 1), here second and third: named, not silently merged
    assert "2 task(s) move to a position whose seed differs" in caplog.text
    assert "'fruit-b': seed 0, here 1" in caplog.text and "'vehicle': seed 1, here 2" in caplog.text
    loaded = _load(tmp_path / "out", tokenizer)
    b = _load(tmp_path / "b", tokenizer)
    assert all(torch.equal(x, y) for x, y in zip(loaded.task_state("fruit-b").values(), b.task_state("fruit").values()))
    with pytest.raises(ModelDirError, match="already a model directory|not empty"):
        store.merge([tmp_path / "a", tmp_path / "b"], tmp_path / "out", rename={"fruit": "x"})
    with pytest.raises(ModelDirError, match="not duplicated"):
        store.merge([tmp_path / "a", tmp_path / "b"], tmp_path / "o2", rename={"fruit": "x", "vehicle": "y"})
    _learn_into(make_slm, toy_stream[2:], tmp_path / "r8", rank=8)
    with pytest.raises(ModelDirError, match="different bank options \\['rank'\\]"):
        store.merge([tmp_path / "a", tmp_path / "r8"], tmp_path / "o3")
    other = make_slm(backbone_seed=3)
    other.learn(toy_stream[2], progress=False)
    store.save(other, tmp_path / "other")
    with pytest.raises(ModelDirError, match="different backbone"):
        store.merge([tmp_path / "a", tmp_path / "other"], tmp_path / "o4")
    with pytest.raises(ModelDirError, match="one of the directories being merged"):
        store.merge([tmp_path / "a", tmp_path / "b"], tmp_path / "a")


# ---- the writers' lock, recovery, manifest safety --------------------------------------------------------
def _hold_lock_in_another_process(directory):
    import subprocess
    import sys

    directory.mkdir(parents=True, exist_ok=True)
    code = ("import filelock, json, os, sys, time; d = sys.argv[1]; l = filelock.FileLock(d + '/.lock'); l.acquire(); "
            "open(d + '/.lock.owner', 'w').write(json.dumps({'pid': os.getpid(), 'host': 'h', 'since': 't', "
            "'command': 'slm learn --task other'})); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(directory)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_refused_at_once_naming_the_holder(saved, toy_stream, tokenizer):
    import time

    slm, directory = saved
    slm.learn(toy_stream[1], progress=False)
    before = _snapshot(directory / "tasks")
    proc = _hold_lock_in_another_process(directory)
    try:
        start = time.perf_counter()
        with pytest.raises(ModelDirError, match=r"being written by another process \(pid \d+ on h, since t: "
                                                r"slm learn --task other\).*--wait"):
            store.save(slm, directory)
        assert time.perf_counter() - start < 1.0
        start = time.perf_counter()
        with pytest.raises(ModelDirError, match="being written"), store.DirectoryLock(directory, wait=0.5):
            pass
        assert 0.5 <= time.perf_counter() - start < 1.5
    finally:
        proc.kill()
        proc.wait()
    assert _snapshot(directory / "tasks") == before
    assert store.save(slm, directory) == ["vehicle"]  # the lock is free once its holder is gone (even killed)


def test_writer_removes_what_an_interrupted_write_left(saved, toy_stream, tokenizer, capsys):
    slm, directory = saved
    (directory / "tasks" / "001-vehicle.safetensors").write_bytes(b"orphan of a killed learn")
    (directory / "tasks" / ".001-vehicle.safetensors.abc.tmp").write_bytes(b"half")
    (directory / ".manifest.json.xyz.tmp").write_text("{")
    slm.learn(toy_stream[1], progress=False)
    assert store.save(slm, directory) == ["vehicle"]
    err = capsys.readouterr().err
    assert "removed 3 file(s) an interrupted write left" in err
    assert sorted(p.name for p in (directory / "tasks").iterdir()) == ["000-fruit.safetensors", "001-vehicle.safetensors"]
    assert _load(directory, tokenizer).task_names == ["fruit", "vehicle"]


def test_interrupted_first_write_does_not_block_the_directory_forever(make_slm, toy_stream, tmp_path, tokenizer):
    directory = tmp_path / "m"
    (directory / "tasks").mkdir(parents=True)
    (directory / "tasks" / "000-fruit.safetensors").write_bytes(b"orphan")  # killed before the first manifest
    slm = make_slm()
    slm.learn(toy_stream[0], progress=False)
    assert store.save(slm, directory) == ["fruit"]
    assert _load(directory, tokenizer).task_names == ["fruit"]


def test_a_failed_first_write_leaves_no_empty_directory(tmp_path):
    new, old = tmp_path / "new" / "m", tmp_path / "old"
    old.mkdir()
    for directory in (new, old):
        with pytest.raises(RuntimeError, match="learn failed"), store.DirectoryLock(directory):
            raise RuntimeError("learn failed")
    assert not new.exists()  # made by the failed write: gone with its lock file
    assert old.is_dir()  # there before: kept


@pytest.mark.parametrize("bad_file", ["../outside.safetensors", "/etc/passwd", "tasks/../../x.safetensors",
                                      "elsewhere/000-a.safetensors", "tasks/000-a.txt"])
def test_manifest_naming_a_file_outside_the_directory_refused(saved, bad_file):
    _, directory = saved
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["tasks"][0]["file"] = bad_file
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelDirError, match="is not a file under tasks/"):
        store.read_manifest(directory)


def test_symlinked_task_files_refused(saved, tmp_path):
    _, directory = saved
    real = tmp_path / "elsewhere"
    (directory / "tasks").rename(real)
    (directory / "tasks").symlink_to(real)
    with pytest.raises(ModelDirError, match="symbolic link"):
        store.read_manifest(directory)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(tasks=None), "'tasks' must be a list"),
    (lambda m: m.update(tasks={"a": 1}), "'tasks' must be a list"),
    (lambda m: m["config"]["bank"].update(rank="twelve"), "--rank must be a whole number"),
    (lambda m: m["config"]["bank"].update(rank=0), "--rank must be a whole number >= 1"),
    (lambda m: m["config"].update(bank=[1]), "invalid config"),
    (lambda m: m["config"]["bank"].update(colour=1), "unknown bank option"),
    (lambda m: m.pop("config"), "'config' must be an object"),
    (lambda m: m.pop("backbone"), "'backbone' must be an object"),
    (lambda m: m["tasks"][0].pop("sha256"), "task 0: 'sha256' missing"),
    (lambda m: m["tasks"].append(dict(m["tasks"][0])), "appears twice"),
])
def test_wrong_shaped_manifest_refused_with_one_message(saved, edit, message):
    _, directory = saved
    manifest = json.loads((directory / "manifest.json").read_text())
    edit(manifest)
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelDirError, match=message):
        store.read_manifest(directory)



@pytest.mark.parametrize("edit, message", [
    # a rank of 10**9 would make load allocate terabytes for the task's factors before comparing shapes
    (lambda m: m["config"]["bank"].update(rank=10**9), "values.*has shape"),
    (lambda m: m["config"]["bank"].update(entries_per_task=10**6), "do not fit this query encoder"),
    (lambda m: m["config"]["bank"].update(groups=5), "not divisible by groups=5"),
])
def test_manifest_options_that_cannot_build_the_model_refused_before_allocating(saved, tokenizer, edit, message):
    _, directory = saved
    manifest = json.loads((directory / "manifest.json").read_text())
    edit(manifest)
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelDirError, match=message):
        _load(directory, tokenizer)

# ---- property-based fuzzing of read_manifest and load ------------------------------------------------------
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.data.test_tasks import FUZZ, JSON  # noqa: E402


@FUZZ
@given(data=st.binary(max_size=300))
def test_fuzz_manifest_bytes_give_a_model_dir_error(tmp_path, data):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        from pathlib import Path

        (Path(d) / "manifest.json").write_bytes(data)
        with pytest.raises(ModelDirError):
            store.read_manifest(d)
        assert [p.name for p in Path(d).iterdir()] == ["manifest.json"]


@FUZZ
@given(path=st.sampled_from(["format", "kind", "config", "config.bank", "config.bank.rank", "config.train",
                             "config.model.encoder", "backbone", "backbone.fingerprint", "encoder", "tasks",
                             "tasks.0", "tasks.0.name", "tasks.0.file", "tasks.0.sha256", "tasks.0.label_names",
                             "tasks.0.entries", "targets", "versions"]), value=JSON)
def test_fuzz_manifest_fields_load_or_give_a_model_dir_error(saved, tokenizer, path, value):
    """Any JSON value in any field of a real manifest: ``load`` returns a model or raises ``ModelDirError``,
    and never writes (the directory is byte-identical after)."""
    _, directory = saved
    original = (directory / "manifest.json").read_text()
    manifest = json.loads(original)
    *parents, last = path.split(".")
    node = manifest
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[int(last) if isinstance(node, list) else last] = value
    (directory / "manifest.json").write_text(json.dumps(manifest))
    before = _snapshot(directory)
    try:
        _load(directory, tokenizer)
    except ModelDirError:
        pass
    finally:
        assert _snapshot(directory) == before
        (directory / "manifest.json").write_text(original)


# ---- a full disk: the write fails with one message and the directory stays as it was ----------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs (root only; skipped where the machine does not allow mounting)."""
    import os
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _fill(disk):
    """Fill the disk to the last byte; returns the ballast file (delete it to free the space)."""
    import os

    ballast = disk / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 16, 1 << 10, 1):  # big steps, then to the last byte
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(fd)
    return ballast


def test_disk_full_leaves_the_directory_as_it_was(small_disk, make_slm, toy_stream, tokenizer):
    directory = small_disk / "m"
    slm = make_slm()
    slm.learn(toy_stream[0], progress=False)
    store.save(slm, directory)
    slm.learn(toy_stream[1], progress=False)
    before = _snapshot(directory)
    ballast = _fill(small_disk)
    with pytest.raises(ModelDirError, match="no space left on device; the directory was left as it was"):
        store.save(slm, directory)
    assert _snapshot(directory) == before  # no temp file, no orphan: the space is given back at once
    ballast.unlink()
    assert store.save(slm, directory) == ["vehicle"]  # the retry succeeds
    assert _load(directory, tokenizer).task_names == ["fruit", "vehicle"]


def test_failing_manifest_write_leaves_the_directory_as_it_was(saved, toy_stream, tokenizer, monkeypatch):
    import errno

    slm, directory = saved
    slm.learn(toy_stream[1], progress=False)
    before = _snapshot(directory)
    real = store.atomic_write

    def full_at_manifest(path, write):
        if path.name == "manifest.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, write)

    monkeypatch.setattr(store, "atomic_write", full_at_manifest)
    with pytest.raises(ModelDirError, match="cannot write .*manifest.json: no space left on device"):
        store.save(slm, directory)
    monkeypatch.setattr(store, "atomic_write", real)
    assert _load(directory, tokenizer).task_names == ["fruit"]  # still the old manifest
    leftover = set(_snapshot(directory)) - set(before)
    assert leftover == {__import__("pathlib").Path("tasks/001-vehicle.safetensors")}  # unlisted: the next writer removes it
    assert store.save(slm, directory) == ["vehicle"]
    assert _load(directory, tokenizer).task_names == ["fruit", "vehicle"]


def test_directory_from_scalable_lm_0_1_loads_and_is_upgraded_at_the_next_save(saved, toy_stream, tokenizer, caplog):
    """A manifest of 0.1.0 has version-1 fingerprints (a hash of the whole config dict, which transformers 5 and a
    rebuilt model folder write differently). It is checked with the old hash; when that differs and the name is
    the same, it loads with a warning; the next save writes the current fingerprints. A different name is refused."""
    from scalable_lm.backbones import FINGERPRINT_VERSION, fingerprint

    slm, directory = saved
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    assert manifest["backbone"]["fingerprint_version"] == FINGERPRINT_VERSION
    for role, module in (("backbone", slm.backbone_module), ("encoder", slm.encoder.model)):
        del manifest[role]["fingerprint_version"]
        manifest[role]["fingerprint"] = fingerprint(module, version=1)  # what 0.1.0 wrote under this transformers
    path.write_text(json.dumps(manifest))
    texts = [x for x, _ in toy_stream[0].test]
    with caplog.at_level("WARNING", logger="scalable_lm"):
        again = _load(directory, tokenizer)
    assert not caplog.records  # the old hash still matches here: nothing to warn about
    assert [p.label for p in again.predict(texts)] == [p.label for p in slm.predict(texts)]

    manifest["backbone"]["fingerprint"] = "0123456789abcdef"  # written under transformers 4: cannot be re-checked
    path.write_text(json.dumps(manifest))
    with caplog.at_level("WARNING", logger="scalable_lm"):
        again = _load(directory, tokenizer)
    assert "written by an older scalable-lm" in caplog.text and "trusting the name 'minilm'" in caplog.text
    assert [p.label for p in again.predict(texts)] == [p.label for p in slm.predict(texts)]
    again.learn(toy_stream[1], progress=False)
    assert store.save(again, directory) == ["vehicle"]
    upgraded = json.loads(path.read_text())
    assert upgraded["backbone"] == {"name": "minilm", "fingerprint": fingerprint(slm.backbone_module),
                                    "fingerprint_version": FINGERPRINT_VERSION}

    upgraded["backbone"].pop("fingerprint_version")
    upgraded["backbone"].update(name="another-model", fingerprint="0123456789abcdef")
    path.write_text(json.dumps(upgraded))
    with pytest.raises(ModelDirError, match="trained with backbone 'another-model'"):
        _load(directory, tokenizer)


def test_fingerprint_reads_the_architecture_not_the_whole_config(tokenizer):
    """A token id in the config (a fixed eos) or a key a newer transformers adds does not change the fingerprint;
    the weights and the architecture do."""
    from scalable_lm.backbones import fingerprint

    model = tiny_bert(0)
    before = fingerprint(model)
    model.config.eos_token_id = 2
    model.config.some_new_transformers_key = {"a": 1}
    assert fingerprint(model) == before
    assert fingerprint(tiny_bert(1)) != before and fingerprint(tiny_bert(0, hidden=32)) != before


# ---- many tasks: an index, task files mapped and read only when used (issue 40) ----------------------------
def _synthetic_bank(slm, count, seed=0):
    """``count`` tasks added through the public interface: the learned task 0's state with other values and
    a query mean moved far from every toy domain (so that nothing routes to them by chance)."""
    template = slm.task_state(0)
    g = torch.Generator().manual_seed(seed)
    for i in range(count):
        state = {k: v.clone() for k, v in template.items()}
        for k, v in state.items():
            if k.startswith("values."):
                state[k] = torch.randn(v.shape, generator=g) * 0.05
        state["stats.mean"] = template["stats.mean"] + 50 * torch.randn(template["stats.mean"].shape, generator=g,
                                                                        dtype=torch.float64)
        slm.add_task_state(f"synthetic-{i}", slm.label_names[0], state)


def _poison(task_file):
    """Overwrite a safetensors file's data (not its header) with NaN bytes, keeping its size."""
    data = bytearray(task_file.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[start:] = b"\xff" * (len(data) - start)
    task_file.write_bytes(bytes(data))


def test_learning_one_more_task_reads_no_old_task(make_slm, toy_stream, tokenizer, tmp_path):
    from safetensors.torch import load_file

    slm = make_slm()
    slm.learn(toy_stream[0], progress=False)
    _synthetic_bank(slm, 40)
    store.save(slm, tmp_path / "m")
    loaded = _load(tmp_path / "m", tokenizer)
    reads, verify = [], loaded.before_read
    loaded.before_read = lambda name: reads.append(name) or verify(name)
    pooled = [t.clone() for t in loaded.bank.pooled()]
    for task_file in (tmp_path / "m" / "tasks").iterdir():  # whatever reads an old task now reads NaN
        _poison(task_file)
    report = loaded.learn(toy_stream[1], progress=False)
    assert store.save(loaded, tmp_path / "m") == ["vehicle"]
    assert reads == ["vehicle"]  # the new task only (in memory: nothing to verify)
    new = loaded.task_state("vehicle")
    assert all(torch.isfinite(v).all() for v in new.values()) and report["best_val_accuracy"] is not None
    index = load_file(str(tmp_path / "m" / store.INDEX))
    assert torch.equal(index["pooled.scatter"], pooled[0] + new["stats.scatter"])
    assert torch.equal(index["pooled.count"], pooled[1] + new["stats.count"])
    texts = [x for x, _ in toy_stream[1].test]
    again = _load(tmp_path / "m", tokenizer)  # loads (nothing old is read), answers the new task's inputs
    assert {p.task for p in again.predict(texts)} == {"vehicle"}
    with pytest.raises(ModelDirError, match="checksum"):  # and an old task, once used, is verified and refused
        again.predict([x for x, _ in toy_stream[0].test])


def test_a_directory_without_an_index_loads_answers_as_before_and_gains_one(make_slm, toy_stream, tokenizer, tmp_path):
    """A directory as scalable-lm/1 wrote it (same task files, no index) loads, answers exactly as the model
    that wrote it, and is migrated (format /2, index) by the next write, still answering the same."""
    slm = _learn_into(make_slm, toy_stream[:2], tmp_path / "m")
    texts = [x for t in toy_stream for x, _ in t.test]
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    manifest["format"] = "scalable-lm/1"
    del manifest["index"]
    (tmp_path / "m" / store.INDEX).unlink()
    (tmp_path / "m" / "manifest.json").write_text(json.dumps(manifest))
    old = _load(tmp_path / "m", tokenizer)
    assert _predictions(old, texts) == _predictions(slm, texts)
    old.learn(toy_stream[2], progress=False)
    store.save(old, tmp_path / "m")
    assert store.read_manifest(tmp_path / "m")["format"] == store.FORMAT and (tmp_path / "m" / store.INDEX).is_file()
    assert _predictions(_load(tmp_path / "m", tokenizer), texts) == _predictions(old, texts)
    slm.learn(toy_stream[2], progress=False)
    _assert_index_is_the_models(tmp_path / "m", slm)


def test_an_index_that_does_not_match_the_manifest_is_not_trusted(make_slm, toy_stream, tokenizer, tmp_path, caplog):
    slm = _learn_into(make_slm, toy_stream[:2], tmp_path / "m")
    texts = [x for x, _ in toy_stream[0].test]
    index = tmp_path / "m" / store.INDEX
    index.write_bytes(index.read_bytes()[:-1] + b"\0")  # as if a write was cut between index and manifest
    with caplog.at_level(logging.WARNING, logger="scalable_lm"):
        again = _load(tmp_path / "m", tokenizer)
    assert "does not match the manifest" in caplog.text
    assert _predictions(again, texts) == _predictions(slm, texts)


def test_a_task_answers_with_the_bytes_that_were_verified(saved, tokenizer):
    """Once a task is used, the model holds the tensors read from its verified file, not the mapping: an
    in-place edit of the file afterwards (which no writer of ours makes) changes nothing it answers."""
    _, directory = saved
    slm = _load(directory, tokenizer)
    texts = ["apple sweet banana", "cherry sour mango"]
    before = _predictions(slm, texts)
    _poison(next((directory / "tasks").iterdir()))
    assert _predictions(slm, texts) == before


def test_a_shared_prefix_directory_saves_loads_removes_and_merges_exactly(make_shared_slm, toy_stream, tokenizer,
                                                                          tmp_path):
    """``--encoder shared-lN``: no separate encoder is saved or needed; load, remove and merge give what
    learning in sequence gives, bit for bit, as with a separate encoder."""
    from tests.conftest import shared_config, tiny_bert

    def learn_into(tasks, directory, seed=0):
        return _learn_into(make_shared_slm, tasks, directory, seed, config=shared_config())

    def load(directory):
        return store.load(directory, backbone=(tiny_bert(0, layers=3), tokenizer))

    fruit, vehicle, weather = toy_stream
    texts = [x for t in toy_stream for x, _ in t.test]
    full = learn_into(toy_stream, tmp_path / "full")
    manifest = store.read_manifest(tmp_path / "full")
    assert manifest["encoder"]["name"] == "shared-l1" and manifest["config"]["model"]["encoder"] == "shared-l1"
    loaded = load(tmp_path / "full")
    assert loaded.encoder.model is loaded.classifier.backbone and sorted(loaded.layers) == sorted(full.layers)
    assert _predictions(loaded, texts) == _predictions(full, texts)
    # remove: the directory that never learned 'vehicle' ('weather' keeps the seed it had as third task)
    never = make_shared_slm()
    never.learn(fruit, progress=False)
    never.config.train.seed = 1
    never.learn(weather, progress=False)
    assert store.remove(tmp_path / "full", "vehicle")["exact"]
    assert _predictions(load(tmp_path / "full"), texts) == _predictions(never, texts)
    _assert_index_is_the_models(tmp_path / "full", never)
    # merge: two directories = one that learned their tasks in sequence
    learn_into(toy_stream[:2], tmp_path / "a")
    learn_into(toy_stream[2:], tmp_path / "b", seed=2)
    assert store.merge([tmp_path / "a", tmp_path / "b"], tmp_path / "ab").names == ["fruit", "vehicle", "weather"]
    assert _predictions(load(tmp_path / "ab"), texts) == _predictions(full, texts)
    # the query is part of the model: a directory whose queries come from another source does not merge in
    learn_into(toy_stream[:1], tmp_path / "c")
    other = json.loads((tmp_path / "c" / store.MANIFEST).read_text())
    other["config"]["model"]["encoder"] = other["encoder"]["name"] = "shared-l2"
    (tmp_path / "c" / store.MANIFEST).write_text(json.dumps(other))
    with pytest.raises(ModelDirError, match="encoder"):
        store.merge([tmp_path / "b", tmp_path / "c"], tmp_path / "bc")


def test_no_module_of_methods_imports_the_store():
    """The layers are one-way: methods/ never imports scalable_lm.store (which adds save_pretrained and
    from_pretrained to the model classes when it is imported)."""
    import ast
    from pathlib import Path

    import scalable_lm

    for path in (Path(scalable_lm.__file__).parent / "methods").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any(n == "scalable_lm.store" or n.endswith(".store") for n in names), path.name
