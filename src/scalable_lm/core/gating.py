"""GainLoRA's gates (Liang & Li, NeurIPS 2025): one input-dependent coefficient per task's LoRA branch.

Task ``t`` owns a small gating network: a two-layer MLP ``h_t`` over a pooled summary ``u [d]`` of the input
and a key ``k_t [m]``; its branch is mixed in with

    a_t(u) = |2 sigmoid(k_t . h_t(u)) - 1|         (0 exactly when k_t . h_t(u) = 0)

Old tasks' gates are frozen. The new task's gate is kept at ~0 on old tasks' inputs by construction:

- ``h_t`` starts as a copy of ``h_{t-1}`` and every update to its weights is projected off the subspace
  that old tasks' inputs to that layer span (gradient projection memory, GPM: Saha et al. 2021), so
  ``h_t(u_old) = h_{t-1}(u_old)``;
- ``k_t`` starts, and stays, orthogonal to the subspace old tasks' features ``h(u_old)`` span.

The projection is applied to each optimiser *update* (``project_update``), not to the gradient, because
Adam's per-coordinate scaling would carry a projected gradient back into the protected subspace. The
subspaces are kept with GPM's energy criterion (``threshold`` of each layer input's energy).

Written here because neither PEFT nor another library ships it; the authors' code (T5 only, CUDA/cupy) was
read to understand the method. Differences from the paper, sized for CPU: a 2-layer MLP without biases
(biases would move old inputs' outputs too), hidden width ``hidden``, a fixed GPM threshold, the new key
scaled so its gate starts at about 0.9 on the new task's own inputs. Pure torch.
"""

from __future__ import annotations

import torch
from torch import nn


def gate_values(scores: torch.Tensor) -> torch.Tensor:
    """``|2 sigmoid(z) - 1|`` elementwise: 0 at ``z = 0``, towards 1 as ``|z|`` grows."""
    return (2 * torch.sigmoid(scores) - 1).abs()


def extend_basis(basis: torch.Tensor, inputs: torch.Tensor, threshold: float) -> torch.Tensor:
    """GPM: add to ``basis [n, k]`` (orthonormal columns) the fewest new directions such that the basis holds
    ``threshold`` of the energy of ``inputs [N, n]`` (rows are samples). Returns ``[n, k']``, ``k' >= k``."""
    x = inputs.T.to(basis.dtype)  # (n, N)
    total = float((x * x).sum())
    if total == 0.0 or basis.shape[1] >= basis.shape[0]:
        return basis
    inside = basis @ (basis.T @ x)
    kept = float((inside * inside).sum())
    if kept >= threshold * total:
        return basis
    u, s, _ = torch.linalg.svd(x - inside, full_matrices=False)
    energy = kept + torch.cumsum(s * s, dim=0)
    k = int((energy < threshold * total).sum()) + 1
    k = min(k, basis.shape[0] - basis.shape[1])
    new = torch.cat([basis, u[:, :k]], dim=1)
    q, _ = torch.linalg.qr(new)  # re-orthonormalise against round-off
    return q


class TaskGates(nn.Module):
    """The gates of every learned task.

    Args:
        dim: ``d`` of the pooled input summary ``u``.
        hidden: ``m``, width of each task's MLP and key.
        threshold: GPM energy kept per layer input (0-1; higher protects old tasks more, leaves less room).
    """

    def __init__(self, dim: int, hidden: int = 128, threshold: float = 0.97):
        super().__init__()
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.dim, self.hidden, self.threshold = dim, hidden, threshold
        self.mlps = nn.ModuleList()  # per task: Linear(d, m) -> SiLU -> Linear(m, m), no biases
        self.keys = nn.ParameterList()  # per task: (m,)
        # orthonormal bases of old tasks' inputs to layer 1 (d), layer 2 (m) and the key (m); float32
        self.register_buffer("basis_in", torch.zeros(dim, 0))
        self.register_buffer("basis_mid", torch.zeros(hidden, 0))
        self.register_buffer("basis_out", torch.zeros(hidden, 0))

    @property
    def num_tasks(self) -> int:
        return len(self.keys)

    def _layers(self, u: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input to layer 2 [B, m], h_t(u) [B, m])`` for task ``t``."""
        first, second = self.mlps[t][0], self.mlps[t][2]
        mid = nn.functional.silu(first(u))
        return mid, second(mid)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` gate of every task's branch for pooled inputs ``u [B, d]``."""
        if not self.num_tasks:
            return u.new_zeros(u.shape[0], 0)
        u = u.to(self.basis_in.dtype)
        scores = [self._layers(u, t)[1] @ self.keys[t] for t in range(self.num_tasks)]
        return gate_values(torch.stack(scores, dim=1))

    def add_task(self, u: torch.Tensor, generator: torch.Generator | None = None) -> list[nn.Parameter]:
        """Create task ``T``'s gate from its inputs ``u [N, d]``; returns its trainable tensors.

        The MLP copies the previous task's (the first is drawn from ``generator``); the key is the main
        direction of the new task's features outside the old tasks' feature subspace, scaled so that the mean
        ``|k . h(u)|`` on ``u`` is 3 (gate ~0.9)."""
        device = self.basis_in.device
        mlp = nn.Sequential(nn.Linear(self.dim, self.hidden, bias=False), nn.SiLU(),
                            nn.Linear(self.hidden, self.hidden, bias=False)).to(device)
        if self.num_tasks:
            mlp.load_state_dict(self.mlps[-1].state_dict())
        else:
            w1 = torch.randn(self.hidden, self.dim, generator=generator) / self.dim ** 0.5
            w2 = torch.randn(self.hidden, self.hidden, generator=generator) / self.hidden ** 0.5
            with torch.no_grad():
                mlp[0].weight.copy_(w1)
                mlp[2].weight.copy_(w2)
        self.mlps.append(mlp)
        with torch.no_grad():
            _, feats = self._layers(u.to(device=device, dtype=self.basis_in.dtype), self.num_tasks)
            free = feats - (feats @ self.basis_out) @ self.basis_out.T  # outside the old tasks' features
            _, _, vh = torch.linalg.svd(free, full_matrices=False)
            key = vh[0]
            scale = (free @ key).abs().mean().clamp_min(1e-6)
            key = key * 3.0 / scale
        self.keys.append(nn.Parameter(key))
        return [*mlp.parameters(), self.keys[-1]]

    def snapshot(self) -> list[torch.Tensor]:
        """Copies of the newest task's tensors, taken before an optimiser step (see ``project_update``)."""
        t = self.num_tasks - 1
        return [self.mlps[t][0].weight.detach().clone(), self.mlps[t][2].weight.detach().clone(),
                self.keys[t].detach().clone()]

    @torch.no_grad()
    def project_update(self, before: list[torch.Tensor]) -> None:
        """Keep only the part of the last update (now minus ``before``) that leaves old tasks' gates alone:
        ``dW1 (I - U_in U_in^T)``, ``dW2 (I - U_mid U_mid^T)``, ``(I - U_out U_out^T) dk``."""
        t = self.num_tasks - 1
        pairs = ((self.mlps[t][0].weight, self.basis_in), (self.mlps[t][2].weight, self.basis_mid))
        for (param, basis), old in zip(pairs, before[:2]):
            delta = param - old
            param.copy_(old + delta - (delta @ basis) @ basis.T)
        key, old = self.keys[t], before[2]
        delta = key - old
        key.copy_(old + delta - self.basis_out @ (self.basis_out.T @ delta))

    @torch.no_grad()
    def finish_task(self, u: torch.Tensor) -> None:
        """Freeze the newest gate and add its task's inputs ``u [N, d]`` at each layer to the protected bases."""
        t = self.num_tasks - 1
        for p in [*self.mlps[t].parameters(), self.keys[t]]:
            p.requires_grad_(False)
        u = u.to(device=self.basis_in.device, dtype=self.basis_in.dtype)
        mid, out = self._layers(u, t)
        self.basis_in = extend_basis(self.basis_in, u, self.threshold)
        self.basis_mid = extend_basis(self.basis_mid, mid, self.threshold)
        self.basis_out = extend_basis(self.basis_out, out, self.threshold)
