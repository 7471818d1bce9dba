"""``Task`` (a named labelled dataset) and reading it from JSONL/CSV files or, online, from the hub.

A row has a text column and a label column. A label is either a name (``"billing"``) or an integer,
optionally with a ``label_name`` column giving its name. Every problem in a file is reported with the
file and the row number, before anything is trained or written.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path


class DataError(ValueError):
    """A data file or a task definition that cannot be used; the message names the problem."""


@dataclass
class Task:
    """A named classification task.

    Attributes:
        name: unique name in a stream / bank.
        label_names: class names; label ``i`` means ``label_names[i]``.
        train: ``(text, label index)`` pairs.
        test: ``(text, label index)`` pairs (may be empty).
    """

    name: str
    label_names: list[str]
    train: list[tuple[str, int]] = field(default_factory=list)
    test: list[tuple[str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.name or not self.name.strip():
            raise DataError("task name is empty")
        if len(self.label_names) < 2:
            raise DataError(f"task '{self.name}' needs at least 2 labels, got {self.label_names}")
        if len(set(self.label_names)) != len(self.label_names):
            raise DataError(f"task '{self.name}' has duplicate label names {self.label_names}")
        for split, rows in (("train", self.train), ("test", self.test)):
            for i, (text, label) in enumerate(rows):
                if not isinstance(text, str) or not text.strip():
                    raise DataError(f"task '{self.name}' {split} row {i}: empty text")
                if not 0 <= label < len(self.label_names):
                    raise DataError(f"task '{self.name}' {split} row {i}: label {label} out of range")


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a ``.jsonl``/``.json`` (one object per line) or ``.csv`` file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    rows: list[dict] = []
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    else:
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{n}: not valid JSON ({err.msg})") from err
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{n}: expected a JSON object per line")
                rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def parse_labelled(
    rows: list[dict], source: str, text_column: str = "text", label_column: str = "label"
) -> tuple[list[str], list[str]]:
    """Texts and label names of labelled rows (an integer label uses ``label_name`` when present)."""
    for column in (text_column, label_column):
        if column not in rows[0]:
            raise DataError(f"{source}: column '{column}' missing (columns: {sorted(rows[0])})")
    texts, labels = [], []
    for n, row in enumerate(rows, 1):
        text, label = row.get(text_column), row.get(label_column)
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{source} row {n}: empty or missing text")
        if label is None or (isinstance(label, str) and not label.strip()):
            raise DataError(f"{source} row {n}: empty or missing label")
        name = row.get("label_name")
        texts.append(text)
        labels.append(str(name) if name not in (None, "") else str(label))
    return texts, labels


def _int_sort_key(name: str) -> tuple[int, int | str]:
    return (0, int(name)) if name.lstrip("-").isdigit() else (1, name)


def load_task(
    name: str,
    train_path: str | Path,
    test_path: str | Path | None = None,
    max_train: int | None = None,
    seed: int = 0,
    text_column: str = "text",
    label_column: str = "label",
) -> Task:
    """Read a task from local files. Label names come from the training file; a test label that is not
    among them is an error. ``max_train`` keeps a seeded random subset of the training rows."""
    if isinstance(train_path, str) and train_path.startswith("hf:"):
        return load_hub_task(name, train_path[3:], max_train, seed)
    texts, labels = parse_labelled(read_rows(train_path), str(train_path), text_column, label_column)
    label_names = _label_order(read_rows(train_path), labels, label_column)
    index = {n: i for i, n in enumerate(label_names)}
    train = list(zip(texts, (index[lab] for lab in labels)))
    if max_train is not None and len(train) > max_train:
        train = random.Random(seed).sample(train, max_train)
    test: list[tuple[str, int]] = []
    if test_path is not None:
        test = encode_labels(read_rows(test_path), str(test_path), label_names, text_column, label_column)
    return Task(name, label_names, train, test)


def _label_order(rows: list[dict], labels: list[str], label_column: str) -> list[str]:
    """Integer labels keep their integer order; names are sorted alphabetically."""
    if all(isinstance(r.get(label_column), int) or str(r.get(label_column)).lstrip("-").isdigit() for r in rows):
        by_int = {int(r[label_column]): lab for r, lab in zip(rows, labels)}
        return [by_int[i] for i in sorted(by_int)]
    return sorted(set(labels), key=_int_sort_key)


def encode_labels(
    rows: list[dict], source: str, label_names: list[str], text_column: str = "text", label_column: str = "label"
) -> list[tuple[str, int]]:
    """``(text, label index)`` for rows whose labels must be among ``label_names``."""
    texts, labels = parse_labelled(rows, source, text_column, label_column)
    index = {n: i for i, n in enumerate(label_names)}
    out = []
    for n, (text, lab) in enumerate(zip(texts, labels), 1):
        if lab not in index:
            raise DataError(f"{source} row {n}: unknown label '{lab}' (known: {label_names})")
        out.append((text, index[lab]))
    return out


def load_hub_task(name: str, dataset: str, max_train: int | None = None, seed: int = 0) -> Task:
    """Online only: a hub dataset with ``text``/``label`` columns and ``train``/``test`` splits."""
    try:
        from datasets import load_dataset
    except ImportError as err:
        raise DataError("hub datasets need `pip install datasets` and internet access") from err
    try:
        ds = load_dataset(dataset)
    except Exception as err:  # noqa: BLE001 - the hub raises many types; all mean "cannot load"
        raise DataError(f"cannot load hub dataset '{dataset}': {err}") from err
    label_names = list(ds["train"].features["label"].names)
    train = [(r["text"], r["label"]) for r in ds["train"]]
    if max_train is not None and len(train) > max_train:
        train = random.Random(seed).sample(train, max_train)
    test = [(r["text"], r["label"]) for r in ds["test"]] if "test" in ds else []
    return Task(name, label_names, train, test)


def split_validation(rows: list[tuple[str, int]], fraction: float, seed: int) -> tuple[list, list]:
    """Carve a seeded validation split from training rows: ``(train, val)``; val may be empty."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    n_val = int(len(rows) * fraction) if len(rows) >= 10 else 0
    return rows[n_val:], rows[:n_val]
