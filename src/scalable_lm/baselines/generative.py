"""Baselines on generative backbones, with the same ``learn``/``predict`` contract as ``GenerativeSLM``.

- ``SequentialLoRAGenerator``: one LoRA (same rank and target layers as SLM's values) trained on each task
  in turn; ``replay_fraction > 0`` keeps that share of every task's rows and trains on them again with
  each later task (replay, the only method here that keeps old data).
- ``OLoRAGenerator``: a new LoRA per task, trained with O-LoRA's orthogonality loss against the frozen
  earlier ones; all are applied at weight 1 (no routing, no task-ID).
"""

from __future__ import annotations

import copy
import random
import time

import torch
from tqdm.auto import tqdm

from scalable_lm import training
from scalable_lm.adapters.causal import CausalLM, Seq2SeqLM
from scalable_lm.adapters.inject import inject, routed
from scalable_lm.config import BankConfig, SLMConfig
from scalable_lm.data.tasks import DataError, split_validation
from scalable_lm.methods.base import Prediction
from scalable_lm.methods.generative import DECODER_TARGETS, SEQ2SEQ_TARGETS


class SequentialLoRAGenerator:
    """One LoRA trained on the tasks in order (optionally with a small replay buffer); no task-ID."""

    per_task_slots = False  # O-LoRA: True

    def __init__(self, config: SLMConfig | None = None, backbone=None, replay_fraction: float = 0.0,
                 max_new_tokens: int = 64, orth_lambda: float = 0.5):
        from scalable_lm.backbones import load_generator

        self.config = copy.deepcopy(config) if config is not None else SLMConfig()
        if self.config.model.backbone == "minilm":
            self.config.model.backbone = "smollm2"
        model, tokenizer = backbone if backbone is not None else load_generator(self.config.model.backbone)
        seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
        if self.config.bank.targets == BankConfig().targets:
            self.config.bank.targets = list(SEQ2SEQ_TARGETS if seq2seq else DECODER_TARGETS)
        self.lm = (Seq2SeqLM if seq2seq else CausalLM)(model, tokenizer, self.config.train.max_length)
        b = self.config.bank
        self.layers = inject(model, b.targets, b.rank, b.alpha)
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
        return torch.arange(k).expand(n, k), torch.ones(n, k)

    def _penalty(self) -> torch.Tensor:
        """O-LoRA: ``λ Σ_layers Σ_{s<t} |A_t A_s^T|`` for the newest LoRA ``t``."""
        total = torch.zeros(())
        for layer in self.layers.values():
            new = layer.lora_A[-1][0]
            for old in list(layer.lora_A)[:-1]:
                total = total + (new @ old[0].T).abs().sum()
        return self.orth_lambda * total

    def learn(self, task, progress: bool = True) -> dict:
        if task.name in self.task_names:
            raise DataError(f"task '{task.name}' was already learned")
        if not task.train:
            raise DataError(f"task '{task.name}' has no training rows")
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
            penalty = self.per_task_slots and self.num_slots > 1
            optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
            losses = []
            for epoch in range(cfg.epochs):
                self.lm.train()
                total, steps = 0.0, 0
                for idx in tqdm(list(training.batches(len(rows), cfg.batch_size, generator)), disable=not progress,
                                desc=f"{self.name} {task.name} epoch {epoch + 1}", leave=False):
                    chunk = [rows[i] for i in idx]
                    batch = self.lm.training_batch([p for p, _ in chunk], [a for _, a in chunk])
                    with routed(self.layers, *self._route(len(idx))):
                        loss = self.lm.loss(batch)
                    if penalty:
                        loss = loss + self._penalty()
                    optimizer.zero_grad()
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    optimizer.step()
                    total, steps = total + loss.item(), steps + 1
                losses.append(total / max(steps, 1))
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
        out = []
        self.timings = {"retrieval_s": 0.0, "generation_s": 0.0}
        for idx in training.batches(len(prompts), batch_size):
            chunk = [prompts[i] for i in idx]
            start = time.perf_counter()
            with routed(self.layers, *self._route(len(chunk))):
                answers = self.lm.generate(chunk, self.max_new_tokens)
            self.timings["generation_s"] += time.perf_counter() - start
            out += [Prediction(label=text, task="", confidence=float(torch.tensor(lp).exp())) for text, lp in answers]
        return out

    @torch.no_grad()
    def multiple_choice(self, task: str, rows: list[dict], progress: bool = False) -> list[int]:
        """Zero-shot answers (``scalable_lm.zeroshot``) with the trained LoRA applied."""
        from scalable_lm import zeroshot

        self.lm.eval()
        answers = []
        for row in rows:
            pairs, normalise = zeroshot.multiple_choice_pairs(task, row)
            with routed(self.layers, *self._route(len(pairs))):
                scores = zeroshot.loglikelihoods(self.lm.model, self.lm.tokenizer, pairs)
            answers.append(zeroshot.choose(scores, normalise))
        return answers


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
                 max_new_tokens: int = 64):
        from scalable_lm.backbones import load_generator

        self.config = copy.deepcopy(config) if config is not None else SLMConfig()
        if self.config.model.backbone == "minilm":
            self.config.model.backbone = "smollm2"
        model, tokenizer = backbone if backbone is not None else load_generator(self.config.model.backbone)
        seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
        if self.config.bank.targets == BankConfig().targets:
            self.config.bank.targets = list(SEQ2SEQ_TARGETS if seq2seq else DECODER_TARGETS)
        self.lm = (Seq2SeqLM if seq2seq else CausalLM)(model, tokenizer, self.config.train.max_length)
        self.model, self.peft = model, None
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

        if task.name in self.task_names:
            raise DataError(f"task '{task.name}' was already learned")
        if not task.train:
            raise DataError(f"task '{task.name}' has no training rows")
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
            losses = []
            for epoch in range(cfg.epochs):
                self.lm.train()
                total, steps = 0.0, 0
                for idx in tqdm(list(training.batches(len(rows), cfg.batch_size, generator)), disable=not progress,
                                desc=f"arrow lora {task.name} epoch {epoch + 1}", leave=False):
                    chunk = [rows[i] for i in idx]
                    loss = self.lm.loss(self.lm.training_batch([p for p, _ in chunk], [a for _, a in chunk]))
                    optimizer.zero_grad()
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    optimizer.step()
                    total, steps = total + loss.item(), steps + 1
                losses.append(total / max(steps, 1))
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
        out = []
        self.timings = {"retrieval_s": 0.0, "generation_s": 0.0}  # Arrow routes inside the forward
        for idx in training.batches(len(prompts), batch_size):
            start = time.perf_counter()
            answers = self.lm.generate([prompts[i] for i in idx], self.max_new_tokens)
            self.timings["generation_s"] += time.perf_counter() - start
            out += [Prediction(label=text, task="", confidence=float(torch.tensor(lp).exp())) for text, lp in answers]
        return out
