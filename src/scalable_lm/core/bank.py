"""The keys of the knowledge bank: one ``[G, P, d/G]`` block per task, and retrieval over all of them.

The values (low-rank increments) live beside the layers they change, in ``adapters.inject.BankLinear``,
the way peft keeps LoRA factors in its layers; entry ``e`` is the same row in both places. This module
holds the keys, the entry→task map and the eligibility rules; it imports only torch.
"""

from __future__ import annotations

import torch
from torch import nn

from scalable_lm.core import retrieval, routers


class KnowledgeBank(nn.Module):
    """Task keys for DTKR, and per-task query statistics for the optional Gaussian router.

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
        # Gaussian router statistics per task: mean (d,), scatter (d, d), count (); float64, never trained
        self.stats: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._precision: tuple[float, torch.Tensor] | None = None  # (shrinkage, shared inverse covariance)
        self._means: torch.Tensor | None = None  # (T, d) stacked task means, rebuilt when statistics change
        self._frozen_keys: tuple[int, torch.Tensor] | None = None  # (tasks, their keys (E, G, d/G)) once frozen

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

    def set_statistics(self, task: int, stats: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        """Record task ``task``'s query statistics (``routers.task_statistics``)."""
        if task != len(self.stats):
            raise ValueError(f"statistics for task {task} given, expected task {len(self.stats)}")
        self.stats.append(tuple(t.to(torch.float64) for t in stats))
        self._precision, self._means = None, None

    def truncate(self, num_tasks: int) -> None:
        """Keep only the first ``num_tasks`` tasks' keys (undoes a task whose learning failed)."""
        self.keys = nn.ParameterList(list(self.keys)[:num_tasks])
        self.stats = self.stats[:num_tasks]
        self._precision, self._means, self._frozen_keys = None, None, None

    def task_scores(self, queries: torch.Tensor, shrinkage: float) -> torch.Tensor:
        """``[B, T]`` Gaussian-router scores of every task with statistics (higher = more likely)."""
        if not self.stats:
            raise RuntimeError("no task statistics: learn a task first")
        if self._precision is None or self._precision[0] != shrinkage:
            precision = routers.shared_precision([s[1] for s in self.stats], [s[2] for s in self.stats], shrinkage)
            self._precision = (shrinkage, precision)
        if self._means is None:
            self._means = torch.stack([s[0] for s in self.stats])
        return routers.mahalanobis_scores(queries, self._means, self._precision[1])

    def all_keys(self) -> torch.Tensor:
        """``[E, G, d/G]``: entries in task order, ``P`` per task."""
        # frozen keys (a prefix of the tasks) are concatenated once and reused: scoring stays cheap as T grows
        done = self._frozen_keys[0] if self._frozen_keys else 0
        upto = done
        while upto < len(self.keys) and not self.keys[upto].requires_grad:
            upto += 1
        if upto != done:
            new = torch.cat([k.detach().transpose(0, 1) for k in list(self.keys)[done:upto]], dim=0)
            self._frozen_keys = (upto, new if not done else torch.cat([self._frozen_keys[1], new]))
        rest = [k.transpose(0, 1) for k in list(self.keys)[upto:]]
        if not upto:
            return torch.cat(rest, dim=0)
        return torch.cat([self._frozen_keys[1], *rest], dim=0) if rest else self._frozen_keys[1]

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

    def route(
        self,
        queries: torch.Tensor,
        k: int,
        router: str = "dtkr",
        upto: int | None = None,
        only: int | None = None,
        weighting: str = "normalize",
        temperature: float = 0.1,
        shrinkage: float = 0.1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row ``(entries [B, K], weights [B, K])`` for ``queries [B, d]``.

        ``router="dtkr"``: top-``k`` over the keys of every eligible entry (tasks ``<= upto``, or task
        ``only``). ``router="gaussian"``: each row first picks its most likely task from the query
        statistics, then top-``k`` among that task's entries (``only`` overrides the pick).
        """
        if router not in ("dtkr", "gaussian"):
            raise ValueError(f"unknown router {router!r}; use 'dtkr' or 'gaussian'")
        if only is None and router == "gaussian":
            scores = self.task_scores(queries, shrinkage)
            if upto is not None:
                scores = scores[:, : upto + 1]
            eligible = self.entry_task()[None, :] == scores.argmax(dim=-1)[:, None]  # (B, E)
        else:
            eligible = self.eligible(upto=upto, only=only)
        return self.retrieve(queries, k, eligible, weighting, temperature)
