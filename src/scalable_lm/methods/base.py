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


class GrowsByTask:
    """``learn`` shared by SLM's classifier and generative forms: checks, seeding, rollback.

    The class provides ``task_names``, ``config.train`` (seed, val_fraction), ``_add_task(name,
    label_names, generator)``, ``_learn_new(train_rows, val_rows, generator, progress)`` and
    ``_drop_last_task()``. Each task gets its own seed (``train.seed`` + its index); the global RNG (head
    init, dropout) is seeded for the task and restored after; a failed or interrupted task is removed.
    """

    def learn(self, task, progress: bool = True) -> dict:
        """Learn one new task; returns the report of ``_learn_new``."""
        import torch

        from scalable_lm.data.tasks import DataError, split_validation

        if task.name in self.task_names:
            raise DataError(f"task '{task.name}' is already in the bank")
        if not task.train:
            raise DataError(f"task '{task.name}' has no training rows")
        seed = self.config.train.seed + len(self.task_names)
        generator = torch.Generator().manual_seed(seed)
        train_rows, val_rows = split_validation(task.train, self.config.train.val_fraction, seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self._add_task(task.name, getattr(task, "label_names", None), generator)
            try:
                return self._learn_new(train_rows, val_rows, generator, progress)
            except BaseException:
                self._drop_last_task()
                raise
