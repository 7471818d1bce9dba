"""The cost of routing in front of vLLM: `slm serve --engine vllm` (the front picks each request's adapter)
against the same vLLM with the adapter named by the client, and against `slm serve` (the local engine).

Usage:
    python benchmarks/serve/vllm_front.py [--model DIR] [--vllm-python PY] [--out FILE] [--rounds N]

The model directory (default: runs/vllm_front/model, learned here once from the demo's instruction data:
support-intent and headline-topic, SmolLM2, 60 rows, 1 epoch) is served three ways, one after another, on
the same prompts (the demo's test prompts of both tasks, mixed): /v1/chat/completions, temperature 0,
max_tokens 32 with ignore_eos (every answer is 32 tokens, so every server does the same work), at
concurrency 1, 8 and 32 (8, 32 and 64 requests). "client-named" sends the same requests straight to the
vLLM engine the front started, with `model` = the adapter of the prompt's own task (what a client would
have to know). The front and client-named runs alternate at each level, --rounds times each (default 2), and
each level's tokens/s is the mean of its rounds: run one after the other (as before 2026-12-04), whichever
went second had the engine warmed up by the first and another minute of this shared machine. Writes tokens/s, requests/s and latency per run, the ratios, and the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
RUNS = REPO / "runs" / "vllm_front"
OUT = REPO / "benchmarks" / "results" / "serve" / "vllm_front.json"
TASKS = ["support-intent", "headline-topic"]
LEVELS = {1: 8, 8: 32, 32: 64}  # concurrency -> requests


def slm(*argv) -> list[str]:
    return [sys.executable, "-m", "scalable_lm.cli", "-q", *map(str, argv)]


def env() -> dict:
    return {**os.environ, "SLM_CACHE_DIR": str(RUNS / "cache"), "PYTHONUNBUFFERED": "1"}


def setup(model: Path) -> list[tuple[str, str]]:
    data = RUNS / "data"
    if not (data / TASKS[0] / "test.jsonl").exists():
        subprocess.run(slm("demo", "--write-data", data, "--instructions"), check=True, env=env())
    for task in TASKS:
        manifest = model / "manifest.json"
        if manifest.exists() and task in [t["name"] for t in json.loads(manifest.read_text())["tasks"]]:
            continue
        subprocess.run(slm("learn", "--model", model, "--task", task, "--data", data / task / "train.jsonl",
                           "--max-train", "60", "--epochs", "1"), check=True, env=env())
    rows = []
    for task in TASKS:
        for line in (data / task / "test.jsonl").open():
            r = json.loads(line)
            rows.append((task, r["instruction"] + "\n\n" + r["input"]))
    rows = [rows[i // 2 + (len(rows) // 2 if i % 2 else 0)] for i in range(len(rows))]  # the two tasks mixed
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(url: str, proc: subprocess.Popen, seconds: float = 900) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the server did not become ready")


async def load(url: str, bodies: list[dict], concurrency: int) -> dict:
    latencies, tokens, failed = [], 0, 0
    queue = list(bodies)

    async def worker(client):
        nonlocal tokens, failed
        while queue:
            body = queue.pop(0)
            start = time.perf_counter()
            r = await client.post("/v1/chat/completions", json=body)
            latencies.append(time.perf_counter() - start)
            if r.status_code != 200:
                failed += 1
                continue
            tokens += r.json()["usage"]["completion_tokens"]
    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=900) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    wall = time.perf_counter() - start
    latencies.sort()
    return {"concurrency": concurrency, "requests": len(bodies), "failed": failed, "wall_s": round(wall, 2),
            "tokens": tokens, "tokens_per_s": round(tokens / wall, 2), "requests_per_s": round(len(bodies) / wall, 3),
            "p50_s": round(statistics.median(latencies), 3),
            "p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 3)}


def bodies(rows, n: int, model_of) -> list[dict]:
    return [{"model": model_of(task), "messages": [{"role": "user", "content": prompt}], "max_tokens": 32,
             "temperature": 0, "ignore_eos": True} for task, prompt in (rows * (n // len(rows) + 1))[:n]]


def interleaved(front_url: str, engine_url: str, rows, adapters: dict, rounds: int) -> tuple[dict, dict]:
    """Per level, ``rounds`` alternations of the front (``model=auto``) and the engine with the adapter named;
    returns both runs' levels, each with its rounds and their mean tokens/s (``tokens_per_s``)."""
    for url, model_of in ((front_url, lambda task: "auto"), (engine_url, lambda task: adapters[task])):
        asyncio.run(load(url, bodies(rows, 4, model_of), 4))  # warm-up, not counted
    out: tuple[dict, dict] = ({}, {})
    for concurrency, n in LEVELS.items():
        runs: tuple[list, list] = ([], [])
        for _ in range(rounds):
            for side, (url, model_of) in enumerate(((front_url, lambda task: "auto"),
                                                    (engine_url, lambda task: adapters[task]))):
                runs[side].append(asyncio.run(load(url, bodies(rows, n, model_of), concurrency)))
                print(url, runs[side][-1], flush=True)
        for side in (0, 1):
            first = runs[side][0]
            out[side][str(concurrency)] = {**first, "tokens_per_s": round(statistics.fmean(r["tokens_per_s"] for r in
                                                                                          runs[side]), 2),
                                           "rounds": runs[side]}
    return out


def run_levels(url: str, rows, model_of) -> dict:
    asyncio.run(load(url, bodies(rows, 4, model_of), 4))  # warm-up, not counted
    out = {}
    for concurrency, n in LEVELS.items():
        out[str(concurrency)] = asyncio.run(load(url, bodies(rows, n, model_of), concurrency))
        print(url, out[str(concurrency)], flush=True)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=RUNS / "model")
    parser.add_argument("--vllm-python", default=str(REPO / ".venv-vllm" / "bin" / "python"))
    parser.add_argument("--rounds", type=int, default=2, help="alternations of front and client-named per level")
    parser.add_argument("--vllm-arg", action="append", default=[], help="passed on to vLLM (repeat)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    rows = setup(args.model)
    record = {"command": " ".join(["python", "benchmarks/serve/vllm_front.py", *(argv or sys.argv[1:])]),
              "tasks": TASKS, "max_tokens": 32, "prompts": len(rows), "runs": {}}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    front = subprocess.Popen(slm("serve", "--engine", "vllm", "--model", args.model, "--port", port,
                                 "--vllm-python", args.vllm_python, *[f"--vllm-arg={a}" for a in args.vllm_arg]),
                             env=env(), stdout=open(RUNS / "front.log", "w"), stderr=subprocess.STDOUT)
    try:
        started = time.perf_counter()
        wait(url, front)
        record["front_ready_s"] = round(time.perf_counter() - started, 1)
        health = httpx.get(url + "/health").json()
        engine = health["engines"][0]["url"]
        adapters = {m["id"].split("@")[0]: m["id"] for m in httpx.get(engine + "/v1/models").json()["data"]
                    if "@" in m["id"]}
        record["adapters"] = adapters
        # interleaved per level, twice each (front, client-named, front, client-named): neither path gets the
        # engine's warm-up or a quieter minute of the machine to itself; each level's figure is the mean of its two
        through_front, named = interleaved(url, engine, rows, adapters, args.rounds)
        record["runs"]["front_vllm"], record["runs"]["vllm_client_named"] = through_front, named
        record["rounds"] = args.rounds
    finally:
        front.send_signal(signal.SIGTERM)
        front.wait(timeout=120)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    local = subprocess.Popen(slm("serve", "--model", args.model, "--port", port, "--max-batch", "32"), env=env(),
                             stdout=open(RUNS / "local.log", "w"), stderr=subprocess.STDOUT)
    try:
        wait(url, local)
        record["runs"]["slm_serve"] = run_levels(url, rows, lambda task: "auto")
    finally:
        local.send_signal(signal.SIGTERM)
        local.wait(timeout=120)
    runs = record["runs"]
    record["ratios"] = {f"front_over_client_named_c{c}": round(runs["front_vllm"][str(c)]["tokens_per_s"] /
                                                              runs["vllm_client_named"][str(c)]["tokens_per_s"], 3)
                        for c in LEVELS}
    record["ratios"].update({f"front_over_slm_serve_c{c}": round(runs["front_vllm"][str(c)]["tokens_per_s"] /
                                                                runs["slm_serve"][str(c)]["tokens_per_s"], 3)
                             for c in LEVELS})
    import platform

    record["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record["ratios"], indent=2))


if __name__ == "__main__":
    main()
