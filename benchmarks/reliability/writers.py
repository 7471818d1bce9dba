"""Two `slm learn` runs on one directory at once: is a task ever lost, is a writer ever told "learned" for a
task the directory does not hold, and how fast is the second writer refused?

Usage:
    python benchmarks/reliability/writers.py [--trials 12] [--seed 0]

Trials alternate between three kinds:
- natural: both writers started together (no --wait): one learns, the other is refused.
- forced: writer A is stopped (SIGSTOP) at a random moment after it took the lock, B starts (no --wait) and
  must be refused while A is frozen; then A continues (SIGCONT) and must finish. This is the interleaving
  that lost a task before the lock (issue 15: a writer paused just before its save).
- forced-wait: as forced, but B has --wait 120: B waits for A, then learns; both tasks must be in the
  directory.
Each record goes to runs/reliability/writers.jsonl; the summary to benchmarks/results/reliability/writers.json.
Time to refusal is B's wall time minus the median wall time of a command that fails at once after the same
imports (its start-up), reported beside the raw wall time.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, RUNS, env, inspect, learn_argv, run, setup  # noqa: E402


def startup_s() -> float:
    """Wall time of an `slm learn` that fails right after the imports a refused writer also pays."""
    times = []
    for _ in range(3):
        start = time.perf_counter()
        run(learn_argv(RUNS / "trials" / "startup", "x", "fruit", "--rank", "0"))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def start(argv) -> tuple[subprocess.Popen, float]:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env()), time.perf_counter()


def finish(proc: subprocess.Popen, started: float, ended: float | None = None) -> dict:
    out, err = proc.communicate(timeout=300)
    return {"exit": proc.returncode, "wall_s": round((ended or time.perf_counter()) - started, 2),
            "said_learned": "learned '" in out, "error": err.strip()[:400]}


def finish_both(a: subprocess.Popen, a_t: float, b: subprocess.Popen, b_t: float) -> tuple[dict, dict]:
    """Wait for two processes, each one's wall time taken when it exits (not when the other is collected)."""
    ended: dict[int, float] = {}
    deadline = time.perf_counter() + 300
    while len(ended) < 2 and time.perf_counter() < deadline:
        for proc in (a, b):
            if proc.pid not in ended and proc.poll() is not None:
                ended[proc.pid] = time.perf_counter()
        time.sleep(0.01)
    return finish(a, a_t, ended.get(a.pid)), finish(b, b_t, ended.get(b.pid))


def trial(kind: str, i: int, rng: random.Random) -> dict:
    d = RUNS / "trials" / f"writers-{i}"
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(RUNS / "bases" / "two", d)
    a_argv = learn_argv(d, "weather", "weather")
    b_argv = learn_argv(d, "music", "music", *(["--wait", "120"] if kind == "forced-wait" else []))
    if kind == "natural":
        a, a_t = start(a_argv)
        b, b_t = start(b_argv)
        ra, rb = finish_both(a, a_t, b, b_t)
        frozen_s = None
    else:
        a, a_t = start(a_argv)
        while not (d / ".lock.owner").exists() and a.poll() is None:
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 1.5))  # somewhere in A's run: loading, training or saving
        a.send_signal(signal.SIGSTOP)
        frozen = time.perf_counter()
        b, b_t = start(b_argv)
        if kind == "forced":
            rb = finish(b, b_t)
            a.send_signal(signal.SIGCONT)
        else:
            time.sleep(3.0)
            a.send_signal(signal.SIGCONT)
            rb = None
        frozen_s = round(time.perf_counter() - frozen, 2)
        ra = finish(a, a_t)
        if rb is None:
            rb = finish(b, b_t)
    seen = inspect(d)
    tasks = seen["tasks"] or []
    false_learned = [name for name, r in (("weather", ra), ("music", rb)) if r["said_learned"] and name not in tasks]
    lost = [name for name, r in (("weather", ra), ("music", rb)) if r["exit"] == 0 and name not in tasks]
    record = {"kind": kind, "trial": i, "a": ra, "b": rb, "a_frozen_s": frozen_s, "tasks": tasks,
              "state": seen["state"], "orphans": seen["orphans"], "false_learned": false_learned, "lost": lost}
    refused = [r for r in (ra, rb) if r["exit"] != 0]
    if kind == "forced-wait":
        record["ok"] = ra["exit"] == 0 and rb["exit"] == 0 and {"weather", "music"} <= set(tasks)
    else:
        record["ok"] = len(refused) == 1 and "being written by another process" in refused[0]["error"]
    record["ok"] = record["ok"] and not false_learned and not lost and seen["state"] == "ok" and not seen["orphans"]
    shutil.rmtree(d, ignore_errors=True)
    return record


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    setup()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from kill9 import base_dirs

    base_dirs()
    base = startup_s()
    log = RUNS / "writers.jsonl"
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    rng = random.Random(args.seed + len(done))
    kinds = ["natural", "forced", "forced-wait"]
    for i in range(len(done), args.trials):
        record = trial(kinds[i % 3], i, rng)
        done.append(record)
        with log.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps({k: record[k] for k in ("kind", "trial", "tasks", "ok")}), flush=True)
    refusals = [r["b"] if r["b"]["exit"] else r["a"] for r in done if r["kind"] != "forced-wait"]
    summary = {"command": "python benchmarks/reliability/writers.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "date": time.strftime("%Y-%m-%d"), "trials": len(done),
               "by_kind": {k: sum(r["kind"] == k for r in done) for k in kinds},
               "ok": sum(r["ok"] for r in done), "tasks_lost": sum(len(r["lost"]) for r in done),
               "false_learned": sum(len(r["false_learned"]) for r in done),
               "startup_s": round(base, 2),
               "refused_wall_s": sorted(r["wall_s"] for r in refusals),
               "refused_after_startup_s_max": round(max(r["wall_s"] for r in refusals) - base, 2) if refusals else None,
               "failed_trials": [r for r in done if not r["ok"]]}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "writers.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "failed_trials"}, indent=2))


if __name__ == "__main__":
    main()
