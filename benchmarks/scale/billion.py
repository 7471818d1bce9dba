"""A billion-parameter chat model end to end through the CLI: learn two real instruction tasks, predict, eval,
serve in this process and behind vLLM.

Usage:
    python benchmarks/scale/billion.py [--backbone qwen1.5b] [--train 40] [--test 20] [DATA_DIR]

DATA_DIR is ../shared/datasets (default). Two tasks are written as instruction JSONL (instruction, input,
output) under runs/billion/data: ``finance`` (finance_fpb: the sentiment of a financial news line) and
``agnews`` (the topic of a news article), ``--train`` training rows each (seeded sample of the train split) and
``--test`` held-out rows each (of the test split). Then, each as a user runs it (`python -m scalable_lm.cli`):

1. ``slm learn`` of each task on the backbone (one epoch, every other option at its default): wall seconds and
   the peak RSS of that process (``wait4``'s ``ru_maxrss``);
2. ``slm predict --json`` of the held-out prompts (no task given): the answers, and seconds;
3. ``slm eval`` of both tasks (label match and the routing table): its JSON;
4. ``slm serve`` (the in-process engine): the same prompts as chat completions, greedy: completion tokens per
   second over the run (one client, one request at a time), and how many answers equal ``slm predict``'s;
5. ``slm serve --engine vllm`` (vLLM started by the front from ``.venv-vllm``, float32 on a CPU): seconds to
   ready, tokens per second as above, and how many answers equal ``slm predict``'s.

Each step's record is written to benchmarks/results/scale/billion.json as soon as it is done, and a step
already recorded for the same backbone and row counts is skipped (a run cut short resumes). Every record
carries ``backbone_parameters``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks" / "instruct"))
sys.path.insert(0, str(REPO / "benchmarks" / "serve"))
from tasks import CLASSIFY, FINANCE, read_jsonl  # noqa: E402
from vllm_front import free_port, slm, wait  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "scale" / "billion.json"
MAX_NEW = 8  # longest answer, in tokens: the labels are one or two words


def write_tasks(data: Path, out: Path, n_train: int, n_test: int) -> dict[str, list[dict]]:
    """The two tasks' training files under ``out`` and their held-out rows (returned)."""
    agnews_labels = [n for _, n in sorted({(r["label"], r["label_name"])
                                           for r in read_jsonl(data / "agnews" / "train.jsonl")})]
    sources = {"finance": ("finance_fpb", FINANCE),
               "agnews": ("agnews", f"{CLASSIFY['agnews']} Answer with one of: {', '.join(agnews_labels)}.")}
    held_out = {}
    for task, (folder, instruction) in sources.items():
        def rows(split, n, seed):
            picked = random.Random(seed).sample(read_jsonl(data / folder / f"{split}.jsonl"), n)
            return [{"instruction": instruction, "input": r["text"], "output": r["label_name"]} for r in picked]
        (out / task).mkdir(parents=True, exist_ok=True)
        (out / task / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows("train", n_train, 0)))
        held_out[task] = rows("test", n_test, 1)
    return held_out


def run_measured(argv: list[str], env: dict) -> tuple[float, int, str]:
    """Run ``argv``: its wall seconds, the peak RSS of that process alone (``os.wait4``) and its standard output."""
    start = time.perf_counter()
    with open(REPO / "runs" / "billion" / "last.out", "w") as out, open(REPO / "runs" / "billion" / "last.err", "w") as err:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = (REPO / "runs" / "billion" / "last.err").read_text()[-2000:]
        raise RuntimeError(f"{' '.join(map(str, argv[3:]))} failed ({proc.returncode}): {tail}")
    return seconds, usage.ru_maxrss * 1024, (REPO / "runs" / "billion" / "last.out").read_text()


def serve(model: Path, prompts: list[str], env: dict, log: Path, *extra) -> dict:
    """Start ``slm serve`` (``extra``: engine flags), answer ``prompts`` one at a time, stop it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(slm("serve", "--model", model, "--port", port, "--max-new-tokens", MAX_NEW, *extra),
                            cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        started = time.perf_counter()
        wait(url, proc, seconds=1500)  # /health answers 200 once the server is ready (503 before)
        ready = time.perf_counter() - started
        answers, tokens = [], 0
        with httpx.Client(base_url=url, timeout=600) as client:
            client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": prompts[0]}],
                                                      "max_tokens": 2, "temperature": 0})  # warm-up, not counted
            start = time.perf_counter()
            for prompt in prompts:
                r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": prompt}],
                                                              "max_tokens": MAX_NEW, "temperature": 0})
                r.raise_for_status()
                body = r.json()
                answers.append({"text": body["choices"][0]["message"]["content"],
                                "task": body["choices"][0]["slm"]["task"]})
                tokens += body["usage"]["completion_tokens"]
            seconds = time.perf_counter() - start
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    return {"ready_s": round(ready, 1), "seconds": round(seconds, 1), "completion_tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 2), "answers": answers, "exit_code": proc.returncode}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default=str(REPO.parent / "shared" / "datasets"))
    parser.add_argument("--backbone", default="qwen1.5b")
    parser.add_argument("--train", type=int, default=40, help="training rows per task")
    parser.add_argument("--test", type=int, default=20, help="held-out prompts per task")
    parser.add_argument("--skip", action="append", default=[], choices=["serve", "vllm"],
                        help="leave a serving step out (repeatable)")
    parser.add_argument("--vllm-arg", action="append", default=["--gpu-memory-utilization=0.5"],
                        help="passed to slm serve --engine vllm as --vllm-arg (repeatable)")
    args = parser.parse_args(argv)
    from scalable_lm import backbones
    from scalable_lm.scoring import label_match

    runs = REPO / "runs" / "billion"
    model = runs / f"{args.backbone}-t{args.train}"
    runs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SLM_CACHE_DIR": str(runs / "cache")}
    held_out = write_tasks(Path(args.data), runs / "data", args.train, args.test)
    prompts = [(task, f"{r['instruction']}\n\n{r['input']}", r["output"]) for task, rows in held_out.items()
               for r in rows]
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    key = f"{args.backbone}-t{args.train}-h{args.test}"
    record = results.get(key) or {
        "backbone": args.backbone, "backbone_parameters": backbones.parameter_count(args.backbone),
        "tasks": list(held_out), "train_rows_per_task": args.train, "held_out_per_task": args.test,
        "data": "finance_fpb and agnews of ../shared/datasets, seeded samples (train: seed 0; test: seed 1)",
        "command": "python benchmarks/scale/billion.py " + " ".join(argv or sys.argv[1:]), "steps": {}}
    record.setdefault("cpus", os.cpu_count())
    steps = record["steps"]

    def save(name: str, value: dict) -> None:
        steps[name] = {**value, "date": time.strftime("%Y-%m-%d %H:%M")}
        results[key] = record
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        print(name, json.dumps({k: v for k, v in value.items() if k not in ("answers", "differences")}), flush=True)

    for task in held_out:
        if f"learn {task}" not in steps:
            seconds, peak, _ = run_measured(slm("learn", "--model", model, "--task", task, "--data",
                                                runs / "data" / task / "train.jsonl", "--backbone", args.backbone,
                                                "--epochs", 1), env)
            save(f"learn {task}", {"seconds": round(seconds, 1), "peak_rss_gb": round(peak / 1e9, 2)})
    texts = [p for _, p, _ in prompts]
    if "predict" not in steps:
        seconds, peak, out = run_measured(slm("predict", "--model", model, "--json", "--max-new-tokens", MAX_NEW,
                                              *texts), env)
        answers = [json.loads(line) for line in out.splitlines()]
        save("predict", {"seconds": round(seconds, 1), "peak_rss_gb": round(peak / 1e9, 2),
                         "routed_to_own_task": sum(a["task"] == t for a, (t, _, _) in zip(answers, prompts)),
                         "label_match": round(label_match([a["label"] for a in answers], [g for _, _, g in prompts]), 4),
                         "prompts": len(prompts), "answers": [{"text": a["label"], "task": a["task"]} for a in answers]})
    if "eval" not in steps:
        for task, rows in held_out.items():
            (runs / "data" / task / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        seconds, peak, out = run_measured(slm("eval", "--model", model, "--max-new-tokens", MAX_NEW, "--json",
                                              "--data", *[f"{t}={runs / 'data' / t / 'test.jsonl'}" for t in held_out]),
                                          env)
        save("eval", {"seconds": round(seconds, 1), "peak_rss_gb": round(peak / 1e9, 2), "scores": json.loads(out)})
    steps["eval"]["scores"].pop("model", None)  # this machine's path of the directory: not a result
    predicted = steps["predict"]["answers"]
    engines = {"serve": [], "vllm": ["--engine", "vllm", *[f"--vllm-arg={a}" for a in args.vllm_arg]]}
    for name, extra in engines.items():
        if name in steps or name in args.skip:
            continue
        served = serve(model, texts, env, runs / f"serve-{name}.log", *extra)
        same = [p["text"] == s["text"] for p, s in zip(predicted, served["answers"])]
        served.update(same_answer_as_predict=sum(same), same_task_as_predict=sum(
            p["task"] == s["task"] for p, s in zip(predicted, served["answers"])), prompts=len(texts),
            differences=[{"prompt": t[:100], "slm_predict": p["text"], name: s["text"]}
                         for t, p, s, ok in zip(texts, predicted, served["answers"], same) if not ok][:10])
        save(name, served)
    bank = json.loads((model / "manifest.json").read_text())["config"]["bank"]  # the layout the directory got
    record["bank"] = {k: bank[k] for k in ("entries_per_task", "top_k", "rank", "alpha", "router")}
    results[key] = record
    OUT.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
