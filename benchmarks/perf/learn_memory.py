"""Peak memory and time of `slm learn` on one instruction task: the whole process, as a user meets it.

Usage:
    python benchmarks/perf/learn_memory.py --data-dir ../shared/datasets [--backbone smollm2 gemma3]
        [--rows 120] [--src DIR --label NAME] [--extra "--micro-batch-tokens 0"]

Each run writes the first ``--rows`` rows of medical_chatdoctor5k's train split (instruction, input, output) to a
JSONL file, runs ``slm learn --epochs 1`` on it with every other option at its default into a new model directory,
and reads the child's peak resident memory from the kernel (``wait4``'s ``ru_maxrss``: the true peak, not a
sample). ``--src`` runs another checkout's ``src`` (``PYTHONPATH``) under the same interpreter: the figure
before a change. Results go to benchmarks/results/learn_memory/<label>.json, one record per backbone, with
``backbone_parameters`` (counted from the model's config, no weights loaded) and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "benchmarks" / "results" / "learn_memory"


def backbone_parameters(name: str) -> int:
    """The parameter count of backbone ``name``, from its config on the meta device (nothing allocated)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from scalable_lm.backbones import resolve

    config = AutoConfig.from_pretrained(resolve(name))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def run_one(backbone: str, data: Path, src: Path | None, extra: list[str]) -> dict:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        cmd = [sys.executable, "-m", "scalable_lm.cli", "-q", "learn", "--model", str(model), "--task", "medical",
               "--data", str(data), "--epochs", "1", "--backbone", backbone, *extra]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"slm learn failed on {backbone}:\n{out[-2000:]}")
    return {"backbone": backbone, "peak_rss_gb": round(usage.ru_maxrss * 1024 / 1e9, 3), "seconds": round(seconds, 1),
            "slm_learn": " ".join(["slm", *cmd[4:]]).replace(str(data), "ROWS.jsonl").replace(str(model), "MODEL")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--backbone", nargs="+", default=["smollm2"])
    parser.add_argument("--rows", type=int, default=120)
    parser.add_argument("--src", type=Path, help="another checkout's src/ to run (the figure before a change)")
    parser.add_argument("--label", default="after", help="result file name (default: after)")
    parser.add_argument("--extra", default="", help="more `slm learn` options, as one string")
    args = parser.parse_args(argv)
    source = args.data_dir / "medical_chatdoctor5k" / "train.jsonl"
    rows = [json.loads(line) for line in source.read_text().splitlines()[: args.rows]]
    where = args.src or ROOT
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=where).stdout.strip()
    if subprocess.run(["git", "status", "--porcelain", "src"], capture_output=True, text=True,
                      cwd=Path(where).parent if args.src else ROOT).stdout.strip():
        commit += "+changes"
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "rows.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        for backbone in args.backbone:
            record = run_one(backbone, data, args.src, args.extra.split())
            record["backbone_parameters"] = backbone_parameters(backbone)
            records.append(record)
            print(json.dumps(record))
    command = shlex.join(["python", "benchmarks/perf/learn_memory.py", *(argv if argv is not None else sys.argv[1:])])
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{args.label}.json").write_text(json.dumps(
        {"command": command, "code_commit": commit, "rows": args.rows, "dataset": "medical_chatdoctor5k train",
         "runs": records}, indent=1) + "\n")


if __name__ == "__main__":
    main()
