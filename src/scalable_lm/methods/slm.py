"""SLM: learn(task) = preparation stage (new keys) + fine-tune stage (new values and head);
predict(texts) = retrieve entries per input, mix their increments into the frozen backbone, answer with
the head of the task that owns most of the retrieved weight.

Earlier tasks' tensors are frozen (``requires_grad=False``) and never given to an optimiser, so learning
a task leaves them bit-identical.
"""

from __future__ import annotations

import logging
import time

import torch
from torch import nn

from scalable_lm import training
from scalable_lm.adapters.classification import EncoderClassifier, TokenHead
from scalable_lm.adapters.inject import BelowLinear, deep, inject, routed, routed_from, wrap_below
from scalable_lm.config import SLMConfig, resolve_classifier
from scalable_lm.core.bank import KnowledgeBank
from scalable_lm.core.routers import novelty_statistics, task_statistics
from scalable_lm.data.tasks import DataError
from scalable_lm.encoder import QueryEncoder, max_positions, shared_prefix_depth
from scalable_lm.methods.base import TEMPERATURE, UNKNOWN, GrowsByTask, Prediction, TaskStateError
from scalable_lm.progress import progress as progress_bar

log = logging.getLogger(__name__)
DENSE_WEIGHT, DENSE_BIAS = "head.dense.weight", "head.dense.bias"  # a TokenHead's dense layer
BELOW = "values.below."  # an imported task's increments at or below a shared-prefix query's block


def below_factors(state: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor | None, torch.Tensor | None]]:
    """``{layer: (A, B)}`` of a task state's ``values.below.<layer>.A/B`` (a missing half is None)."""
    below: dict[str, list] = {}
    for key, tensor in state.items():
        if key.startswith(BELOW) and key.endswith((".A", ".B")):
            below.setdefault(key[len(BELOW):-2], [None, None])[key.endswith(".B")] = tensor
    return {k: tuple(v) for k, v in below.items()}


class SLM(GrowsByTask):
    """Scalable Language Model on an encoder classifier backbone.

    Args:
        config: options; defaults are the paper's (with longer key training, see ``KeyConfig``).
        backbone: ``(model, tokenizer)`` to use instead of loading ``config.model.backbone``.
        encoder: query encoder to use instead of loading ``config.model.encoder``.
        accelerator: an ``accelerate.Accelerator``; under ``accelerate launch --num_processes N`` the
            fine-tune stage runs data parallel over the N processes (see ``training.supervised_epoch``), and
            the accelerator decides the device.
        device: ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        dtype: compute dtype of the frozen backbone and query encoder (``float32``, ``bfloat16``,
            ``float16``); keys, values and heads stay float32 (``GrowsByTask.to``).
    """

    name = "slm"
    kind = "classifier"

    def __init__(self, config: SLMConfig | None = None, backbone=None, encoder: QueryEncoder | None = None,
                 accelerator=None, device: str | torch.device | None = "auto", dtype: str | torch.dtype = "float32"):
        from scalable_lm.backbones import load_encoder

        self.config = resolve_classifier(config or SLMConfig(), encoder)  # 'auto' encoder and targets
        model, tokenizer = backbone if backbone is not None else load_encoder(self.config.model.backbone)
        self.classifier = EncoderClassifier(model, tokenizer)
        bank_cfg = self.config.bank
        self.encoder = self._query_encoder(encoder, model, tokenizer)  # first: it checks a shared-lN's N
        depth = shared_prefix_depth(self.config.model.encoder)  # shared-lN: increments only above block N
        self.layers = inject(model, bank_cfg.targets, bank_cfg.rank, bank_cfg.alpha, above=depth or 0)
        self.depth = depth or 0
        # layers at or below the query's block that some imported task changes (wrapped when such a task is
        # added; ``BelowLinear``): answered in a second pass for the rows routed to that task
        self.below: dict[str, BelowLinear] = {}
        self.bank = KnowledgeBank(self.encoder.dim, bank_cfg.groups, bank_cfg.entries_per_task)
        if bank_cfg.router not in ("dtkr", "gaussian"):
            raise ValueError(f"unknown router {bank_cfg.router!r}; use 'dtkr' or 'gaussian'")
        self.task_names: list[str] = []
        self.label_names: list[list[str]] = []
        self.temperatures: list[float] = []  # per task head, fitted on its validation rows (calibration)
        self.accelerator = accelerator
        self.to(accelerator.device if accelerator is not None else device, dtype)

    @property
    def backbone_module(self) -> nn.Module:
        return self.classifier.backbone

    def to(self, device=None, dtype=None):
        super().to(device, dtype)
        for layer in self.below.values():  # their factors are not the backbone's parameters: float32, moved
            layer.to_device(self.device)
        return self

    def deep_tasks(self) -> list[int]:
        """Indices of the tasks with increments at or below the query's block (answered in a second pass)."""
        return sorted({t for layer in self.below.values() for t, a in enumerate(layer.lora_A) if a is not None})

    def _heads(self) -> list[nn.Module]:
        return list(self.classifier.heads)

    # ---- growing and shrinking the bank -------------------------------------------------------------
    def _add_task(self, name: str, label_names: list[str], generator: torch.Generator,
                  first_token: bool = False, state: dict[str, torch.Tensor] | None = None,
                  below: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> list[nn.Parameter]:
        """Create a task's keys, values and head (a ``TokenHead`` when ``first_token``); returns the new tensors
        (keys first). With ``state`` (``add_task_state``) keys and values are its tensors, not drawn; ``below``
        (``{layer: (A [r, d_in], B [d_out, r])}``) gives it increments at or below the query's block."""
        t = len(self.task_names)
        if below:
            self._check_below(below)
        params = self._new_entries(generator, state)
        for layer_name, layer in self.below.items():
            a, b = (below or {}).get(layer_name, (None, None))
            params += layer.set_task(t, a, b)
        params += list(self.classifier.add_head(len(label_names), first_token).parameters())
        self.task_names.append(name)
        self.label_names.append(list(label_names))
        self.temperatures.append(1.0)
        return params

    def _drop_last_task(self) -> None:
        """Undo a partly learned task (learn failed or was interrupted)."""
        keep = len(self.task_names) - 1
        self.bank.truncate(keep)
        for layer in [*self.layers.values(), *self.below.values()]:
            layer.truncate(keep)
        del self.classifier.heads[keep:]
        self.task_names.pop()
        self.label_names.pop()
        self.temperatures.pop()

    # ---- the per-task interface, with the head's temperature ------------------------------------------
    def task_state(self, task: str | int) -> dict[str, torch.Tensor]:
        t = self.task_index(task) if isinstance(task, str) else task
        return {**super().task_state(t), TEMPERATURE: torch.tensor(self.temperatures[t], dtype=torch.float32)}

    def add_task_state(self, name: str, label_names: list[str] | None, state: dict[str, torch.Tensor]) -> None:
        """``GrowsByTask.add_task_state``; ``head.temperature`` may be absent (then 1: raw softmax)."""
        state = dict(state)
        temperature = state.pop(TEMPERATURE, None)
        if temperature is not None:
            if tuple(temperature.shape) != ():
                raise TaskStateError(f"{TEMPERATURE} has shape {tuple(temperature.shape)}, expected ()")
            value = float(temperature)
            if not (value > 0 and value < float("inf")):
                raise TaskStateError(f"{TEMPERATURE} must be a finite number > 0, got {value}")
        super().add_task_state(name, label_names, state)
        self.temperatures[-1] = value if temperature is not None else 1.0

    # ---- learn ----------------------------------------------------------------------------------
    def _learn_new(self, train_rows, val_rows, generator, progress) -> dict:
        t = len(self.task_names) - 1
        start = time.perf_counter()
        queries = self.encoder.encode([x for x, _ in train_rows], progress=progress)
        encode_s = time.perf_counter() - start
        self.bank.set_statistics(t, task_statistics(queries))  # for the gaussian router; cheap either way
        self.bank.set_novelty(t, novelty_statistics(queries))  # kept for a uniform store; classifiers never fall back
        key_loss = training.train_keys(self.bank.keys[t], queries, self.config.keys, generator)
        key_s = time.perf_counter() - start - encode_s
        log.info("task %s: %d queries encoded in %.1fs; keys trained in %.1fs (loss %.3f)", self.task_names[t],
                 len(queries), encode_s, key_s, key_loss[-1])
        report = self._fine_tune(t, train_rows, val_rows, queries, generator, progress)
        for p in self._task_params(t):
            p.requires_grad_(False)
        report.update(task=self.task_names[t], encode_s=encode_s, key_s=key_s, key_loss=key_loss[-1],
                      total_s=time.perf_counter() - start, train_rows=len(train_rows), val_rows=len(val_rows))
        return report

    def _task_params(self, t: int) -> list[nn.Parameter]:
        """Every tensor owned by task ``t`` (keys, values in every layer, head)."""
        return list(self._named_task_params(t).values())

    def _named_task_params(self, t: int) -> dict[str, nn.Parameter]:
        """Task ``t``'s parameters under their state names (``GrowsByTask``): keys, values, head."""
        params = {"keys": self.bank.keys[t]}
        for name, layer in self.layers.items():
            params[f"values.{name}.A"], params[f"values.{name}.B"] = layer.lora_A[t], layer.lora_B[t]
        head = self.classifier.heads[t]
        params["head.weight"], params["head.bias"] = head.weight, head.bias
        if isinstance(head, TokenHead):  # a head imported from a sequence classifier
            params[DENSE_WEIGHT], params[DENSE_BIAS] = head.dense.weight, head.dense.bias
        for name, layer in self.below.items():
            if t < len(layer.lora_A) and layer.lora_A[t] is not None:
                params[f"{BELOW}{name}.A"], params[f"{BELOW}{name}.B"] = layer.lora_A[t], layer.lora_B[t]
        return params

    def _state_options(self, state: dict[str, torch.Tensor]) -> dict:
        """A state with ``head.dense.*`` holds a first-token head (``TokenHead``); one with
        ``values.below.<layer>.A/B`` changes layers at or below the query's block."""
        return {"first_token": DENSE_WEIGHT in state, "below": below_factors(state)}

    def _check_below(self, below: dict[str, tuple]) -> None:
        """Refuse (``TaskStateError``, nothing changed but wrappers) increments below the query that this model
        cannot apply: no shared-prefix query, a layer outside its first blocks, or factors of the wrong shape."""
        if not self.depth:
            raise TaskStateError(f"increments at {sorted(below)[:3]}: this model's bank has no layers there "
                                 f"(encoder {self.config.model.encoder})")
        try:
            wrap_below(self.classifier.backbone, sorted(below), self.depth, self.config.bank.alpha / self.config.bank.rank,
                       self.below)
        except ValueError as err:
            raise TaskStateError(str(err)) from None
        for name, (a, b) in below.items():
            base = self.below[name].base_layer
            if a is None or b is None:
                raise TaskStateError(f"{BELOW}{name}: needs both .A and .B")
            if a.ndim != 2 or b.ndim != 2 or a.shape[1] != base.in_features or b.shape[0] != base.out_features \
                    or a.shape[0] != b.shape[1]:
                raise TaskStateError(f"{BELOW}{name}: factors {tuple(a.shape)} and {tuple(b.shape)} do not fit a "
                                     f"{base.in_features} -> {base.out_features} layer")

    def _fine_tune(self, t, train_rows, val_rows, queries, generator, progress) -> dict:
        cfg = self.config.train
        trainable = self._task_params(t)[1:]  # keys are frozen after the preparation stage
        optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=0.0)
        limit = min(cfg.max_length, max_positions(self.classifier.backbone))
        tokens = self.classifier.tokenizer([x for x, _ in train_rows], truncation=True, max_length=limit)
        labels = torch.tensor([y for _, y in train_rows], device=self.device)
        # dtkr: the generalised setting, all entries so far; gaussian: the task's own entries, as at inference
        route = {"only": t} if self.config.bank.router == "gaussian" else {"upto": t}

        def logits_fn(idx: torch.Tensor):
            batch = self.classifier.pad(tokens, idx.tolist())
            entries, weights = self._route(queries[idx], **route)
            with routed(self.layers, entries, weights):
                feats = self.classifier.features(batch)
            return self.classifier.head_logits(feats, t), labels[idx]

        best_acc, best_state, history = -1.0, None, []
        for epoch in range(cfg.epochs):
            self.classifier.train()
            loss = training.supervised_epoch(trainable, optimizer, len(train_rows), cfg.batch_size, logits_fn,
                                             generator, f"task {self.task_names[t]} epoch {epoch + 1}", progress,
                                             accelerator=self.accelerator)
            val_acc = self._own_head_accuracy(t, val_rows, route) if val_rows else None
            history.append({"epoch": epoch + 1, "loss": loss, "val_accuracy": val_acc})
            log.info("task %s epoch %d/%d: loss %.4f%s", self.task_names[t], epoch + 1, cfg.epochs, loss,
                     f", validation accuracy {val_acc:.3f}" if val_acc is not None else "")
            if val_acc is not None and val_acc > best_acc:
                best_acc, best_state = val_acc, [p.detach().clone() for p in trainable]
        if best_state is not None:  # keep the epoch that was best on the validation split
            with torch.no_grad():
                for p, saved in zip(trainable, best_state):
                    p.copy_(saved)
        self.classifier.eval()
        report = {"epochs": history, "best_val_accuracy": best_acc if best_state is not None else None}
        report["temperature"] = 1.0
        # calibrate the head on the same validation rows (a temperature leaves its argmax, hence accuracy, as is)
        if cfg.calibrate and len(val_rows) >= training.MIN_CALIBRATION_ROWS:
            logits, labels = self._own_head_logits(t, val_rows, route)
            self.temperatures[t] = training.fit_temperature(logits, labels)
            nll = [float(torch.nn.functional.cross_entropy(logits / temp, labels)) for temp in (1.0, self.temperatures[t])]
            log.info("task %s: head temperature %.3f (validation NLL %.3f -> %.3f)", self.task_names[t],
                     self.temperatures[t], *nll)
            report.update(temperature=self.temperatures[t], val_nll=nll[0], val_nll_calibrated=nll[1])
        return report

    @torch.no_grad()
    def _own_head_logits(self, t: int, rows, route: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [N, C], labels [N])`` of task ``t``'s head on ``rows`` through ``route``."""
        self.classifier.eval()
        texts, labels = [x for x, _ in rows], torch.tensor([y for _, y in rows], device=self.device)
        out = []
        for idx in training.batches(len(rows), 64):
            feats = self._features([texts[i] for i in idx], **route)[0]
            out.append(self.classifier.head_logits(feats, t))
        return torch.cat(out), labels

    def _own_head_accuracy(self, t: int, rows, route: dict) -> float:
        logits, labels = self._own_head_logits(t, rows, route)
        return float((logits.argmax(-1) == labels).float().mean())

    # ---- predict ----------------------------------------------------------------------------------
    def _route(self, queries: torch.Tensor, upto: int | None = None, only: int | None = None):
        """Per-row ``(entries [B, K], weights [B, K])`` among tasks ``<= upto`` (or of task ``only``)."""
        b = self.config.bank
        entries, weights = self.bank.route(queries, b.top_k, b.router, upto, only, b.weighting, b.temperature,
                                           b.shrinkage)
        self._reading(entries)
        return entries, weights

    def _one_pass(self) -> bool:
        """Whether a forward pass can read its own query: a shared prefix, and answers cut at the tokens the
        queries were cut at (a later task learned with another ``--max-length`` makes answers and queries differ:
        then the query is encoded apart, as the training queries were)."""
        limit = min(self.config.train.max_length, max_positions(self.classifier.backbone))
        return self.encoder.shared and self.encoder.max_length == limit

    def _features(self, texts: list[str], upto: int | None = None, only: int | None = None,
                  queries: torch.Tensor | None = None):
        """``(features [B, 2, H], entries [B, K], weights [B, K], queries [B, d])`` with per-row retrieval
        (``queries`` when already encoded); the features are ``EncoderClassifier.pooled``'s, for heads of
        either kind. With a shared-prefix encoder and no ``queries``, one forward pass reads the query at
        block N, routes, and goes on up through the routed blocks."""
        batch = self.classifier.tokenize(texts, self.config.train.max_length)
        if queries is None and self._one_pass():
            seen: dict[str, torch.Tensor] = {}

            def route(hidden: torch.Tensor):
                seen["queries"] = self.encoder.pool(hidden, batch["attention_mask"])
                seen["entries"], seen["weights"] = self._route(seen["queries"], upto, only)
                return seen["entries"], seen["weights"]

            with routed_from(self.layers, self.encoder.block, route):
                feats = self.classifier.pooled(batch)
            return feats, seen["entries"], seen["weights"], seen["queries"]
        queries = self.encoder.encode(texts) if queries is None else queries
        entries, weights = self._route(queries, upto, only)
        with routed(self.layers, entries, weights):
            return self.classifier.pooled(batch), entries, weights, queries

    @torch.no_grad()
    def predict(self, texts: list[str], batch_size: int = 32, progress: bool = False, task: str | None = None,
                abstain: float | None = None) -> list[Prediction]:
        """Answer each text without a task-ID (or, SLM-TI, restricted to the entries of ``task``).

        ``abstain=z``: an input whose query lies farther from the task it was routed to than that task's
        held-out training queries do, by more than ``z`` standard deviations (``KnowledgeBank.unfamiliar``,
        the test the generative model's base-model fallback uses), is answered ``UNKNOWN``
        (``Prediction.abstained``). Larger ``z`` abstains less; ``None`` never abstains.
        """
        if abstain is not None and not (abstain >= 0 and abstain < float("inf")):
            raise ValueError(f"abstain must be a finite number >= 0 (standard deviations), got {abstain}")
        if not self.task_names:
            raise RuntimeError("no task learned yet")
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"input {i}: empty text")
        self.classifier.eval()
        only = self.task_index(task) if task is not None else None
        owner = self.bank.entry_task()
        deep_tasks = self.deep_tasks()
        # a separate encoder: every query once, in one pass; a shared prefix reads them inside each forward
        queries = None if self._one_pass() else self.encoder.encode(texts, progress=progress)
        out: list[Prediction] = []
        for idx in progress_bar(training.batches(len(texts), batch_size), "predicting", progress):
            given = queries[idx] if queries is not None else None
            feats, entries, weights, batch_queries = self._features([texts[i] for i in idx], only=only,
                                                                    queries=given)
            per_task = weights.new_zeros(len(idx), len(self.task_names)).scatter_add_(1, owner[entries], weights)
            chosen = per_task.argmax(dim=-1)  # head of the task owning most retrieved weight
            if deep_tasks:
                feats = self._second_pass([texts[i] for i in idx], feats, entries, weights, per_task, chosen,
                                          deep_tasks)
            far = (self.bank.unfamiliar(batch_queries, chosen, abstain) if abstain is not None
                   else torch.zeros(len(idx), dtype=torch.bool))
            for row in range(len(idx)):
                answer = self._answer(feats[row], int(chosen[row]), entries[row], weights[row], owner)
                if far[row]:
                    answer.label, answer.task, answer.confidence, answer.abstained = UNKNOWN, UNKNOWN, 0.0, True
                out.append(answer)
        return out

    def _second_pass(self, texts, feats, entries, weights, per_task, chosen, deep_tasks):
        """``feats`` with the rows routed to a task that changes the blocks below the query (an imported
        adapter trained on every block) answered again: the same route above the query, and that task's own
        increments below it weighted by the share of the route it holds. One extra forward pass per such task
        in the batch, over its rows only; the other rows keep the first pass's features."""
        feats = feats.clone()
        for t in deep_tasks:
            rows = (chosen == t).nonzero().flatten()
            if len(rows) == 0:
                continue
            batch = self.classifier.tokenize([texts[i] for i in rows.tolist()], self.config.train.max_length)
            with routed(self.layers, entries[rows], weights[rows]), deep(self.below, t, per_task[rows, t]):
                feats[rows] = self.classifier.pooled(batch).to(feats.dtype)
        return feats

    @torch.no_grad()
    def predict_paper_protocol(self, texts: list[str], num_classes: int) -> list[Prediction]:
        """The authors' evaluation, kept only to compare with the paper: it LEAKS the task.

        ``texts`` must all come from one task (one batch); retrieval runs once on the batch's mean query
        and the head is chosen among the tasks with ``num_classes`` labels (the one owning most retrieved
        weight). Never use this for real inputs: ``predict`` is the honest path.
        """
        self.classifier.eval()
        owner = self.bank.entry_task()
        mean_query = self.encoder.encode(texts).mean(dim=0, keepdim=True)
        entries, weights = self._route(mean_query)
        entries, weights = entries.expand(len(texts), -1), weights.expand(len(texts), -1)
        per_task = weights.new_zeros(len(self.task_names)).scatter_add_(0, owner[entries[0]], weights[0])
        fits = torch.tensor([len(names) == num_classes for names in self.label_names], device=per_task.device)
        if not bool(fits.any()):
            raise ValueError(f"no learned task has {num_classes} classes")
        t = int(torch.where(fits, per_task, per_task.new_full(per_task.shape, -1.0)).argmax())
        batch = self.classifier.tokenize(texts, self.config.train.max_length)
        with routed(self.layers, entries, weights), deep(self.below, t, per_task[t].expand(len(texts))):
            feats = self.classifier.pooled(batch)
        return [self._answer(feats[row], t, entries[row], weights[row], owner) for row in range(len(texts))]

    def _answer(self, feats, t, entries, weights, owner) -> Prediction:
        probs = torch.softmax(self.classifier.head_logits(feats[None], t)[0] / self.temperatures[t], dim=-1)
        label = int(probs.argmax())
        per_task = self.bank.entries_per_task
        return Prediction(
            label=self.label_names[t][label], task=self.task_names[t], confidence=float(probs[label]),
            entries=[f"{self.task_names[int(owner[e])]}#{int(e) % per_task}" for e in entries],
            weights=[round(float(w), 6) for w in weights],
            entry_tasks=[self.task_names[int(owner[e])] for e in entries])
