"""Wrap target ``nn.Linear`` layers in ``BankLinear`` and route each batch through them.

``BankLinear`` owns, per task, the factors ``A [P, r, d_in]`` and ``B [P, d_out, r]`` of that task's
``P`` entries at this layer. Routing (which entries and weights each row uses) is computed once per batch
outside the model and handed to every wrapped layer by the ``routed`` context manager; without routing
the layer is exactly its base layer.

    x ──► base(x) ─────────────────────────────┐
      └─► gather A,B of the K entries per row ─► Σ w·B(Ax)·scale ─► (+) ─► y
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn

from scalable_lm.core.mixing import apply_row_factors, row_factors


class BankLinear(nn.Module):
    """A frozen ``nn.Linear`` plus the per-entry low-rank increments of every learned task.

    Args:
        base_layer: the layer to wrap; its parameters are frozen.
        rank: ``r`` of every increment.
        alpha: increments are scaled by ``alpha / rank``.
    """

    def __init__(self, base_layer: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base_layer = base_layer.requires_grad_(False)
        self.rank, self.scaling = rank, alpha / rank
        self.lora_A = nn.ParameterList()  # per task: (P, r, d_in)
        self.lora_B = nn.ParameterList()  # per task: (P, d_out, r)
        self.route: tuple[torch.Tensor, torch.Tensor] | None = None  # set by `routed`, not state
        # Inference only: the route's factors, gathered once and laid out for two batched matmuls, kept
        # while the same route holds (a generation calls the layer once per new token with one route).
        self._route_cache: tuple[object, torch.dtype, torch.Tensor, torch.Tensor] | None = None
        # Frozen tasks' factors are moved into one contiguous store (their parameters become views of it),
        # so a forward gathers the K entries of each row without concatenating every task again: the cost
        # per input stays flat as the bank grows, and nothing is held twice.
        self._entries = 0  # entries of all tasks (kept here: summing over thousands of tasks per forward is slow)
        self._stored_tasks = 0  # tasks 0.._stored_tasks-1 live in the store
        self._stored_entries = 0
        self._store_a: torch.Tensor | None = None  # (capacity, r, d_in)
        self._store_b: torch.Tensor | None = None  # (capacity, d_out, r)

    def add_task(self, entries: int, generator: torch.Generator | None = None) -> list[nn.Parameter]:
        """Append a task's ``entries`` increments (A: Kaiming-uniform as in LoRA, B: zeros), float32 on the
        frozen layer's device (trained factors keep float32 whatever the compute dtype)."""
        d_in, d_out = self.base_layer.in_features, self.base_layer.out_features
        device = self.base_layer.weight.device
        bound = 1.0 / math.sqrt(d_in)  # kaiming_uniform with a=sqrt(5), as nn.Linear and LoRA use
        # drawn on the CPU from the (CPU) generator, so a seed gives the same init on every device
        a = (torch.rand(entries, self.rank, d_in, generator=generator) * 2 - 1) * bound
        self.lora_A.append(nn.Parameter(a.to(device)))
        self.lora_B.append(nn.Parameter(torch.zeros(entries, d_out, self.rank, device=device)))
        self._entries += entries
        return [self.lora_A[-1], self.lora_B[-1]]

    def to_device(self, device: torch.device) -> None:
        """Move every task's factors to ``device`` as float32 (the contiguous store is rebuilt there)."""
        for factors in (self.lora_A, self.lora_B):
            for p in factors:
                p.data = p.data.to(device=device, dtype=torch.float32)
        self._stored_tasks, self._stored_entries, self._store_a, self._store_b = 0, 0, None, None
        self._route_cache = None

    def truncate(self, num_tasks: int) -> None:
        """Keep only the first ``num_tasks`` tasks' increments (undoes a task whose learning failed)."""
        self.lora_A = nn.ParameterList(list(self.lora_A)[:num_tasks])
        self.lora_B = nn.ParameterList(list(self.lora_B)[:num_tasks])
        self._entries = sum(a.shape[0] for a in self.lora_A)
        if num_tasks < self._stored_tasks:
            self._stored_tasks, self._stored_entries = num_tasks, self._entries

    def _sync_store(self) -> None:
        """Move newly frozen tasks (a prefix of the list, in order) into the contiguous store.

        A task counts as frozen once neither of its factors requires grad; tasks are stored in order, so a
        trainable task stops the scan. Frozen factors must not be edited in place afterwards (call
        ``truncate`` and re-add instead).
        """
        n, t = len(self.lora_A), self._stored_tasks
        fresh = []
        while t < n and not self.lora_A[t].requires_grad and not self.lora_B[t].requires_grad:
            fresh.append(t)
            t += 1
        if not fresh:
            return
        need = self._stored_entries + sum(self.lora_A[i].shape[0] for i in fresh)
        if self._store_a is None or need > self._store_a.shape[0]:
            capacity = max(need, 2 * (0 if self._store_a is None else self._store_a.shape[0]), 8)
            a0, b0 = self.lora_A[fresh[0]], self.lora_B[fresh[0]]
            store_a = a0.new_empty(capacity, *a0.shape[1:])
            store_b = b0.new_empty(capacity, *b0.shape[1:])
            offset = 0
            for i in range(self._stored_tasks):  # re-point the stored tasks at the larger store
                p = self.lora_A[i].shape[0]
                store_a[offset: offset + p] = self.lora_A[i].data
                store_b[offset: offset + p] = self.lora_B[i].data
                self.lora_A[i].data = store_a[offset: offset + p]
                self.lora_B[i].data = store_b[offset: offset + p]
                offset += p
            self._store_a, self._store_b = store_a, store_b
        offset = self._stored_entries
        for i in fresh:
            p = self.lora_A[i].shape[0]
            self._store_a[offset: offset + p] = self.lora_A[i].data
            self._store_b[offset: offset + p] = self.lora_B[i].data
            self.lora_A[i].data = self._store_a[offset: offset + p]
            self.lora_B[i].data = self._store_b[offset: offset + p]
            offset += p
        self._stored_tasks, self._stored_entries = t, offset

    def gather(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Factors of the entries ``indices [B, K]``: ``(A [B, K, r, d_in], B [B, K, d_out, r])``.

        Stored (frozen) entries are indexed in the store; entries of trainable tasks come from their
        parameters, so gradients reach them.
        """
        self._sync_store()
        stored = self._stored_entries
        if stored == self._entries:
            return self._store_a[indices], self._store_b[indices]
        tail = range(self._stored_tasks, len(self.lora_A))  # the trainable tasks (normally one)
        tail_a = torch.cat([self.lora_A[i] for i in tail])
        tail_b = torch.cat([self.lora_B[i] for i in tail])
        if stored == 0:
            return tail_a[indices], tail_b[indices]
        in_store = (indices < stored)[..., None, None]
        a = torch.where(in_store, self._store_a[indices.clamp(max=stored - 1)], tail_a[(indices - stored).clamp(min=0)])
        b = torch.where(in_store, self._store_b[indices.clamp(max=stored - 1)], tail_b[(indices - stored).clamp(min=0)])
        return a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.route is None or len(self.lora_A) == 0:
            return y
        indices, weights = self.route
        if indices.shape[0] != x.shape[0]:
            raise ValueError(f"routing has {indices.shape[0]} rows but the layer input has {x.shape[0]}")
        return apply_row_factors(x, *self._route_factors(x.dtype), base=y)

    def _route_factors(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``row_factors`` of the current route's entries, scaled. Without grad (inference) they are kept
        while the same route holds: a generation then gathers them once, not once per new token."""
        inference = not torch.is_grad_enabled()
        cache = self._route_cache
        if inference and cache is not None and cache[0] is self.route and cache[1] == dtype:
            return cache[2], cache[3]
        indices, weights = self.route
        a, b = self.gather(indices)  # (B, K, r, d_in), (B, K, d_out, r)
        a_t, b_w = row_factors(a.to(dtype), b.to(dtype), weights, self.scaling)
        if inference:
            self._route_cache = (self.route, dtype, a_t, b_w)
        return a_t, b_w


def inject(model: nn.Module, targets: list[str], rank: int, alpha: float) -> dict[str, BankLinear]:
    """Replace every ``nn.Linear`` whose qualified name ends with one of ``targets`` by a ``BankLinear``.

    Returns:
        ``{qualified name: wrapper}`` in model order. Raises if nothing matched.
    """
    found = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)
    ]
    if not found:
        raise ValueError(f"no nn.Linear in the model matches targets {targets}")
    wrappers = {}
    for name, module in found:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        wrapper = BankLinear(module, rank, alpha)
        setattr(parent, child, wrapper)
        wrappers[name] = wrapper
    return wrappers


@contextlib.contextmanager
def routed(layers: dict[str, BankLinear], indices: torch.Tensor, weights: torch.Tensor) -> Iterator[None]:
    """Within the block, every wrapped layer mixes the given entries per row.

    Args:
        indices: ``[B, K]`` entry indices per row.
        weights: ``[B, K]`` mixing weights per row.
    """
    route = (indices, weights)
    for layer in layers.values():
        layer.route, layer._route_cache = route, None
    try:
        yield
    finally:
        for layer in layers.values():
            layer.route, layer._route_cache = None, None
