"""Instruction tasks for generative backbones: rows ``{"instruction", "input", "output"}``.

The prompt an example shows the model (and the text its query is computed from) is the instruction,
followed by the input when there is one; the answer is ``output``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from scalable_lm.data.tasks import DataError, read_rows


@dataclass
class InstructionTask:
    """A named generation task: ``(prompt, answer)`` pairs."""

    name: str
    train: list[tuple[str, str]] = field(default_factory=list)
    test: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.name or not self.name.strip():
            raise DataError("a task needs a non-empty name")


def prompt_text(instruction: str, input_text: str | None = None) -> str:
    """The user turn: instruction, a blank line, then the input (if any)."""
    return instruction.strip() + (f"\n\n{input_text.strip()}" if input_text and input_text.strip() else "")


# Dolly-style names (databricks-dolly-15k: instruction, context, response) are read as input and output
ALIASES = {"output": "response", "input": "context"}


def _column(row: dict, name: str):
    return row.get(name, row.get(ALIASES[name])) if name in ALIASES else row.get(name)


def is_instruction_row(row: dict) -> bool:
    """Rows with an ``instruction`` and an ``output`` (or Dolly's ``response``) train a generative model."""
    return "instruction" in row and ("output" in row or "response" in row)


def parse_instructions(rows: list[dict], source: str) -> list[tuple[str, str]]:
    if "instruction" not in rows[0] or not ("output" in rows[0] or "response" in rows[0]):
        missing = "instruction" if "instruction" not in rows[0] else "output"
        raise DataError(f"{source}: column '{missing}' missing (columns: {sorted(rows[0])}); instruction data "
                        "needs 'instruction', 'output' and optionally 'input' (or Dolly's 'context', 'response')")
    pairs = []
    for n, row in enumerate(rows, 1):
        instruction, output = row.get("instruction"), _column(row, "output")
        if not isinstance(instruction, str) or not instruction.strip():
            raise DataError(f"{source} row {n}: empty or missing instruction")
        if not isinstance(output, str) or not output.strip():
            raise DataError(f"{source} row {n}: empty or missing output")
        input_text = _column(row, "input")
        if input_text is not None and not isinstance(input_text, str):
            raise DataError(f"{source} row {n}: 'input' must be text")
        pairs.append((prompt_text(instruction, input_text), output.strip()))
    return pairs


def load_instruction_task(name: str, train_path: str | Path, test_path: str | Path | None = None,
                          max_train: int | None = None, seed: int = 0) -> InstructionTask:
    """Read instruction JSONL/CSV files; ``max_train`` keeps a seeded random subset of the training rows."""
    train = parse_instructions(read_rows(train_path), str(train_path))
    if max_train is not None and len(train) > max_train:
        train = random.Random(seed).sample(train, max_train)
    test = parse_instructions(read_rows(test_path), str(test_path)) if test_path is not None else []
    return InstructionTask(name, train, test)
