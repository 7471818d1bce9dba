"""One output layer over the union of all tasks' labels, for baselines that get no task-ID.

The argmax over all ``(task, label)`` outputs decides both the task and the label of an input.
"""

from __future__ import annotations

import torch
from torch import nn

from scalable_lm import training
from scalable_lm.data.tasks import Task
from scalable_lm.methods.base import Prediction


class UnionHead(nn.Module):
    """A linear layer that grows by each new task's labels; old rows are copied, not reset."""

    def __init__(self, hidden: int, device: torch.device | str = "cpu"):
        super().__init__()
        self.hidden, self.device = hidden, torch.device(device)
        self.linear: nn.Linear | None = None
        self.outputs: list[tuple[str, str]] = []  # (task, label) of each output unit

    def knows(self, task_name: str) -> bool:
        return any(name == task_name for name, _ in self.outputs)

    def grow(self, task: Task) -> int:
        """Add ``task``'s labels; returns the offset of its first output."""
        old, offset = self.linear, len(self.outputs)
        self.linear = nn.Linear(self.hidden, offset + len(task.label_names)).to(self.device)
        if old is not None:
            with torch.no_grad():
                self.linear.weight[:offset] = old.weight
                self.linear.bias[:offset] = old.bias
        self.outputs += [(task.name, label) for label in task.label_names]
        return offset

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.linear is None:
            raise RuntimeError("no task learned yet")
        return self.linear(features.to(self.linear.weight.dtype))

    def predictions(self, features: torch.Tensor) -> list[Prediction]:
        probs = torch.softmax(self(features), dim=-1)
        out = []
        for p in probs:
            k = int(p.argmax())
            out.append(Prediction(label=self.outputs[k][1], task=self.outputs[k][0], confidence=float(p[k])))
        return out

    @torch.no_grad()
    def answer(self, texts: list[str], features_fn, batch_size: int = 32) -> list[Prediction]:
        """``predictions`` for ``texts`` in batches; ``features_fn(batch_texts)`` gives their ``[B, H]`` features."""
        out: list[Prediction] = []
        for idx in training.batches(len(texts), batch_size):
            out += self.predictions(features_fn([texts[i] for i in idx]))
        return out
