"""Baselines on generative backbones, with the same ``learn``/``predict`` contract as ``GenerativeSLM``.

- ``SequentialLoRAGenerator``: one LoRA (same rank and target layers as SLM's values) trained on each task
  in turn; ``replay_fraction > 0`` keeps that share of every task's rows and trains on them again with
  each later task (replay, the only method here that keeps old data).
- ``OLoRAGenerator``: a new LoRA per task, trained with O-LoRA's orthogonality loss against the frozen
  earlier ones; all are applied at weight 1 (no routing, no task-ID).
- ``ArrowGenerator``: per-task PEFT LoRAs routed per token by PEFT's Arrow.
"""

from __future__ import annotations

import contextlib
import math
import random
import time

import torch

from scalable_lm import training
from scalable_lm.adapters.inject import inject, routed
from scalable_lm.baselines.olora import orthogonality_loss
from scalable_lm.config import SLMConfig
from scalable_lm.data.tasks import check_new_task, split_validation
from scalable_lm.methods.base import Prediction
from scalable_lm.methods.generative import answer_epoch, generative_backbone


def generate_answers(method, prompts: list[str], batch_size: int, context=None) -> list[Prediction]:
    """Batched greedy answers of ``method.lm`` (no retrieval, so no task named); ``context(chunk)`` gives the
    routing each batch of prompts generates under. Generation time goes to ``method.timings``."""
    out = []
    method.timings = {"retrieval_s": 0.0, "generation_s": 0.0}
    for idx in training.batches(len(prompts), batch_size):
        chunk = [prompts[i] for i in idx]
        start = time.perf_counter()
        with context(chunk) if context is not None else contextlib.nullcontext():
            answers = method.lm.generate(chunk, method.max_new_tokens)
        method.timings["generation_s"] += time.perf_counter() - start
        out += [Prediction(label=text, task="", confidence=math.exp(lp)) for text, lp in answers]
    return out


class SequentialLoRAGenerator:
    """One LoRA trained on the tasks in order (optionally with a small replay buffer); no task-ID."""

    per_task_slots = False  # O-LoRA: True

    def __init__(self, config: SLMConfig | None = None, backbone=None, replay_fraction: float = 0.0,
                 max_new_tokens: int = 64, orth_lambda: float = 0.5, device: str | torch.device = "cpu"):
        from scalable_lm.device import resolve_device

        self.config, self.lm = generative_backbone(config, backbone)
        self.device = resolve_device(device)
        self.lm.model.to(self.device)
        b = self.config.bank
        self.layers = inject(self.lm.model, b.targets, b.rank, b.alpha)
        self.replay_fraction = replay_fraction
        self.buffer: list[tuple[str, str]] = []
        self.task_names: list[str] = []
        self.max_new_tokens = max_new_tokens
        self.orth_lambda = orth_lambda
        self.name = "o-lora" if self.per_task_slots else "replay" if replay_fraction else "sequential-lora"
        self.timings = {"retrieval_s": 0.0, "generation_s": 0.0}

    @property
    def num_slots(self) -> int:
        return len(next(iter(self.layers.values())).lora_A)

    def _route(self, n: int):
        """Every stored LoRA at weight 1 for each of ``n`` rows."""
        k = self.num_slots
        return torch.arange(k, device=self.device).expand(n, k), torch.ones(n, k, device=self.device)

    def _penalty(self) -> torch.Tensor:
        """O-LoRA: ``λ Σ_layers Σ_{s<t} |A_t A_s^T|`` for the newest LoRA ``t``."""
        return self.orth_lambda * orthogonality_loss(self.layers.values())

    def learn(self, task, progress: bool = True) -> dict:
        check_new_task(task, self.task_names)
        cfg = self.config.train
        seed = cfg.seed + len(self.task_names)
        generator = torch.Generator().manual_seed(seed)
        own, _ = split_validation(task.train, cfg.val_fraction, seed)  # the rows SLM trains on
        rows = own + self.buffer
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if not self.task_names or self.per_task_slots:
                for layer in self.layers.values():
                    layer.add_task(1, generator)
            params = [p for layer in self.layers.values() for p in (layer.lora_A[-1], layer.lora_B[-1])]
            penalty = self._penalty if self.per_task_slots and self.num_slots > 1 else None
            optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
            losses = [answer_epoch(self.lm, rows, params, optimizer, cfg.batch_size, generator,
                                   f"{self.name} {task.name} epoch {epoch + 1}", progress,
                                   route=lambda idx: routed(self.layers, *self._route(len(idx))), penalty_fn=penalty,
                                   micro_batch_tokens=cfg.micro_batch_tokens)
                      for epoch in range(cfg.epochs)]
            self.lm.eval()
        if self.per_task_slots:
            for p in params:
                p.requires_grad_(False)
        if self.replay_fraction:
            keep = max(1, round(self.replay_fraction * len(own)))
            self.buffer += random.Random(seed).sample(own, keep)
        self.task_names.append(task.name)
        return {"task": task.name, "losses": losses, "train_rows": len(own), "replayed_rows": len(rows) - len(own),
                "total_s": time.perf_counter() - start}

    @torch.no_grad()
    def predict(self, prompts: list[str], batch_size: int = 8, progress: bool = False, task: str | None = None) -> list[Prediction]:
        if not self.task_names:
            raise RuntimeError("no task learned yet")
        return generate_answers(self, prompts, batch_size, lambda chunk: routed(self.layers, *self._route(len(chunk))))

    @torch.no_grad()
    def multiple_choice(self, task: str, rows: list[dict], progress: bool = False) -> list[int]:
        """Zero-shot answers (``scalable_lm.zeroshot``) with the trained LoRA applied."""
        from scalable_lm import zeroshot

        return zeroshot.answer_rows(self.lm, task, rows, lambda pairs: routed(self.layers, *self._route(len(pairs))))


class OLoRAGenerator(SequentialLoRAGenerator):
    """O-LoRA on a generative backbone: one orthogonal LoRA per task, all summed at inference."""

    per_task_slots = True


class ArrowGenerator:
    """PEFT's Arrow routing over per-task PEFT LoRAs on a generative backbone; no task-ID.

    Each task trains its own adapter ``task_<i>`` on the answer-token loss; at inference PEFT's Arrow
    router mixes, per token and per layer, the ``top_k`` adapters whose prototypes best match the token.
    """

    name = "arrow"

    def __init__(self, config: SLMConfig | None = None, backbone=None, top_k: int = 3, temperature: float = 1.0,
                 max_new_tokens: int = 64, device: str | torch.device = "cpu"):
        from scalable_lm.device import resolve_device

        self.config, self.lm = generative_backbone(config, backbone)
        self.device = resolve_device(device)
        self.model, self.peft = self.lm.model.to(self.device), None
        self.top_k, self.temperature = top_k, temperature
        self.task_names: list[str] = []
        self.max_new_tokens = max_new_tokens
        self.timings = {"retrieval_s": 0.0, "generation_s": 0.0}

    def _lora_config(self, **extra):
        from peft import LoraConfig

        b = self.config.bank
        return LoraConfig(r=b.rank, lora_alpha=b.alpha, lora_dropout=0.0, target_modules=b.targets, **extra)

    def _use_router(self) -> None:
        from peft import ArrowConfig

        experts = [f"task_{i}" for i in range(len(self.task_names))]
        if "arrow_router" in self.peft.peft_config:
            if self.peft.peft_config["arrow_router"].arrow_config.task_adapter_names == experts:
                self.peft.set_adapter("arrow_router")
                return
            self.peft.delete_adapter("arrow_router")
        arrow = ArrowConfig(top_k=min(self.top_k, len(experts)), router_temperature=self.temperature, rng_seed=0)
        arrow.task_adapter_names, arrow.gks_adapter_names = experts, []
        self.peft.add_adapter("arrow_router", self._lora_config(arrow_config=arrow))
        self.peft.set_adapter("arrow_router")

    def learn(self, task, progress: bool = True) -> dict:
        from peft import get_peft_model

        check_new_task(task, self.task_names)
        cfg = self.config.train
        t = len(self.task_names)
        seed = cfg.seed + t
        generator = torch.Generator().manual_seed(seed)
        rows, _ = split_validation(task.train, cfg.val_fraction, seed)
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if self.peft is None:  # injects PEFT LoRA layers into the model in place
                self.peft = get_peft_model(self.model, self._lora_config(), adapter_name=f"task_{t}")
            else:
                if "arrow_router" in self.peft.peft_config:
                    self.peft.delete_adapter("arrow_router")
                self.peft.add_adapter(f"task_{t}", self._lora_config())
            self.peft.set_adapter(f"task_{t}")
            params = [p for p in self.peft.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
            losses = [answer_epoch(self.lm, rows, params, optimizer, cfg.batch_size, generator,
                                   f"arrow lora {task.name} epoch {epoch + 1}", progress,
                                   micro_batch_tokens=cfg.micro_batch_tokens)
                      for epoch in range(cfg.epochs)]
            self.lm.eval()
        for p in params:
            p.requires_grad_(False)
        self.task_names.append(task.name)
        return {"task": task.name, "losses": losses, "train_rows": len(rows), "total_s": time.perf_counter() - start}

    @torch.no_grad()
    def predict(self, prompts: list[str], batch_size: int = 8, progress: bool = False, task: str | None = None) -> list[Prediction]:
        if not self.task_names:
            raise RuntimeError("no task learned yet")
        self._use_router()
        return generate_answers(self, prompts, batch_size)  # Arrow routes inside the forward
