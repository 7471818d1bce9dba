"""The contract every method (SLM and each baseline) follows, and what ``predict`` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from scalable_lm.data.tasks import Task


@dataclass
class Prediction:
    """One input's answer.

    Attributes:
        label: predicted class name.
        task: name of the task whose head answered.
        confidence: softmax probability of ``label`` under that head.
        entries: retrieved entries as ``"task#i"`` (empty for methods without retrieval).
        weights: mixing weight of each retrieved entry.
    """

    label: str
    task: str
    confidence: float
    entries: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    entry_tasks: list[str] = field(default_factory=list)


class ContinualMethod(Protocol):
    """``learn`` one task at a time (never seeing old data again); ``predict`` without a task-ID."""

    name: str

    def learn(self, task: Task, progress: bool = True) -> dict: ...

    def predict(self, texts: list[str], batch_size: int = 32, progress: bool = False) -> list[Prediction]: ...
