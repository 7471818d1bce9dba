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
