"""Instruct-3 (paper's "LLaMA benchmark") tasks from the local datasets, as instruction tasks.

- finance_fpb: financial-news sentiment; the answer is one word (negative / neutral / positive).
- mmlu: multiple choice; the answer is the letter. Training rows and evaluation rows are disjoint: a
  seeded split of the local mmlu test file (``dev.jsonl`` is kept out as the paper's few-shot pool).
- medical_chatdoctor5k: already instruction rows (a doctor's answer to a patient's description).

Few-shot with text labels (paper's T5 benchmark on a decoder): dbpedia, amazon, yahoo, agnews become
instruction tasks whose answer is the class name; ``per_class`` keeps that many training rows of each class.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from scalable_lm.data.instructions import InstructionTask, parse_instructions, prompt_text

FINANCE = ("What is the sentiment of this financial news? Answer with one word: negative, neutral or "
           "positive.")
MMLU = "Answer the multiple-choice question with the letter of the right choice (A, B, C or D)."
LETTERS = "ABCD"


SKIPPED: dict[str, list[int]] = {}  # file -> line numbers that are not valid JSON (reported in results)


def read_jsonl(path: Path) -> list[dict]:
    """JSON lines of ``path``; a broken line (the local mmlu test file has one cut-off row) is skipped and
    recorded in ``SKIPPED`` rather than stopping the benchmark."""
    rows = []
    # split on "\n" only: str.splitlines also breaks at separators (U+2028, ...) that JSON strings may hold
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            SKIPPED.setdefault(str(path), []).append(n)
    return rows


def _sample(rows: list, n: int | None, seed: int) -> list:
    return rows if n is None or len(rows) <= n else random.Random(seed).sample(rows, n)


def finance(data: Path, n_train: int | None, n_test: int | None, seed: int = 0) -> InstructionTask:
    def pairs(rows):
        return [(prompt_text(FINANCE, r["text"]), r["label_name"]) for r in rows]
    return InstructionTask("finance", pairs(_sample(read_jsonl(data / "finance_fpb" / "train.jsonl"), n_train, seed)),
                           pairs(_sample(read_jsonl(data / "finance_fpb" / "test.jsonl"), n_test, seed + 1)))


def mmlu(data: Path, n_train: int | None, n_test: int | None, seed: int = 0) -> InstructionTask:
    rows = read_jsonl(data / "mmlu" / "test.jsonl")
    random.Random(seed).shuffle(rows)
    half = len(rows) // 2  # first half trains, second half evaluates: disjoint by construction

    def pairs(part):
        out = []
        for r in part:
            choices = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(r["choices"]))
            out.append((prompt_text(MMLU, f"{r['question']}\n{choices}"), LETTERS[r["answer"]]))
        return out
    return InstructionTask("mmlu", pairs(_sample(rows[:half], n_train, seed)), pairs(_sample(rows[half:], n_test, seed + 1)))


def medical(data: Path, n_train: int | None, n_test: int | None, seed: int = 0) -> InstructionTask:
    d = data / "medical_chatdoctor5k"
    return InstructionTask("medical",
                           _sample(parse_instructions(read_jsonl(d / "train.jsonl"), str(d / "train.jsonl")), n_train, seed),
                           _sample(parse_instructions(read_jsonl(d / "test.jsonl"), str(d / "test.jsonl")), n_test, seed + 1))


CLASSIFY = {
    "dbpedia": "Which kind of entity does this encyclopedia abstract describe?",
    "amazon": "How would the reviewer rate this product review?",
    "yahoo": "Which topic does this question and answer belong to?",
    "agnews": "Which topic does this news article belong to?",
}


def classification(name: str):
    """Builder of the text-label instruction task ``name`` (a key of ``CLASSIFY``)."""

    def build(data: Path, n_train: int | None, n_test: int | None, seed: int = 0, per_class: int | None = None) -> InstructionTask:
        train_rows, test_rows = (read_jsonl(data / name / f"{split}.jsonl") for split in ("train", "test"))
        labels = [n for _, n in sorted({(r["label"], r["label_name"]) for r in train_rows})]
        instruction = f"{CLASSIFY[name]} Answer with one of: {', '.join(labels)}."
        if per_class is not None:
            rng = random.Random(seed)
            train_rows = [r for label in sorted({r["label"] for r in train_rows})
                          for r in _sample([r for r in train_rows if r["label"] == label], per_class, rng.randrange(1 << 30))]
        else:
            train_rows = _sample(train_rows, n_train, seed)

        def pairs(rows):
            return [(prompt_text(instruction, r["text"]), r["label_name"]) for r in rows]
        return InstructionTask(name, pairs(train_rows), pairs(_sample(test_rows, n_test, seed + 1)))
    return build


BUILDERS = {"finance": finance, "mmlu": mmlu, "medical": medical, **{n: classification(n) for n in CLASSIFY}}
LABEL_TASKS = set(CLASSIFY)  # scored by scoring.label_match
