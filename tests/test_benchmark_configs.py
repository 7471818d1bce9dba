"""Every committed benchmark config parses into a method config (STYLE: configs are tested)."""

import json
import sys
from pathlib import Path

import pytest

from scalable_lm.config import SLMConfig

ROOT = Path(__file__).resolve().parents[1] / "benchmarks"
CONFIGS = sorted((ROOT / "configs").rglob("*.json"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_parses(path):
    cfg = json.loads(path.read_text())
    assert cfg["method"] in ("slm", "sequential-finetune", "replay", "ewc", "o-lora") and cfg["order"] and cfg["train_per_task"] > 0
    base = SLMConfig().to_dict()
    for section, values in cfg.get("config", {}).items():
        base[section].update(values)
    SLMConfig.from_dict(base)


def test_stream_builder_subsamples_tests(tmp_path):
    sys.path.insert(0, str(ROOT))
    from run import build_stream

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        rows = "".join(json.dumps({"text": f"{name} {i}", "label": i % 2}) + "\n" for i in range(30))
        (tmp_path / name / "train.jsonl").write_text(rows)
        (tmp_path / name / "test.jsonl").write_text(rows)
    stream = build_stream({"order": ["a", "b"], "train_per_task": 10, "test_per_task": 5}, tmp_path)
    assert [len(t.train) for t in stream] == [10, 10] and [len(t.test) for t in stream] == [5, 5]


def test_report_writes_table_and_plots_from_json(tmp_path):
    sys.path.insert(0, str(ROOT))
    import report

    record = {"method": "slm", "tasks": ["a", "b"], "R": [[0.9, None], [0.8, 0.7]], "seconds": 60,
              "command": "python benchmarks/run.py x.json", "method_config": {"bank": {"router": "dtkr"}},
              "metrics": {"average_accuracy": 0.75, "forgetting": 0.1, "bwt": -0.1, "retrieval_accuracy": 0.9,
                          "task_choice_accuracy": 0.95}}
    (tmp_path / "slm_x.json").write_text(json.dumps(record))
    report.main([str(tmp_path)])
    text = (tmp_path / "README.md").read_text()
    assert "| [slm_x](slm_x.json) slm (dtkr, P=None, K=None) | a → b | 75.0 | 10.0 | -10.0 | 90.0 | 95.0 | 1 |" in text
    assert (tmp_path / "heatmap_slm_x.png").stat().st_size > 0 and (tmp_path / "average_accuracy.png").exists()
