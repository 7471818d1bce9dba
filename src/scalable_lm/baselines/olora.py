"""O-LoRA (Wang et al. 2023): one LoRA per task, trained orthogonal to the earlier tasks' LoRAs.

Each task adds one rank-``r`` increment at every target layer (the same ``BankLinear`` wrappers SLM uses,
one entry per task); earlier increments are frozen. While learning task ``t`` the loss adds
``λ Σ_layers Σ_{s<t} |A_t A_s^T|`` (sum of absolute entries), which pushes the new down-projection into a
subspace orthogonal to the old ones. At inference every task's increment is applied at once (weight 1 each,
no routing, no task-ID) and one head over the union of all labels answers. The original also adds an L2
term on the new LoRA and works with generative label words; neither is done here.
"""

from __future__ import annotations

import torch

from scalable_lm import training
from scalable_lm.adapters.classification import EncoderClassifier
from scalable_lm.adapters.inject import inject, routed
from scalable_lm.baselines.head import UnionHead
from scalable_lm.config import BankConfig, TrainConfig
from scalable_lm.data.tasks import DataError, Task, split_validation
from scalable_lm.methods.base import Prediction


class OLoRA:
    """Orthogonal per-task LoRAs summed into a frozen backbone, with a union head.

    Args:
        backbone: ``(model, tokenizer)``; frozen.
        train: shared training budget (``train.lr`` is the LoRA learning rate).
        bank: rank, alpha and target layers (the other fields are unused).
        orth_lambda: strength of the orthogonality loss (O-LoRA's λ1, default 0.5).
    """

    name = "o-lora"

    def __init__(self, backbone, train: TrainConfig | None = None, bank: BankConfig | None = None,
                 orth_lambda: float = 0.5):
        model, tokenizer = backbone
        self.cfg, bank = train or TrainConfig(), bank or BankConfig()
        self.classifier = EncoderClassifier(model, tokenizer)
        self.layers = inject(model, bank.targets, bank.rank, bank.alpha)
        self.head = UnionHead(self.classifier.hidden)
        self.orth_lambda = orth_lambda

    @property
    def num_tasks(self) -> int:
        return len(next(iter(self.layers.values())).lora_A)

    def _features(self, texts: list[str]) -> torch.Tensor:
        """Backbone features with every task's increment applied (weight 1 each)."""
        n = self.num_tasks
        entries = torch.arange(n).expand(len(texts), n)
        with routed(self.layers, entries, torch.ones(len(texts), n)):
            return self.classifier.features(self.classifier.tokenize(texts, self.cfg.max_length))

    def orthogonality(self) -> torch.Tensor:
        """``Σ_layers Σ_{s<t} |A_t A_s^T|`` for the newest task ``t``."""
        total = torch.zeros(())
        for layer in self.layers.values():
            new = layer.lora_A[-1][0]  # (r, d_in)
            for old in list(layer.lora_A)[:-1]:
                total = total + (new @ old[0].T).abs().sum()
        return self.orth_lambda * total

    def learn(self, task: Task, progress: bool = True) -> dict:
        if self.head.knows(task.name):
            raise DataError(f"task '{task.name}' was already learned")
        seed = self.cfg.seed + self.num_tasks
        generator = torch.Generator().manual_seed(seed)
        rows, _ = split_validation(task.train, self.cfg.val_fraction, seed)
        with torch.random.fork_rng(devices=[]):  # head init and dropout seeded; global RNG restored after
            torch.manual_seed(seed)
            offset = self.head.grow(task)
            params = [p for layer in self.layers.values() for p in layer.add_task(1, generator)]
            params += list(self.head.parameters())
            optimizer = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=0.0)
            texts, labels = [x for x, _ in rows], torch.tensor([y + offset for _, y in rows])

            def logits_fn(idx):
                return self.head(self._features([texts[i] for i in idx])), labels[idx]

            penalty = self.orthogonality if self.num_tasks > 1 else None
            self.classifier.train()
            losses = [training.supervised_epoch(params, optimizer, len(rows), self.cfg.batch_size, logits_fn,
                                                generator, f"o-lora {task.name} epoch {e + 1}", progress, penalty)
                      for e in range(self.cfg.epochs)]
            self.classifier.eval()
        for layer in self.layers.values():
            for p in (layer.lora_A[-1], layer.lora_B[-1]):
                p.requires_grad_(False)
        return {"task": task.name, "losses": losses, "train_rows": len(rows),
                "orthogonality": float(self.orthogonality()) if self.num_tasks > 1 else 0.0}

    @torch.no_grad()
    def predict(self, texts: list[str], batch_size: int = 32, progress: bool = False) -> list[Prediction]:
        if self.num_tasks == 0:
            raise RuntimeError("no task learned yet")
        self.classifier.eval()
        out: list[Prediction] = []
        for idx in training.batches(len(texts), batch_size):
            out += self.head.predictions(self._features([texts[i] for i in idx]))
        return out
