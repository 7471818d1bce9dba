"""Wrap target ``nn.Linear`` layers in ``BankLinear`` and route each batch through them.

``BankLinear`` owns, per task, the factors ``A [P, r, d_in]`` and ``B [P, d_out, r]`` of that task's
``P`` entries at this layer. Routing (which entries and weights each row uses) is computed once per batch
and handed to every wrapped layer: before the forward pass by the ``routed`` context manager, or inside it
by ``routed_from`` (a shared-prefix query, read when a given block has run); without routing the layer is
exactly its base layer.

    x ──► base(x) ─────────────────────────────┐
      └─► gather A,B of the K entries per row ─► Σ w·B(Ax)·scale ─► (+) ─► y

When every row's entries belong to one task (training; a batch of one task's inputs) the gather is skipped:
``x A_t^T`` weighted per row and entry, then ``B_t``, two dense matmuls.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

from scalable_lm.core.mixing import apply_row_factors, row_factors
from scalable_lm.encoder import block_index, block_output, layer_stack


class Route(tuple):
    """``(indices [B, K], weights [B, K])`` as handed to every wrapped layer, with the per-task plan the first
    layer works out from it (``BankLinear._one_task``) kept for the others."""

    def __new__(cls, pair):
        route = super().__new__(cls, pair)
        route.plans = {}
        return route


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
        # first entry of each task (and the total): a forward gathers only the tasks its route touches, so
        # its cost does not grow with the bank, and a task's factors may stay on disk (memory-mapped by
        # the store) until a route first reads them
        self._starts: list[int] = [0]
        self._starts_tensor: torch.Tensor | None = None  # the same on the route's device (rebuilt when it changes)

    def add_task(self, entries: int, generator: torch.Generator | None = None) -> list[nn.Parameter]:
        """Append a task's ``entries`` increments (A: Kaiming-uniform as in LoRA, B: zeros), float32 on the
        frozen layer's device (trained factors keep float32 whatever the compute dtype)."""
        d_in, d_out = self.base_layer.in_features, self.base_layer.out_features
        device = self._factor_device()
        bound = 1.0 / math.sqrt(d_in)  # kaiming_uniform with a=sqrt(5), as nn.Linear and LoRA use
        # drawn on the CPU from the (CPU) generator, so a seed gives the same init on every device
        a = (torch.rand(entries, self.rank, d_in, generator=generator) * 2 - 1) * bound
        return self.add_factors(a.to(device), torch.zeros(entries, d_out, self.rank, device=device), trainable=True)

    def add_factors(self, a: torch.Tensor, b: torch.Tensor, trainable: bool = False) -> list[nn.Parameter]:
        """Append a task whose factors ``a [P, r, d_in]`` and ``b [P, d_out, r]`` are given: they are used as
        they are (moved to the layer's device as float32 only if they are not already), so tensors that map
        a file stay unread until a route uses them."""
        device = self._factor_device()
        self.lora_A.append(nn.Parameter(a.to(device=device, dtype=torch.float32), requires_grad=trainable))
        self.lora_B.append(nn.Parameter(b.to(device=device, dtype=torch.float32), requires_grad=trainable))
        self._starts.append(self._starts[-1] + a.shape[0])
        self._starts_tensor = None
        return [self.lora_A[-1], self.lora_B[-1]]

    def _factor_device(self) -> torch.device:
        """Where the factors live: the frozen layer's device, or the CPU when the layer has no weights (a
        router-only load builds the backbone on the meta device; its factors are still read, e.g. to export)."""
        device = self.base_layer.weight.device
        return torch.device("cpu") if device.type == "meta" else device

    def to_device(self, device: torch.device) -> None:
        """Move every task's factors to ``device`` as float32."""
        device = torch.device("cpu") if self.base_layer.weight.is_meta else device
        for factors in (self.lora_A, self.lora_B):
            for p in factors:
                p.data = p.data.to(device=device, dtype=torch.float32)
        self._route_cache = None

    def truncate(self, num_tasks: int) -> None:
        """Keep only the first ``num_tasks`` tasks' increments (undoes a task whose learning failed)."""
        self.lora_A = nn.ParameterList(list(self.lora_A)[:num_tasks])
        self.lora_B = nn.ParameterList(list(self.lora_B)[:num_tasks])
        self._starts = self._starts[: num_tasks + 1]
        self._starts_tensor, self._route_cache = None, None

    def gather(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Factors of the entries ``indices [B, K]``: ``(A [B, K, r, d_in], B [B, K, d_out, r])``.

        Only the tasks owning these entries are read (their factors concatenated, then indexed), so the cost
        follows the route, not the size of the bank; gradients reach the entries of trainable tasks.
        """
        if self._starts_tensor is None or self._starts_tensor.device != indices.device:
            self._starts_tensor = torch.tensor(self._starts, device=indices.device)
        starts = self._starts_tensor
        if int(indices.max()) >= self._starts[-1] or int(indices.min()) < 0:
            raise IndexError(f"entry index out of range: the bank has {self._starts[-1]} entries")
        owners = torch.bucketize(indices, starts, right=True) - 1  # task of each entry
        tasks, local_task = torch.unique(owners, return_inverse=True)
        tasks = tasks.tolist()
        if len(tasks) == 1:
            t = tasks[0]
            local = indices - self._starts[t]
            return self.lora_A[t][local], self.lora_B[t][local]
        sizes = torch.tensor([self._starts[t + 1] - self._starts[t] for t in tasks], device=indices.device)
        offsets = torch.cumsum(sizes, 0) - sizes  # where each touched task starts in the concatenation
        local = offsets[local_task] + indices - starts[owners]
        a = torch.cat([self.lora_A[t] for t in tasks])
        b = torch.cat([self.lora_B[t] for t in tasks])
        return a[local], b[local]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.route is None or len(self.lora_A) == 0:
            return y
        indices, weights = self.route
        if indices.shape[0] != x.shape[0]:
            raise ValueError(f"routing has {indices.shape[0]} rows but the layer input has {x.shape[0]}")
        decoding = not torch.is_grad_enabled() and x.ndim >= 3 and x.shape[-2] == 1
        one_task = None if decoding else self._one_task()
        if one_task is not None:  # every row routed within one task (training; a batch of one task's inputs)
            return self._within_task(x, y, *one_task)
        # rows of several tasks, or a generation's decode step: each row's factors gathered and laid out for
        # two batched products (kept while the route holds: a generation lays them out once for every step)
        return apply_row_factors(x, *self._route_factors(x.dtype), base=y)

    def _within_task(self, x: torch.Tensor, y: torch.Tensor, t: int, w: torch.Tensor) -> torch.Tensor:
        """``y + scale · Σ_k w_k B_k A_k x`` when every row uses task ``t`` only (``w [B, P]``: each row's weight
        on each of the task's entries): two dense products, ``x A_t^T`` weighted per row and entry, then
        ``B_t``, with no per-row copy of any factor. The same sum as ``apply_row_factors`` (the dense formula),
        in another order. (Rows of several tasks take the per-row path: on a CPU, moving each task's rows in
        and out cost more than gathering their factors.)"""
        a, b = self.lora_A[t], self.lora_B[t]  # (P, r, d_in), (P, d_out, r)
        entries, rank = a.shape[0], a.shape[1]
        rows = x.shape[0]
        h, out = x.reshape(rows, -1, x.shape[-1]), y.reshape(rows, -1, y.shape[-1])
        z = h @ a.reshape(entries * rank, -1).to(x.dtype).T  # (B, N, P·r)
        z = z * (self.scaling * w).to(x.dtype).repeat_interleave(rank, dim=1)[:, None, :]
        delta = z @ b.permute(0, 2, 1).reshape(entries * rank, -1).to(x.dtype)  # (B, N, d_out)
        if torch.is_grad_enabled():  # training keeps the graph
            return (out + delta).reshape(y.shape)
        return out.add_(delta).reshape(y.shape)  # inference: into the base layer's fresh output

    def _one_task(self) -> tuple[int, torch.Tensor] | None:
        """``(t, weights [B, P] over task t's entries)`` when every row of the current route uses task ``t``
        only, else None. Worked out once per route and shared by every wrapped layer of the model (they hold
        the same tasks): a ``Route`` keeps it."""
        route = self.route
        key = tuple(self._starts)
        plans = getattr(route, "plans", None)
        if plans is not None and key in plans:
            return plans[key]
        indices, weights = route
        if self._starts_tensor is None or self._starts_tensor.device != indices.device:
            self._starts_tensor = torch.tensor(self._starts, device=indices.device)
        if int(indices.max()) >= self._starts[-1] or int(indices.min()) < 0:
            raise IndexError(f"entry index out of range: the bank has {self._starts[-1]} entries")
        # task of each entry, (B, K); indices may be a strided view (top-k), and bucketize warns on those
        owners = torch.bucketize(indices.contiguous(), self._starts_tensor, right=True) - 1
        plan = None
        if bool((owners == owners[0, 0]).all()):
            t = int(owners[0, 0])
            local = indices - self._starts[t]
            plan = (t, weights.new_zeros(len(indices), self._starts[t + 1] - self._starts[t]).scatter_add(1, local, weights))
        if plans is not None:
            plans[key] = plan
        return plan

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


class BelowLinear(nn.Module):
    """A frozen ``nn.Linear`` at or below a shared-prefix query's block, with the LoRA increments of the few
    tasks that change it (an imported adapter trained on every block: ``slm import``).

    The route cannot mix these increments into the pass that reads the query (they would change the query).
    A task's increments apply in a second pass, for the rows routed to that task only (``SLM.predict``): the
    ``deep`` context sets ``active = (t, w [B])`` and the layer adds ``w · scale · B_t A_t x`` to each row;
    otherwise the layer is exactly its base layer. Per task: ``A [r, d_in]``, ``B [d_out, r]`` or nothing.
    """

    def __init__(self, base_layer: nn.Linear, scaling: float):
        super().__init__()
        self.base_layer = base_layer.requires_grad_(False)
        self.scaling = scaling
        self.lora_A: list[nn.Parameter | None] = []  # per task index; None: the task leaves this layer as is
        self.lora_B: list[nn.Parameter | None] = []
        self.active: tuple[int, torch.Tensor] | None = None  # set by `deep`, not state

    def set_task(self, t: int, a: torch.Tensor | None, b: torch.Tensor | None) -> list[nn.Parameter]:
        """Give task ``t`` the factors ``a [r, d_in]``, ``b [d_out, r]`` (frozen, float32), or none."""
        while len(self.lora_A) <= t:
            self.lora_A.append(None)
            self.lora_B.append(None)
        if a is None:
            self.lora_A[t] = self.lora_B[t] = None
            return []
        device = self.base_layer.weight.device
        self.lora_A[t] = nn.Parameter(a.to(device=device, dtype=torch.float32), requires_grad=False)
        self.lora_B[t] = nn.Parameter(b.to(device=device, dtype=torch.float32), requires_grad=False)
        return [self.lora_A[t], self.lora_B[t]]

    def to_device(self, device: torch.device) -> None:
        for p in self.lora_A + self.lora_B:
            if p is not None:
                p.data = p.data.to(device=device, dtype=torch.float32)

    def truncate(self, num_tasks: int) -> None:
        del self.lora_A[num_tasks:], self.lora_B[num_tasks:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.active is None:
            return y
        t, w = self.active
        if t >= len(self.lora_A) or self.lora_A[t] is None:
            return y
        a, b = self.lora_A[t].to(x.dtype), self.lora_B[t].to(x.dtype)
        delta = (x @ a.T) @ b.T  # (B, ..., d_out)
        scale = (self.scaling * w).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return y + scale * delta


def wrap_below(model: nn.Module, names: list[str], depth: int, scaling: float,
               wrapped: dict[str, BelowLinear]) -> dict[str, BelowLinear]:
    """Wrap the layers ``names`` (each an ``nn.Linear`` in blocks ``< depth``, i.e. at or below a shared-prefix
    query's block) in ``BelowLinear``, adding them to ``wrapped`` (those already there are kept). Raises
    ``ValueError`` naming a layer that is not such a linear layer."""
    stack = layer_stack(model)[0]
    for name in names:
        if name in wrapped:
            continue
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"the model has no module {name}") from None
        block = block_index(name, stack)
        if not isinstance(module, nn.Linear) or block is None or block >= depth:
            raise ValueError(f"{name} is not a linear layer of the blocks at or below the query's (block {depth})")
        wrapped[name] = _replace(model, name, BelowLinear(module, scaling))
    return wrapped


def below_candidates(model: nn.Module, depth: int) -> set[str]:
    """Names of the ``nn.Linear`` layers (or ``BelowLinear`` wrappers) in blocks ``< depth``."""
    stack = layer_stack(model)[0]
    out = set()
    for name, module in model.named_modules():
        if isinstance(module, BelowLinear):
            out.add(name)
        elif isinstance(module, nn.Linear) and not name.endswith(".base_layer"):
            block = block_index(name, stack)
            if block is not None and block < depth:
                out.add(name)
    return out


@contextlib.contextmanager
def deep(layers: dict[str, BelowLinear], t: int, weights: torch.Tensor) -> Iterator[None]:
    """Within the block, the layers below the query add task ``t``'s increments, row ``i`` weighted by
    ``weights[i]`` (``[B]``: the share of the row's route that task ``t`` holds)."""
    for layer in layers.values():
        layer.active = (t, weights)
    try:
        yield
    finally:
        for layer in layers.values():
            layer.active = None


def inject(model: nn.Module, targets: list[str], rank: int, alpha: float, above: int = 0) -> dict[str, BankLinear]:
    """Replace every ``nn.Linear`` whose qualified name ends with one of ``targets`` by a ``BankLinear``.

    ``above=N`` (a shared-prefix query read after block N): only layers in the blocks above N are wrapped,
    so the first N blocks, and with them the query, never change.

    Returns:
        ``{qualified name: wrapper}`` in model order. Raises if nothing matched.
    """
    stack = layer_stack(model)[0] if above else None

    def kept(name: str) -> bool:
        if stack is None:
            return True
        block = block_index(name, stack)
        return block is not None and block >= above

    found = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets) and kept(name)
    ]
    if not found:
        where = f" above block {above} of {stack}" if stack is not None else ""
        raise ValueError(f"no nn.Linear in the model{where} matches targets {targets}")
    return {name: _replace(model, name, BankLinear(module, rank, alpha)) for name, module in found}


def _replace(model: nn.Module, name: str, wrapper: nn.Module) -> nn.Module:
    """Put ``wrapper`` where the submodule ``name`` of ``model`` was; returns it."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, wrapper)
    return wrapper


@contextlib.contextmanager
def routed_from(layers: dict[str, BankLinear], block: nn.Module,
                route_fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]) -> Iterator[None]:
    """Within the block, a forward pass decides its own route on the way up: when ``block`` has run,
    ``route_fn(hidden [B, T, H])`` returns ``(indices [B, K], weights [B, K])`` and every wrapped layer mixes
    them for the rest of that pass. The wrapped layers must all lie above ``block`` (``inject(above=...)``):
    one below it would have run unrouted. One pass then serves routing and answering.
    """

    def decide(module, args, output):
        route = Route(route_fn(block_output(output)))
        for layer in layers.values():
            layer.route, layer._route_cache = route, None

    handle = block.register_forward_hook(decide)
    try:
        yield
    finally:
        handle.remove()
        for layer in layers.values():
            layer.route, layer._route_cache = None, None


@contextlib.contextmanager
def routed(layers: dict[str, BankLinear], indices: torch.Tensor, weights: torch.Tensor) -> Iterator[None]:
    """Within the block, every wrapped layer mixes the given entries per row.

    Args:
        indices: ``[B, K]`` entry indices per row.
        weights: ``[B, K]`` mixing weights per row.
    """
    route = Route((indices, weights))
    for layer in layers.values():
        layer.route, layer._route_cache = route, None
    try:
        yield
    finally:
        for layer in layers.values():
            layer.route, layer._route_cache = None, None
