"""``Task`` (a named labelled dataset) and reading it from JSONL/CSV files or, online, from the hub.

A row has a text column and a label column. A label is either a name (``"billing"``) or an integer,
optionally with a ``label_name`` column giving its name. Every problem in a file is reported with the
file and the row number, before anything is trained or written.
"""

from __future__ import annotations

import csv
import io
import json
import random
import sys
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


def _decoded(path: Path) -> str:
    """The UTF-8 text of a data file (byte-order mark skipped); a ``DataError`` names the file and line."""
    if path.is_dir():
        raise DataError(f"{path} is a directory, not a data file")
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror}") from err
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x}); save the file as UTF-8") from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise DataError(f"{path}:{line}: contains NUL bytes (a binary file?)")
    return text


def _lines(text: str) -> list[str]:
    """``text`` cut at line feeds (``\r\n`` too). Not ``str.splitlines``: it also cuts at U+2028, U+0085 and
    other separators that JSON allows unescaped inside a string (real imdb reviews hold them)."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def read_lines(path: str | Path) -> list[str]:
    """The non-blank lines of a plain text file, one input per line (checked as ``read_rows`` checks)."""
    lines = [line for line in _lines(_decoded(Path(path))) if line.strip()]
    if not lines:
        raise DataError(f"{path}: no lines")
    return lines


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a ``.jsonl``/``.json`` (one object per line) or ``.csv`` file (UTF-8; a byte-order mark is
    skipped). Any problem is a ``DataError`` naming the file and the line."""
    path = Path(path)
    text = _decoded(path)
    rows: list[dict] = []
    if path.suffix.lower() == ".csv":
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # a long text is legitimate; the tokenizer truncates it
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            rows = list(reader)
        except csv.Error as err:
            raise DataError(f"{path}:{reader.line_num}: not valid CSV ({err})") from None
        for n, row in enumerate(rows, 2):
            if None in row:  # more fields than the header names
                raise DataError(f"{path}: row {n - 1} has more fields than the header ({len(reader.fieldnames)})")
    else:
        for n, line in enumerate(_lines(text), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{n}: not valid JSON ({err.msg})") from None
            except RecursionError:
                raise DataError(f"{path}:{n}: JSON nested too deeply") from None
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
        if text is not None and not isinstance(text, str):
            raise DataError(f"{source} row {n}: text must be a string, got {type(text).__name__}")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{source} row {n}: empty or missing text")
        if label is None or (isinstance(label, str) and not label.strip()):
            raise DataError(f"{source} row {n}: empty or missing label")
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise DataError(f"{source} row {n}: label must be a name or a whole number, got {json.dumps(label)[:40]} "
                            f"({type(label).__name__})")
        name = row.get("label_name")
        if name not in (None, "") and not isinstance(name, str):
            raise DataError(f"{source} row {n}: label_name must be text")
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


def check_new_task(task, learned) -> None:
    """Raise ``DataError`` when ``task`` (a ``Task`` or ``InstructionTask``) was learned already (its name is in
    ``learned``) or has no training rows: the baselines' shared check before learning."""
    if task.name in learned:
        raise DataError(f"task '{task.name}' was already learned")
    if not task.train:
        raise DataError(f"task '{task.name}' has no training rows")


def split_validation(rows: list[tuple[str, int]], fraction: float, seed: int) -> tuple[list, list]:
    """Carve a seeded validation split from training rows: ``(train, val)``; val may be empty.

    ``int(len(rows) * fraction)`` rows go to validation (none below 10 rows). Rows whose labels are class
    indices are split per class (stratified): each class gives its share, the leftover rows going to the
    classes with the largest remainders, and no class gives its last row, so a small split (30 rows for 14
    classes) still holds every class that can spare a row. Other rows (free-text answers) are drawn at random.
    Both lists keep one seeded shuffled order.
    """
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    n_val = int(len(rows) * fraction) if len(rows) >= 10 else 0
    if n_val == 0 or not all(isinstance(y, int) for _, y in rows):
        return rows[n_val:], rows[:n_val]
    by_class: dict[int, list[int]] = {}
    for i, (_, y) in enumerate(rows):
        by_class.setdefault(y, []).append(i)
    quota = {c: n_val * len(ix) / len(rows) for c, ix in by_class.items()}
    take = {c: min(int(q), len(by_class[c]) - 1) for c, q in quota.items()}
    # the rows still to hand out: largest remainder first, ties to the class seen first in the shuffled order
    order = sorted(by_class, key=lambda c: (-(quota[c] - take[c]), by_class[c][0]))
    missing = n_val - sum(take.values())
    while missing > 0:
        spare = [c for c in order if take[c] < len(by_class[c]) - 1]
        if not spare:
            break
        for c in spare[:missing]:
            take[c] += 1
        missing = n_val - sum(take.values())
    held = {i for c, ix in by_class.items() for i in ix[:take[c]]}
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]
