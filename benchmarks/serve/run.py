"""Serving benchmark: a bounded asynchronous load generator against `slm serve` on 127.0.0.1.

Usage:
    python benchmarks/serve/run.py --data-dir ../shared/datasets [--part classifier|generative|soak ...]

Parts (each writes its own key into benchmarks/results/serve/serve.json as soon as it ends, so a run can be
resumed part by part; `--part` may be repeated):

- classifier: the 5 CL-5 tasks learned with `slm learn` (MiniLM, defaults, --max-train rows per task) into
  runs/serve/classifier (with `--encoder E [--targets ...]`: learned so into runs/serve/classifier-E, and
  recorded as the part `classifier-E`); single-text /v1/classify requests drawn mixed from all tasks' test rows at
  concurrency 1, 8 and 32. Beside it, in the same run: the same server serving the plain backbone (no
  query encoding, no mixing: task 0's head answers every input; benchmarks/serve/variant.py), and
  `--max-batch 1` at concurrency 32. The answers of the concurrency-32 run cover every test row once and
  are scored as `slm eval` scores them (right task and right label), next to `slm eval` on the same rows.
- generative: the 3 Instruct-3 tasks learned into runs/serve/generative (SmolLM2-135M-Instruct);
  /v1/chat/completions with max_tokens 32, temperature 0 and ignore_eos (every answer is 32 tokens, so both
  servers do the same work), prompts mixed from the three tasks; beside
  it the same server on one merged LoRA (task 0's P entries, mean weights, merged into the frozen weights;
  requests name model "base", so no query and no mixing) and `--max-batch 1` at concurrency 32.
- soak: the classifier server at concurrency 32 for --soak-s seconds; resident memory sampled every 5 s.

Every request count is fixed in advance and every server is stopped (SIGTERM) by this script.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
OUT = REPO / "benchmarks" / "results" / "serve"
RUNS = REPO / "runs" / "serve"
CL5 = ["agnews", "yelp", "amazon", "yahoo", "dbpedia"]
INSTRUCT3 = ["medical", "mmlu", "finance"]


def _env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    """A server process (the `slm serve` CLI, or variant.py) on a free loopback port, stopped by SIGTERM."""

    def __init__(self, argv: list[str], log: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "w")
        self.proc = subprocess.Popen([*argv, "--port", str(self.port)], stdout=self.log, stderr=subprocess.STDOUT,
                                     env=_env(), cwd=REPO)
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}); see {log}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"server not ready after 300 s; see {log}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def slm_serve(model_dir: Path, *flags) -> list[str]:
    return [sys.executable, "-m", "scalable_lm.cli", "-q", "serve", "--model", str(model_dir), *map(str, flags)]


def variant(name: str, model_dir: Path, *flags) -> list[str]:
    return [sys.executable, str(HERE / "variant.py"), name, "--model", str(model_dir), *map(str, flags)]


async def load(url: str, path: str, bodies: list[dict], concurrency: int, seconds: float | None = None,
               on_tick=None) -> dict:
    """Send ``bodies`` (cycled when ``seconds`` is given) with ``concurrency`` requests in flight.

    Returns throughput, latency percentiles, token counts, failures and every answer body (by index).
    """
    latencies, answers, failures, tokens = [], {}, [], 0
    next_index = 0
    start = time.perf_counter()

    def take() -> int | None:
        nonlocal next_index
        if seconds is None and next_index >= len(bodies):
            return None
        if seconds is not None and time.perf_counter() - start >= seconds:
            return None
        i, next_index = next_index, next_index + 1
        return i

    async def worker(client):
        nonlocal tokens
        while (i := take()) is not None:
            t0 = time.perf_counter()
            try:
                r = await client.post(path, json=bodies[i % len(bodies)])
            except httpx.HTTPError as err:
                failures.append({"index": i, "error": type(err).__name__})
                continue
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                failures.append({"index": i, "status": r.status_code, "body": r.text[:200]})
                continue
            body = r.json()
            tokens += body.get("usage", {}).get("completion_tokens", 0)
            if seconds is None:
                answers[i] = body

    async def ticker():
        while True:
            await asyncio.sleep(5)
            on_tick(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        tick = asyncio.create_task(ticker()) if on_tick else None
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        if tick:
            tick.cancel()
    wall = time.perf_counter() - start
    if failures and len(failures) == len(latencies) + sum("error" in f for f in failures):
        raise RuntimeError(f"every request failed, e.g. {failures[0]}")  # a broken benchmark, not a measurement
    q = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [latencies[0]] * 99 if latencies else [0] * 99
    return {"concurrency": concurrency, "requests": len(latencies) + sum("error" in f for f in failures),
            "failed": len(failures), "failures": failures[:10], "wall_s": round(wall, 3),
            "requests_per_s": round(len(latencies) / wall, 3), "tokens": tokens,
            "tokens_per_s": round(tokens / wall, 3), "p50_s": round(q[49], 4), "p95_s": round(q[94], 4),
            "p99_s": round(q[98], 4), "answers": answers}


def _strip(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "answers"}


# ---- model directories --------------------------------------------------------------------------------
def learn(model_dir: Path, task: str, data: Path, *flags) -> None:
    manifest = model_dir / "manifest.json"
    if manifest.exists() and task in [t["name"] for t in json.loads(manifest.read_text())["tasks"]]:
        return  # learned by an earlier (interrupted) run
    cmd = [sys.executable, "-m", "scalable_lm.cli", "-q", "learn", "--model", str(model_dir), "--task", task,
           "--data", str(data), *map(str, flags)]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True, env=_env(), cwd=REPO)


def classifier_dir(data_dir: Path, max_train: int, encoder: str | None = None, targets: list[str] | None = None) -> Path:
    """The 5 CL-5 tasks learned into runs/serve/classifier (defaults) or runs/serve/classifier-ENCODER."""
    model_dir = RUNS / ("classifier" if encoder is None else f"classifier-{encoder}")
    flags = [*(["--encoder", encoder] if encoder else []), *(["--targets", *targets] if targets else [])]
    for task in CL5:
        learn(model_dir, task, data_dir / task / "train.jsonl", "--max-train", max_train, *flags)
    return model_dir


def classifier_rows(data_dir: Path, per_task: int) -> list[tuple[str, str, str]]:
    """``(task, text, gold label name)`` mixed over tasks, seeded."""
    from scalable_lm.data.tasks import load_task

    rows = []
    for i, task in enumerate(CL5):
        t = load_task(task, data_dir / task / "train.jsonl", data_dir / task / "test.jsonl", max_train=10)
        test = random.Random(1000 + i).sample(t.test, min(per_task, len(t.test)))
        rows += [(task, x, t.label_names[y]) for x, y in test]
    random.Random(0).shuffle(rows)
    return rows


def generative_dir(data_dir: Path, max_train: int) -> tuple[Path, dict]:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from instruct.tasks import BUILDERS

    model_dir, tasks = RUNS / "generative", {}
    (RUNS / "data").mkdir(parents=True, exist_ok=True)
    for task in INSTRUCT3:
        t = BUILDERS[task](data_dir, max_train, 20, seed=0)
        path = RUNS / "data" / f"{task}.jsonl"
        path.write_text("".join(json.dumps({"instruction": p, "output": a}) + "\n" for p, a in t.train))
        learn(model_dir, task, path, "--epochs", 1, "--batch-size", 8, "--max-length", 192)
        tasks[task] = t.test
    return model_dir, tasks


# ---- parts --------------------------------------------------------------------------------------------
def part_classifier(args) -> dict:
    model_dir = classifier_dir(args.data_dir, args.max_train, args.encoder, args.targets)
    rows = classifier_rows(args.data_dir, args.test_per_task)
    bodies = [{"model": "auto", "input": text} for _, text, _ in rows]
    plan = {1: min(100, len(rows)), 8: min(200, len(rows)), 32: len(rows)}
    manifest = json.loads((model_dir / "manifest.json").read_text())
    out: dict = {"model_dir_tasks": CL5, "test_rows": len(rows), "max_train": args.max_train, "runs": {},
                 "encoder": manifest["config"]["model"]["encoder"], "targets": manifest["config"]["bank"]["targets"]}
    for name, argv in (("routed", slm_serve(model_dir)), ("plain", variant("plain", model_dir)),
                       ("max_batch_1", slm_serve(model_dir, "--max-batch", 1))):
        server = Server(argv, RUNS / f"{model_dir.name}-{name}.log")
        try:
            levels = [32] if name == "max_batch_1" else [1, 8, 32]
            out["runs"][name] = {}
            for c in levels:
                asyncio.run(load(server.url, "/v1/classify", bodies[:16], c))  # warm-up
                result = asyncio.run(load(server.url, "/v1/classify", bodies[: plan[c]], c))
                result["server_rss_mb"] = round(_rss_mb(server.proc.pid), 1)
                print(f"classifier {name} c={c}: {_strip(result)}", flush=True)
                if name == "routed" and c == 32:
                    out["served_accuracy"] = served_accuracy(rows, result["answers"])
                out["runs"][name][str(c)] = _strip(result)
        finally:
            server.stop()
    out["slm_eval"] = slm_eval(model_dir, rows)
    out["ratios"] = ratios(out["runs"], "plain", "requests_per_s")
    return out


def ratios(runs: dict, baseline: str, metric: str) -> dict:
    """Routed / ``baseline`` at each concurrency, and batching on / ``--max-batch 1`` at 32, on ``metric``."""
    r, b, one = runs["routed"], runs[baseline], runs["max_batch_1"]
    name, suffix = ("plain", "") if baseline == "plain" else ("merged_tokens", "_tokens")
    out = {f"routed_over_{name}_c{c}": round(r[c][metric] / b[c][metric], 3) for c in ("1", "8", "32")}
    out[f"batching_on_over_max_batch_1_c32{suffix}"] = round(r["32"][metric] / one["32"][metric], 3)
    return out


def served_accuracy(rows, answers: dict) -> dict:
    per_task: dict[str, list[int]] = {}
    for i, (task, _, gold) in enumerate(rows):
        d = answers[i]["data"][0]
        per_task.setdefault(task, []).append(int(d["task"] == task and d["label"] == gold))
    scores = {t: sum(v) / len(v) for t, v in per_task.items()}
    return {"per_task": scores, "average": sum(scores.values()) / len(scores)}


def slm_eval(model_dir: Path, rows) -> dict:
    """`slm eval` (mixed batches, no task-ID) on exactly the served rows."""
    files = []
    for task in CL5:
        path = RUNS / "data" / f"eval-{task}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"text": x, "label": y}) + "\n" for t, x, y in rows if t == task))
        files.append(f"{task}={path}")
    report = RUNS / "eval.json"
    subprocess.run([sys.executable, "-m", "scalable_lm.cli", "-q", "eval", "--model", str(model_dir), "--json",
                    str(report), "--data", *files], check=True, env=_env(), cwd=REPO)
    scores = json.loads(report.read_text())
    return {"per_task": {t: s["accuracy"] for t, s in scores["scores"].items()}, "average": scores["average_accuracy"]}


def part_generative(args) -> dict:
    model_dir, tests = generative_dir(args.data_dir, args.gen_max_train)
    prompts = [p for i in range(20) for t in INSTRUCT3 for p, _ in tests[t][i: i + 1]]  # interleaved tasks
    plan = {1: 6, 8: 24, 32: 64}

    def bodies(model):
        return [{"model": model, "messages": [{"role": "user", "content": p}], "max_tokens": 32, "temperature": 0,
                 "ignore_eos": True} for p in prompts]  # 32 tokens each: the same work for both servers

    out: dict = {"max_tokens": 32, "max_train": args.gen_max_train, "runs": {}}
    for name, argv, model in (("routed", slm_serve(model_dir), "auto"), ("merged_lora", variant("merged", model_dir), "base"),
                              ("max_batch_1", slm_serve(model_dir, "--max-batch", 1), "auto")):
        server = Server(argv, RUNS / f"generative-{name}.log")
        try:
            out["runs"][name] = {}
            for c in ([32] if name == "max_batch_1" else [1, 8, 32]):
                asyncio.run(load(server.url, "/v1/chat/completions", bodies(model)[:2], min(c, 2)))  # warm-up
                n = 32 if name == "max_batch_1" else plan[c]
                cycled = (bodies(model) * 4)[:n]
                result = asyncio.run(load(server.url, "/v1/chat/completions", cycled, c))
                result["server_rss_mb"] = round(_rss_mb(server.proc.pid), 1)
                if name == "routed":
                    routed_to = [a["choices"][0]["slm"]["task"] for a in result["answers"].values()]
                    result["routed_to"] = {t: routed_to.count(t) for t in sorted(set(routed_to))}
                print(f"generative {name} c={c}: {_strip(result)}", flush=True)
                out["runs"][name][str(c)] = _strip(result)
        finally:
            server.stop()
    out["ratios"] = ratios(out["runs"], "merged_lora", "tokens_per_s")
    return out


def part_soak(args) -> dict:
    model_dir = classifier_dir(args.data_dir, args.max_train)
    rows = classifier_rows(args.data_dir, args.test_per_task)
    bodies = [{"model": "auto", "input": text} for _, text, _ in rows]
    server = Server(slm_serve(model_dir), RUNS / "soak.log")
    samples = []
    try:
        def tick(t):
            samples.append((round(t, 1), round(_rss_mb(server.proc.pid), 1)))
        result = asyncio.run(load(server.url, "/v1/classify", bodies, 32, seconds=args.soak_s, on_tick=tick))
    finally:
        code = server.stop()
    warm = next((mb for t, mb in samples if t >= args.warmup_s), samples[0][1])
    after = [mb for t, mb in samples if t >= args.warmup_s]
    return {"seconds": args.soak_s, "concurrency": 32, **_strip(result), "rss_after_warmup_mb": warm,
            "rss_max_after_warmup_mb": max(after), "rss_last_mb": after[-1],
            "rss_growth_pct": round(100 * (max(after) - warm) / warm, 2), "rss_samples": samples,
            "server_exit_code": code}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--part", action="append", choices=["classifier", "generative", "soak"],
                        help="which parts to run (repeatable; default: all three)")
    parser.add_argument("--max-train", type=int, default=300, help="training rows per CL-5 task")
    parser.add_argument("--test-per-task", type=int, default=100, help="CL-5 test rows per task sent to the server")
    parser.add_argument("--gen-max-train", type=int, default=60, help="training rows per Instruct-3 task")
    parser.add_argument("--encoder", help="classifier part: learn with this --encoder (e.g. shared-l4) into "
                        "runs/serve/classifier-ENCODER and record the part as classifier-ENCODER")
    parser.add_argument("--targets", nargs="+", help="classifier part: the --targets to learn with (with --encoder)")
    parser.add_argument("--soak-s", type=float, default=600.0)
    parser.add_argument("--warmup-s", type=float, default=60.0)
    args = parser.parse_args(argv)
    if not args.data_dir.is_dir():
        parser.error(f"{args.data_dir} not found (the shared datasets folder)")
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "serve.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "src"], capture_output=True, text=True, cwd=REPO).stdout)
    for part in args.part or ["classifier", "generative", "soak"]:
        start = time.time()
        record = {"classifier": part_classifier, "generative": part_generative, "soak": part_soak}[part](args)
        record.update(command="python benchmarks/serve/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                      commit=commit, src_dirty=dirty, cpu_threads=os.cpu_count(), minutes=round((time.time() - start) / 60, 1),
                      date=time.strftime("%Y-%m-%d"))
        key = f"{part}-{args.encoder}" if part == "classifier" and args.encoder else part
        results[key] = record
        path.write_text(json.dumps(results, indent=2))
        print(f"wrote {key} to {path}", flush=True)


if __name__ == "__main__":
    main()
