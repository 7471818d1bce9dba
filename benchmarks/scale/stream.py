"""A stream of 72 real tasks: how routing and accuracy hold as the bank grows (issue 40).

Usage:
    python benchmarks/scale/stream.py [--data-dir ../shared/datasets] [--train-rows 200] [--test-rows 40]

Tasks, in this order: the 11 labelled classification datasets of ../shared/datasets (agnews, yelp, amazon,
yahoo, dbpedia, sst2, mnli, qqp, rte, boolq, finance_fpb), the 4 multiple-choice ones (arc_easy,
arc_challenge, piqa, winogrande) and MMLU's 57 subjects, each a task of its own. A multiple-choice row becomes
a classification row: the question followed by its lettered choices, the label the letter of the answer. The
choice datasets and MMLU have no training split here: each is split once, seeded, into training rows (MMLU:
its 5 dev rows plus 60% of the subject's test rows) and held-out rows, never overlapping. Per task at most
--train-rows training rows (a validation split is carved from them by `slm learn`) and --test-rows test rows.

Each task is learned with `slm learn` (MiniLM, default options) into runs/scale/stream; the directory is the
queue: a rerun (another session) continues with the first task not yet learned. Then, after 10, 25, 50 and all
tasks (the directory with its later tasks removed in memory, which with the Gaussian router is the model as it
was then), on the test rows of every task learned so far, mixed, without task-ID: average accuracy (right task
and right label), routing accuracy (the answering head is the row's own task) and the same answered with the
task given (SLM-TI: the routing-perfect reference of the same model; an equal-capacity oracle trained apart
was not run here); and the routing accuracy a cosine-to-centroid router would have (each row to the task whose
mean training query is nearest in cosine), on the same queries.

Writes benchmarks/results/scale/stream.json and the README section through `python benchmarks/report.py scale`.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
OUT = REPO / "benchmarks" / "results" / "scale"
RUNS = REPO / "runs" / "scale" / "stream"
CLASSIFICATION = ["agnews", "yelp", "amazon", "yahoo", "dbpedia", "sst2", "mnli", "qqp", "rte", "boolq", "finance_fpb"]
CHOICE = {"arc_easy": "test", "arc_challenge": "test", "piqa": "validation", "winogrande": "validation"}
CHECKPOINTS = [10, 25, 50]
LETTERS = "ABCDEFGH"


def _read(path: Path) -> list[dict]:
    """JSON lines (split at \\n only: texts hold U+2028); a broken line is skipped (the local mmlu test file
    has one row cut in two by a raw newline)."""
    rows = []
    for line in path.read_text().split("\n"):
        try:
            rows.append(json.loads(line)) if line.strip() else None
        except json.JSONDecodeError:
            continue
    return rows


def _choice_row(row: dict) -> dict:
    options = " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(row["choices"]))
    return {"text": f"{row['question']} {options}", "label": LETTERS[row["answer"]]}


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tasks(data: Path, train_rows: int, test_rows: int) -> list[tuple[str, Path, Path]]:
    """``(name, train file, test file)`` per task, in stream order (files written once under runs/)."""
    out = []
    for name in CLASSIFICATION:
        train = [r for r in _read(data / name / "train.jsonl")]
        test = [r for r in _read(data / name / "test.jsonl")]
        rng = random.Random(name)
        out.append((name, rng.sample(train, min(train_rows, len(train))), rng.sample(test, min(test_rows, len(test)))))
    for name, split in CHOICE.items():
        rows = [_choice_row(r) for r in _read(data / name / f"{split}.jsonl")]
        random.Random(name).shuffle(rows)
        cut = int(0.6 * len(rows))
        out.append((name, rows[:cut][:train_rows], rows[cut:][:test_rows]))
    dev, test = _read(data / "mmlu" / "dev.jsonl"), _read(data / "mmlu" / "test.jsonl")
    for subject in sorted({r["subject"] for r in test}):
        rows = [_choice_row(r) for r in test if r["subject"] == subject]
        random.Random(subject).shuffle(rows)
        cut = int(0.6 * len(rows))
        train = [_choice_row(r) for r in dev if r["subject"] == subject] + rows[:cut]
        out.append((f"mmlu-{subject}", train[:train_rows], rows[cut:][:test_rows]))
    files = []
    for name, train, test in out:
        train = [{"text": r["text"], "label": r.get("label_name", r["label"])} for r in train]
        known = {r["label"] for r in train}  # a label no training row has cannot be learned: its rows are left out
        test = [{"text": r["text"], "label": r.get("label_name", r["label"])} for r in test]
        files.append((name, _write(RUNS / "data" / f"{name}-train.jsonl", train),
                      _write(RUNS / "data" / f"{name}-test.jsonl", [r for r in test if r["label"] in known])))
    return files


def learn_all(stream: list[tuple[str, Path, Path]], model: Path) -> None:
    for i, (name, train, _) in enumerate(stream):
        manifest = model / "manifest.json"
        if manifest.exists() and name in [t["name"] for t in json.loads(manifest.read_text())["tasks"]]:
            continue
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "scalable_lm.cli", "-q", "learn", "--model", str(model), "--task",
                               name, "--data", str(train)], capture_output=True, text=True, cwd=REPO)
        if done.returncode != 0:
            raise RuntimeError(f"learning {name} failed: {done.stderr[-1500:]}")
        print(f"[{i + 1}/{len(stream)}] {done.stdout.strip()} ({time.perf_counter() - start:.0f}s)", flush=True)


def evaluate(stream: list[tuple[str, Path, Path]], model: Path) -> dict:
    import torch

    import scalable_lm
    from scalable_lm.data.tasks import Task, encode_labels, read_rows
    from scalable_lm.runner import evaluate as score

    slm = scalable_lm.load(model)
    names = [n for n, _, _ in stream]
    if slm.task_names != names:
        raise RuntimeError(f"{model} holds {len(slm.task_names)} tasks; the stream has {len(names)}")
    tests = []
    for name, _, test_path in stream:
        labels = slm.label_names[slm.task_index(name)]
        tests.append(Task(name, labels, test=encode_labels(read_rows(test_path), str(test_path), labels)))
    out = {}
    for k in sorted({*CHECKPOINTS, len(names)}, reverse=True):
        while len(slm.task_names) > k:
            slm.remove_task(slm.task_names[-1])  # the model as it was after k tasks (Gaussian router: exact)
        seen = tests[:k]
        start = time.perf_counter()
        mixed = score(slm, seen)
        given = score(slm, seen, task_id=True)
        # cosine to each task's mean training query, on the same queries
        texts = [x for t in seen for x, _ in t.test]
        owner = torch.tensor([i for i, t in enumerate(seen) for _ in t.test])
        queries = torch.nn.functional.normalize(slm.encoder.encode(texts).double(), dim=-1)
        means = torch.nn.functional.normalize(torch.stack([s[0] for s in slm.bank.stats]).to(queries), dim=-1)
        cosine = float(((queries @ means.T).argmax(-1).cpu() == owner).double().mean())
        rows = sum(len(t.test) for t in seen)
        per_task = {t.name: {"accuracy": mixed[t.name]["accuracy"], "routing": mixed[t.name]["task_choice"],
                             "task_given": given[t.name]["accuracy"], "rows": len(t.test)} for t in seen}
        weighted = lambda key: sum(p[key] * p["rows"] for p in per_task.values()) / rows  # noqa: E731
        out[str(k)] = {"tasks": k, "rows": rows, "average_accuracy": sum(p["accuracy"] for p in per_task.values()) / k,
                       "average_task_given": sum(p["task_given"] for p in per_task.values()) / k,
                       "routing_accuracy": weighted("routing"), "cosine_routing_accuracy": cosine,
                       "seconds": round(time.perf_counter() - start, 1), "per_task": per_task}
        print(f"after {k} tasks: average {out[str(k)]['average_accuracy']:.3f} (task given "
              f"{out[str(k)]['average_task_given']:.3f}), routing {out[str(k)]['routing_accuracy']:.3f}, cosine "
              f"{cosine:.3f}", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--train-rows", type=int, default=200)
    parser.add_argument("--test-rows", type=int, default=40)
    args = parser.parse_args(argv)
    if not args.data_dir.is_dir():
        parser.error(f"{args.data_dir} not found (the shared datasets folder)")
    stream = tasks(args.data_dir, args.train_rows, args.test_rows)
    model = RUNS / "model"
    start = time.perf_counter()
    learn_all(stream, model)
    learn_s = time.perf_counter() - start
    result = {"command": "python benchmarks/scale/stream.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "tasks": [n for n, _, _ in stream], "train_rows": args.train_rows, "test_rows": args.test_rows,
              "learn_seconds_this_run": round(learn_s), "checkpoints": evaluate(stream, model),
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       cwd=REPO).stdout.strip(), "date": time.strftime("%Y-%m-%d")}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "stream.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {OUT / 'stream.json'}")


if __name__ == "__main__":
    main()
