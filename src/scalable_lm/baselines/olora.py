"""O-LoRA (Wang et al. 2023): one LoRA per task, trained orthogonal to the earlier tasks' LoRAs.

Each task adds one rank-``r`` increment at every target layer (the same ``BankLinear`` wrappers SLM uses,
one entry per task); earlier increments are frozen. While learning task ``t`` the loss adds
``λ Σ_layers Σ_{s<t} |A_t A_s^T|`` (sum of absolute entries), which pushes the new down-projection into a
subspace orthogonal to the old ones. At inference every task's increment is applied at once (weight 1 each,
no routing, no task-ID) and one head over the union of all labels answers. The original also adds an L2
term on the new LoRA and works with generative label words; neither is done here.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from scalable_lm.adapters.inject import BankLinear
from scalable_lm.baselines.lora import UnionLoRA
from scalable_lm.config import BankConfig, TrainConfig
from scalable_lm.data.tasks import Task, split_validation


def orthogonality_loss(layers: Iterable[BankLinear]) -> torch.Tensor:
    """``Σ_layers Σ_{s<t} |A_t A_s^T|`` (sum of absolute entries) for each layer's newest slot ``t``.

    Each slot holds one entry: ``lora_A[s]`` is ``[1, r, d_in]``. Returns a scalar (0 with one slot).
    """
    total = torch.zeros(())
    for layer in layers:
        new = layer.lora_A[-1][0]  # (r, d_in)
        for old in list(layer.lora_A)[:-1]:
            total = total + (new @ old[0].T).abs().sum()
    return total


class OLoRA(UnionLoRA):
    """Orthogonal per-task LoRAs summed into a frozen backbone, with a union head.

    Args:
        backbone: ``(model, tokenizer)``; frozen.
        train: shared training budget (``train.lr`` is the LoRA learning rate).
        bank: rank, alpha and target layers (the other fields are unused).
        orth_lambda: strength of the orthogonality loss (O-LoRA's λ1, default 0.5).
    """

    name = "o-lora"

    def __init__(self, backbone, train: TrainConfig | None = None, bank: BankConfig | None = None,
                 orth_lambda: float = 0.5, device: str | torch.device = "cpu"):
        super().__init__(backbone, train, bank, device)
        self.orth_lambda = orth_lambda

    @property
    def num_tasks(self) -> int:
        return self.num_slots

    def orthogonality(self) -> torch.Tensor:
        """``λ Σ_layers Σ_{s<t} |A_t A_s^T|`` for the newest task ``t``."""
        return self.orth_lambda * orthogonality_loss(self.layers.values())

    def learn(self, task: Task, progress: bool = True) -> dict:
        self._check_new(task)
        seed = self.cfg.seed + self.num_tasks
        generator = torch.Generator().manual_seed(seed)
        rows, _ = split_validation(task.train, self.cfg.val_fraction, seed)
        with torch.random.fork_rng(devices=[]):  # head init and dropout seeded; global RNG restored after
            torch.manual_seed(seed)
            offset = self.head.grow(task)
            params = self._new_slot(generator) + list(self.head.parameters())
            penalty = self.orthogonality if self.num_tasks > 1 else None
            losses = self._train([(x, y + offset) for x, y in rows], params, seed, generator,
                                 f"o-lora {task.name}", progress, penalty)
        self._freeze_slots()
        self.learned.append(task.name)
        return {"task": task.name, "losses": losses, "train_rows": len(rows),
                "orthogonality": float(self.orthogonality()) if self.num_tasks > 1 else 0.0}
