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


# ---- the Long Sequence benchmark (15 tasks) in O-LoRA's protocol --------------------------------------------
# O-LoRA's instruction per task family (its configs/instruction_config.json; COPA's rows carry their own
# question) and its label words (its CL_Benchmark/*/labels.json), keyed by our label_name where they differ.
_OLORA_INSTRUCTIONS = {
    "NLI": 'What is the logical relationship between the "sentence 1" and the "sentence 2"? Choose one from the option.',
    "QQP": 'Whether the "first sentence" and the "second sentence" have the same meaning? Choose one from the option.',
    "SC": "What is the sentiment of the following paragraph? Choose one from the option.",
    "TC": "What is the topic of the following paragraph? Choose one from the option.",
    "BoolQA": "According to the following passage, is the question true or false? Choose one from the option.",
    "MultiRC": ("According to the following passage and question, is the candidate answer true or false? Choose one "
                "from the option."),
    "WiC": ("Given a word and two sentences, whether the word is used with the same sense in both sentence? Choose one "
            "from the option."),
    "COPA": "",
}
LONG_SEQUENCE = {  # task -> (family, {our label_name: O-LoRA's label word})
    "mnli": ("NLI", {}), "cb": ("NLI", {}), "rte": ("NLI", {"not_entailment": "contradiction"}),
    "qqp": ("QQP", {}), "boolq": ("BoolQA", {}), "multirc": ("MultiRC", {}), "wic": ("WiC", {}), "copa": ("COPA", {}),
    "imdb": ("SC", {"negative": "Bad", "positive": "Good"}), "sst2": ("SC", {"negative": "Bad", "positive": "Good"}),
    "yelp": ("SC", {}), "amazon": ("SC", {}),
    "dbpedia": ("TC", {"EducationalInstitution": "Educational Institution", "OfficeHolder": "Office Holder",
                       "MeanOfTransportation": "Mean of Transportation", "NaturalPlace": "Natural Place",
                       "WrittenWork": "Written Work"}),
    "agnews": ("TC", {"Sci/Tech": "Science or Technology"}), "yahoo": ("TC", {}),
}
HELD_OUT = 500  # imdb and multirc come without a test split: this many seeded train rows are held out as test


def long_sequence(name: str):
    """Builder of Long Sequence task ``name``: O-LoRA's instruction for its family, the options (O-LoRA's label
    words) after it, the row's text as input, the label word as answer. ``n_train`` rows are drawn from the train
    split (seed), ``n_test`` from the test split (seed + 1); a task without a test split (imdb, multirc) holds
    out ``HELD_OUT`` seeded train rows as its test split first, and never trains on them."""
    family, words = LONG_SEQUENCE[name]

    def build(data: Path, n_train: int | None, n_test: int | None, seed: int = 0) -> InstructionTask:
        train_rows = read_jsonl(data / name / "train.jsonl")
        if (data / name / "test.jsonl").exists():
            test_rows = read_jsonl(data / name / "test.jsonl")
        else:
            order = list(range(len(train_rows)))
            random.Random(f"{name}-held-out").shuffle(order)  # the same rows whatever the run's seed
            held = set(order[:HELD_OUT])
            test_rows = [r for i, r in enumerate(train_rows) if i in held]
            train_rows = [r for i, r in enumerate(train_rows) if i not in held]
        labels = [words.get(n, n) for _, n in sorted({(r["label"], r["label_name"]) for r in train_rows})]
        instruction = " ".join(filter(None, [_OLORA_INSTRUCTIONS[family], f"Option: {', '.join(labels)}."]))

        def pairs(rows):
            return [(prompt_text(instruction, r["text"]), words.get(r["label_name"], r["label_name"])) for r in rows]
        return InstructionTask(name, pairs(_sample(train_rows, n_train, seed)), pairs(_sample(test_rows, n_test, seed + 1)))
    return build


LONG_BUILDERS = {n: long_sequence(n) for n in LONG_SEQUENCE}
# O-LoRA's long-sequence orders (its paper's table of task orders), checked task by task against the order_4/5/6
# scripts of a later method that runs O-LoRA's protocol (GORP's public repository)
LONG_ORDERS = {
    4: ["mnli", "cb", "wic", "copa", "qqp", "boolq", "rte", "imdb", "yelp", "amazon", "sst2", "dbpedia", "agnews",
        "multirc", "yahoo"],
    5: ["multirc", "boolq", "wic", "mnli", "cb", "copa", "qqp", "rte", "imdb", "sst2", "dbpedia", "agnews", "yelp",
        "amazon", "yahoo"],
    6: ["yelp", "amazon", "mnli", "cb", "copa", "qqp", "rte", "imdb", "sst2", "dbpedia", "agnews", "yahoo", "multirc",
        "boolq", "wic"],
}
