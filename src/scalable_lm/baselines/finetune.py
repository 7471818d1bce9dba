"""Sequential fine-tuning (the lower bound), and its two classic fixes: replay and EWC.

The whole backbone and one output layer over the union of all tasks' labels are trained on the current
task with cross-entropy. Nothing tells the model at inference which task an input is from: the argmax over
the union decides both task and label.

- ``replay_fraction > 0`` (replay): keep that share of each task's training rows (at least one) in a buffer
  and train on them again with every later task (the only baseline here that keeps old data).
- ``ewc_lambda > 0`` (EWC): after each task, add ``λ/2 Σ F_i (θ_i − θ*_i)²`` with the diagonal empirical
  Fisher ``F`` of the tasks so far (summed) and the parameters ``θ*`` after the last task.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from scalable_lm import training
from scalable_lm.adapters.classification import EncoderClassifier
from scalable_lm.baselines.head import UnionHead
from scalable_lm.config import TrainConfig
from scalable_lm.data.tasks import DataError, Task, split_validation
from scalable_lm.methods.base import Prediction


class SequentialFineTune:
    """Full fine-tuning on each task in turn, one shared head over all labels seen so far.

    Args:
        backbone: ``(model, tokenizer)`` of an HF encoder; it will be trained.
        train: the same ``TrainConfig`` as the method it is compared with (epochs, batch, length, seed).
        lr: learning rate for full fine-tuning (``train.lr`` is for low-rank values and is too large here).
        replay_fraction: share of each task's rows kept for replay (0 = none).
        ewc_lambda: EWC penalty strength (0 = none).
        fisher_rows: at most this many rows estimate each task's Fisher.
        device: where to train (``scalable_lm.device``); the whole backbone is trained, so it stays float32.
    """

    def __init__(self, backbone, train: TrainConfig | None = None, lr: float = 5e-5, replay_fraction: float = 0.0,
                 ewc_lambda: float = 0.0, fisher_rows: int = 200, device: str | torch.device = "cpu"):
        from scalable_lm.device import resolve_device

        model, tokenizer = backbone
        self.device = resolve_device(device)
        self.cfg, self.lr = train or TrainConfig(), lr
        self.classifier = EncoderClassifier(model.to(self.device), tokenizer)
        self.classifier.backbone.requires_grad_(True)
        self.head = UnionHead(self.classifier.hidden, self.device)
        self.replay_fraction, self.ewc_lambda, self.fisher_rows = replay_fraction, ewc_lambda, fisher_rows
        self.buffer: list[tuple[str, int]] = []  # (text, union label)
        self.fisher: list[torch.Tensor] | None = None
        self.anchor: list[torch.Tensor] | None = None
        self.name = "replay" if replay_fraction else "ewc" if ewc_lambda else "sequential-finetune"

    @property
    def outputs(self) -> list[tuple[str, str]]:
        return self.head.outputs

    def _backbone_params(self) -> list[torch.nn.Parameter]:
        return list(self.classifier.backbone.parameters())

    def _logits(self, texts: list[str]) -> torch.Tensor:
        return self.head(self.classifier.features(self.classifier.tokenize(texts, self.cfg.max_length)))

    def _ewc_penalty(self) -> torch.Tensor:
        total = sum((f * (p - a) ** 2).sum() for f, p, a in zip(self.fisher, self._backbone_params(), self.anchor))
        return 0.5 * self.ewc_lambda * total

    def learn(self, task: Task, progress: bool = True) -> dict:
        if self.head.knows(task.name):
            raise DataError(f"task '{task.name}' was already learned")
        seed = self.cfg.seed + len({n for n, _ in self.outputs})
        generator = torch.Generator().manual_seed(seed)
        rows, _ = split_validation(task.train, self.cfg.val_fraction, seed)  # same rows SLM trains on
        with torch.random.fork_rng(devices=[]):  # head init and dropout seeded; global RNG restored after
            torch.manual_seed(seed)
            offset = self.head.grow(task)
            own = [(x, y + offset) for x, y in rows]
            data = own + self.buffer
            params = self._backbone_params() + list(self.head.parameters())
            optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=0.0)
            labels = torch.tensor([y for _, y in data], device=self.device)

            def logits_fn(idx):
                return self._logits([data[i][0] for i in idx]), labels[idx]

            penalty = self._ewc_penalty if self.ewc_lambda and self.fisher is not None else None
            self.classifier.train()
            losses = [training.supervised_epoch(params, optimizer, len(data), self.cfg.batch_size, logits_fn,
                                                generator, f"{self.name} {task.name} epoch {e + 1}", progress, penalty)
                      for e in range(self.cfg.epochs)]
            self.classifier.eval()
            if self.ewc_lambda:
                self._update_fisher(own, generator)
        if self.replay_fraction:
            keep = max(1, round(self.replay_fraction * len(own)))
            self.buffer += random.Random(seed).sample(own, keep)
        return {"task": task.name, "losses": losses, "train_rows": len(rows), "replayed_rows": len(data) - len(own)}

    def _update_fisher(self, rows: list[tuple[str, int]], generator: torch.Generator) -> None:
        """Add this task's diagonal empirical Fisher (squared gradients of batch losses) and re-anchor."""
        sample = [rows[int(i)] for i in torch.randperm(len(rows), generator=generator)[: self.fisher_rows]]
        params = self._backbone_params()
        fisher = [torch.zeros_like(p) for p in params]
        batches = list(training.batches(len(sample), self.cfg.batch_size))
        for idx in batches:
            targets = torch.tensor([sample[i][1] for i in idx], device=self.device)
            loss = F.cross_entropy(self._logits([sample[i][0] for i in idx]), targets)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for f, g in zip(fisher, grads):
                if g is not None:
                    f += g.detach() ** 2 / len(batches)
        self.fisher = fisher if self.fisher is None else [a + b for a, b in zip(self.fisher, fisher)]
        self.anchor = [p.detach().clone() for p in params]

    @torch.no_grad()
    def predict(self, texts: list[str], batch_size: int = 32, progress: bool = False) -> list[Prediction]:
        self.classifier.eval()
        return self.head.answer(texts, lambda chunk: self.classifier.features(
            self.classifier.tokenize(chunk, self.cfg.max_length)), batch_size)
