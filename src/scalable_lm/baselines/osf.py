"""PEFT's OSF (orthogonal subspace fine-tuning, Nayak et al. 2025; ``peft.OSFConfig``) as a baseline.

Used as PEFT's documentation tells a user to use it for a sequence of tasks: for each task, wrap the model
with ``get_peft_model(model, OSFConfig(effective_rank=f))``, train, fold the update into the weights, and
re-wrap for the next task with a larger preserved fraction ``f``, so that the SVD is recomputed on the
updated weights and each new task trains only in the directions of smaller singular value. One model, no
per-task parameters, no routing, no task-ID.

Two deviations from the docs, both measured or stated:
- Between tasks we call ``merge_and_unload()``: the docs' snippet calls ``unload()``, which removes the OSF
  layers *without* folding in what was learned (tests/baselines/test_osf.py shows the weights revert).
- The preserved fraction for the task at index ``i`` of a stream expected to hold ``n`` tasks is
  ``(i + 1) / (n + 1)`` (PEFT's example uses 0.3 / 0.5 / 0.7 for three tasks; its guide grows it by 1/n).

The encoder classifier answers with one head over the union of all labels, as the other task-ID-free
baselines; OSF targets every linear layer of the encoder blocks by default (it is a full fine-tuning method),
and the attention projections of a causal LM (sized down for CPU: the MLPs are left out).
"""

from __future__ import annotations

import time

import torch

from scalable_lm import training
from scalable_lm.adapters.classification import EncoderClassifier
from scalable_lm.baselines.generative import generate_answers
from scalable_lm.baselines.head import UnionHead
from scalable_lm.config import SLMConfig, TrainConfig
from scalable_lm.data.tasks import Task, check_new_task, split_validation
from scalable_lm.methods.base import Prediction
from scalable_lm.methods.generative import answer_epoch, generative_backbone

ENCODER_TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
CAUSAL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def preserved_fraction(index: int, expected_tasks: int) -> float:
    """Share of each target's singular directions frozen while learning the task at ``index`` (0-based)."""
    return min((index + 1) / (expected_tasks + 1), 0.95)


class _OSFStream:
    """The per-task wrap / train / merge cycle shared by both OSF baselines."""

    def _wrap(self, model: torch.nn.Module, targets: list[str], index: int):
        from peft import OSFConfig, get_peft_model

        config = OSFConfig(target_modules=targets, effective_rank=preserved_fraction(index, self.expected_tasks))
        return get_peft_model(model, config)

    @staticmethod
    def _trainable(peft_model) -> list[torch.nn.Parameter]:
        return [p for p in peft_model.parameters() if p.requires_grad]


class OSF(_OSFStream):
    """OSF on an encoder classifier with a union head; no task-ID.

    Args:
        backbone: ``(model, tokenizer)``.
        train: shared budget (epochs, batch size, length; ``train.lr`` is the head's learning rate).
        lr: learning rate of the OSF parameters (default 5e-5, as our full fine-tuning baseline).
        targets: linear layers OSF wraps (default: all of each encoder block's).
        expected_tasks: the stream length that sets the preserved fractions (``preserved_fraction``).
    """

    name = "osf"

    def __init__(self, backbone, train: TrainConfig | None = None, lr: float = 5e-5,
                 targets: list[str] | None = None, expected_tasks: int = 5, device: str | torch.device = "cpu"):
        from scalable_lm.device import resolve_device

        model, tokenizer = backbone
        self.device = resolve_device(device)
        self.cfg, self.lr = train or TrainConfig(), lr
        self.targets, self.expected_tasks = list(targets or ENCODER_TARGETS), expected_tasks
        self.classifier = EncoderClassifier(model.to(self.device), tokenizer)
        self.head = UnionHead(self.classifier.hidden, self.device)
        self.learned: list[str] = []

    def learn(self, task: Task, progress: bool = True) -> dict:
        check_new_task(task, self.learned)
        index = len(self.learned)
        seed = self.cfg.seed + index
        generator = torch.Generator().manual_seed(seed)
        rows, _ = split_validation(task.train, self.cfg.val_fraction, seed)  # the rows SLM trains on
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            offset = self.head.grow(task)
            peft_model = self._wrap(self.classifier.backbone, self.targets, index)  # wraps the layers in place
            osf_params = self._trainable(peft_model)
            optimizer = torch.optim.AdamW([{"params": osf_params, "lr": self.lr},
                                           {"params": list(self.head.parameters()), "lr": self.cfg.lr}],
                                          weight_decay=0.0)
            texts, labels = [x for x, _ in rows], torch.tensor([y + offset for _, y in rows], device=self.device)

            def logits_fn(idx):
                return self.head(self._features([texts[i] for i in idx])), labels[idx]

            self.classifier.train()
            params = osf_params + list(self.head.parameters())
            losses = [training.supervised_epoch(params, optimizer, len(rows), self.cfg.batch_size, logits_fn,
                                                generator, f"osf {task.name} epoch {e + 1}", progress)
                      for e in range(self.cfg.epochs)]
            self.classifier.eval()
            self.classifier.backbone = peft_model.merge_and_unload()  # fold this task into the weights
        self.classifier.backbone.requires_grad_(False)
        self.learned.append(task.name)
        return {"task": task.name, "losses": losses, "train_rows": len(rows), "total_s": time.perf_counter() - start,
                "preserved_fraction": preserved_fraction(index, self.expected_tasks),
                "trainable_parameters": sum(p.numel() for p in osf_params)}

    @torch.no_grad()
    def predict(self, texts: list[str], batch_size: int = 32, progress: bool = False) -> list[Prediction]:
        if not self.learned:
            raise RuntimeError("no task learned yet")
        self.classifier.eval()
        return self.head.answer(texts, self._features, batch_size)

    def _features(self, texts: list[str]) -> torch.Tensor:
        return self.classifier.features(self.classifier.tokenize(texts, self.cfg.max_length))


class OSFGenerator(_OSFStream):
    """OSF on a generative backbone (answer-token loss); no task-ID.

    Args:
        config: ``train`` gives epochs, batch size and seed; the backbone is ``model.backbone``.
        lr: learning rate of the OSF parameters (default 5e-6, PEFT's OSF example for LLaMA models).
        targets: linear layers OSF wraps (default the attention projections).
    """

    name = "osf"

    def __init__(self, config: SLMConfig | None = None, backbone=None, lr: float = 5e-6,
                 targets: list[str] | None = None, expected_tasks: int = 3, max_new_tokens: int = 64,
                 device: str | torch.device = "cpu"):
        from scalable_lm.device import resolve_device

        self.config, self.lm = generative_backbone(config, backbone)
        self.device = resolve_device(device)
        self.lm.model.to(self.device)
        self.lr, self.targets, self.expected_tasks = lr, list(targets or CAUSAL_TARGETS), expected_tasks
        self.task_names: list[str] = []
        self.max_new_tokens = max_new_tokens
        self.timings = {"retrieval_s": 0.0, "generation_s": 0.0}

    def learn(self, task, progress: bool = True) -> dict:
        check_new_task(task, self.task_names)
        cfg = self.config.train
        index = len(self.task_names)
        seed = cfg.seed + index
        generator = torch.Generator().manual_seed(seed)
        rows, _ = split_validation(task.train, cfg.val_fraction, seed)
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            peft_model = self._wrap(self.lm.model, self.targets, index)
            params = self._trainable(peft_model)
            optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=0.0)
            losses = [answer_epoch(self.lm, rows, params, optimizer, cfg.batch_size, generator,
                                   f"osf {task.name} epoch {epoch + 1}", progress,
                                   micro_batch_tokens=cfg.micro_batch_tokens)
                      for epoch in range(cfg.epochs)]
            self.lm.eval()
            self.lm.model = peft_model.merge_and_unload()
        self.lm.model.requires_grad_(False)
        self.task_names.append(task.name)
        return {"task": task.name, "losses": losses, "train_rows": len(rows), "total_s": time.perf_counter() - start,
                "preserved_fraction": preserved_fraction(index, self.expected_tasks),
                "trainable_parameters": sum(p.numel() for p in params)}

    @torch.no_grad()
    def predict(self, prompts: list[str], batch_size: int = 8, progress: bool = False,
                task: str | None = None) -> list[Prediction]:
        if not self.task_names:
            raise RuntimeError("no task learned yet")
        return generate_answers(self, prompts, batch_size)

    @torch.no_grad()
    def multiple_choice(self, task: str, rows: list[dict], progress: bool = False) -> list[int]:
        """Zero-shot answers (``scalable_lm.zeroshot``) of the model with every task folded in."""
        from scalable_lm import zeroshot

        return zeroshot.answer_rows(self.lm, task, rows)
