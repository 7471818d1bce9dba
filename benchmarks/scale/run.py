"""Thousands of skills: memory and time against the number of tasks in a model directory (issue 40).

Usage:
    python benchmarks/scale/run.py [--tasks 16 128 512 2048] [--data-dir ../shared/datasets]

Builds once, under runs/scale/ (git-ignored), one MiniLM classifier directory per bank size T: one real task
(sst2, --train-rows rows, default options) learned with `slm learn`, then T - 1 copies of it added through the
public per-task interface (``SLM.add_task_state`` with the learned task's state, each copy's query mean moved by
a small random offset so that every copy is a task of its own) and written with ``scalable_lm.save``. Then, for
each T in turn, every step in a fresh process:

- the directory's size, and ``scalable_lm.load`` time and peak resident memory;
- `slm predict` of 15 sst2 test texts (--no-cache): wall time and peak resident memory;
- `slm learn` of one more task (agnews, --train-rows rows): wall time and peak resident memory (the task is
  removed again afterwards with `slm remove`, not timed);
- `slm serve`: time until /health answers, resident memory then, and per-request latency (p50, p95) of
  /v1/classify at concurrency 1 and 8 (sst2 test texts; a warm-up of 16 requests first).

Writes benchmarks/results/scale/scale.json, one key per T as soon as it is measured (a rerun skips sizes already
there unless --again), and the README with `python benchmarks/report.py scale`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
OUT = REPO / "benchmarks" / "results" / "scale"
RUNS = REPO / "runs" / "scale"
MEASURE = HERE / "measure.py"


def _module(name: str, path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


serve = _module("serve_run", REPO / "benchmarks" / "serve" / "run.py")  # Server, load(): the serving benchmark's


def rows_file(data_dir: Path, task: str, split: str, n: int, seed: int) -> Path:
    path = RUNS / "data" / f"{task}-{split}-{n}.jsonl"
    if not path.exists():
        lines = (data_dir / task / f"{split}.jsonl").read_text().splitlines()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(random.Random(seed).sample(lines, n)) + "\n")
    return path


def measured(argv: list[str]) -> dict:
    """Run ``argv`` (a Python module call) in a fresh process; its wall time and peak resident memory."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(MEASURE), *map(str, argv)], capture_output=True, text=True,
                          env=serve._env(), cwd=REPO)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed ({done.returncode}): {done.stderr[-2000:]}")
    peak = json.loads(done.stderr.strip().splitlines()[-1])["peak_rss_mb"]
    return {"seconds": round(wall, 2), "peak_rss_mb": peak, "stdout_tail": done.stdout.strip()[-300:]}


def build(base: Path, count: int, out: Path) -> None:
    """``count`` tasks: ``base``'s one task and ``count - 1`` copies (public interface), saved to ``out``."""
    import torch

    import scalable_lm

    if (out / "manifest.json").exists():
        return
    slm = scalable_lm.load(base)
    template = slm.task_state(0)
    scale = float(template["stats.mean"].norm()) * 0.02  # a small move: copies stay where the task is
    g = torch.Generator().manual_seed(count)
    for i in range(1, count):
        state = dict(template)  # tensors shared with the template: the bank holds them once in memory
        state["stats.mean"] = template["stats.mean"] + scale * torch.randn(template["stats.mean"].shape, generator=g,
                                                                           dtype=torch.float64) / template["stats.mean"].numel() ** 0.5
        slm.add_task_state(f"copy-{i:05d}", slm.label_names[0], state)
    start = time.perf_counter()
    scalable_lm.save(slm, out)
    print(f"built {out} ({count} tasks) in {time.perf_counter() - start:.0f}s", flush=True)


def directory_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 1)


def measure_size(args, count: int) -> dict:
    model = RUNS / f"T{count}"
    build(RUNS / "base", count, model)
    if "extra" in [t["name"] for t in json.loads((model / "manifest.json").read_text())["tasks"]]:
        subprocess.run([sys.executable, "-m", "scalable_lm.cli", "-q", "remove", "--model", str(model), "--task",
                        "extra"], check=True, env=serve._env(), cwd=REPO, capture_output=True)  # an interrupted run's
    out = {"tasks": count, "directory_mb": directory_mb(model)}
    out["load"] = measured(["--load", model])
    texts = RUNS / "predict-texts.txt"
    out["predict_15"] = measured(["-m", "scalable_lm.cli", "-q", "predict", "--model", model, "--no-cache",
                                  "--file", texts])
    out["learn_one_more"] = measured(["-m", "scalable_lm.cli", "-q", "learn", "--model", model, "--task", "extra",
                                      "--data", args.extra_data, "--no-cache"])
    subprocess.run([sys.executable, "-m", "scalable_lm.cli", "-q", "remove", "--model", str(model), "--task", "extra"],
                   check=True, env=serve._env(), cwd=REPO, capture_output=True)
    start = time.perf_counter()
    server = serve.Server(serve.slm_serve(model), RUNS / f"serve-T{count}.log")
    try:
        out["serve_start_s"] = round(time.perf_counter() - start, 2)
        out["serve_rss_mb_at_start"] = round(serve._rss_mb(server.proc.pid), 1)
        bodies = [{"model": "auto", "input": t} for t in args.serve_texts]
        out["serve"] = {}
        for c, n in ((1, args.requests_c1), (8, args.requests_c8)):
            asyncio.run(serve.load(server.url, "/v1/classify", bodies[:16], c))  # warm-up
            result = asyncio.run(serve.load(server.url, "/v1/classify", bodies[:n], c))
            out["serve"][str(c)] = {k: result[k] for k in ("requests", "failed", "requests_per_s", "p50_s", "p95_s")}
        out["serve_rss_mb_after"] = round(serve._rss_mb(server.proc.pid), 1)
    finally:
        server.stop()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--tasks", type=int, nargs="+", default=[16, 128, 512, 2048])
    parser.add_argument("--train-rows", type=int, default=200)
    parser.add_argument("--requests-c1", type=int, default=60)
    parser.add_argument("--requests-c8", type=int, default=160)
    parser.add_argument("--again", action="store_true", help="measure sizes already in scale.json again")
    args = parser.parse_args(argv)
    if not args.data_dir.is_dir():
        parser.error(f"{args.data_dir} not found (the shared datasets folder)")
    OUT.mkdir(parents=True, exist_ok=True)
    RUNS.mkdir(parents=True, exist_ok=True)
    train = rows_file(args.data_dir, "sst2", "train", args.train_rows, 0)
    args.extra_data = rows_file(args.data_dir, "agnews", "train", args.train_rows, 1)
    test = [json.loads(line)["text"] for line in rows_file(args.data_dir, "sst2", "test", 200, 2).read_text().splitlines()]
    (RUNS / "predict-texts.txt").write_text("".join(t.replace("\n", " ") + "\n" for t in test[:15]))
    args.serve_texts = test
    if not (RUNS / "base" / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "scalable_lm.cli", "-q", "learn", "--model", str(RUNS / "base"),
                        "--task", "sst2", "--data", str(train)], check=True, env=serve._env(), cwd=REPO)
    path = OUT / "scale.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "src"], capture_output=True, text=True, cwd=REPO).stdout)
    for count in args.tasks:
        if str(count) in results.get("sizes", {}) and not args.again:
            continue
        record = measure_size(args, count)
        record.update(commit=commit, src_dirty=dirty, date=time.strftime("%Y-%m-%d"))
        results.setdefault("sizes", {})[str(count)] = record
        results["command"] = "python benchmarks/scale/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
        results["machine"] = {"cpus": os.cpu_count()}
        path.write_text(json.dumps(results, indent=2))
        print(f"T={count}: {json.dumps({k: v for k, v in record.items() if k not in ('commit', 'date')})}", flush=True)


if __name__ == "__main__":
    main()
