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
    if indices.shape[0] != h.shape[0]:
        raise ValueError(f"routing has {indices.shape[0]} rows but the layer input has {h.shape[0]}")
    return mixed_gathered(h, a[indices], b[indices], weights)


def mixed_gathered(h: torch.Tensor, a_rows: torch.Tensor, b_rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``Σ_k w_k B_k A_k h`` per row from factors already gathered per row.

    Args:
        h: ``[B, ..., d_in]``.
        a_rows: ``[B, K, r, d_in]``; b_rows: ``[B, K, d_out, r]``; weights: ``[B, K]``.

    Returns:
        ``[B, ..., d_out]`` (``apply_row_factors`` of ``row_factors``).
    """
    return apply_row_factors(h, *row_factors(a_rows, b_rows, weights))


def row_factors(a_rows: torch.Tensor, b_rows: torch.Tensor, weights: torch.Tensor,
                scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's K entries laid out for two batched matmuls, ``scale · w_k`` folded into the second.

    Args:
        a_rows: ``[B, K, r, d_in]``; b_rows: ``[B, K, d_out, r]``; weights: ``[B, K]``.

    Returns:
        ``(A^T [B, d_in, K·r], B_w [B, K·r, d_out])`` with ``h @ A^T @ B_w = scale · Σ_k w_k B_k A_k h``.
    """
    rows, k, r, d_in = a_rows.shape
    a_t = a_rows.reshape(rows, k * r, d_in).transpose(1, 2)  # a view: bmm reads it transposed, no copy
    w = (scale * weights.to(b_rows.dtype)).repeat_interleave(r, dim=1)[:, :, None]  # (B, K·r, 1)
    b_w = (b_rows.transpose(2, 3).reshape(rows, k * r, -1) * w).contiguous()
    return a_t, b_w


def apply_row_factors(h: torch.Tensor, a_t: torch.Tensor, b_w: torch.Tensor,
                      base: torch.Tensor | None = None) -> torch.Tensor:
    """``base + h @ A^T @ B_w`` per row (``row_factors``): ``[B, ..., d_in]`` → ``[B, ..., d_out]``.

    ``base`` (``[B, ..., d_out]``, e.g. the frozen layer's output) is added inside the second product.
    """
    rows = a_t.shape[0]
    if h.shape[0] != rows:
        raise ValueError(f"routing has {rows} rows but the layer input has {h.shape[0]}")
    z = torch.bmm(h.reshape(rows, -1, h.shape[-1]), a_t)  # (B, N, K·r)
    shape = (*h.shape[:-1], b_w.shape[2])
    if base is None:
        return torch.bmm(z, b_w).reshape(shape)
    return torch.baddbmm(base.reshape(rows, -1, b_w.shape[2]), z, b_w).reshape(shape)


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
