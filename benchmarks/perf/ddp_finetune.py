"""SLM's fine-tune stage run data parallel by ``accelerate launch`` (CPU: gloo; GPUs: NCCL).

Usage (this machine, 2 CPU cores; the wrapper benchmarks/perf/run_ddp.sh runs both and compares):
    accelerate launch --cpu --num_processes 1 benchmarks/perf/ddp_finetune.py --out /tmp/ddp1
    accelerate launch --multi_gpu --num_processes 2 benchmarks/perf/ddp_finetune.py --out /tmp/ddp2
(without GPUs, accelerate's multi-process launcher starts CPU processes that join a gloo group;
``--cpu --num_processes 2`` would start only one)
On GPUs: ``accelerate launch --multi_gpu --num_processes 8 benchmarks/perf/ddp_finetune.py ...`` (multi-GPU data
parallel; each process runs on the GPU its accelerator names). DeepSpeed ZeRO is not supported: the loop sums
gradients itself (``training.supervised_epoch``) and never calls ``accelerator.prepare``, so ZeRO would shard
nothing; a task's trainable tensors are a few MB, so plain data parallelism is what pays off.

Learns one task (default: the first task of the generated demo stream; ``--data-dir``/``--task`` for a
local CL-5 task) with ``SLM(accelerator=...)``: every process computes the same keys, then each takes its
share of every batch of the fine-tune stage and gradients are summed across processes. Process 0 saves
the model directory and a timing file.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> None:
    from accelerate import Accelerator

    from scalable_lm import store
    from scalable_lm.config import SLMConfig
    from scalable_lm.data.demo import demo_stream
    from scalable_lm.data.tasks import load_task
    from scalable_lm.methods.slm import SLM

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="directory for the model and timing.json")
    parser.add_argument("--data-dir", type=Path, help="local CL-5 data (default: the generated demo task)")
    parser.add_argument("--task", default="agnews")
    parser.add_argument("--train", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--no-dropout", action="store_true",
                        help="switch the backbone's dropout off, so 1 and N processes must agree to rounding "
                             "(with dropout each process draws its own masks)")
    args = parser.parse_args(argv)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    world = accelerator.num_processes
    torch.set_num_threads(max(1, 2 // world) if not torch.cuda.is_available() else torch.get_num_threads())
    if args.data_dir:
        d = args.data_dir / args.task
        task = load_task(args.task, d / "train.jsonl", d / "test.jsonl", max_train=args.train)
    else:
        task = demo_stream()[0]
    config = SLMConfig()
    config.train.epochs = args.epochs
    slm = SLM(config, accelerator=accelerator)
    if args.no_dropout:
        for module in slm.classifier.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    start = time.perf_counter()
    report = slm.learn(task, progress=False)
    seconds = time.perf_counter() - start
    if accelerator.is_main_process:
        args.out.mkdir(parents=True, exist_ok=True)
        store.save(slm, args.out / "model")
        (args.out / "timing.json").write_text(json.dumps({
            "processes": world, "dropout": not args.no_dropout, "threads_per_process": torch.get_num_threads(), "task": task.name,
            "train_rows": report["train_rows"], "learn_s": seconds, "key_s": report["key_s"],
            "fine_tune_s": report["total_s"] - report["key_s"] - report["encode_s"],
            "best_val_accuracy": report["best_val_accuracy"], "epochs": report["epochs"]}, indent=2))
        print(f"{world} process(es): learned {task.name} in {seconds:.1f}s, val {report['best_val_accuracy']:.3f}")
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
