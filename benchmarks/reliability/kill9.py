"""kill -9 at random moments during `slm learn` (into an existing and into a new directory), `slm merge` and
`slm remove`; after each kill: is the directory loadable, as it was before or after the command, can the
next command extend it, and does that command leave no orphan file?

Usage:
    python benchmarks/reliability/kill9.py [--learn 40] [--first 12] [--merge 10] [--remove 10] [--seed 0]

Each trial's record is appended to runs/reliability/kill9.jsonl as it ends (a rerun resumes); the summary
goes to benchmarks/results/reliability/kill9.json. The kill moment is uniform over 0..1.2x the command's
un-killed duration (measured first), so some kills land before any write, some during, some after the end.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, RUNS, env, inspect, learn_argv, run, setup, slm_argv  # noqa: E402


def base_dirs() -> dict[str, Path]:
    """Directories the trials start from: two tasks, three tasks, and a one-task directory to merge."""
    bases = RUNS / "bases"
    plan = {"two": ["fruit", "vehicle"], "three": ["fruit", "vehicle", "weather"], "single": ["music"]}
    for name, tasks in plan.items():
        d = bases / name
        for task in tasks:
            manifest = d / "manifest.json"
            if not manifest.exists() or task not in [t["name"] for t in json.loads(manifest.read_text())["tasks"]]:
                done = run(learn_argv(d, task, task))
                assert done.returncode == 0, done.stderr
    return {name: bases / name for name in plan}


def command(kind: str, trial: Path, bases: dict[str, Path]) -> tuple[list[str], Path, list[str], list[str]]:
    """``(argv, directory to check, tasks before, tasks after)`` of one trial, its starting state prepared."""
    if trial.exists():
        shutil.rmtree(trial)
    trial.mkdir(parents=True)
    if kind == "learn":
        shutil.copytree(bases["two"], trial / "m")
        return learn_argv(trial / "m", "weather", "weather"), trial / "m", ["fruit", "vehicle"], \
            ["fruit", "vehicle", "weather"]
    if kind == "first":
        return learn_argv(trial / "m", "fruit", "fruit"), trial / "m", None, ["fruit"]
    if kind == "merge":
        return slm_argv("merge", bases["two"], bases["single"], "--out", trial / "m"), trial / "m", None, \
            ["fruit", "vehicle", "music"]
    shutil.copytree(bases["three"], trial / "m")
    return slm_argv("remove", "--model", trial / "m", "--task", "vehicle"), trial / "m", \
        ["fruit", "vehicle", "weather"], ["fruit", "weather"]


def next_write(kind: str, directory: Path, bases: dict[str, Path]) -> subprocess.CompletedProcess:
    """The command a user runs next: the same merge again (into the same output), or one more task."""
    if kind == "merge" and not (directory / "manifest.json").exists():
        return run(slm_argv("merge", bases["two"], bases["single"], "--out", directory))
    return run(learn_argv(directory, "extra", "music"))


def trial(kind: str, i: int, duration: float, bases: dict[str, Path], rng: random.Random) -> dict:
    argv, directory, before, after = command(kind, RUNS / "trials" / f"{kind}-{i}", bases)
    delay = rng.uniform(0, 1.2 * duration)
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env())
    time.sleep(delay)
    finished = proc.poll() is not None
    proc.kill()
    proc.wait()
    seen = inspect(directory)
    if seen["state"] == "ok":
        state = "before" if seen["tasks"] == before else "after" if seen["tasks"] == after else "other"
    else:
        state = seen["state"]  # absent / no-manifest (allowed only where nothing existed before) / unloadable
    nxt = next_write(kind, directory, bases)
    later = inspect(directory)
    recovered = [line for line in nxt.stderr.splitlines() if "interrupted write left" in line]
    record = {"kind": kind, "trial": i, "delay_s": round(delay, 2), "finished_before_kill": finished,
              "state_after_kill": state, "leftovers_after_kill": seen["orphans"] + seen["temp"],
              "next_write_exit": nxt.returncode, "next_write_error": nxt.stderr.strip()[-300:] if nxt.returncode else "",
              "recovery_message": recovered[0] if recovered else "", "state_after_next": later["state"],
              "tasks_after_next": later["tasks"], "orphans_after_next": later["orphans"] + later["temp"]}
    record["ok"] = (state in ("before", "after") or (before is None and state in ("absent", "no-manifest"))) \
        and nxt.returncode == 0 and later["state"] == "ok" and not record["orphans_after_next"]
    return record


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for kind, n in (("learn", 40), ("first", 12), ("merge", 10), ("remove", 10)):
        parser.add_argument(f"--{kind}", type=int, default=n, help=f"trials of {kind} (default {n})")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    setup()
    bases = base_dirs()
    log = RUNS / "kill9.jsonl"
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    rng = random.Random(args.seed + len(done))
    durations = {}
    for kind in ("learn", "first", "merge", "remove"):
        want = getattr(args, kind)
        have = sum(r["kind"] == kind for r in done)
        if have >= want:
            continue
        argv_, _, _, _ = command(kind, RUNS / "trials" / f"{kind}-timing", bases)
        start = time.perf_counter()
        timed = run(argv_)
        assert timed.returncode == 0, timed.stderr
        durations[kind] = time.perf_counter() - start
        for i in range(have, want):
            record = trial(kind, i, durations[kind], bases, rng)
            done.append(record)
            with log.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(json.dumps({k: record[k] for k in ("kind", "trial", "delay_s", "state_after_kill", "ok")}), flush=True)
            shutil.rmtree(RUNS / "trials" / f"{kind}-{i}", ignore_errors=True)
    summary = {"command": "python benchmarks/reliability/kill9.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "date": time.strftime("%Y-%m-%d"), "durations_s": {k: round(v, 2) for k, v in durations.items()},
               "by_kind": {}}
    for kind in ("learn", "first", "merge", "remove"):
        rows = [r for r in done if r["kind"] == kind]
        states: dict[str, int] = {}
        for r in rows:
            states[r["state_after_kill"]] = states.get(r["state_after_kill"], 0) + 1
        summary["by_kind"][kind] = {
            "trials": len(rows), "ok": sum(r["ok"] for r in rows), "states_after_kill": states,
            "left_files_after_kill": sum(bool(r["leftovers_after_kill"]) for r in rows),
            "recovery_messages": sum(bool(r["recovery_message"]) for r in rows),
            "next_write_failed": sum(r["next_write_exit"] != 0 for r in rows),
            "orphans_after_next_write": sum(bool(r["orphans_after_next"]) for r in rows),
            "unloadable": sum(r["state_after_kill"] == "unloadable" or r["state_after_next"] != "ok" for r in rows)}
    summary["trials"] = len(done)
    summary["failed_trials"] = [r for r in done if not r["ok"]]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "kill9.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary["by_kind"], indent=2))


if __name__ == "__main__":
    main()
