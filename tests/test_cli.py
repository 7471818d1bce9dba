"""The ``slm`` command end to end on tiny models saved to folders: learn, predict, eval, info, and the
bad inputs of the foundation issue (one-line error, exit code != 0, model directory unchanged)."""

import json

import pytest

from scalable_lm import cli
from tests.conftest import tiny_bert, tiny_query_model, toy_task

FAST = ["--rank", "4", "--alpha", "8", "--epochs", "3", "--batch-size", "8", "--max-length", "24",
        "--lr", "1e-2", "--key-epochs", "10"]


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("models")
    for name, model in (("backbone", tiny_bert(0)), ("encoder", tiny_query_model()), ("other", tiny_bert(7))):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root


@pytest.fixture
def data(tmp_path):
    out = {}
    for i, name in enumerate(["fruit", "vehicle"]):
        task = toy_task(name, seed=i)
        for split, rows in (("train", task.train), ("test", task.test)):
            path = tmp_path / f"{name}-{split}.jsonl"
            path.write_text("".join(json.dumps({"text": x, "label": task.label_names[y]}) + "\n" for x, y in rows))
            out[name, split] = path
    return out


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLM_CACHE_DIR", str(tmp_path / "cache"))


def run(capsys, *argv):
    code = cli.main(["-q", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(directory):
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def learn(capsys, model_dir, models, data, name, *extra):
    return run(capsys, "learn", "--model", model_dir, "--task", name, "--data", data[name, "train"],
               "--backbone", models / "backbone", "--encoder", models / "encoder", *FAST, *extra)


def test_learn_predict_eval_info(tmp_path, models, data, capsys):
    model_dir = tmp_path / "m"
    code, out, err = learn(capsys, model_dir, models, data, "fruit", "--test", data["fruit", "test"])
    assert code == 0, err
    assert "learned 'fruit'" in out and "test accuracy on 'fruit'" in out
    code, out, err = run(capsys, "learn", "--model", model_dir, "--task", "vehicle", "--data", data["vehicle", "train"])
    assert code == 0, err
    code, out, _ = run(capsys, "predict", "--model", model_dir, "--json", "banana sweet apple", "truck slow car")
    preds = [json.loads(line) for line in out.splitlines()]
    assert [p["task"] for p in preds] == ["fruit", "vehicle"] and all(len(p["entries"]) == 4 for p in preds)
    report = tmp_path / "eval.json"
    code, out, _ = run(capsys, "eval", "--model", model_dir, "--json", report,
                       "--data", f"fruit={data['fruit', 'test']}", f"vehicle={data['vehicle', 'test']}")
    scores = json.loads(report.read_text())["scores"]
    assert code == 0 and set(scores) == {"fruit", "vehicle"} and "without task-ID" in out
    assert all(0.5 <= s["accuracy"] <= 1.0 and s["retrieval"] is not None for s in scores.values())
    code, out, _ = run(capsys, "info", model_dir)
    assert code == 0 and "2 tasks, 8 entries" in out and "fruit" in out
    assert (tmp_path / "cache").is_dir()  # queries were cached for the next command


def _refused(capsys, before, model_dir, code, err, message):
    assert code != 0
    assert err.count("\n") == 1 and err.startswith("slm: error:") and message in err, err
    assert snapshot(model_dir) == before


def test_bad_inputs_refused_and_directory_untouched(tmp_path, models, data, capsys):
    model_dir = tmp_path / "m"
    assert learn(capsys, model_dir, models, data, "fruit")[0] == 0
    before = snapshot(model_dir)
    bad = tmp_path / "bad.jsonl"

    bad.write_text('{"text": "", "label": "x"}\n{"text": "b", "label": "y"}\n')
    code, _, err = run(capsys, "learn", "--model", model_dir, "--task", "new", "--data", bad)
    _refused(capsys, before, model_dir, code, err, "empty or missing text")

    bad.write_text('{"text": "a"}\n')
    code, _, err = run(capsys, "learn", "--model", model_dir, "--task", "new", "--data", bad)
    _refused(capsys, before, model_dir, code, err, "column 'label' missing")

    code, _, err = run(capsys, "learn", "--model", model_dir, "--task", "fruit", "--data", data["vehicle", "train"])
    _refused(capsys, before, model_dir, code, err, "already in")

    code, _, err = run(capsys, "learn", "--model", model_dir, "--task", "v", "--data", data["vehicle", "train"],
                       "--backbone", models / "other")
    _refused(capsys, before, model_dir, code, err, "differs from the value stored")

    bad.write_text('{"text": "apple", "label": "purple"}\n')
    code, _, err = run(capsys, "eval", "--model", model_dir, "--data", f"fruit={bad}")
    _refused(capsys, before, model_dir, code, err, "unknown label 'purple'")

    code, _, err = run(capsys, "predict", "--model", model_dir, "  ")
    _refused(capsys, before, model_dir, code, err, "empty text")


def test_corrupt_or_foreign_directory_refused(tmp_path, models, data, capsys):
    model_dir = tmp_path / "m"
    assert learn(capsys, model_dir, models, data, "fruit")[0] == 0
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["config"]["model"]["backbone"] = str(models / "other")  # as if built on another backbone
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    before = snapshot(model_dir)
    code, _, err = run(capsys, "predict", "--model", model_dir, "apple")
    _refused(capsys, before, model_dir, code, err, "was trained with backbone")

    manifest["config"]["model"]["backbone"] = str(models / "backbone")
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    task_file = next((model_dir / "tasks").iterdir())
    task_file.write_bytes(task_file.read_bytes()[:100])
    before = snapshot(model_dir)
    code, _, err = run(capsys, "learn", "--model", model_dir, "--task", "vehicle", "--data", data["vehicle", "train"])
    _refused(capsys, before, model_dir, code, err, "corrupted")


def test_interrupted_learn_leaves_directory_as_it_was(tmp_path, models, data, capsys, monkeypatch):
    model_dir = tmp_path / "m"
    assert learn(capsys, model_dir, models, data, "fruit")[0] == 0
    before = snapshot(model_dir)
    from scalable_lm.methods.slm import SLM

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(SLM, "_fine_tune", interrupted)
    code, _, err = run(capsys, "learn", "--model", model_dir, "--task", "vehicle", "--data", data["vehicle", "train"])
    assert code == cli.EXIT_INTERRUPTED and "left as it was" in err
    assert snapshot(model_dir) == before


def test_help_on_every_command(capsys):
    for command in ["learn", "predict", "eval", "info", "demo"]:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: slm " + command in capsys.readouterr().out


def test_version_and_predict_from_standard_input(tmp_path, models, data, capsys, monkeypatch):
    import io

    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("scalable-lm ")
    model_dir = tmp_path / "m"
    assert learn(capsys, model_dir, models, data, "fruit")[0] == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("banana sweet apple\n\nmango sour cherry\n"))
    code, out, err = run(capsys, "predict", "--model", model_dir, "--json")
    assert code == 0, err
    assert [json.loads(line)["text"] for line in out.splitlines()] == ["banana sweet apple", "mango sour cherry"]


def test_global_flags_after_the_command_and_repeated_data_flags(tmp_path, models, data, capsys):
    model_dir = tmp_path / "m"
    code, _, err = run(capsys, "learn", "--model", model_dir, "--task", "fruit", "--data", data["fruit", "train"],
                       "--backbone", models / "backbone", "--encoder", models / "encoder", *FAST, "-q", "--no-cache")
    assert code == 0, err
    assert learn(capsys, model_dir, models, data, "vehicle")[0] == 0
    report = tmp_path / "eval.json"
    code, _, err = run(capsys, "eval", "--model", model_dir, "--json", report, "--data", f"fruit={data['fruit', 'test']}",
                       "--data", f"vehicle={data['vehicle', 'test']}", "-q")
    assert code == 0, err
    assert set(json.loads(report.read_text())["scores"]) == {"fruit", "vehicle"}  # the repeat adds, not replaces
    args = cli.build_parser().parse_args(["learn", "--model", "m", "--task", "t", "--data", "d", "--targets", "a",
                                          "--targets", "b"])
    assert cli._config_overrides(args)["bank"]["targets"] == ["a", "b"] and args.quiet is False
    assert cli.build_parser().parse_args(["info", "m", "-q"]).quiet is True


def test_manifest_records_how_each_task_was_learned(tmp_path, models, data, capsys):
    from scalable_lm.store import sha256

    model_dir = tmp_path / "m"
    assert learn(capsys, model_dir, models, data, "fruit")[0] == 0
    entry = json.loads((model_dir / "manifest.json").read_text())["tasks"][0]
    assert entry["train_rows"] + entry["val_rows"] == 40 and 0 <= entry["val_accuracy"] <= 1
    assert entry["data_sha256"] == sha256(data["fruit", "train"]) and entry["learned_at"].startswith("20")
    code, out, _ = run(capsys, "info", model_dir)
    assert code == 0 and "36 train / 4 validation rows; validation accuracy" in out
