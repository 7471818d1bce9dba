"""Does vLLM, behind the routing front, answer as `slm predict` does? Held-out prompts, greedy, float32.

Usage:
    python benchmarks/serve/vllm_fidelity.py [--backbone smollm2|gemma3] [--layout default|one-entry ...]

For each layout a model directory is learned here once (runs/vllm_fidelity/<backbone>-<layout>) from the
demo's instruction data (support-intent and headline-topic, 60 rows each, 1 epoch):

- default: 4 entries of rank 12 per task (a generative directory's default until one entry per task became it);
  the exported adapter (rank 48) fixes the entries' mixing weights at the task's mean query, while `slm predict`
  mixes them per prompt;
- one-entry: `--entries-per-task 1 --top-k 1 --rank 48 --alpha 96 --router gaussian`: the same capacity and
  scaling in one entry, so the adapter is the task exactly.

Then the demo's test prompts of both tasks (not seen in training) are answered by `slm predict` and by
`slm serve --engine vllm` (chat completions, temperature 0, max_tokens 32), and compared as text. Adds a key
per backbone and layout to benchmarks/results/serve/vllm_fidelity.json.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vllm_front import REPO, TASKS, env, free_port, slm, wait  # noqa: E402

RUNS = REPO / "runs" / "vllm_fidelity"
OUT = REPO / "benchmarks" / "results" / "serve" / "vllm_fidelity.json"
# "default" is the generative default before one entry per task became it (benchmarks/results/layout), spelled out
LAYOUTS = {"default": ["--entries-per-task", "4", "--top-k", "4", "--rank", "12", "--alpha", "24"],
           "one-entry": ["--entries-per-task", "1", "--top-k", "1", "--rank", "48", "--alpha", "96",
                         "--router", "gaussian"]}


def learn(model: Path, backbone: str, layout: str) -> None:
    data = RUNS / "data"
    if not (data / TASKS[0] / "test.jsonl").exists():
        subprocess.run(slm("demo", "--write-data", data, "--instructions"), check=True, env=env())
    for task in TASKS:
        manifest = model / "manifest.json"
        if manifest.exists() and task in [t["name"] for t in json.loads(manifest.read_text())["tasks"]]:
            continue
        subprocess.run(slm("learn", "--model", model, "--task", task, "--data", data / task / "train.jsonl",
                           "--max-train", "60", "--epochs", "1", "--backbone", backbone, *LAYOUTS[layout]),
                       check=True, env=env())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="smollm2")
    parser.add_argument("--layout", action="append", choices=list(LAYOUTS), help="default: both")
    parser.add_argument("--limit", type=int, default=40, help="test prompts per task")
    parser.add_argument("--vllm-python", default=str(REPO / ".venv-vllm" / "bin" / "python"))
    args = parser.parse_args(argv)
    prompts = []
    for layout in args.layout or list(LAYOUTS):
        model = RUNS / f"{args.backbone}-{layout}"
        learn(model, args.backbone, layout)
        if not prompts:
            for task in TASKS:
                rows = [json.loads(line) for line in (RUNS / "data" / task / "test.jsonl").open()][: args.limit]
                prompts += [r["instruction"] + "\n\n" + r["input"] for r in rows]
        predicted = [json.loads(line) for line in subprocess.run(
            slm("predict", "--model", model, "--json", "--max-new-tokens", "32", *prompts), capture_output=True,
            text=True, check=True, env=env()).stdout.splitlines()]
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        front = subprocess.Popen(slm("serve", "--engine", "vllm", "--model", model, "--port", port, "--vllm-python",
                                     args.vllm_python, "--max-new-tokens", "32"), env=env(),
                                 stdout=open(RUNS / f"front-{args.backbone}-{layout}.log", "w"),
                                 stderr=subprocess.STDOUT)
        try:
            started = time.perf_counter()
            wait(url, front)
            ready = time.perf_counter() - started
            served = []
            with httpx.Client(base_url=url, timeout=300) as client:
                for prompt in prompts:
                    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": prompt}],
                                                                  "max_tokens": 32, "temperature": 0})
                    choice = r.json()["choices"][0]
                    served.append({"text": choice["message"]["content"], "task": choice["slm"]["task"]})
        finally:
            front.send_signal(signal.SIGTERM)
            front.wait(timeout=120)
        same = [p["label"] == s["text"] for p, s in zip(predicted, served)]
        same_task = [p["task"] == s["task"] for p, s in zip(predicted, served)]
        record = {"command": " ".join(["python", "benchmarks/serve/vllm_fidelity.py", *(argv or sys.argv[1:])]),
                  "backbone": args.backbone, "layout": layout, "flags": LAYOUTS[layout], "prompts": len(prompts),
                  "same_answer": sum(same), "same_task": sum(same_task), "front_ready_s": round(ready, 1),
                  "differences": [{"prompt": p[:120], "slm_predict": a["label"], "vllm": b["text"]}
                                  for p, a, b, ok in zip(prompts, predicted, served, same) if not ok][:20]}
        out = json.loads(OUT.read_text()) if OUT.exists() else {}
        out[f"{args.backbone}-{layout}"] = record
        OUT.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
        print(f"{args.backbone} {layout}: {sum(same)}/{len(prompts)} answers equal, {sum(same_task)} tasks equal",
              flush=True)


if __name__ == "__main__":
    main()
