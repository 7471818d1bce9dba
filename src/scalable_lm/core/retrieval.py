"""DTKR: Dynamic Task-related Knowledge Retrieval (paper §3.2), pure torch.

A query ``q`` (dim ``d``) is split into ``G`` groups of dim ``d/G``. Every bank entry ``e`` has one key per
group ``k_{e,g}``. The entry's score is the mean over groups of ``cos(q_g, k_{e,g})``. This module scores,
picks the top-K entries per example, turns scores into mixing weights, and gives the preparation-stage
loss that trains a new task's keys. It does not know about tasks, layers or models.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def split_groups(queries: torch.Tensor, groups: int) -> torch.Tensor:
    """Split queries into groups.

    Args:
        queries: ``[B, d]`` query embeddings; ``d`` must be divisible by ``groups``.
        groups: number of groups ``G``.

    Returns:
        ``[B, G, d/G]``.
    """
    b, d = queries.shape
    if d % groups:
        raise ValueError(f"query dimension {d} is not divisible by the number of groups {groups}")
    return queries.reshape(b, groups, d // groups)


def group_similarity(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every query group with every key of the same group.

    Args:
        queries: ``[B, d]``.
        keys: ``[E, G, d/G]`` one key per entry and group.

    Returns:
        ``[B, E, G]`` with ``s_g(x, e) = cos(q_g(x), k_{e,g})``.
    """
    q = F.normalize(split_groups(queries, keys.shape[1]), dim=-1)  # (B, G, dg)
    k = F.normalize(keys, dim=-1)  # (E, G, dg)
    return torch.einsum("bgd,egd->beg", q, k)


def scoring_keys(keys: torch.Tensor) -> torch.Tensor:
    """``[E, G, d/G]`` keys → ``[G, d/G, E]`` unit keys, the layout ``scores_from_unit_keys`` multiplies by
    (a bank of frozen keys caches it: scoring is then one batched product)."""
    return F.normalize(keys, dim=-1).permute(1, 2, 0).contiguous()


def scores_from_unit_keys(queries: torch.Tensor, unit_keys: torch.Tensor) -> torch.Tensor:
    """``entry_scores`` from ``scoring_keys(keys)``: ``[B, d]`` × ``[G, d/G, E]`` → ``[B, E]``."""
    q = F.normalize(split_groups(queries, unit_keys.shape[0]), dim=-1).transpose(0, 1)  # (G, B, dg)
    return torch.bmm(q, unit_keys).mean(dim=0)


def scores_within_tasks(queries: torch.Tensor, unit_keys: torch.Tensor, tasks: torch.Tensor,
                        entries_per_task: int) -> torch.Tensor:
    """``scores_from_unit_keys`` restricted to each row's own task: ``[B, P]`` scores of the ``P`` entries of
    task ``tasks [B]`` (entries ``t·P .. t·P+P-1``). Only ``B·P`` entries are scored, however large the bank."""
    g, dg, e = unit_keys.shape
    rows = unit_keys.view(g, dg, e // entries_per_task, entries_per_task)[:, :, tasks]  # (G, dg, B, P)
    q = F.normalize(split_groups(queries, g), dim=-1)  # (B, G, dg)
    return torch.einsum("bgd,gdbp->bp", q, rows) / g  # mean over groups of the cosines


def entry_scores(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Entry score ``s(x, e)`` = mean over groups of the group similarities.

    Args:
        queries: ``[B, d]``.
        keys: ``[E, G, d/G]``.

    Returns:
        ``[B, E]`` in ``[-1, 1]``.
    """
    return group_similarity(queries, keys).mean(dim=-1)


def select_top_k(
    scores: torch.Tensor,
    k: int,
    eligible: torch.Tensor | None = None,
    weighting: str = "normalize",
    temperature: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-K entries per example and their mixing weights (JARe weights, paper Eq. 5).

    ``weighting="normalize"`` is the official rule ``w_e = s_e / Σ s`` (scores clamped at a small positive
    value first, so that a negative cosine cannot flip a sign); ``"softmax"`` uses ``softmax(s / T)``.

    Args:
        scores: ``[B, E]`` entry scores.
        k: entries kept per example; capped at the number of eligible entries.
        eligible: optional ``[E]`` or ``[B, E]`` bool mask; ineligible entries are never selected.
        weighting: ``"normalize"`` or ``"softmax"``.
        temperature: softmax temperature.

    Returns:
        ``(indices [B, K'], weights [B, K'])`` with rows of weights summing to 1.
    """
    if eligible is not None:
        n_eligible = int(eligible.sum(dim=-1).min())
        if n_eligible == 0:
            raise ValueError("no eligible entries to retrieve from")
        scores = scores.masked_fill(~eligible.expand_as(scores), float("-inf"))
    else:
        n_eligible = scores.shape[1]
    top, idx = scores.topk(min(k, n_eligible), dim=-1)
    if weighting == "normalize":
        top = top.clamp_min(1e-6)
        weights = top / top.sum(dim=-1, keepdim=True)
    elif weighting == "softmax":
        weights = torch.softmax(top / temperature, dim=-1)
    else:
        raise ValueError(f"unknown weighting {weighting!r}; use 'normalize' or 'softmax'")
    return idx, weights


def init_keys(groups: int, entries: int, dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """New keys, (semi-)orthogonal within each group.

    Returns:
        ``[G, P, dim]``: for each group the ``P`` keys are orthonormal rows (``P <= dim``).
    """
    keys = torch.empty(groups, entries, dim)
    for g in range(groups):
        gaussian = torch.randn(dim, entries, generator=generator)
        q, _ = torch.linalg.qr(gaussian)  # (dim, P) orthonormal columns
        keys[g] = q.T
    return keys


def key_preparation_loss(
    queries: torch.Tensor,
    keys: torch.Tensor,
    k_prep: int = 2,
    mask_prob: float = 0.25,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Preparation-stage loss of one task's keys (paper §3.2, group retrieval + random key mask).

    Per group, each of the task's ``P`` keys is masked with probability ``mask_prob`` (per example),
    the ``k_prep`` most similar unmasked keys are selected, and the loss is ``-mean`` of their
    similarities. The mask keeps a few keys from winning every query.

    Args:
        queries: ``[N, d]`` queries of the task's training inputs.
        keys: ``[G, P, d/G]`` the task's keys (trainable).
        k_prep: keys selected per group.
        mask_prob: probability of masking one key.

    Returns:
        scalar loss.
    """
    sim = group_similarity(queries, keys.transpose(0, 1))  # (N, P, G)
    sim = sim.transpose(1, 2)  # (N, G, P)
    if mask_prob > 0:
        # drawn on the CPU from the (CPU) generator: the same masks on every device
        drop = (torch.rand(sim.shape, generator=generator) < mask_prob).to(sim.device)
        sim = sim.masked_fill(drop, float("-inf"))
    top, _ = sim.topk(min(k_prep, sim.shape[-1]), dim=-1)  # (N, G, k)
    valid = torch.isfinite(top)  # a fully masked group contributes nothing
    if not valid.any():
        return keys.sum() * 0.0
    return -top[valid].mean()


def step_decay(epoch: int, epochs: int, milestones: tuple[float, ...] = (0.67,), gamma: float = 0.1) -> float:
    """Learning-rate factor of a step schedule: ×gamma at each milestone (fraction of the epochs)."""
    return gamma ** sum(epoch >= math.ceil(m * epochs) for m in milestones)
