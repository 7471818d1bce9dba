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

from scalable_lm.core.mixing import mixed_lowrank


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

    def add_task(self, entries: int, generator: torch.Generator | None = None) -> list[nn.Parameter]:
        """Append a task's ``entries`` increments (A: Kaiming-uniform as in LoRA, B: zeros)."""
        d_in, d_out = self.base_layer.in_features, self.base_layer.out_features
        bound = 1.0 / math.sqrt(d_in)  # kaiming_uniform with a=sqrt(5), as nn.Linear and LoRA use
        a = (torch.rand(entries, self.rank, d_in, generator=generator) * 2 - 1) * bound
        self.lora_A.append(nn.Parameter(a))
        self.lora_B.append(nn.Parameter(torch.zeros(entries, d_out, self.rank)))
        return [self.lora_A[-1], self.lora_B[-1]]

    def truncate(self, num_tasks: int) -> None:
        """Keep only the first ``num_tasks`` tasks' increments (undoes a task whose learning failed)."""
        self.lora_A = nn.ParameterList(list(self.lora_A)[:num_tasks])
        self.lora_B = nn.ParameterList(list(self.lora_B)[:num_tasks])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.route is None or len(self.lora_A) == 0:
            return y
        indices, weights = self.route
        a = torch.cat(list(self.lora_A))  # (E, r, d_in)
        b = torch.cat(list(self.lora_B))  # (E, d_out, r)
        return y + self.scaling * mixed_lowrank(x, a.to(x.dtype), b.to(x.dtype), indices, weights)


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
    for layer in layers.values():
        layer.route = (indices, weights)
    try:
        yield
    finally:
        for layer in layers.values():
            layer.route = None
