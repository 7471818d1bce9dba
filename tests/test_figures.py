"""Figures and the data beside them: the package's heatmap (``slm eval --plot``) and the benchmarks' line
figures (one line per method over its seeds, ``benchmarks/figures.py``)."""

import csv
import sys
from pathlib import Path

import pytest

from scalable_lm import figures

pytest.importorskip("matplotlib")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


def _record(method, seed, R, **bank):
    forgetting = [0.0] + [sum(max(R[l][j] for l in range(j, k)) - R[k][j] for j in range(k)) / k
                          for k in range(1, len(R))]
    return {"method": method, "tasks": ["a", "b", "c"], "R": R, "task_id": False,
            "benchmark_config": {"seed": seed}, "method_config": {"bank": bank, "model": {"encoder": "minilm-l4"}},
            "metrics": {"forgetting_after": forgetting}}


def test_heatmap_and_its_matrix_csv(tmp_path):
    R = [[0.9, None], [0.8, 0.7]]
    path = figures.heatmap(R, ["a", "b"], "title", tmp_path / "m.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.reader(figures.write_matrix_csv(R, ["a", "b"], tmp_path / "m.csv").open()))
    assert rows == [["after", "after_index", "task", "score"], ["a", "1", "a", "0.900000"],
                    ["b", "2", "a", "0.800000"], ["b", "2", "b", "0.700000"]]


def test_a_report_draws_one_line_per_method_with_its_seeds(tmp_path):
    import figures as bench

    R0 = [[0.9, None, None], [0.8, 0.7, None], [0.7, 0.6, 0.5]]
    R1 = [[0.7, None, None], [0.6, 0.5, None], [0.5, 0.4, 0.3]]
    records = [("slm_seed0", _record("slm", 0, R0, router="gaussian", top_k=4)),
               ("slm_seed1", _record("slm", 1, R1, router="gaussian", top_k=4)),
               ("replay", _record("replay", 0, R1))]
    paths = bench.stream_figures(records, tmp_path)
    assert [p.name for p in paths] == ["average_accuracy.png", "forgetting.png"]
    rows = list(csv.DictReader((tmp_path / "average_accuracy.csv").open()))
    keys = [(r["method"], r["step"]) for r in rows]
    assert len(keys) == len(set(keys)) == 6  # each method once per step
    slm = {int(r["step"]): r for r in rows if r["method"].startswith("SLM, 0.2.0")}
    assert slm[1]["seeds"] == "2" and float(slm[1]["mean"]) == pytest.approx(80.0)
    assert float(slm[3]["min"]) == pytest.approx(40.0) and float(slm[3]["max"]) == pytest.approx(60.0)
    forgetting = list(csv.DictReader((tmp_path / "forgetting.csv").open()))
    assert sorted({int(r["step"]) for r in forgetting}) == [2, 3]
    # one colour and marker per method, the same in every figure
    assert bench.style("replay") == bench.STYLES["replay"] and bench.style("unknown x") == bench.style("unknown x")


def test_every_committed_figure_but_the_heatmaps_has_its_data_beside_it():
    results = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
    figures_found = [p for p in results.rglob("*.png") if not p.name.startswith("heatmap_")]
    assert figures_found
    for png in figures_found:
        data = [png.with_suffix(s) for s in (".csv", ".json") if png.with_suffix(s).exists()]
        assert data, f"{png} has no data file beside it"
        if data[0].suffix == ".csv":
            rows = list(csv.DictReader(data[0].open()))
            assert {"method", "step"} <= set(rows[0]), data[0]
            keys = [(r.get("panel"), r["method"], r["step"]) for r in rows]
            assert len(keys) == len(set(keys)), f"{data[0]}: a method twice at one step"
