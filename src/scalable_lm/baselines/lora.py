"""Baselines built from LoRA increments on the same ``BankLinear`` wrappers SLM uses, with one union head.

All of them apply every stored increment at weight 1 (no routing, no task-ID) and let the argmax over the
union of all tasks' labels choose both task and label:

- ``SequentialLoRA``: one LoRA, trained on each task in turn (the low-rank twin of sequential fine-tuning).
- ``MultitaskLoRA``: one LoRA trained jointly on every task's rows (an upper bound: it keeps all data).
- ``OLoRA`` (in ``olora.py``): a new LoRA per task, kept orthogonal to the old ones.
"""

from __future__ import annotations

import torch

from scalable_lm import training
from scalable_lm.adapters.classification import EncoderClassifier
from scalable_lm.adapters.inject import inject, routed
from scalable_lm.baselines.head import UnionHead
from scalable_lm.config import BankConfig, TrainConfig, resolve_targets
from scalable_lm.data.tasks import Task, check_new_task, split_validation
from scalable_lm.methods.base import Prediction


class UnionLoRA:
    """Shared machinery: frozen backbone, LoRA slots summed at weight 1, union head, seeded training.

    Args:
        backbone: ``(model, tokenizer)``; frozen.
        train: shared training budget (``train.lr`` is the LoRA learning rate).
        bank: rank, alpha and target layers (the other fields are unused).
        device: where to run (``scalable_lm.device``; float32).
    """

    name = "union-lora"

    def __init__(self, backbone, train: TrainConfig | None = None, bank: BankConfig | None = None,
                 device: str | torch.device = "cpu"):
        from scalable_lm.device import resolve_device

        model, tokenizer = backbone
        self.device = resolve_device(device)
        self.cfg, bank = train or TrainConfig(), bank or BankConfig()
        self.classifier = EncoderClassifier(model.to(self.device), tokenizer)
        self.layers = inject(model, resolve_targets(bank.targets, None), bank.rank, bank.alpha)
        self.head = UnionHead(self.classifier.hidden, self.device)
        self.learned: list[str] = []

    @property
    def num_slots(self) -> int:
        """How many LoRA increments are stored (each applied at weight 1)."""
        return len(next(iter(self.layers.values())).lora_A)

    def _features(self, texts: list[str]) -> torch.Tensor:
        n = self.num_slots
        batch = self.classifier.tokenize(texts, self.cfg.max_length)
        if n == 0:
            return self.classifier.features(batch)
        with routed(self.layers, torch.arange(n, device=self.device).expand(len(texts), n),
                    torch.ones(len(texts), n, device=self.device)):
            return self.classifier.features(batch)

    def _new_slot(self, generator: torch.Generator) -> list[torch.nn.Parameter]:
        return [p for layer in self.layers.values() for p in layer.add_task(1, generator)]

    def _freeze_slots(self) -> None:
        for layer in self.layers.values():
            for p in list(layer.lora_A) + list(layer.lora_B):
                p.requires_grad_(False)

    def _prepare_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Called once per task with its optimiser, before training (GainLoRA adds its projection here)."""

    def _check_new(self, task: Task) -> None:
        check_new_task(task, self.learned)

    def _train(self, rows: list[tuple[str, int]], params, seed: int, generator: torch.Generator, desc: str,
               progress: bool, penalty_fn=None) -> list[float]:
        """``cfg.epochs`` epochs of cross-entropy on ``rows`` (text, union label); returns the epoch losses."""
        texts, labels = [x for x, _ in rows], torch.tensor([y for _, y in rows], device=self.device)
        optimizer = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=0.0)
        self._prepare_optimizer(optimizer)

        def logits_fn(idx):
            return self.head(self._features([texts[i] for i in idx])), labels[idx]

        self.classifier.train()
        try:
            return [training.supervised_epoch(params, optimizer, len(rows), self.cfg.batch_size, logits_fn,
                                              generator, f"{desc} epoch {e + 1}", progress, penalty_fn)
                    for e in range(self.cfg.epochs)]
        finally:
            self.classifier.eval()

    @torch.no_grad()
    def predict(self, texts: list[str], batch_size: int = 32, progress: bool = False) -> list[Prediction]:
        if not self.learned:
            raise RuntimeError("no task learned yet")
        self.classifier.eval()
        return self.head.answer(texts, self._features, batch_size)


class SequentialLoRA(UnionLoRA):
    """One LoRA trained on each task in turn (old tasks' data never seen again); the union head grows."""

    name = "sequential-lora"

    def learn(self, task: Task, progress: bool = True) -> dict:
        self._check_new(task)
        seed = self.cfg.seed + len(self.learned)
        generator = torch.Generator().manual_seed(seed)
        rows, _ = split_validation(task.train, self.cfg.val_fraction, seed)  # same rows SLM trains on
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if self.num_slots == 0:
                self._new_slot(generator)
            offset = self.head.grow(task)
            params = [p for layer in self.layers.values() for p in (layer.lora_A[0], layer.lora_B[0])]
            params += list(self.head.parameters())
            losses = self._train([(x, y + offset) for x, y in rows], params, seed, generator,
                                 f"{self.name} {task.name}", progress)
        self.learned.append(task.name)
        return {"task": task.name, "losses": losses, "train_rows": len(rows)}


class MultitaskLoRA(UnionLoRA):
    """Joint training on all tasks seen so far: an upper bound, NOT continual (it keeps every task's rows).

    ``learn`` only stores the task; the model is (re)trained from scratch on the union of all stored rows the
    next time ``predict`` runs, so a stream scored only at its end trains exactly once.
    """

    name = "multitask-lora"

    def __init__(self, backbone, train: TrainConfig | None = None, bank: BankConfig | None = None,
                 device: str | torch.device = "cpu"):
        super().__init__(backbone, train, bank, device)
        self.tasks: list[Task] = []
        self.trained_on = 0
        self.report: dict = {}

    def learn(self, task: Task, progress: bool = True) -> dict:
        self._check_new(task)
        self.tasks.append(task)
        self.learned.append(task.name)
        self.progress = progress
        return {"task": task.name, "stored_rows": len(task.train), "note": "trained jointly at the next predict"}

    def _fit(self) -> None:
        seed = self.cfg.seed
        generator = torch.Generator().manual_seed(seed)
        for layer in self.layers.values():
            layer.truncate(0)
        self.head = UnionHead(self.classifier.hidden, self.device)
        rows: list[tuple[str, int]] = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for i, task in enumerate(self.tasks):
                offset = self.head.grow(task)
                own, _ = split_validation(task.train, self.cfg.val_fraction, self.cfg.seed + i)
                rows += [(x, y + offset) for x, y in own]
            params = self._new_slot(generator) + list(self.head.parameters())
            losses = self._train(rows, params, seed, generator, f"{self.name} {len(self.tasks)} tasks",
                                 getattr(self, "progress", False))
        self._freeze_slots()
        self.trained_on = len(self.tasks)
        self.report = {"tasks": [t.name for t in self.tasks], "rows": len(rows), "losses": losses}

    def predict(self, texts: list[str], batch_size: int = 32, progress: bool = False) -> list[Prediction]:
        if self.tasks and self.trained_on != len(self.tasks):
            self._fit()
        return super().predict(texts, batch_size, progress)
