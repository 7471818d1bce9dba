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
    assert cfg["method"] in ("slm", "sequential-finetune") and cfg["order"] and cfg["train_per_task"] > 0
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
