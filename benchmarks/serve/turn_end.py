"""Where generated answers end: completion tokens per request and tokens/s of `slm serve` on natural-length
chat answers (greedy, no ignore_eos), for one model directory served by one scalable-lm.

Usage:
    python benchmarks/serve/turn_end.py --model DIR --prompts FILE.jsonl --label NAME [--python PY] [--src SRC]

`--python` and `--src` choose the interpreter and the scalable-lm source that serve (default: this one), so
that the same prompts can be sent to an older scalable-lm (issue 35: "before" = scalable-lm 0.1.0 on
transformers 4, whose SmolLM2 folder said eos = <|im_start|>). Prompts are the `instruction` + `input` of a
JSONL of instruction rows; every prompt is sent once, at concurrency 8, with max_tokens 64 and temperature 0.
Adds key NAME to benchmarks/results/serve/turn_end.json: per-request completion tokens and text, their totals,
wall time and tokens/s, and the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

OUT = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "serve" / "turn_end.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def send(url: str, prompts: list[str], concurrency: int = 8, max_tokens: int = 64) -> list[dict]:
    results: list[dict | None] = [None] * len(prompts)
    queue = list(enumerate(prompts))

    async def worker(client):
        while queue:
            i, prompt = queue.pop(0)
            r = await client.post("/v1/chat/completions", json={
                "model": "auto", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                "temperature": 0})
            body = r.json()
            results[i] = {"status": r.status_code, "text": body["choices"][0]["message"]["content"],
                          "completion_tokens": body["usage"]["completion_tokens"],
                          "finish_reason": body["choices"][0]["finish_reason"]}
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--prompts", required=True, type=Path, help="JSONL of instruction rows")
    parser.add_argument("--label", required=True)
    parser.add_argument("--limit", type=int, default=60, help="first N prompts")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--src", help="PYTHONPATH for the serving scalable-lm (an older checkout's src/)")
    parser.add_argument("--model-dir-env", help="SLM_MODEL_DIR for the server (where converted models live)")
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in args.prompts.open()][: args.limit]
    prompts = [r["instruction"] + ("\n\n" + r["input"] if r.get("input") else "") for r in rows]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.src:
        env["PYTHONPATH"] = args.src
    if args.model_dir_env:
        env["SLM_MODEL_DIR"] = args.model_dir_env
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([args.python, "-m", "scalable_lm.cli", "serve", "--model", str(args.model), "--port",
                               str(port), "--max-new-tokens", "64"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(900):
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        asyncio.run(send(url, prompts[:8]))  # warm-up, not counted
        start = time.perf_counter()
        results = asyncio.run(send(url, prompts))
        wall = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(timeout=120)
    tokens = sum(r["completion_tokens"] for r in results)
    record = {"command": " ".join(["python", "benchmarks/serve/turn_end.py", *(argv or sys.argv[1:])]),
              "requests": len(results), "failed": sum(r["status"] != 200 for r in results),
              "completion_tokens": tokens, "tokens_per_request": round(tokens / len(results), 2),
              "wall_s": round(wall, 2), "tokens_per_s": round(tokens / wall, 2),
              "requests_per_s": round(len(results) / wall, 3), "answers": results}
    out = json.loads(OUT.read_text()) if OUT.exists() else {}
    out[args.label] = record
    OUT.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "answers"}, indent=2))


if __name__ == "__main__":
    main()
