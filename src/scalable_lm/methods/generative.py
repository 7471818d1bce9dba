"""SLM on a decoder LM: each prompt retrieves its entries, their increments are mixed into the frozen
model for that prompt alone, and the model answers in the format of the task it was taught.

Same two stages as ``methods.slm`` (keys on cached queries, then values), with the answer-token loss in
place of a classification head. There are no heads: the retrieved increments decide how the model
answers; ``Prediction.task`` names the task owning most of the retrieved weight (for inspection only), or
``BASE_MODEL`` when the prompt is unfamiliar to the task it was routed to and the frozen model answered (``bank.fallback``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time

import torch
from torch import nn

from scalable_lm import training
from scalable_lm.adapters.causal import BASE_FORMAT, PLAIN_FORMAT, CausalLM, Seq2SeqLM
from scalable_lm.adapters.inject import inject, routed
from scalable_lm.config import AUTO, GENERATIVE_ENCODER, PAPER_TARGETS, SLMConfig
from scalable_lm.core import routers
from scalable_lm.core.bank import KnowledgeBank
from scalable_lm.data.tasks import DataError
from scalable_lm.encoder import QueryEncoder, shared_prefix_depth
from scalable_lm.methods.base import GrowsByTask, Prediction
from scalable_lm.progress import progress as progress_bar

log = logging.getLogger(__name__)

BASE_MODEL = "(base model)"  # Prediction.task of an input that fell back to the frozen model (bank.fallback)
DECODER_TARGETS = ["o_proj"]  # attention output of LLaMA-family blocks (the paper's choice)
SEQ2SEQ_TARGETS = ["SelfAttention.o", "EncDecAttention.o"]  # T5 attention outputs, encoder and decoder
# how a packaged base model (no chat template) reads a prompt, unless model.prompt_format says otherwise
PROMPT_FORMATS = {"gemma3": BASE_FORMAT}


def generative_backbone(config: SLMConfig | None, backbone=None) -> tuple[SLMConfig, CausalLM | Seq2SeqLM]:
    """``(config, lm)`` for SLM and the generative baselines: a copy of ``config`` whose backbone defaults
    to ``smollm2`` and whose targets, left at the encoder-classifier default, become the decoder's
    ``o_proj`` or the T5 attention outputs; ``lm`` wraps ``backbone`` or the loaded model."""
    from scalable_lm.backbones import load_generator

    config = copy.deepcopy(config) if config is not None else SLMConfig()
    if config.model.backbone == "minilm":
        config.model.backbone = "smollm2"
    if config.model.encoder == AUTO:
        config.model.encoder = GENERATIVE_ENCODER
    model, tokenizer = backbone if backbone is not None else load_generator(config.model.backbone)
    seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    if config.bank.targets in ([AUTO], PAPER_TARGETS):  # left at a default: the decoder's own
        config.bank.targets = list(SEQ2SEQ_TARGETS if seq2seq else DECODER_TARGETS)
    if seq2seq:
        return config, Seq2SeqLM(model, tokenizer, config.train.max_length)
    fmt = config.model.prompt_format or PROMPT_FORMATS.get(config.model.backbone, PLAIN_FORMAT)
    return config, CausalLM(model, tokenizer, config.train.max_length, prompt_format=fmt)


def micro_batches(batch: dict[str, torch.Tensor], max_tokens: int) -> list[tuple[slice, dict[str, torch.Tensor]]]:
    """``batch`` cut into runs of rows of at most ``max_tokens`` padded tokens each (``rows x (input width +
    label width when the labels have their own, as an encoder-decoder's do)``; one row at least); ``0``: the
    batch whole. Each part keeps the batch's padding, so its rows compute as they would in the whole batch."""
    rows, width = batch["input_ids"].shape
    if batch["labels"].shape[1] != width:
        width += batch["labels"].shape[1]
    per = rows if max_tokens <= 0 else max(1, max_tokens // width)
    return [(slice(a, a + per), {k: v[a: a + per] for k, v in batch.items()}) for a in range(0, rows, per)]


def answer_epoch(lm, rows: list[tuple[str, str]], params, optimizer, batch_size: int, generator: torch.Generator,
                 desc: str, progress: bool, route=None, penalty_fn=None, stats: dict | None = None,
                 micro_batch_tokens: int = 0) -> float:
    """One shuffled epoch of the answer-token loss; returns its mean (with the penalty, if any).

    ``route(idx)``, if given, returns the context (``routed(...)``) a forward over the rows ``idx`` runs in;
    ``penalty_fn()``, if given, is added to every step's loss; ``stats``, if given, receives the epoch's mean
    ``penalty`` apart (so a report can tell how much of the loss is the answer and how much the penalty).
    A batch of more than ``micro_batch_tokens`` padded tokens runs as micro-batches (``micro_batches``) whose
    summed losses, each divided by the whole batch's answer-token count, add up to the batch's mean loss:
    the gradients accumulate to the whole batch's, so the step is the same (to float rounding) at a fraction
    of the activation memory.
    """
    lm.train()
    total, steps, penalty_total = 0.0, 0, 0.0
    for idx in progress_bar(training.batches(len(rows), batch_size, generator), desc, progress):
        chunk = [rows[i] for i in idx]
        batch = lm.training_batch([p for p, _ in chunk], [a for _, a in chunk])
        optimizer.zero_grad()
        n_tokens = max(lm.answer_tokens(batch), 1)
        loss = 0.0
        for part, micro in micro_batches(batch, micro_batch_tokens):
            with route(idx[part]) if route is not None else contextlib.nullcontext():
                piece = lm.loss(micro, reduction="sum") / n_tokens
            piece.backward()
            loss += piece.item()
        if penalty_fn is not None:
            penalty = penalty_fn()
            penalty_total += penalty.item()
            penalty.backward()
            loss += penalty.item()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        total, steps = total + loss, steps + 1
    if stats is not None:
        stats["penalty"] = penalty_total / max(steps, 1)
    return total / max(steps, 1)


class GenerativeSLM(GrowsByTask):
    """Scalable Language Model on a generative backbone: a decoder LM, or an encoder-decoder (T5 family).

    Args:
        config: options; ``model.backbone`` names the model (default ``smollm2``); when ``bank.targets`` is
            left at the encoder-classifier default it becomes ``["o_proj"]`` (decoder) or the T5 attention
            outputs (encoder-decoder).
        backbone: ``(model, tokenizer)`` to use instead of loading ``config.model.backbone``.
        encoder: query encoder to use instead of loading ``config.model.encoder``.
        max_new_tokens: longest generated answer.
        device, dtype: where the model runs and the compute dtype of its frozen parts (``GrowsByTask.to``).
    """

    name = "slm"
    kind = "generative"

    def __init__(self, config: SLMConfig | None = None, backbone=None, encoder: QueryEncoder | None = None,
                 max_new_tokens: int = 64, device: str | torch.device | None = "auto",
                 dtype: str | torch.dtype = "float32"):
        # no config: a new generative model's defaults (one entry of rank 48 per task, config.GENERATIVE_LAYOUT)
        self.config, self.lm = generative_backbone(config if config is not None else SLMConfig.generative(), backbone)
        b = self.config.bank
        self.encoder = self._query_encoder(encoder, self.lm.model, self.lm.tokenizer)  # first: checks shared-lN
        depth = shared_prefix_depth(self.config.model.encoder)  # shared-lN: increments only above block N
        self.layers = inject(self.lm.model, b.targets, b.rank, b.alpha, above=depth or 0)
        self.bank = KnowledgeBank(self.encoder.dim, b.groups, b.entries_per_task)
        self.task_names: list[str] = []
        self.label_names: list[list[str]] = []  # always empty lists: answers are free text
        self.max_new_tokens = max_new_tokens
        self.to(device, dtype)

    @property
    def backbone_module(self) -> nn.Module:
        return self.lm.model

    # ---- growing and shrinking ---------------------------------------------------------------
    def _add_task(self, name: str, label_names: list[str] | None, generator: torch.Generator,
                  state: dict[str, torch.Tensor] | None = None) -> list[nn.Parameter]:
        """A task's keys and values: drawn, or (``add_task_state``) ``state``'s tensors."""
        params = self._new_entries(generator, state)
        self.task_names.append(name)
        self.label_names.append([])
        return params

    def _named_task_params(self, t: int) -> dict[str, nn.Parameter]:
        """Task ``t``'s parameters under their state names (``GrowsByTask``): keys, then values."""
        params = {"keys": self.bank.keys[t]}
        for name, layer in self.layers.items():
            params[f"values.{name}.A"], params[f"values.{name}.B"] = layer.lora_A[t], layer.lora_B[t]
        return params

    def _drop_last_task(self) -> None:
        keep = len(self.task_names) - 1
        self.bank.truncate(keep)
        for layer in self.layers.values():
            layer.truncate(keep)
        self.task_names.pop()
        self.label_names.pop()

    def _values(self, t: int) -> list[nn.Parameter]:
        return [p for layer in self.layers.values() for p in (layer.lora_A[t], layer.lora_B[t])]

    def _route(self, queries: torch.Tensor, upto: int | None = None, only: int | None = None):
        b = self.config.bank
        entries, weights = self.bank.route(queries, b.top_k, b.router, upto, only, b.weighting, b.temperature,
                                           b.shrinkage, fallback=b.fallback)
        self._reading(entries)
        return entries, weights

    # ---- learn ---------------------------------------------------------------------------------
    def _learn_new(self, train_rows, val_rows, generator, progress) -> dict:
        t = len(self.task_names) - 1
        cfg = self.config.train
        start = time.perf_counter()
        queries = self.encoder.encode([p for p, _ in train_rows], progress=progress)
        self.bank.set_statistics(t, routers.task_statistics(queries))
        self.bank.set_novelty(t, routers.novelty_statistics(queries))
        key_loss = training.train_keys(self.bank.keys[t], queries, self.config.keys, generator)
        key_s = time.perf_counter() - start
        log.info("task %s: %d queries encoded and keys trained in %.1fs (loss %.3f)", self.task_names[t],
                 len(queries), key_s, key_loss[-1])
        route = {"only": t} if self.config.bank.router == "gaussian" else {"upto": t}
        params = self._values(t)
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        best, best_state, history = float("inf"), None, []
        for epoch in range(cfg.epochs):
            loss = answer_epoch(self.lm, train_rows, params, optimizer, cfg.batch_size, generator,
                                f"task {self.task_names[t]} epoch {epoch + 1}", progress,
                                route=lambda idx: routed(self.layers, *self._route(queries[idx], **route)),
                                micro_batch_tokens=cfg.micro_batch_tokens)
            val_loss = self._val_loss(val_rows, route) if val_rows else None
            history.append({"epoch": epoch + 1, "loss": loss, "val_loss": val_loss})
            log.info("task %s epoch %d/%d: loss %.4f%s", self.task_names[t], epoch + 1, cfg.epochs, loss,
                     f", validation loss {val_loss:.4f}" if val_loss is not None else "")
            if val_loss is not None and val_loss < best:
                best, best_state = val_loss, [p.detach().clone() for p in params]
        if best_state is not None:  # the epoch best on the validation split
            with torch.no_grad():
                for p, saved in zip(params, best_state):
                    p.copy_(saved)
        self.lm.eval()
        for p in [self.bank.keys[t], *params]:
            p.requires_grad_(False)
        return {"task": self.task_names[t], "epochs": history, "key_loss": key_loss[-1], "key_s": key_s,
                "total_s": time.perf_counter() - start, "train_rows": len(train_rows), "val_rows": len(val_rows)}

    @torch.no_grad()
    def _val_loss(self, rows, route: dict) -> float:
        self.lm.eval()
        total, n = 0.0, 0
        for idx in training.batches(len(rows), self.config.train.batch_size):
            chunk = [rows[i] for i in idx]
            entries, weights = self._route(self.encoder.encode([p for p, _ in chunk]), **route)
            batch = self.lm.training_batch([p for p, _ in chunk], [a for _, a in chunk])
            with routed(self.layers, entries, weights):
                total += float(self.lm.loss(batch)) * len(idx)
            n += len(idx)
        return total / n

    # ---- predict -------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, prompts: list[str], batch_size: int = 8, progress: bool = False, task: str | None = None) -> list[Prediction]:
        """Answer each prompt without a task-ID (or, SLM-TI, with the entries of ``task`` only)."""
        if not self.task_names:
            raise RuntimeError("no task learned yet")
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str) or not prompt.strip():
                raise DataError(f"input {i}: empty prompt")
        only = self.task_index(task) if task is not None else None
        self.lm.eval()
        owner = self.bank.entry_task()
        per_task = self.bank.entries_per_task
        out: list[Prediction] = []
        self.timings = {"retrieval_s": 0.0, "generation_s": 0.0}  # of this call (paper Tab. 17)
        for idx in progress_bar(training.batches(len(prompts), batch_size), "generating", progress):
            chunk = [prompts[i] for i in idx]
            start = time.perf_counter()
            entries, weights = self._route(self.encoder.encode(chunk), only=only)  # once per prompt
            routed_at = time.perf_counter()
            with routed(self.layers, entries, weights):
                answers = self.lm.generate(chunk, self.max_new_tokens)
            self.timings["retrieval_s"] += routed_at - start
            self.timings["generation_s"] += time.perf_counter() - routed_at
            mass = weights.new_zeros(len(idx), len(self.task_names)).scatter_add_(1, owner[entries], weights)
            for row, (text, logprob) in enumerate(answers):
                confidence = math.exp(logprob)
                if not bool((weights[row] > 0).any()):  # unfamiliar to its routed task: the frozen base model answered
                    out.append(Prediction(label=text, task=BASE_MODEL, confidence=confidence))
                    continue
                t = int(mass[row].argmax())
                out.append(Prediction(
                    label=text, task=self.task_names[t], confidence=confidence,
                    entries=[f"{self.task_names[int(owner[e])]}#{int(e) % per_task}" for e in entries[row]],
                    weights=[round(float(w), 6) for w in weights[row]],
                    entry_tasks=[self.task_names[int(owner[e])] for e in entries[row]]))
        return out

    @torch.no_grad()
    def route_rows(self, prompts: list[str], models: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
        """Routes for one mixed batch in which each row chooses how it is routed (the server's ``model``).

        ``models[i]`` is ``"auto"`` (retrieve from the whole bank; the base-model fallback applies),
        ``"base"`` (the frozen model: all-zero weights) or a task name (that task's entries only, SLM-TI).
        Each row is routed from its own query, so a row's route never depends on the other rows.

        Returns:
            ``entries [B, K]``, ``weights [B, K]`` and, per row, ``{"task", "entries", "weights",
            "fallback"}`` (``task`` is ``BASE_MODEL`` for a row answered by the frozen model).
        """
        if not self.task_names:
            raise RuntimeError("no task learned yet")
        k = self.config.bank.top_k
        entries = torch.zeros(len(prompts), k, dtype=torch.long, device=self.device)
        weights = torch.zeros(len(prompts), k, device=self.device)
        groups: dict[str, list[int]] = {}
        for i, model in enumerate(models):
            groups.setdefault(model, []).append(i)
        queries = self.encoder.encode([prompts[i] for i, m in enumerate(models) if m != "base"])
        row_of_query = {i: j for j, i in enumerate(i for i, m in enumerate(models) if m != "base")}
        for model, rows in groups.items():
            if model == "base":
                continue
            only = None if model == "auto" else self.task_names.index(model)
            e, w = self._route(queries[[row_of_query[i] for i in rows]], only=only)
            entries[rows], weights[rows] = e, w.to(weights.dtype)
        owner = self.bank.entry_task()
        per_task = self.bank.entries_per_task
        infos = []
        for i, model in enumerate(models):
            if model == "base" or not bool((weights[i] > 0).any()):
                infos.append({"task": BASE_MODEL, "entries": [], "weights": [], "fallback": model != "base"})
                continue
            mass = weights.new_zeros(len(self.task_names)).scatter_add_(0, owner[entries[i]], weights[i])
            infos.append({"task": self.task_names[int(mass.argmax())],
                          "entries": [f"{self.task_names[int(owner[e])]}#{int(e) % per_task}" for e in entries[i]],
                          "weights": [round(float(w), 6) for w in weights[i]], "fallback": False})
        return entries, weights, infos

    @torch.no_grad()
    def multiple_choice(self, task: str, rows: list[dict], progress: bool = False) -> list[int]:
        """Zero-shot answers (``scalable_lm.zeroshot``), each question routed by its own query first."""
        from scalable_lm import zeroshot

        self.lm.eval()
        answers = []
        for row in progress_bar(rows, f"zero-shot {task}", progress):
            pairs, normalise = zeroshot.multiple_choice_pairs(task, row)
            if self.task_names:
                entries, weights = self._route(self.encoder.encode([row["question"]]))
                with routed(self.layers, entries.expand(len(pairs), -1), weights.expand(len(pairs), -1)):
                    scores = zeroshot.loglikelihoods(self.lm.model, self.lm.tokenizer, pairs, start=self.lm.start_ids)
            else:  # nothing learned: the base model
                scores = zeroshot.loglikelihoods(self.lm.model, self.lm.tokenizer, pairs, start=self.lm.start_ids)
            answers.append(zeroshot.choose(scores, normalise))
        return answers
