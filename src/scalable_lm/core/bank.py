"""The keys of the knowledge bank: one ``[G, P, d/G]`` block per task, and retrieval over all of them.

The values (low-rank increments) live beside the layers they change, in ``adapters.inject.BankLinear``,
the way peft keeps LoRA factors in its layers; entry ``e`` is the same row in both places. This module
holds the keys, the entry→task map and the eligibility rules; it imports only torch.
"""

from __future__ import annotations

import torch
from torch import nn

from scalable_lm.core import retrieval


class KnowledgeBank(nn.Module):
    """Task keys for DTKR.

    Args:
        dim: query dimension ``d``.
        groups: ``G``; ``dim`` must be divisible by it.
        entries_per_task: ``P`` entries added by every task.
    """

    def __init__(self, dim: int, groups: int, entries_per_task: int):
        super().__init__()
        if dim % groups:
            raise ValueError(f"query dimension {dim} is not divisible by groups={groups}")
        if entries_per_task > dim // groups:
            raise ValueError(f"entries_per_task={entries_per_task} exceeds the group dimension {dim // groups}")
        self.dim, self.groups, self.entries_per_task = dim, groups, entries_per_task
        self.keys = nn.ParameterList()  # one (G, P, d/G) per task

    @property
    def num_tasks(self) -> int:
        return len(self.keys)

    @property
    def num_entries(self) -> int:
        return self.num_tasks * self.entries_per_task

    def add_task(self, generator: torch.Generator | None = None) -> nn.Parameter:
        """Append a new task's keys (orthogonal within each group) and return them, trainable."""
        keys = retrieval.init_keys(self.groups, self.entries_per_task, self.dim // self.groups, generator)
        self.keys.append(nn.Parameter(keys))
        return self.keys[-1]

    def truncate(self, num_tasks: int) -> None:
        """Keep only the first ``num_tasks`` tasks' keys (undoes a task whose learning failed)."""
        self.keys = nn.ParameterList(list(self.keys)[:num_tasks])

    def all_keys(self) -> torch.Tensor:
        """``[E, G, d/G]``: entries in task order, ``P`` per task."""
        return torch.cat([k.transpose(0, 1) for k in self.keys], dim=0)

    def entry_task(self) -> torch.Tensor:
        """``[E]`` index of the task that owns each entry."""
        return torch.arange(self.num_tasks).repeat_interleave(self.entries_per_task)

    def eligible(self, upto: int | None = None, only: int | None = None) -> torch.Tensor:
        """``[E]`` bool mask: entries of tasks ``<= upto`` (generalised setting) or of task ``only``."""
        owner = self.entry_task()
        if only is not None:
            return owner == only
        if upto is not None:
            return owner <= upto
        return torch.ones_like(owner, dtype=torch.bool)

    def retrieve(
        self,
        queries: torch.Tensor,
        k: int,
        eligible: torch.Tensor | None = None,
        weighting: str = "normalize",
        temperature: float = 0.1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` entries per query and their weights.

        Args:
            queries: ``[B, d]``.

        Returns:
            ``(indices [B, K], weights [B, K])``.
        """
        if self.num_tasks == 0:
            raise RuntimeError("the knowledge bank is empty: learn a task first")
        with torch.no_grad():
            scores = retrieval.entry_scores(queries, self.all_keys())
        return retrieval.select_top_k(scores, k, eligible, weighting, temperature)
