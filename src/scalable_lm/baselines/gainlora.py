"""GainLoRA (Liang & Li, NeurIPS 2025) as a baseline: a LoRA branch per task, mixed in by learned gates.

Each task adds one rank-``r`` LoRA at every target layer (trained with O-LoRA's orthogonality loss against the
old ones: the paper's "GainLoRA (O-LoRA)" variant) and a gate ``a_t(x)`` (``core.gating.TaskGates``) computed
from the mean of the input's token embeddings. At inference every branch is applied with its gate (no
routing, no task-ID); old branches and gates are frozen, and the new gate is built to stay ~0 on old tasks'
inputs. The encoder classifier answers with one head over the union of all tasks' labels (the paper's T5
generates the label words instead); the causal LM generates as the other generative baselines do.

Settings: ``gate_hidden`` (default 128), ``threshold`` (GPM energy, default 0.97), ``orth_lambda`` (0.5, as
O-LoRA here). The paper uses T5-large / LLaMA-2 with a deeper gate MLP and a threshold that rises with the
task index; those are sized down or fixed here (see ``core.gating``).
"""

from __future__ import annotations

import time

import torch

from scalable_lm.adapters.inject import routed
from scalable_lm.baselines.generative import OLoRAGenerator, generate_answers
from scalable_lm.baselines.olora import OLoRA
from scalable_lm.config import BankConfig, SLMConfig, TrainConfig
from scalable_lm.core.gating import TaskGates
from scalable_lm.data.tasks import Task, check_new_task, split_validation
from scalable_lm.methods.base import Prediction
from scalable_lm.methods.generative import answer_epoch


@torch.no_grad()
def mean_input_embedding(model: torch.nn.Module, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B, d]`` float32 mean of the input token embeddings ``input_ids [B, T]`` where ``mask [B, T]`` is 1
    (the model's embedding table, frozen)."""
    emb = model.get_input_embeddings()(input_ids).float()
    m = mask[..., None].float()
    return (emb * m).sum(1) / m.sum(1).clamp_min(1.0)


@torch.no_grad()
def pooled_embeddings(model: torch.nn.Module, tokenizer, texts: list[str], max_length: int,
                      batch_size: int = 64) -> torch.Tensor:
    """``[N, d]`` ``mean_input_embedding`` of each text, tokenised here in batches."""
    device = model.get_input_embeddings().weight.device
    out = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start: start + batch_size], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        out.append(mean_input_embedding(model, enc["input_ids"].to(device), enc["attention_mask"].to(device)))
    return torch.cat(out) if out else torch.zeros(0, model.get_input_embeddings().weight.shape[1], device=device)


def project_each_step(optimizer: torch.optim.Optimizer, gates: TaskGates) -> None:
    """Make every ``optimizer.step()`` keep only the part of the new gate's update that leaves old gates
    alone (``TaskGates.project_update``)."""
    saved: list[list[torch.Tensor]] = []

    def before(*_):
        saved[:] = [gates.snapshot()]

    def after(*_):
        gates.project_update(saved[0])

    optimizer.register_step_pre_hook(before)
    optimizer.register_step_post_hook(after)


class GainLoRA(OLoRA):
    """GainLoRA on an encoder classifier, with a union head; no task-ID.

    Args:
        backbone: ``(model, tokenizer)``; frozen.
        train, bank: as the other LoRA baselines (``bank``: rank, alpha, targets).
        orth_lambda: O-LoRA's orthogonality strength for the new branch.
        gate_hidden, threshold: ``TaskGates`` options.
    """

    name = "gainlora"

    def __init__(self, backbone, train: TrainConfig | None = None, bank: BankConfig | None = None,
                 orth_lambda: float = 0.5, gate_hidden: int = 128, threshold: float = 0.97,
                 device: str | torch.device = "cpu"):
        super().__init__(backbone, train, bank, orth_lambda, device)
        self.gates = TaskGates(self.classifier.hidden, gate_hidden, threshold).to(self.device)

    def _pooled(self, texts: list[str]) -> torch.Tensor:
        return pooled_embeddings(self.classifier.backbone, self.classifier.tokenizer, texts, self.cfg.max_length)

    def _features(self, texts: list[str]) -> torch.Tensor:
        n = self.num_slots
        batch = self.classifier.tokenize(texts, self.cfg.max_length)
        if n == 0:
            return self.classifier.features(batch)
        # the gate input from the batch already tokenised; (B, n), differentiable in the newest gate
        weights = self.gates(mean_input_embedding(self.classifier.backbone, batch["input_ids"], batch["attention_mask"]))
        with routed(self.layers, torch.arange(n, device=self.device).expand(len(texts), n), weights):
            return self.classifier.features(batch)

    def _prepare_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        project_each_step(optimizer, self.gates)

    def learn(self, task: Task, progress: bool = True) -> dict:
        self._check_new(task)
        seed = self.cfg.seed + self.num_tasks
        generator = torch.Generator().manual_seed(seed)
        rows, _ = split_validation(task.train, self.cfg.val_fraction, seed)
        start = time.perf_counter()
        u = self._pooled([x for x, _ in rows])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            offset = self.head.grow(task)
            params = self._new_slot(generator) + self.gates.add_task(u, generator) + list(self.head.parameters())
            penalty = self.orthogonality if self.num_tasks > 1 else None
            losses = self._train([(x, y + offset) for x, y in rows], params, seed, generator,
                                 f"gainlora {task.name}", progress, penalty)
        self._freeze_slots()
        self.gates.finish_task(u)
        self.learned.append(task.name)
        own_gate = float(self.gates(u)[:, -1].mean())
        return {"task": task.name, "losses": losses, "train_rows": len(rows), "own_gate": own_gate,
                "protected_dims": [self.gates.basis_in.shape[1], self.gates.basis_mid.shape[1],
                                   self.gates.basis_out.shape[1]], "total_s": time.perf_counter() - start}

    @torch.no_grad()
    def gate_table(self, texts: list[str]) -> torch.Tensor:
        """``[B, T]`` every task's gate on ``texts`` (for reports)."""
        return self.gates(self._pooled(texts))


class GainLoRAGenerator(OLoRAGenerator):
    """GainLoRA on a generative backbone: each task's branch weighted by its gate on the prompt; no task-ID.

    The gate is computed once per prompt (mean of the prompt's token embeddings) and holds for every token
    the model generates for it.
    """

    def __init__(self, config: SLMConfig | None = None, backbone=None, max_new_tokens: int = 64,
                 orth_lambda: float = 0.5, gate_hidden: int = 128, threshold: float = 0.97,
                 device: str | torch.device = "cpu"):
        super().__init__(config, backbone, max_new_tokens=max_new_tokens, orth_lambda=orth_lambda, device=device)
        self.name = "gainlora"
        dim = self.lm.model.get_input_embeddings().weight.shape[1]
        self.gates = TaskGates(dim, gate_hidden, threshold).to(self.device)

    def _pooled(self, prompts: list[str]) -> torch.Tensor:
        return pooled_embeddings(self.lm.model, self.lm.tokenizer, prompts, self.lm.max_length)

    def _gated(self, prompts: list[str]):
        n = self.num_slots
        weights = self.gates(self._pooled(prompts))
        return routed(self.layers, torch.arange(n, device=self.device).expand(len(prompts), n), weights)

    def learn(self, task, progress: bool = True) -> dict:
        check_new_task(task, self.task_names)
        cfg = self.config.train
        seed = cfg.seed + len(self.task_names)
        generator = torch.Generator().manual_seed(seed)
        rows, _ = split_validation(task.train, cfg.val_fraction, seed)  # the rows SLM trains on
        start = time.perf_counter()
        u = self._pooled([p for p, _ in rows])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for layer in self.layers.values():
                layer.add_task(1, generator)
            params = [p for layer in self.layers.values() for p in (layer.lora_A[-1], layer.lora_B[-1])]
            params += self.gates.add_task(u, generator)
            penalty = self._penalty if self.num_slots > 1 else None
            optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
            project_each_step(optimizer, self.gates)
            stats = [{} for _ in range(cfg.epochs)]
            losses = [answer_epoch(self.lm, rows, params, optimizer, cfg.batch_size, generator,
                                   f"gainlora {task.name} epoch {epoch + 1}", progress,
                                   route=lambda idx: self._gated([rows[i][0] for i in idx]), penalty_fn=penalty,
                                   stats=stats[epoch],
                                   micro_batch_tokens=cfg.micro_batch_tokens)
                      for epoch in range(cfg.epochs)]
            self.lm.eval()
        for layer in self.layers.values():
            for p in (layer.lora_A[-1], layer.lora_B[-1]):
                p.requires_grad_(False)
        self.gates.finish_task(u)
        self.task_names.append(task.name)
        with torch.no_grad():
            gates = self.gates(u).mean(0)
        # "losses" include the orthogonality penalty and "penalties" are its part of each epoch's mean; "old_gates"
        # say how far the earlier tasks' (frozen) branches stay open on this task's own inputs
        return {"task": task.name, "losses": losses, "penalties": [s.get("penalty", 0.0) for s in stats],
                "train_rows": len(rows), "own_gate": float(gates[-1]),
                "old_gates": [float(g) for g in gates[:-1]], "total_s": time.perf_counter() - start}

    @torch.no_grad()
    def predict(self, prompts: list[str], batch_size: int = 8, progress: bool = False,
                task: str | None = None) -> list[Prediction]:
        if not self.task_names:
            raise RuntimeError("no task learned yet")
        return generate_answers(self, prompts, batch_size, self._gated)

    @torch.no_grad()
    def multiple_choice(self, task: str, rows: list[dict], progress: bool = False) -> list[int]:
        """Zero-shot answers (``scalable_lm.zeroshot``) with each branch gated on the question."""
        from scalable_lm import zeroshot

        return zeroshot.answer_rows(self.lm, task, rows, lambda pairs: self._gated([c for c, _ in pairs]))
