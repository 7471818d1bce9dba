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
        # Gaussian router statistics per task: mean (d,), scatter (d, d), count (); float64, never trained.
        # Routing reads the means and one pooled scatter (their sum over tasks, ``routers.pool``), not the
        # per-task scatters: those may map a file that is read only when the pool is rebuilt.
        self.stats: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._pooled: tuple[torch.Tensor, torch.Tensor] | None = None  # (Σ scatter, Σ count) of every task
        self._pooled_before: tuple[torch.Tensor, torch.Tensor] | None = None  # the pool before the last task
        # per task (centre (d,), spread (2,)) of its unit-normalised queries, for the base-model fallback
        # (routers.novelty_statistics); a task without them (older model directories) never falls back
        self.novelty: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._novel: tuple[torch.Tensor, torch.Tensor] | None = None  # stacked centres (T, d), spreads (T, 2)
        # Caches, rebuilt when what they derive from changes; they keep scoring cheap as the bank grows:
        # (shrinkage, stacked means (T, d), shared precision (d, d), means @ precision (T, d), μΣμ (T,))
        self._gauss: tuple | None = None
        self._frozen_keys: tuple[int, torch.Tensor] | None = None  # (tasks, their keys (E, G, d/G)) once frozen
        self._unit_keys: tuple[int, torch.Tensor] | None = None  # (tasks, scoring_keys of all keys) when all frozen
        self.device, self.stats_dtype = torch.device("cpu"), torch.float64  # see to_device

    def to_device(self, device: torch.device, stats_dtype: torch.dtype = torch.float64) -> None:
        """Move keys (float32) and statistics (``stats_dtype``: float64, or float32 where the device has no
        float64) to ``device``; new tasks are created there."""
        for k in self.keys:
            k.data = k.data.to(device=device, dtype=torch.float32)
        self.stats = [tuple(t.to(device=device, dtype=stats_dtype) for t in s) for s in self.stats]
        self.novelty = [tuple(t.to(device=device, dtype=stats_dtype) for t in n) for n in self.novelty]
        move = lambda pooled: None if pooled is None else tuple(t.to(device=device, dtype=stats_dtype) for t in pooled)  # noqa: E731
        self._pooled, self._pooled_before = move(self._pooled), move(self._pooled_before)
        self.device, self.stats_dtype = device, stats_dtype
        self._gauss, self._frozen_keys, self._unit_keys, self._novel = None, None, None, None

    @property
    def num_tasks(self) -> int:
        return len(self.keys)

    @property
    def num_entries(self) -> int:
        return self.num_tasks * self.entries_per_task

    def add_task(self, generator: torch.Generator | None = None, keys: torch.Tensor | None = None) -> nn.Parameter:
        """Append a new task's keys and return them: drawn (orthogonal within each group) and trainable, or the
        given ``keys [G, P, d/G]`` as they are, frozen."""
        if keys is not None:
            self.keys.append(nn.Parameter(keys.to(device=self.device, dtype=torch.float32), requires_grad=False))
            return self.keys[-1]
        # drawn on the CPU from the (CPU) generator, so a seed gives the same keys on every device
        keys = retrieval.init_keys(self.groups, self.entries_per_task, self.dim // self.groups, generator)
        self.keys.append(nn.Parameter(keys.to(self.device)))
        return self.keys[-1]

    def set_statistics(self, task: int, stats: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        """Record task ``task``'s query statistics (``routers.task_statistics``)."""
        if task != len(self.stats):
            raise ValueError(f"statistics for task {task} given, expected task {len(self.stats)}")
        stats = tuple(t.to(device=self.device, dtype=self.stats_dtype) for t in stats)
        self.stats.append(stats)
        self._pooled_before = self._pooled
        if self._pooled is not None:  # one more term of the left-to-right sum: reads this task's scatter only
            self._pooled = (self._pooled[0] + stats[1], self._pooled[1] + stats[2])
        self._gauss = None

    def set_pooled(self, scatter: torch.Tensor, count: torch.Tensor) -> None:
        """The pooled statistics of every task so far (``pooled``), saved beside the bank, so that routing
        never reads the per-task scatters: ``scatter [d, d]`` and ``count []``."""
        if tuple(scatter.shape) != (self.dim, self.dim) or tuple(count.shape) != ():
            raise ValueError(f"pooled statistics of shapes {tuple(scatter.shape)}, {tuple(count.shape)}; expected "
                             f"({self.dim}, {self.dim}) and ()")
        self._pooled = (scatter.to(device=self.device, dtype=self.stats_dtype),
                        count.to(device=self.device, dtype=self.stats_dtype))
        self._pooled_before, self._gauss = None, None

    def pooled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Σ scatter [d, d], Σ count [])`` over every task, in task order (``routers.pool``); computed from the
        per-task scatters only when not kept (``set_pooled``, or kept up to date as tasks were added)."""
        if not self.stats:
            raise RuntimeError("no task statistics: learn a task first")
        if self._pooled is None:
            self._pooled = routers.pool([s[1] for s in self.stats], [s[2] for s in self.stats])
        return self._pooled

    def pooled_without_last(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Σ scatter [d, d], Σ count [])`` over every task but the newest: the pool kept from before it was
        added, else the pool less its scatter (reads no other task's scatter either way)."""
        if not self.stats:
            raise RuntimeError("no task statistics: learn a task first")
        if self._pooled_before is not None:
            return self._pooled_before
        scatter, count = self.pooled()
        return scatter - self.stats[-1][1], count - self.stats[-1][2]

    def set_novelty(self, task: int, novelty: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """Record task ``task``'s ``(centre [d], spread [2])`` (``routers.novelty_statistics``); ``None``: unknown."""
        if task != len(self.novelty):
            raise ValueError(f"novelty statistics for task {task} given, expected task {len(self.novelty)}")
        if novelty is None:
            novelty = (torch.zeros(self.dim), torch.tensor([0.0, float("inf")]))
        self.novelty.append(tuple(t.to(device=self.device, dtype=self.stats_dtype) for t in novelty))
        self._novel = None

    def truncate(self, num_tasks: int) -> None:
        """Keep only the first ``num_tasks`` tasks' keys (undoes a task whose learning failed)."""
        self.keys = nn.ParameterList(list(self.keys)[:num_tasks])
        if num_tasks < len(self.stats):
            # undoing the last task restores the pool kept before it; anything else pools again when needed
            last = num_tasks == len(self.stats) - 1 and self._pooled_before is not None
            self._pooled = self._pooled_before if last else None
            self._pooled_before = None
        self.stats = self.stats[:num_tasks]
        self.novelty = self.novelty[:num_tasks]
        self._gauss, self._frozen_keys, self._unit_keys, self._novel = None, None, None, None

    def task_scores(self, queries: torch.Tensor, shrinkage: float) -> torch.Tensor:
        """``[B, T]`` Gaussian-router scores of every task with statistics (higher = more likely)."""
        if not self.stats:
            raise RuntimeError("no task statistics: learn a task first")
        if self._gauss is None or self._gauss[0] != shrinkage:
            precision = routers.pooled_precision(*self.pooled(), shrinkage)
            means = torch.stack([s[0] for s in self.stats])
            self._gauss = (shrinkage, means, precision, *routers.project_means(means, precision))
        _, means, precision, pm, mpm = self._gauss
        return routers.mahalanobis_scores(queries, means, precision, (pm, mpm))

    def unfamiliar(self, queries: torch.Tensor, tasks: torch.Tensor, z: float) -> torch.Tensor:
        """``[B]`` bool: query ``[B, d]`` lies farther from the centre of its row's task ``tasks [B]`` than the
        mean held-out distance of that task plus ``z`` standard deviations (``routers.novelty_statistics``)."""
        if len(self.novelty) < self.num_tasks:
            raise RuntimeError(f"only {len(self.novelty)} of {self.num_tasks} tasks have novelty statistics (set_novelty); "
                               "the base-model fallback needs every task's")
        if self._novel is None:
            self._novel = (torch.stack([n[0] for n in self.novelty]), torch.stack([n[1] for n in self.novelty]))
        centres, spreads = self._novel
        limits = spreads[tasks, 0] + z * spreads[tasks, 1]
        return routers.unit_distances(queries, centres[tasks]) > limits

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
        return torch.arange(self.num_tasks, device=self.device).repeat_interleave(self.entries_per_task)

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
            scores = retrieval.scores_from_unit_keys(queries, self._scoring_keys())
        return retrieval.select_top_k(scores, k, eligible, weighting, temperature)

    def _scoring_keys(self) -> torch.Tensor:
        """``retrieval.scoring_keys`` of every key, cached once no key is trainable (inference)."""
        if self._unit_keys is not None and self._unit_keys[0] == self.num_tasks:
            return self._unit_keys[1]
        unit = retrieval.scoring_keys(self.all_keys().detach())
        if not any(k.requires_grad for k in self.keys):
            self._unit_keys = (self.num_tasks, unit)
        return unit

    def _retrieve_within(self, queries: torch.Tensor, tasks: torch.Tensor, k: int, weighting: str,
                         temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` among the ``P`` entries of each row's own task ``tasks [B]``: only ``B·P`` entries are
        scored, so the cost does not grow with the number of tasks. Same result as masking all but that
        task's entries in ``retrieve``."""
        if self._unit_keys is not None and self._unit_keys[0] == self.num_tasks:
            unit, rows = self._unit_keys[1], tasks
        else:  # a task is still training (its keys change): score only the tasks asked for, not the whole bank
            needed, rows = torch.unique(tasks, return_inverse=True)
            unit = retrieval.scoring_keys(torch.cat([self.keys[t].detach().transpose(0, 1) for t in needed.tolist()]))
        scores = retrieval.scores_within_tasks(queries, unit, rows, self.entries_per_task)
        local, weights = retrieval.select_top_k(scores, k, None, weighting, temperature)
        return tasks[:, None] * self.entries_per_task + local, weights

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
        fallback: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row ``(entries [B, K], weights [B, K])`` for ``queries [B, d]``.

        ``router="dtkr"``: top-``k`` over the keys of every eligible entry (tasks ``<= upto``, or task
        ``only``). ``router="gaussian"``: each row first picks its most likely task from the query
        statistics, then top-``k`` among that task's entries (``only`` overrides the pick); with
        ``fallback > 0``, a row ``unfamiliar`` to its task at ``z = fallback`` gets all-zero weights, i.e.
        the frozen base model.
        """
        if router not in ("dtkr", "gaussian"):
            raise ValueError(f"unknown router {router!r}; use 'dtkr' or 'gaussian'")
        if self.num_tasks == 0:
            raise RuntimeError("the knowledge bank is empty: learn a task first")
        if only is not None:
            if not 0 <= only < self.num_tasks:
                raise ValueError(f"task {only} is not in the bank ({self.num_tasks} tasks)")
            with torch.no_grad():
                tasks = torch.full((queries.shape[0],), only, device=queries.device)
                return self._retrieve_within(queries, tasks, k, weighting, temperature)
        if router == "gaussian":
            scores = self.task_scores(queries, shrinkage)
            if upto is not None:
                scores = scores[:, : upto + 1]
            tasks = scores.argmax(dim=-1)
            with torch.no_grad():
                entries, weights = self._retrieve_within(queries, tasks, k, weighting, temperature)
                if fallback > 0:
                    weights = weights.masked_fill(self.unfamiliar(queries, tasks, fallback)[:, None], 0.0)
            return entries, weights
        return self.retrieve(queries, k, self.eligible(upto=upto), weighting, temperature)
