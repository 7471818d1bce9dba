"""The routing front without the backbone's weights: start time and memory of `slm serve --engine vllm`.

Usage:
    python benchmarks/serve/front_memory.py [--backbone smollm2 gemma3] [--rows 40] [--encoder shared-l4]

For each backbone: a generative directory of two demo tasks (`slm demo --instructions` data, --rows training
rows each, one epoch; kept in runs/front/<backbone> and reused), then the front is started as a user would
(`slm serve --engine vllm --vllm-url URL --model DIR`) with `$SLM_MODEL_DIR` pointing at a copy of the
backbone's folder that holds its config and tokenizer only (no weight files). Its engine is a stand-in that
answers vLLM's endpoints without a model (benchmarks/serve/stand_in_engine.py), so what is measured is the
front alone: seconds until `/health` says ok (the adapters exported and loaded into the engine), its resident
memory then (RSS) and its peak (VmHWM) after 20 routed requests, which tasks they were routed to, and that no
weight file appeared in the folder. With `--encoder shared-lN` (a directory whose query is read from the backbone's
own block N) the folder keeps its weight files, as the front reads those N blocks (and the embeddings) and no
more: the record (`BACKBONE+shared-lN`) shows what that costs. Beside it, for scale, the RSS of a process that loads the same directory
whole (`scalable_lm.load`) and answers one prompt with one token (its weights resident). Writes benchmarks/results/serve/front_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUNS = REPO / "runs" / "front"
OUT = REPO / "benchmarks" / "results" / "serve" / "front_memory.json"
TASKS = ("support-intent", "headline-topic")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slm(*argv, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scalable_lm.cli", "-q", *map(str, argv)], check=True, cwd=REPO,
                          env=env, capture_output=True, text=True)


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":")
            out[key] = int(value.split()[0]) * 1024
    return out


def _wait(url: str, proc: subprocess.Popen, seconds: float = 900) -> float:
    import httpx

    start, deadline = time.perf_counter(), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}: {proc.stdout.read()[-2000:]}")
        try:
            r = httpx.get(url, timeout=2)
            if r.status_code == 200 and r.json().get("status", "ok") == "ok":
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} not ready after {seconds} s")


def directory(backbone: str, rows: int, encoder: str | None = None) -> Path:
    data, model = RUNS / "data", RUNS / (backbone + (f"-{encoder}" if encoder else ""))
    if not (data / TASKS[0] / "train.jsonl").exists():
        _slm("demo", "--write-data", data, "--instructions")
    manifest = model / "manifest.json"
    have = [t["name"] for t in json.loads(manifest.read_text())["tasks"]] if manifest.exists() else []
    for task in TASKS:
        if task not in have:
            _slm("learn", "--model", model, "--task", task, "--data", data / task / "train.jsonl", "--backbone",
                 backbone, "--max-train", rows, "--epochs", 1, *(["--encoder", encoder] if encoder else []))
    return model


def whole_load_rss(model: Path) -> int:
    # one short answer first: the weight file is mapped, and only a forward makes its pages resident
    code = ("import scalable_lm, sys; m = scalable_lm.load(sys.argv[1]); m.max_new_tokens = 1; m.predict(['Hello']); "
            "print([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1])")
    done = subprocess.run([sys.executable, "-c", code, str(model)], check=True, capture_output=True, text=True, cwd=REPO)
    return int(done.stdout.split()[-1]) * 1024


def measure(backbone: str, rows: int, encoder: str | None = None) -> dict:
    import httpx

    from scalable_lm import backbones

    model = directory(backbone, rows, encoder)
    folder = Path(backbones.resolve(backbone))
    light = Path(tempfile.mkdtemp(prefix="front-models-"))
    shared = bool(encoder and encoder.startswith("shared-l"))  # the front reads the first blocks: weights stay
    shutil.copytree(folder, light / folder.name,
                    ignore=None if shared else shutil.ignore_patterns("*.safetensors", "*.bin", "*.gguf"))
    env = {**os.environ, "SLM_MODEL_DIR": str(light), "SLM_CACHE_DIR": str(light / "cache")}
    engine_port, front_port = _port(), _port()
    engine = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "serve" / "stand_in_engine.py"),
                               str(engine_port)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    front = None
    try:
        _wait(f"http://127.0.0.1:{engine_port}/health", engine, 60)
        front = subprocess.Popen([sys.executable, "-m", "scalable_lm.cli", "serve", "--engine", "vllm", "--vllm-url",
                                  f"http://127.0.0.1:{engine_port}", "--model", str(model), "--port", str(front_port),
                                  "--vllm-state", str(light / "state")],
                                 cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 start_new_session=True)
        ready_s = _wait(f"http://127.0.0.1:{front_port}/health", front)
        at_ready = _status(front.pid)
        data = RUNS / "data"
        prompts = []
        for task in TASKS:
            rows_ = [json.loads(line) for line in (data / task / "test.jsonl").read_text().splitlines()[:10]]
            prompts += [(task, r["instruction"] + ("\n\n" + r["input"] if r.get("input") else "")) for r in rows_]
        routed = []
        with httpx.Client(timeout=120) as client:
            for task, prompt in prompts:
                r = client.post(f"http://127.0.0.1:{front_port}/v1/completions",
                                json={"model": "auto", "prompt": prompt, "max_tokens": 4, "temperature": 0})
                r.raise_for_status()
                routed.append(r.json()["choices"][0]["slm"]["task"] == task)
        after = _status(front.pid)
        os.killpg(front.pid, signal.SIGTERM)
        code = front.wait(timeout=60)
    finally:
        if front is not None and front.poll() is None:
            os.killpg(front.pid, signal.SIGKILL)
        engine.terminate()
        engine.wait(timeout=30)
    recreated = sorted(p.name for p in (light / folder.name).glob("*") if p.suffix in (".safetensors", ".bin"))
    shutil.rmtree(light, ignore_errors=True)
    files = ({"weight_files": "present: the front reads the first blocks"} if shared
             else {"weight_files_recreated": recreated})
    return {"backbone": backbone, "encoder": encoder or "the default (minilm-l4)",
            "backbone_parameters": backbones.parameter_count(backbone), "tasks": list(TASKS),
            "train_rows_per_task": rows, "ready_s": round(ready_s, 1), "rss_gb_at_ready": round(at_ready["VmRSS"] / 1e9, 3),
            "rss_gb_after_requests": round(after["VmRSS"] / 1e9, 3), "peak_rss_gb": round(after["VmHWM"] / 1e9, 3),
            "requests": len(routed), "routed_to_own_task": sum(routed), "exit_code_after_sigterm": code, **files,
            "whole_load_rss_gb": round(whole_load_rss(model) / 1e9, 3),
            "whole_load": "scalable_lm.load, then one prompt answered with one token"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", nargs="+", default=["smollm2"])
    parser.add_argument("--rows", type=int, default=40, help="training rows per task")
    parser.add_argument("--encoder", default=None,
                        help="the directories' query encoder (default: slm learn's); e.g. shared-l4")
    args = parser.parse_args()
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    for backbone in args.backbone:
        record = measure(backbone, args.rows, args.encoder)
        record.update(command="python benchmarks/serve/front_memory.py " + " ".join(sys.argv[1:]), commit=commit,
                      date=time.strftime("%Y-%m-%d"), engine="stand-in (benchmarks/serve/stand_in_engine.py)")
        results[backbone + (f"+{args.encoder}" if args.encoder else "")] = record
        OUT.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(record, indent=2), flush=True)


if __name__ == "__main__":
    main()
