"""Sequential fine-tuning (the lower bound): one model, trained on each task in turn.

The whole backbone and a single output layer over the union of all tasks' labels ("task/label") are
trained on the current task with plain cross-entropy. Nothing protects earlier tasks, and nothing tells the
model at inference which task an input is from: the argmax over the union decides both task and label.
"""

from __future__ import annotations

import torch
from torch import nn

from scalable_lm import training
from scalable_lm.adapters.classification import EncoderClassifier
from scalable_lm.config import TrainConfig
from scalable_lm.data.tasks import DataError, Task, split_validation
from scalable_lm.methods.base import Prediction


class SequentialFineTune:
    """Full fine-tuning on each task in turn, one shared head over all labels seen so far.

    Args:
        backbone: ``(model, tokenizer)`` of an HF encoder; it will be trained.
        train: the same ``TrainConfig`` as the method it is compared with (epochs, batch, length, seed).
        lr: learning rate for full fine-tuning (``train.lr`` is for low-rank values and is too large here).
    """

    name = "sequential-finetune"

    def __init__(self, backbone, train: TrainConfig | None = None, lr: float = 5e-5):
        model, tokenizer = backbone
        self.cfg, self.lr = train or TrainConfig(), lr
        self.classifier = EncoderClassifier(model, tokenizer)
        self.classifier.backbone.requires_grad_(True)
        self.head: nn.Linear | None = None  # grows by each task's labels
        self.outputs: list[tuple[str, str]] = []  # (task, label) of each output unit

    def _grow_head(self, task: Task) -> None:
        old = self.head
        n_old = 0 if old is None else old.out_features
        self.head = nn.Linear(self.classifier.hidden, n_old + len(task.label_names))
        if old is not None:
            with torch.no_grad():
                self.head.weight[:n_old] = old.weight
                self.head.bias[:n_old] = old.bias
        self.outputs += [(task.name, label) for label in task.label_names]

    def learn(self, task: Task, progress: bool = True) -> dict:
        if any(name == task.name for name, _ in self.outputs):
            raise DataError(f"task '{task.name}' was already learned")
        seed = self.cfg.seed + len({n for n, _ in self.outputs})
        generator = torch.Generator().manual_seed(seed)
        rows, _ = split_validation(task.train, self.cfg.val_fraction, seed)  # same rows SLM trains on
        offset = len(self.outputs)
        with torch.random.fork_rng(devices=[]):  # head init and dropout seeded; global RNG restored after
            torch.manual_seed(seed)
            self._grow_head(task)
        params = [p for p in self.classifier.backbone.parameters()] + list(self.head.parameters())
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=0.0)
        texts, labels = [x for x, _ in rows], torch.tensor([y + offset for _, y in rows])

        def logits_fn(idx):
            batch = self.classifier.tokenize([texts[i] for i in idx], self.cfg.max_length)
            return self.head(self.classifier.features(batch)), labels[idx]

        self.classifier.train()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            losses = [training.supervised_epoch(params, optimizer, len(rows), self.cfg.batch_size, logits_fn,
                                                generator, f"finetune {task.name} epoch {e + 1}", progress)
                      for e in range(self.cfg.epochs)]
        self.classifier.eval()
        return {"task": task.name, "losses": losses, "train_rows": len(rows)}

    @torch.no_grad()
    def predict(self, texts: list[str], batch_size: int = 32, progress: bool = False) -> list[Prediction]:
        if self.head is None:
            raise RuntimeError("no task learned yet")
        self.classifier.eval()
        out = []
        for idx in training.batches(len(texts), batch_size):
            batch = self.classifier.tokenize([texts[i] for i in idx], self.cfg.max_length)
            probs = torch.softmax(self.head(self.classifier.features(batch)), dim=-1)
            for p in probs:
                k = int(p.argmax())
                out.append(Prediction(label=self.outputs[k][1], task=self.outputs[k][0], confidence=float(p[k])))
        return out
