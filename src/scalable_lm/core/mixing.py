"""JARe mixing: per-example weighted sum of low-rank increments (paper §3.3), pure torch.

For one target layer ``W`` (``d_out × d_in``) and an input row whose retrieved entries are
``e_1..e_K`` with weights ``w_1..w_K``::

    y = W h + b + scale · Σ_k w_k B_{e_k} (A_{e_k} h)

The factors of the K entries are gathered per row, so a batch never forms a ``d_out × d_in`` matrix
and each row uses its own entries. ``dense_reference`` is the slow formula used only to test it.
"""

from __future__ import annotations

import torch


def mixed_lowrank(
    h: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    indices: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """``Σ_k w_k B_{e_k} A_{e_k} h`` for every row, from gathered factors.

    Args:
        h: ``[B, ..., d_in]`` layer input (any number of middle dims, e.g. tokens).
        a: ``[E, r, d_in]`` down-projections of all entries.
        b: ``[E, d_out, r]`` up-projections of all entries.
        indices: ``[B, K]`` entries of each row.
        weights: ``[B, K]`` mixing weights of each row.

    Returns:
        ``[B, ..., d_out]``.
    """
    rows = h.shape[0]
    if indices.shape[0] != rows:
        raise ValueError(f"routing has {indices.shape[0]} rows but the layer input has {rows}")
    flat = h.reshape(rows, -1, h.shape[-1])  # (B, N, d_in)
    a_rows = a[indices]  # (B, K, r, d_in)
    b_rows = b[indices]  # (B, K, d_out, r)
    z = torch.einsum("bnd,bkrd->bknr", flat, a_rows)  # (B, K, N, r)
    z = z * weights[:, :, None, None].to(z.dtype)
    out = torch.einsum("bknr,bkor->bno", z, b_rows)  # (B, N, d_out)
    return out.reshape(*h.shape[:-1], b.shape[1])


def dense_reference(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    a: torch.Tensor,
    b: torch.Tensor,
    indices: torch.Tensor,
    weights: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Reference ``(W + scale · Σ_k w_k B_k A_k) h + bias`` with a dense matrix per row (tests only)."""
    out = []
    for row in range(h.shape[0]):
        w_row = weight.clone()
        for k in range(indices.shape[1]):
            e = indices[row, k]
            w_row = w_row + scale * weights[row, k] * (b[e] @ a[e])
        y = h[row] @ w_row.T
        out.append(y if bias is None else y + bias)
    return torch.stack(out)
