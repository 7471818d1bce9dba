"""Run one benchmark config: a stream of local tasks, one method, results JSON under benchmarks/results/.

Usage:
    python benchmarks/run.py benchmarks/configs/cl5/slm_order4.json [--data-dir ../shared/datasets]

A config (JSON) names the benchmark, the task order, the method and its options, and the data sizes:
    {"benchmark": "cl5", "order": ["agnews", ...], "method": "slm" | "sequential-finetune" | "replay" | "ewc" | "o-lora"
     | "sequential-lora" | "multitask-lora" | "arrow" | "gainlora" | "osf",
     "train_per_task": 500, "test_per_task": 500, "seed": 0, "task_id": false,
     ("train_per_class": 16 instead of train_per_task: the few-shot setting)
     "config": {"bank": {...}, "keys": {...}, "train": {...}}}     # overrides of SLMConfig
"final_evals" (default: true for SLM without task-ID) adds, on the final bank, SLM-TI accuracy and the
authors' leaking protocol (single-task batches, head by number of classes) under "after_stream".
"score_every_task": false scores only after the last task (multitask upper bound).
"task_id": true scores with the task named (SLM-TI, per-task oracle): an upper bound, reported apart.
"device" (default auto) and "dtype" (default float32; SLM only: the baselines run in float32) place the model;
--device / --dtype override them.
Test rows are a seeded random subset of each task's local test file (sizes are in the result); a dataset with
no test file (imdb, multirc) has test_per_task rows of its train file held out, and its training rows drawn from
the rest. The result
file holds the config, the accuracy matrix, metrics, timings, git commit and package versions.

Runs of SLM (and its per-task oracles) keep a checkpoint after every task in <results dir>/checkpoints/<stem>/
(the learned tasks as a model directory, and the scores so far). A run that is cut short (a session's end, a
kill) goes on from its last finished task when the same command is run again; the result then lists each
part's code version and seconds under "parts". The checkpoint is deleted once the result file is written.
--restart drops it and starts over; "checkpoint": false in the config turns it off.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from scalable_lm.config import SLMConfig
from scalable_lm.data.tasks import Task, load_task
from scalable_lm.runner import RunResult, evaluate, evaluate_paper_protocol, run_stream

ROOT = Path(__file__).resolve().parent
METHODS = ("slm", "sequential-finetune", "replay", "ewc", "o-lora", "sequential-lora", "multitask-lora", "arrow",
           "gainlora", "osf")


def build_stream(cfg: dict, data_dir: Path) -> list[Task]:
    stream = []
    for i, name in enumerate(cfg["order"]):
        per_class = cfg.get("train_per_class")  # few-shot: this many training rows of every class
        if not (data_dir / name / "test.jsonl").is_file():
            stream.append(held_out_task(name, data_dir, cfg, i))
            continue
        task = load_task(name, data_dir / name / "train.jsonl", data_dir / name / "test.jsonl",
                         max_train=None if per_class else cfg["train_per_task"], seed=cfg.get("seed", 0))
        if per_class:
            rng = random.Random(cfg.get("seed", 0) + i)
            task.train = [row for c in range(len(task.label_names))
                          for row in rng.sample([r for r in task.train if r[1] == c],
                                                min(per_class, sum(r[1] == c for r in task.train)))]
        n_test = cfg.get("test_per_task")
        if n_test is not None and len(task.test) > n_test:
            task.test = random.Random(cfg.get("seed", 0) + 1000 + i).sample(task.test, n_test)
        stream.append(task)
    return stream


def held_out_task(name: str, data_dir: Path, cfg: dict, position: int) -> Task:
    """A dataset shipped without a test split (imdb, multirc): ``test_per_task`` rows of its train file are held
    out as test rows (seeded by the config's seed and the task's position), and the training rows are drawn from
    the rest only, so no row is in both."""
    n_test = cfg.get("test_per_task")
    if n_test is None or cfg.get("train_per_class"):
        raise SystemExit(f"{name} has no test.jsonl: its test rows are held out of train.jsonl, which needs "
                         "test_per_task (and train_per_task, not train_per_class) in the config")
    task = load_task(name, data_dir / name / "train.jsonl", None, seed=cfg.get("seed", 0))
    rows = list(task.train)
    random.Random(cfg.get("seed", 0) + 2000 + position).shuffle(rows)
    if len(rows) <= n_test:
        raise SystemExit(f"{name}: {len(rows)} rows cannot give {n_test} held-out test rows and a training set")
    task.test, rest = rows[:n_test], rows[n_test:]
    n_train = cfg["train_per_task"]
    task.train = random.Random(cfg.get("seed", 0)).sample(rest, n_train) if len(rest) > n_train else rest
    return task


def build_method(cfg: dict, device: str = "auto", dtype: str = "float32"):
    from scalable_lm.backbones import load_encoder
    from scalable_lm.baselines.finetune import SequentialFineTune
    from scalable_lm.baselines.arrow import Arrow
    from scalable_lm.baselines.lora import MultitaskLoRA, SequentialLoRA
    from scalable_lm.baselines.olora import OLoRA
    from scalable_lm.methods.slm import SLM

    base = SLMConfig().to_dict()
    for section, values in cfg.get("config", {}).items():
        base[section].update(values)
    config = SLMConfig.from_dict(base).validate()  # a bad config fails here, not when a checkpoint is read back
    if cfg["method"] == "slm":
        return SLM(config, device=device, dtype=dtype), config
    backbone = load_encoder(config.model.backbone)
    if cfg["method"] in ("sequential-finetune", "replay", "ewc"):
        return SequentialFineTune(backbone, config.train, lr=cfg.get("lr", 5e-5),
                                  replay_fraction=cfg.get("replay_fraction", 0.0),
                                  ewc_lambda=cfg.get("ewc_lambda", 0.0), device=device), config
    if cfg["method"] == "o-lora":
        return OLoRA(backbone, config.train, config.bank, orth_lambda=cfg.get("orth_lambda", 0.5), device=device), config
    if cfg["method"] == "sequential-lora":
        return SequentialLoRA(backbone, config.train, config.bank, device=device), config
    if cfg["method"] == "multitask-lora":
        return MultitaskLoRA(backbone, config.train, config.bank, device=device), config
    if cfg["method"] == "arrow":
        return Arrow(backbone, config.train, config.bank, top_k=cfg.get("arrow_top_k", 3),
                     temperature=cfg.get("arrow_temperature", 1.0), device=device), config
    if cfg["method"] == "gainlora":
        from scalable_lm.baselines.gainlora import GainLoRA

        return GainLoRA(backbone, config.train, config.bank, orth_lambda=cfg.get("orth_lambda", 0.5),
                        gate_hidden=cfg.get("gate_hidden", 128), threshold=cfg.get("gate_threshold", 0.97),
                        device=device), config
    if cfg["method"] == "osf":
        from scalable_lm.baselines.osf import OSF

        return OSF(backbone, config.train, lr=cfg.get("osf_lr", 5e-5), targets=cfg.get("osf_targets"),
                   expected_tasks=len(cfg["order"]), device=device), config
    raise ValueError(f"unknown method {cfg['method']!r}")


def shown_path(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it (a config elsewhere is shown as given: a
    run must never fail at the end over how its command is written down)."""
    try:
        return str(path.resolve().relative_to(ROOT.parent))
    except ValueError:
        return str(path)


def provenance() -> dict:
    import transformers

    import scalable_lm

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    # src relative to the repository root (from benchmarks/ it named nothing, so every record said "clean")
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "src"], capture_output=True, text=True,
                                cwd=ROOT.parent).stdout.strip())
    return {"git_commit": commit, "src_dirty": dirty, "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "scalable_lm": scalable_lm.__version__, "threads": torch.get_num_threads()}


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux; ``platform`` elsewhere): timings are only comparable
    between runs on the same kind of host."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


class Checkpoint:
    """A run's progress after each finished task, so that a run cut short goes on where it stopped.

    ``directory`` holds ``model/`` (the learned tasks, a model directory written through the method's own
    ``save_pretrained``, one safetensors file per task, atomically) and ``progress.json`` (the config, the
    scores so far and each part's code version and seconds). The model is written before the scores, so
    the scores never name a task the model lacks; a task saved in ``model/`` whose scores were not is
    dropped on restore and learned again. For methods with a per-task state (SLM and its oracles).
    """

    def __init__(self, directory: Path, cfg: dict):
        self.directory, self.cfg = directory, cfg
        self.model_dir, self.progress = directory / "model", directory / "progress.json"

    def restore(self, method) -> tuple[RunResult | None, list[dict]]:
        """Put the finished tasks back into ``method`` (freshly built from the same config); returns the
        scores so far and the earlier parts, or ``(None, [])`` when there is nothing to go on from."""
        from scalable_lm import store

        if not self.progress.is_file():
            return None, []
        saved = json.loads(self.progress.read_text())
        if saved["benchmark_config"] != self.cfg:
            raise SystemExit(f"{self.directory} holds a cut-short run of a different config; run with --restart "
                             "to drop it and start this one afresh")
        result = RunResult.from_dict(saved["result"])
        done = result.tasks[: result.tasks_done]
        held = [t["name"] for t in store.read_manifest(self.model_dir)["tasks"]]
        if held[: len(done)] != done:
            raise SystemExit(f"{self.model_dir} holds tasks {held}, its scores say {done}: run with --restart")
        for extra in reversed(held[len(done):]):  # saved, then cut before its scores were
            store.remove(self.model_dir, extra, force=True)
        store.add_tasks(method, self.model_dir, done)
        return result, saved["parts"]

    def save(self, method, result: RunResult, parts: list[dict]) -> None:
        from scalable_lm import store
        from scalable_lm.fileio import atomic_write

        store.save(method, self.model_dir)
        record = {"benchmark_config": self.cfg, "result": result.to_dict(), "parts": parts}
        atomic_write(self.progress, lambda tmp: tmp.write_text(json.dumps(record)))

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        try:
            self.directory.parent.rmdir()  # checkpoints/ itself, once empty
        except OSError:
            pass


def supports_checkpoint(method) -> bool:
    return hasattr(method, "add_task_state")  # the per-task interface the store saves and restores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent.parent / "shared" / "datasets")
    parser.add_argument("--out", type=Path, help="result file (default benchmarks/results/<benchmark>/<config>.json)")
    parser.add_argument("--device", help="overrides the config's device (default auto: CUDA, then MPS, then CPU)")
    parser.add_argument("--dtype", help="overrides the config's dtype (float32, bfloat16, float16; SLM only)")
    parser.add_argument("--restart", action="store_true",
                        help="drop the checkpoint of a cut-short run of this config and start over")
    args = parser.parse_args(argv)
    cfg = json.loads(args.config.read_text())
    out = args.out or ROOT / "results" / cfg["benchmark"] / f"{args.config.stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.get("seed", 0))
    stream = build_stream(cfg, args.data_dir)
    from scalable_lm.device import resolve_device, resolve_dtype

    device = resolve_device(args.device or cfg.get("device", "auto"))
    dtype = resolve_dtype(args.dtype or cfg.get("dtype", "float32"))
    method, config = build_method(cfg, device, dtype)
    cache = None
    if cfg["method"] == "slm" and cfg.get("query_cache", True):
        # the query encoder is frozen: reuse embeddings cached by earlier runs ($SLM_CACHE_DIR)
        cache = method.encoder.default_cache_path()
        method.encoder.load_cache(cache)
    prov = provenance()  # the code that runs: taken before, so a commit made during a long run is not recorded
    checkpoint = resume = after_task = None
    parts: list[dict] = []
    if cfg.get("checkpoint", True) and supports_checkpoint(method):
        checkpoint = Checkpoint(out.parent / "checkpoints" / out.stem, cfg)
        if args.restart:
            checkpoint.remove()
        resume, parts = checkpoint.restore(method)
        if resume is not None:
            print(f"resuming after {resume.tasks_done} of {len(stream)} tasks from {shown_path(checkpoint.directory)}",
                  file=sys.stderr)
    start = time.perf_counter()
    part = {"provenance": prov, "tasks": [], "seconds": 0.0}
    parts.append(part)
    if checkpoint is not None:
        def after_task(i, result):
            part["tasks"].append(stream[i].name)
            part["seconds"] = time.perf_counter() - start
            checkpoint.save(method, result, parts)

    result = run_stream(method, stream, progress=sys.stderr.isatty(), task_id=cfg.get("task_id", False),
                        score_every_task=cfg.get("score_every_task", True), resume=resume, after_task=after_task)
    if cache is not None:
        method.encoder.save_cache(cache)
    after = {}
    if cfg.get("final_evals", cfg["method"] == "slm" and not cfg.get("task_id", False)):
        # on the final bank: SLM-TI (task named, an upper bound) and the authors' leaking protocol
        t0 = time.perf_counter()
        ti = evaluate(method, stream, task_id=True)
        after["task_id"] = {name: s["accuracy"] for name, s in ti.items()}
        after["paper_protocol"] = evaluate_paper_protocol(method, stream)
        after["seconds"] = time.perf_counter() - t0
    record = {
        "command": f"python benchmarks/run.py {shown_path(args.config)}"
                   + (f" --device {args.device}" if args.device else "") + (f" --dtype {args.dtype}" if args.dtype else "")
                   + (f" --out {shown_path(args.out)}" if args.out else ""),
        "benchmark_config": cfg, "method_config": config.to_dict(),
        "placement": {"device": str(device), "dtype": str(dtype).removeprefix("torch."),
                      "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()},
        "sizes": {t.name: {"train": len(t.train), "test": len(t.test)} for t in stream},
        "seconds": sum(p["seconds"] for p in parts[:-1]) + time.perf_counter() - start, "provenance": prov,
        **result.to_dict(), "after_stream": after,
    }
    if len(parts) > 1:  # resumed: each part's code version, the tasks it learned and its seconds
        part["seconds"] = time.perf_counter() - start
        record["parts"] = parts
    out.write_text(json.dumps(record, indent=2))
    if checkpoint is not None:
        checkpoint.remove()
    m = result.metrics
    forgot = "n/a" if m["forgetting"] is None else f"{100 * m['forgetting']:.1f}"
    print(f"{cfg['method']} {cfg['order']}: average {100 * m['average_accuracy']:.1f}, forgetting {forgot}, retrieval {m['retrieval_accuracy']}; {record['seconds']:.0f}s -> {out}")


if __name__ == "__main__":
    main()
