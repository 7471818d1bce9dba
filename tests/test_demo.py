"""Integration: the built-in demo on the packaged MiniLM (smaller than `slm demo`'s default)."""

import json

import pytest

from scalable_lm.demo import run_demo


@pytest.mark.integration
def test_demo_slm_beats_sequential_finetuning(tmp_path, capsys):
    result = run_demo(tmp_path / "demo.json", n_train=100, n_test=40, progress=False)
    baseline, slm = (r["metrics"] for r in result["results"])
    assert slm["average_accuracy"] >= baseline["average_accuracy"] + 0.20
    assert slm["forgetting"] <= 0.01
    assert json.loads((tmp_path / "demo.json").read_text())["results"][1]["method"] == "slm"
    assert "sequential-finetune" in capsys.readouterr().out


def test_demo_writes_its_tasks_as_files_slm_learn_reads(tmp_path, capsys):
    from scalable_lm import cli
    from scalable_lm.data.tasks import load_task

    assert cli.main(["demo", "--write-data", str(tmp_path / "data"), "--train", "40", "--test", "10"]) == 0
    assert "wrote 6 files for 3 tasks" in capsys.readouterr().out
    task = load_task("support-intent", tmp_path / "data" / "support-intent" / "train.jsonl",
                     tmp_path / "data" / "support-intent" / "test.jsonl")
    assert len(task.train) > 20 and task.test and "billing" in task.label_names

    assert cli.main(["demo", "--write-data", str(tmp_path / "gen"), "--instructions", "--train", "40", "--test", "10"]) == 0
    from scalable_lm.data.instructions import load_instruction_task

    gen = load_instruction_task("support-intent", tmp_path / "gen" / "support-intent" / "train.jsonl")
    prompt, answer = gen.train[0]
    assert "support ticket" in prompt and answer in task.label_names
