"""Training stages shared by SLM and the baselines: key preparation and a plain supervised epoch.

Numbers that must agree between methods (batching, shuffling, loss) live here once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from scalable_lm.progress import progress as progress_bar

from scalable_lm.config import KeyConfig
from scalable_lm.core import retrieval


def batches(n: int, batch_size: int, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Index batches over ``n`` rows, shuffled when a generator is given."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def train_keys(keys: torch.nn.Parameter, queries: torch.Tensor, cfg: KeyConfig, generator: torch.Generator) -> list[float]:
    """Preparation stage: fit one task's keys ``[G, P, d/G]`` to its cached queries ``[N, d]``.

    AdamW (weight decay 0.01), grad-norm clip 0.1 and a ×0.1 step decay at 2/3 of the epochs, as in the
    paper, with more epochs and a larger learning rate (SPEC: the paper's 3 epochs at 1e-3 leave the keys
    near their init at our data sizes). Returns the mean loss of each epoch.
    """
    opt = torch.optim.AdamW([keys], lr=cfg.key_lr, weight_decay=0.01)
    history = []
    for epoch in range(cfg.key_epochs):
        for group in opt.param_groups:
            group["lr"] = cfg.key_lr * retrieval.step_decay(epoch, cfg.key_epochs)
        total, steps = 0.0, 0
        for idx in batches(len(queries), cfg.key_batch_size, generator):
            loss = retrieval.key_preparation_loss(queries[idx], keys, cfg.k_prep, cfg.mask_prob, generator)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([keys], 0.1)
            opt.step()
            total, steps = total + loss.item(), steps + 1
        history.append(total / max(steps, 1))
    keys.requires_grad_(False)
    return history


def supervised_epoch(
    params: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    n_rows: int,
    batch_size: int,
    logits_fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    generator: torch.Generator,
    desc: str = "training",
    progress: bool = True,
    penalty_fn: Callable[[], torch.Tensor] | None = None,
    accelerator=None,
) -> float:
    """One shuffled epoch of cross-entropy; ``logits_fn(batch indices) -> (logits, targets)``.

    ``penalty_fn()``, if given, is added to every step's loss (EWC, O-LoRA orthogonality).
    With an ``accelerate.Accelerator`` running several processes (data parallel, e.g. ``accelerate launch
    --num_processes 2``), every process draws the same global batch order, takes its share of each batch,
    and the gradients are summed across processes (each share's loss is divided by the global batch size),
    so a step equals the single-process step up to float rounding and dropout draws.
    Returns the mean training loss (cross-entropy plus penalty).
    """
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    total, steps = 0.0, 0
    bar = progress_bar(batches(n_rows, batch_size, generator), desc, progress and rank == 0)
    for idx in bar:
        share = idx[rank::world]
        optimizer.zero_grad()
        if len(share):
            logits, targets = logits_fn(share)
            loss = F.cross_entropy(logits, targets, reduction="sum") / len(idx)
        else:
            loss = sum(p.sum() * 0.0 for p in params)
        if penalty_fn is not None:
            loss = loss + penalty_fn() / world
        loss.backward()
        if world > 1:
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                p.grad.copy_(accelerator.reduce(p.grad, reduction="sum"))
            loss = accelerator.reduce(loss.detach(), reduction="sum")
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        total, steps = total + loss.item(), steps + 1
        bar.set_postfix(loss=f"{total / steps:.3f}")
    return total / max(steps, 1)


# Fewer validation rows than this leave a head uncalibrated (temperature 1): a handful of rows, all right,
# would drive the temperature to its lower bound and make every later answer look certain.
MIN_CALIBRATION_ROWS = 20


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, low: float = 0.05, high: float = 20.0,
                    steps: int = 60) -> float:
    """Temperature scaling (Guo et al., 2017): the ``T`` that minimises the negative log-likelihood of
    ``softmax(logits / T)`` on held-out rows, ``logits [N, C]``, ``labels [N]``; searched in ``[low, high]``.

    The NLL is convex in ``1/T``, so a golden-section search over ``1/T`` finds the optimum without an
    optimiser's state or learning rate, deterministically. No rows: ``1.0`` (the logits as they are).
    """
    if len(labels) == 0:
        return 1.0
    z, y = logits.detach().to(torch.float64), labels.to(logits.device)

    def nll(beta: float) -> float:
        return float(F.cross_entropy(z * beta, y))

    a, b = 1.0 / high, 1.0 / low
    ratio = (5 ** 0.5 - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(steps):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(d)
    beta = (a + b) / 2
    return float(1.0 / beta) if nll(beta) <= nll(1.0) else 1.0
