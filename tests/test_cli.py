"""The ``slm`` command end to end on tiny models saved to folders: learn, predict, eval, info, and the
bad inputs of the foundation issue (one-line error, exit code != 0, model directory unchanged)."""

import json
import re
import subprocess
import sys

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
    # --abstain: "(unknown)" far from every task, the rest answered as before; eval counts abstentions
    code, out, _ = run(capsys, "predict", "--model", model_dir, "--abstain", "banana sweet apple", "rain cold snow")
    near, far = out.splitlines()
    assert code == 0 and near.startswith("sweet\t[fruit, p=") and far.startswith("(unknown)\t[far from every task")
    code, out, _ = run(capsys, "eval", "--model", model_dir, "--abstain-z", "2.5", "--json", report,
                       "--data", f"fruit={data['fruit', 'test']}")
    result = json.loads(report.read_text())
    assert code == 0 and result["abstain"] == 2.5 and 0 <= result["scores"]["fruit"]["abstained"] <= 0.25
    assert "abstaining at z=2.5" in out
    code, out, err = run(capsys, "predict", "--model", model_dir, "--max-new-tokens", "4", "x")
    assert code == 2 and "--max-new-tokens applies to generative models" in err
    for flags, message in ((["--abstain-z", "-1"], "--abstain-z must be a finite number >= 0"),
                           (["--abstain-z", "nan"], "--abstain-z must be a finite number >= 0")):
        code, _, err = run(capsys, "predict", "--model", model_dir, *flags, "x")
        assert code == 2 and message in err


def test_an_overlapping_task_is_reported_shown_and_refused_on_request(tmp_path, models, data, capsys):
    model_dir = tmp_path / "m"
    for name in ("fruit", "vehicle"):
        code, _, err = learn(capsys, model_dir, models, data, name)
        assert code == 0 and "overlap" not in err, err  # two tasks the router tells apart: no warning
    before = snapshot(model_dir)
    # the fruit rows again under another name: the router cannot tell the two tasks' inputs apart
    again = ["learn", "--model", model_dir, "--task", "fruit-again", "--data", data["fruit", "train"]]
    code, out, err = run(capsys, *again, "--on-overlap", "refuse")
    assert code == 3 and snapshot(model_dir) == before and out == ""
    assert err.startswith("slm: refused: overlap above 2%: 'fruit-again' and 'fruit' (") and err.count("\n") == 1
    assert "not saved" in err and "is unchanged" in err
    with pytest.raises(SystemExit) as bad:
        run(capsys, *again, "--overlap-threshold", "150%")
    err = capsys.readouterr().err
    assert bad.value.code == 2 and "a share of inputs is between 0 and 1" in err and snapshot(model_dir) == before
    code, out, err = run(capsys, *again, "--overlap-threshold", "0.05")
    warning = [line for line in err.splitlines() if "overlap" in line]
    assert code == 0 and len(warning) == 1 and warning[0].startswith("slm: warning: overlap above 5%: 'fruit-again' "
                                                                      "and 'fruit' (")
    assert "learn them as one task" in warning[0] and "remove one" in warning[0] and "keep both" in warning[0]
    assert "vehicle" not in warning[0] and "learned 'fruit-again'" in out

    code, out, _ = run(capsys, "info", "--json", model_dir)
    info = json.loads(out)
    routing = {t["name"]: t["routing"] for t in info["tasks"]}
    assert code == 0 and list(routing) == ["fruit", "vehicle", "fruit-again"]
    assert routing["fruit"] == {"self": 1.0, "routes_to": {}, "captures": {}, "rows": 0}
    mine = routing["fruit-again"]
    assert set(mine) == {"self", "routes_to", "captures", "rows"} and mine["rows"] > 0
    assert 0.05 < mine["routes_to"]["fruit"] < 0.95 and 0.05 < mine["self"] < 0.95 and "vehicle" not in mine["routes_to"]
    assert 0.05 < mine["captures"]["fruit"] < 0.95
    assert all(0 <= v <= 1 for r in routing.values() for k in ("routes_to", "captures") for v in r[k].values())
    assert all(t["file_status"] == "ok" and t["bytes"] > 0 for t in info["tasks"]) and info["kind"] == "classifier"
    code, out, _ = run(capsys, "info", model_dir)
    row = next(line for line in out.splitlines() if line.strip().startswith("fruit-again "))
    assert code == 0 and f"fruit {100 * mine['routes_to']['fruit']:.1f}%" in row

    import scalable_lm

    slm = scalable_lm.load(model_dir)  # the Python API reads the same records
    assert slm.routing == {n: r for n, r in routing.items()}
    assert [(p["task"], p["other"]) for p in slm.overlaps()] == [("fruit-again", "fruit")]
    code, _, _ = run(capsys, "remove", "--model", model_dir, "--task", "fruit")
    info = json.loads(run(capsys, "info", "--json", model_dir)[1])
    assert code == 0 and {t["name"]: t["routing"]["routes_to"] for t in info["tasks"]}["fruit-again"] == {}
    # a merge renaming a task renames it in the records of its own directory's tasks too
    other = tmp_path / "m2"
    assert learn(capsys, other, models, data, "vehicle")[0] == 0
    code, _, err = run(capsys, "learn", "--model", other, "--task", "vehicle-again", "--data", data["vehicle", "train"])
    assert code == 0 and "'vehicle-again' and 'vehicle' (" in err
    code, _, err = run(capsys, "merge", model_dir, other, "--out", tmp_path / "merged", "--rename", "vehicle:vehicle-2")
    merged = {t["name"]: t["routing"] for t in json.loads(run(capsys, "info", "--json", tmp_path / "merged")[1])["tasks"]}
    assert code == 0 and list(merged) == ["vehicle", "fruit-again", "vehicle-2", "vehicle-again"], err
    assert merged["fruit-again"] == routing["fruit-again"] | {"routes_to": {}, "captures": {}}
    # the other directory's tasks get estimated shares with this one's: both vehicle copies meet 'vehicle'
    assert set(merged["vehicle-again"]["routes_to"]) == {"vehicle-2", "vehicle"}
    assert set(merged["vehicle-2"]["routes_to"]) == {"vehicle"} and merged["vehicle-2"]["self"] == 1.0
    assert "overlap above 2%: 'vehicle-2' and 'vehicle' (an estimated" in err
    # one directory merged with itself is two sources: the second copy is warned about too
    code, _, err = run(capsys, "merge", other, other, "--out", tmp_path / "twice", "--rename", "vehicle:vehicle-b",
                       "--rename", "vehicle-again:vehicle-again-b")
    assert code == 0 and "warning: overlap above 2%: 'vehicle-b' and 'vehicle' (an estimated" in err, err


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
    for command in ["learn", "predict", "eval", "info", "serve", "remove", "merge", "export", "import", "demo"]:
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
    # a boolean train option is a --flag / --no-flag pair, recorded with the task
    code, _, err = run(capsys, "learn", "--model", model_dir, "--task", "vehicle", "--data", data["vehicle", "train"],
                       "--calibrate")
    entry = json.loads((model_dir / "manifest.json").read_text())["tasks"][1]
    assert code == 0, err
    assert entry["train"]["train"]["calibrate"] is True and entry["temperature"] == 1.0  # 4 validation rows: too few


# ---- sharing: export, remove, import, merge; per-task options; the writers' lock -----------------------
def _predict_json(capsys, model_dir, texts, *extra):
    code, out, err = run(capsys, "predict", "--model", model_dir, "--json", *extra, *texts)
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


def test_export_remove_import_merge_from_the_command_line(tmp_path, models, data, capsys):
    m = tmp_path / "m"
    assert learn(capsys, m, models, data, "fruit")[0] == 0
    assert learn(capsys, m, models, data, "vehicle")[0] == 0
    texts = [json.loads(line)["text"] for line in data["vehicle", "test"].read_text().splitlines()]
    before = _predict_json(capsys, m, texts, "--task", "vehicle")

    code, out, err = run(capsys, "export", "--model", m, "--task", "vehicle", "--out", tmp_path / "adapter")
    assert code == 0, err
    assert "LoRA rank 16" in out and (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    code, out, err = run(capsys, "remove", "--model", m, "--task", "vehicle")
    assert code == 0 and "removed 'vehicle'" in out, err
    assert [p["task"] for p in _predict_json(capsys, m, texts)] == ["fruit"] * len(texts)
    code, out, err = run(capsys, "import", "--model", m, "--task", "vehicle", "--adapter", tmp_path / "adapter",
                         "--data", data["vehicle", "train"])
    assert code == 0 and "imported" in out, err
    after = _predict_json(capsys, m, texts, "--task", "vehicle")
    assert [p["label"] for p in after] == [p["label"] for p in before]  # the task is back as it was

    m2 = tmp_path / "m2"
    assert learn(capsys, m2, models, data, "vehicle")[0] == 0
    code, _, err = run(capsys, "merge", m, m2, "--out", tmp_path / "both")
    assert code == cli.EXIT_ERROR and "--rename vehicle:NEW_NAME" in err and not (tmp_path / "both").exists()
    code, out, err = run(capsys, "merge", m, m2, "--out", tmp_path / "both", "--rename", "vehicle:vehicle-2")
    assert code == 0 and "3 tasks (fruit, vehicle, vehicle-2)" in out, err
    # the two copies of vehicle were never in one directory: the merge estimates their overlap and says so
    assert re.search(r"warning: overlap above 2%: 'vehicle-2' and 'vehicle' \(an estimated (\d+\.\d)% of its inputs "
                     r"route there, it takes an estimated \d+\.\d% of that task's\)", err), err
    assert float(re.search(r"'vehicle' \(an estimated (\d+\.\d)%", err).group(1)) > 20
    record = next(t for t in json.loads(run(capsys, "info", tmp_path / "both", "--json")[1])["tasks"]
                  if t["name"] == "vehicle-2")["routing"]
    assert record["routes_to"]["vehicle"] > 0.2 and "fruit" not in record["routes_to"]
    code, out, _ = run(capsys, "info", tmp_path / "both")
    assert code == 0 and "3 tasks" in out

    before = snapshot(m)
    for argv, message in [
        (["remove", "--model", m, "--task", "nope"], "has no task 'nope'"),
        (["export", "--model", m, "--task", "fruit", "--out", tmp_path / "adapter"], "not an empty directory"),
        (["import", "--model", m, "--task", "x", "--adapter", tmp_path, "--data", data["vehicle", "train"]],
         "not a PEFT adapter directory"),
        (["import", "--model", m, "--task", "fruit", "--adapter", tmp_path / "adapter", "--data",
          data["vehicle", "train"]], "already in"),
        (["merge", m, "--out", tmp_path / "x"], "at least two"),
        (["merge", m, m2, "--out", tmp_path / "y", "--rename", "vehicle"], "expects OLD:NEW"),
    ]:
        code, _, err = run(capsys, *argv)
        _refused(capsys, before, m, code, err, message)


def test_key_and_train_options_per_task_model_and_bank_options_fixed(tmp_path, models, data, capsys):
    m = tmp_path / "m"
    assert learn(capsys, m, models, data, "fruit")[0] == 0
    before = snapshot(m)
    code, _, err = learn(capsys, m, models, data, "vehicle", "--rank", "8")
    _refused(capsys, before, m, code, err, "--rank differs from the value stored")
    assert learn(capsys, m, models, data, "vehicle", "--epochs", "1", "--seed", "5")[0] == 0
    tasks = json.loads((m / "manifest.json").read_text())["tasks"]
    assert [t["train"]["train"]["epochs"] for t in tasks] == [3, 1]
    assert [t["seed"] for t in tasks] == [0, 5 + 1]


@pytest.mark.parametrize("flags, message", [
    (["--rank", "0"], "--rank must be a whole number >= 1"),
    (["--groups", "0"], "--groups must be a whole number >= 1"),
    (["--entries-per-task", "0"], "--entries-per-task must be a whole number >= 1"),
    (["--val-fraction", "1.0"], "--val-fraction must be at least 0 and below 1"),
    (["--val-fraction", "-0.5"], "--val-fraction must be at least 0 and below 1"),
    (["--key-epochs", "0"], "--key-epochs must be a whole number >= 1"),
    (["--alpha", "inf"], "--alpha must be a finite number > 0"),
    (["--epochs", "0"], "--epochs must be a whole number >= 1"),
    (["--max-length", "0"], "--max-length must be a whole number >= 1"),
    (["--mask-prob", "1.0"], "--mask-prob must be at least 0 and below 1"),
    (["--k-prep", "0"], "--k-prep must be a whole number >= 1"),
    (["--top-k", "0"], "--top-k must be a whole number >= 1"),
    (["--router", "nearest"], "--router must be 'gaussian' or 'dtkr'"),
    (["--max-train", "0"], "--max-train must be at least 1"),
])
def test_option_values_refused_before_any_training(tmp_path, models, data, capsys, flags, message):
    code, _, err = learn(capsys, tmp_path / "m", models, data, "fruit", *flags)
    assert code == cli.EXIT_ERROR and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "m").exists() or not any(p.name == "manifest.json" for p in (tmp_path / "m").iterdir())


@pytest.mark.parametrize("name, message", [("x" * 300, "at most 100"), ("", "must not be empty"),
                                           ("   ", "must not be empty"), ("tab\there", "control characters")])
def test_bad_task_names_refused_at_once(tmp_path, models, data, capsys, name, message):
    code, _, err = run(capsys, "learn", "--model", tmp_path / "m", "--task", name, "--data", data["fruit", "train"],
                       "--backbone", models / "backbone", "--encoder", models / "encoder", *FAST)
    assert code == cli.EXIT_ERROR and message in err, err


def test_task_names_with_slashes_dots_and_spaces_are_kept_as_given(tmp_path, models, data, capsys):
    m = tmp_path / "m"
    for name in ("a/b", "..", "with space"):
        code, _, err = run(capsys, "learn", "--model", m, "--task", name, "--data", data["fruit", "train"],
                           "--backbone", models / "backbone", "--encoder", models / "encoder", *FAST, "--epochs", "1")
        assert code == 0, err
    files = sorted(p.name for p in (m / "tasks").iterdir())
    assert files == ["000-a_b.safetensors", "001-...safetensors", "002-with_space.safetensors"]
    code, out, _ = run(capsys, "info", m)
    assert "- a/b:" in out and "- ..:" in out and "- with space:" in out


def test_second_writer_refused_within_a_second(tmp_path, models, data, capsys):
    import time

    from tests.test_store import _hold_lock_in_another_process

    m = tmp_path / "m"
    assert learn(capsys, m, models, data, "fruit")[0] == 0
    before = snapshot(m)
    holder = _hold_lock_in_another_process(m)
    try:
        start = time.perf_counter()
        code, out, err = learn(capsys, m, models, data, "vehicle")
        assert code == cli.EXIT_ERROR and "being written by another process (pid" in err and "learned" not in out
        assert time.perf_counter() - start < 1.0
        start = time.perf_counter()
        code, _, err = learn(capsys, m, models, data, "vehicle", "--wait", "0.5")
        assert code == cli.EXIT_ERROR and time.perf_counter() - start >= 0.5
        # as its own process (what a user runs), the refused writer never loads torch: it answers at start-up
        script = ("import sys; from scalable_lm import cli; code = cli.main(sys.argv[1:]); "
                  "print('torch' in sys.modules); sys.exit(code)")
        argv = ["learn", "--model", m, "--task", "vehicle", "--data", data["vehicle", "train"],
                "--backbone", models / "backbone", "--encoder", models / "encoder", *FAST]
        proc = subprocess.run([sys.executable, "-c", script, *map(str, argv)], capture_output=True, text=True)
        assert proc.returncode == cli.EXIT_ERROR and "being written" in proc.stderr, proc.stderr
        assert proc.stdout.strip() == "False"
    finally:
        holder.kill()
        holder.wait()
    assert {k: v for k, v in snapshot(m).items() if not str(k).startswith(".lock")} == \
        {k: v for k, v in before.items() if not str(k).startswith(".lock")}
    assert learn(capsys, m, models, data, "vehicle", "--wait", "5")[0] == 0


@pytest.mark.integration
@pytest.mark.parametrize("sig,code,said", [("SIGTERM", cli.EXIT_TERMINATED, "terminated (SIGTERM)"),
                                           ("SIGINT", cli.EXIT_INTERRUPTED, "interrupted")])
def test_a_signal_during_learn_ends_cleanly(tmp_path, models, data, sig, code, said):
    import os
    import signal
    import subprocess
    import sys
    import time

    m = tmp_path / "m"
    argv = [sys.executable, "-m", "scalable_lm.cli", "-q", "learn", "--model", str(m), "--task", "fruit", "--data",
            str(data["fruit", "train"]), "--backbone", str(models / "backbone"), "--encoder", str(models / "encoder"),
            *FAST[:-2], "--key-epochs", "100000"]  # the preparation stage runs until the signal comes
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env={**os.environ, "SLM_CACHE_DIR": str(tmp_path)})
    deadline = time.monotonic() + 60
    while not (m / ".lock.owner").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code and said in err and "Traceback" not in err, err
    assert not (m / "manifest.json").exists() and not (m / "tasks").exists()


@pytest.fixture(scope="module")
def gen_models(tmp_path_factory, tokenizer):
    """A tiny LLaMA and the query encoder saved to folders; instruction train/test files for two tasks."""
    import copy

    from tests.methods.test_generative import instruction_task, tiny_llama

    root = tmp_path_factory.mktemp("gen")
    tok = copy.deepcopy(tokenizer)
    tok.eos_token = "[SEP]"
    tiny_llama().save_pretrained(root / "llama")
    tok.save_pretrained(root / "llama")
    tiny_query_model().save_pretrained(root / "encoder")
    tokenizer.save_pretrained(root / "encoder")
    for i, (name, answer) in enumerate({"fruit": "sweet", "vehicle": "fast"}.items()):
        task = instruction_task(name, answer, seed=i)
        for split, rows in (("train", task.train), ("test", task.test)):
            lines = [json.dumps({"instruction": p.split("\n\n")[0], "input": p.split("\n\n")[1], "output": a})
                     for p, a in rows]
            (root / f"{name}-{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_eval_scores_a_generative_model(tmp_path, gen_models, capsys):
    m = tmp_path / "g"
    for name in ("fruit", "vehicle"):
        test = ["--test", gen_models / f"{name}-test.jsonl"] if name == "fruit" else []
        code, out, err = run(capsys, "learn", "--model", m, "--task", name, "--data", gen_models / f"{name}-train.jsonl",
                             "--backbone", gen_models / "llama", "--encoder", gen_models / "encoder", "--targets",
                             "o_proj", "--rank", "4", "--alpha", "8", "--epochs", "8", "--lr", "2e-2", "--batch-size",
                             "8", "--max-length", "24", "--key-epochs", "10", *test)
        assert code == 0, err
        if test:  # scored as `slm eval` would: one-word answers by label match (not first-word match)
            assert "test label on 'fruit' (no task-ID):" in out
    data = ["--data", f"fruit={gen_models / 'fruit-test.jsonl'}", "--data", f"vehicle={gen_models / 'vehicle-test.jsonl'}"]
    code, out, err = run(capsys, "eval", "--model", m, *data, "--json", tmp_path / "e.json")
    assert code == 0, err
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["kind"] == "generative" and set(report["scores"]) == {"fruit", "vehicle"}
    for s in report["scores"].values():
        assert s["metric"] == "label" and s["rows"] == 8 and s["retrieval"] == 1.0 and s["fallback"] == 0.0
        assert s["score"] >= 0.75  # the tiny model learned its one-word answers
    assert "retrieval" in out and "fallback" in out
    code, _, err = run(capsys, "eval", "--model", m, *data, "--abstain")
    assert code == 2 and "--abstain applies to classifiers" in err
    code, out, _ = run(capsys, "eval", "--model", m, *data, "--json")  # no file: the JSON on standard output
    assert code == 0 and json.loads(out)["scores"].keys() == {"fruit", "vehicle"}
    # --max-new-tokens bounds an answer: one token is the start of the longer answer
    row = json.loads((gen_models / "fruit-test.jsonl").read_text().splitlines()[0])
    prompt = f"{row['instruction']}\n\n{row['input']}"
    longer, short = (_predict_json(capsys, m, [prompt], "--max-new-tokens", n)[0]["label"] for n in ("8", "1"))
    assert short and longer.startswith(short) and len(short) <= len(longer)
    code, out, err = run(capsys, "eval", "--model", m, *data, "--metric", "rouge-l", "--metric", "fruit=exact",
                         "--task-id", "--json", tmp_path / "r.json")
    assert code == 0, err
    scores = json.loads((tmp_path / "r.json").read_text())["scores"]
    assert scores["fruit"]["metric"] == "exact" and scores["vehicle"]["metric"] == "rouge-l"
    assert 0 <= scores["vehicle"]["bertscore_f1"] <= 1 and "retrieval" not in scores["vehicle"]
    code, _, err = run(capsys, "eval", "--model", m, *data, "--metric", "bleu")
    assert code == cli.EXIT_ERROR and "unknown metric 'bleu'" in err
    code, _, err = run(capsys, "eval", "--model", m, "--data", f"weather={gen_models / 'fruit-test.jsonl'}")
    assert code == cli.EXIT_ERROR and "unknown task 'weather'" in err


# ---- the bad-input list (issue 15): exit 2, one line naming the problem, the directory byte-identical ----
_BAD_DATA = {
    "empty.jsonl": (b"", "no rows"),
    "blank.jsonl": (b"\n   \n\n", "no rows"),
    "no-text.jsonl": (b'{"text": "b", "label": "b"}\n{"label": "a"}\n', "row 2: empty or missing text"),
    "no-text-column.jsonl": (b'{"label": "a"}\n{"text": "b", "label": "b"}\n', "column 'text' missing"),
    "blank-text.jsonl": (b'{"text": "   ", "label": "a"}\n{"text": "b", "label": "b"}\n', "row 1: empty or missing text"),
    "latin1.jsonl": ('{"text": "caf\u00e9", "label": "a"}\n'.encode("latin-1"), "latin1.jsonl:1: not UTF-8 text"),
    "garbage.jsonl": (bytes(range(256)) * 4, "not UTF-8 text"),
    "nul.csv": (b"text,label\nab\x00c,x\n", "contains NUL bytes"),
    "broken.jsonl": (b'{"text": "a", "label": "x"}\n{"text": "b", "label": \n{"text": "c", "label": "y"}\n',
                     "broken.jsonl:2: not valid JSON"),
    "float.jsonl": (b'{"text": "a", "label": 0.5}\n{"text": "b", "label": 1}\n', "label must be a name or a whole number, got 0.5"),
    "list.jsonl": (b'{"text": "a", "label": ["x"]}\n{"text": "b", "label": "y"}\n', "got [\"x\"] (list)"),
    "object.jsonl": (b'{"text": "a", "label": {"k": 1}}\n{"text": "b", "label": "y"}\n', "(dict)"),
    "null.jsonl": (b'{"text": "a", "label": null}\n{"text": "b", "label": "y"}\n', "row 1: empty or missing label"),
    "bool.jsonl": (b'{"text": "a", "label": true}\n{"text": "b", "label": false}\n', "got true (bool)"),
    "number-text.jsonl": (b'{"text": 5, "label": "a"}\n{"text": "b", "label": "y"}\n', "text must be a string"),
    "one-class.jsonl": (b'{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n', "needs at least 2 labels"),
    "array.jsonl": (b'[1, 2]\n', "expected a JSON object per line"),
    "extra-field.csv": (b"text,label\na,x,oops\nb,y\n", "row 1 has more fields than the header"),
}


@pytest.fixture(scope="module")
def one_task_dir(tmp_path_factory, models):
    """A directory holding 'fruit', learned once for the module (tests copy it)."""
    root = tmp_path_factory.mktemp("one")
    task = toy_task("fruit")
    train = root / "fruit.jsonl"
    train.write_text("".join(json.dumps({"text": x, "label": task.label_names[y]}) + "\n" for x, y in task.train))
    code = cli.main(["-q", "--no-cache", "learn", "--model", str(root / "m"), "--task", "fruit", "--data", str(train),
                     "--backbone", str(models / "backbone"), "--encoder", str(models / "encoder"), *FAST])
    assert code == 0
    return root / "m"


@pytest.mark.parametrize("name", sorted(_BAD_DATA))
def test_bad_data_files_refused(tmp_path, one_task_dir, capsys, name):
    import shutil

    m = tmp_path / "m"
    shutil.copytree(one_task_dir, m)
    content, message = _BAD_DATA[name]
    bad = tmp_path / name
    bad.write_bytes(content)
    before = snapshot(m)
    code, _, err = run(capsys, "learn", "--model", m, "--task", "new", "--data", bad)
    _refused(capsys, before, m, code, err, message)
    assert code == cli.EXIT_ERROR


def test_data_model_and_directory_refusals(tmp_path, models, data, capsys):
    m = tmp_path / "m"
    assert learn(capsys, m, models, data, "fruit")[0] == 0
    before = snapshot(m)
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    cases = [
        (["learn", "--model", tmp_path / "a-file", "--task", "t", "--data", data["fruit", "train"]], "is a file"),
        (["learn", "--model", tmp_path / "other", "--task", "t", "--data", data["fruit", "train"]],
         "is not empty and is not a model directory (holds notes.txt)"),
        (["predict", "--model", tmp_path / "a-file", "x"], "is a file, not a model directory"),
        (["learn", "--model", m, "--task", "t", "--data", tmp_path], "is a directory, not a data file"),
        (["learn", "--model", m, "--task", "t", "--data", tmp_path / "missing.jsonl"], "data file not found"),
        (["predict", "--model", m, "--file", tmp_path / "a-file-missing"], "data file not found"),
    ]
    for argv, message in cases:
        code, _, err = run(capsys, *argv)
        assert code == cli.EXIT_ERROR and message in err and err.count("\n") == 1, err
    assert snapshot(m) == before and (tmp_path / "other" / "notes.txt").read_text() == "mine"
    # a swapped task file (another valid file under the listed name) fails its checksum
    files = sorted((m / "tasks").iterdir())
    assert learn(capsys, tmp_path / "m2", models, data, "vehicle")[0] == 0
    files[0].write_bytes(next((tmp_path / "m2" / "tasks").iterdir()).read_bytes())
    code, _, err = run(capsys, "predict", "--model", m, "apple")
    assert code == cli.EXIT_ERROR and "checksum mismatch" in err


def test_legitimate_inputs_are_accepted(tmp_path, models, data, capsys):
    """A BOM, CSV quoting, unicode and emoji labels, one row per class, 1,000 classes, a 5 MB line."""
    cases = {
        "bom.jsonl": "\ufeff" + '{"text": "apple sweet", "label": "a"}\n{"text": "car fast", "label": "b"}\n',
        "quoted.csv": 'text,label\n"apple, sweet ""ripe""\nmango",sweet\n"car, fast",fast\n',
        "emoji.jsonl": '{"text": "apple", "label": "\U0001F34E r\u00f6t"}\n{"text": "car", "label": "\U0001F697"}\n',
        "one-per-class.jsonl": '{"text": "apple", "label": "x"}\n{"text": "car", "label": "y"}\n',
        "many.jsonl": "".join(json.dumps({"text": f"item {i} apple", "label": f"c{i}"}) + "\n" for i in range(1000)),
        "long.jsonl": json.dumps({"text": "apple " * 900_000, "label": "a"}) + "\n" + '{"text": "car", "label": "b"}\n',
    }
    for i, (name, content) in enumerate(cases.items()):
        path = tmp_path / name
        path.write_text(content, encoding="utf-8")
        code, out, err = run(capsys, "learn", "--model", tmp_path / f"m{i}", "--task", name, "--data", path,
                             "--backbone", models / "backbone", "--encoder", models / "encoder", *FAST, "--epochs", "1")
        assert code == 0, (name, err)
    labels = json.loads((tmp_path / "m2" / "manifest.json").read_text())["tasks"][0]["label_names"]
    assert labels == ["\U0001F34E r\u00f6t", "\U0001F697"]
    assert len(json.loads((tmp_path / "m4" / "manifest.json").read_text())["tasks"][0]["label_names"]) == 1000
    code, out, _ = run(capsys, "predict", "--model", tmp_path / "m1", "--json", "mango, sweet")
    assert code == 0 and json.loads(out)["label"] in ("sweet", "fast")


def test_info_checks_every_task_file(tmp_path, models, data, capsys):
    m = tmp_path / "m"
    assert learn(capsys, m, models, data, "fruit")[0] == 0
    task_file = next((m / "tasks").iterdir())
    task_file.write_bytes(task_file.read_bytes()[:-1] + b"\0")
    code, out, err = run(capsys, "info", m)
    assert code == cli.EXIT_ERROR and "FAILS ITS CHECKSUM" in out and "missing or corrupted: ['fruit']" in err


def test_learn_logs_its_stages_when_stderr_is_not_a_terminal(tmp_path, models, data, capsys, monkeypatch):
    """Under nohup/systemd (stderr not a terminal) there is no bar: stage and epoch lines, and a progress line
    at most every LOG_EVERY_S seconds (0 here: every batch); -q keeps only warnings and errors."""
    from scalable_lm import progress

    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    code = cli.main(["learn", "--model", str(tmp_path / "m"), "--task", "fruit", "--data", str(data["fruit", "train"]),
                     "--backbone", str(models / "backbone"), "--encoder", str(models / "encoder"), *FAST])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "INFO scalable_lm" in err and "learning task fruit" in err and "epoch 3/3: loss" in err
    assert "task fruit epoch 1: " in err and "/" in err.split("task fruit epoch 1: ")[1].split("\n")[0]  # batch i/n
    code, _, err = learn(capsys, tmp_path / "m", models, data, "vehicle", "-q")
    assert code == 0 and "INFO" not in err, err


def test_importing_the_package_and_help_do_not_load_torch():
    script = ("import sys, contextlib, io, scalable_lm\n"
              "from scalable_lm import cli, store\n"
              "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
              "    cli.main(['learn', '--help'])\n"
              "print('torch' in sys.modules, scalable_lm.__version__)\n"
              "scalable_lm.SLM  # the public names load on first use\n"
              "print('torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    from scalable_lm import __version__

    assert proc.stdout.split() == ["False", __version__, "True"]


def test_eval_plot_draws_the_directorys_own_accuracy_matrix(tmp_path, models, data, capsys):
    """Issue 41: `slm eval --plot` draws R[i][j] (task j after the first i+1 tasks) with its CSV beside it;
    the first row is what a directory that learned only the first task scores, the last what eval prints."""
    import csv
    import shutil

    for name in ("fruit", "vehicle"):
        assert learn(capsys, tmp_path / "m", models, data, name)[0] == 0
    shutil.copytree(tmp_path / "m", tmp_path / "first")
    assert run(capsys, "remove", "--model", tmp_path / "first", "--task", "vehicle")[0] == 0
    before = snapshot(tmp_path / "m")
    specs = [f"{n}={data[n, 'test']}" for n in ("fruit", "vehicle")]
    code, out, err = run(capsys, "eval", "--model", tmp_path / "m", "--data", *specs, "--json", tmp_path / "all.json",
                         "--plot", tmp_path / "matrix.png")
    assert code == 0, err
    assert (tmp_path / "matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((tmp_path / "matrix.csv").open()))
    assert [(r["after"], r["task"]) for r in rows] == [("fruit", "fruit"), ("vehicle", "fruit"), ("vehicle", "vehicle")]
    full = json.loads((tmp_path / "all.json").read_text())["scores"]
    assert float(rows[1]["score"]) == pytest.approx(full["fruit"]["accuracy"])
    assert float(rows[2]["score"]) == pytest.approx(full["vehicle"]["accuracy"])
    code, _, err = run(capsys, "eval", "--model", tmp_path / "first", "--data", specs[0], "--json", tmp_path / "first.json")
    assert code == 0, err
    first = json.loads((tmp_path / "first.json").read_text())["scores"]["fruit"]["accuracy"]
    assert float(rows[0]["score"]) == pytest.approx(first)
    assert snapshot(tmp_path / "m") == before  # the directory is only read


def test_a_new_generative_directory_takes_one_entry_per_task_unless_a_layout_flag_is_given(tmp_path, gen_models, capsys):
    common = ["--backbone", gen_models / "llama", "--encoder", gen_models / "encoder", "--targets", "o_proj",
              "--epochs", "1", "--max-length", "24", "--key-epochs", "2"]
    for model, flags, expected in (("one", [], (1, 1, 48, 96.0)), ("four", ["--rank", "4"], (4, 4, 4, 24.0))):
        code, _, err = run(capsys, "learn", "--model", tmp_path / model, "--task", "fruit", "--data",
                           gen_models / "fruit-train.jsonl", *common, *flags)
        assert code == 0, err
        bank = json.loads((tmp_path / model / "manifest.json").read_text())["config"]["bank"]
        assert (bank["entries_per_task"], bank["top_k"], bank["rank"], bank["alpha"]) == expected
    # an existing directory keeps its layout: a second task of "four" is learned with 4 entries of rank 4
    code, _, err = run(capsys, "learn", "--model", tmp_path / "four", "--task", "vehicle", "--data",
                       gen_models / "vehicle-train.jsonl", "--epochs", "1", "--key-epochs", "2")
    assert code == 0, err
    bank = json.loads((tmp_path / "four" / "manifest.json").read_text())["config"]["bank"]
    assert (bank["entries_per_task"], bank["rank"]) == (4, 4)
