"""The contract every method (SLM and each baseline) follows, and what ``predict`` returns."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from scalable_lm.data.tasks import Task

# Names of a task's tensors besides its parameters (``GrowsByTask.task_state``): the Gaussian router's
# query statistics, and the base-model fallback's (``core.routers``); statistics, never trained.
STATS = ("stats.mean", "stats.scatter", "stats.count")
NOVELTY = ("novelty.centre", "novelty.spread")
# A classifier head's temperature (``training.fit_temperature``); optional: a task without one answers with
# its raw softmax (temperature 1).
TEMPERATURE = "head.temperature"
# What ``SLM.predict(..., abstain=z)`` answers for an input far from every learned task.
UNKNOWN = "(unknown)"
# A task's routing record (``GrowsByTask.routing``) leaves out shares under this (noise at a few hundred rows).
MIN_SHARE = 0.005
# ``GrowsByTask.overlaps``' default: a share of inputs above this is an overlap worth telling the user of.
OVERLAP_THRESHOLD = 0.02


@dataclass
class Prediction:
    """One input's answer.

    Attributes:
        label: predicted class name.
        task: name of the task whose head answered.
        confidence: softmax probability of ``label`` under that head.
        entries: retrieved entries as ``"task#i"`` (empty for methods without retrieval).
        weights: mixing weight of each retrieved entry.
        entry_tasks: the task owning each retrieved entry.
        abstained: the input was far from every learned task and ``abstain`` was asked for: ``label`` and
            ``task`` are ``UNKNOWN``, ``confidence`` 0 (``entries`` still show where it was closest).
    """

    label: str
    task: str
    confidence: float
    entries: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    entry_tasks: list[str] = field(default_factory=list)
    abstained: bool = False


class ContinualMethod(Protocol):
    """``learn`` one task at a time (never seeing old data again); ``predict`` without a task-ID."""

    name: str

    def learn(self, task: Task, progress: bool = True) -> dict: ...

    def predict(self, texts: list[str], batch_size: int = 32, progress: bool = False) -> list[Prediction]: ...


class TaskStateError(ValueError):
    """Tensors given to ``add_task_state`` that do not fit this model; the message names the first misfit."""


class GrowsByTask:
    """What SLM's classifier and generative forms share: ``learn`` (checks, seeding, rollback) and the
    public per-task interface that persistence, merging, import and removal go through.

    The class provides ``task_names``, ``label_names``, ``bank``, ``config.train`` (seed, val_fraction),
    ``_add_task(name, label_names, generator)``, ``_named_task_params(t)``, ``_learn_new(train_rows,
    val_rows, generator, progress)`` and ``_drop_last_task()``. Each task gets its own seed (``train.seed``
    + its index); the global RNG (head init, dropout) is seeded for the task and restored after; a failed
    or interrupted task is removed.

    Per task, the state is a flat ``{name: tensor}`` dict (``task_state``), the same names the model
    directory's task files use:

        keys                      [G, P, d/G]   the task's keys
        values.<layer>.A / .B     [P, r, d_in] / [P, d_out, r]   its entries' factors at each wrapped layer
        head.weight / head.bias   [C, H] / [C]  classifiers only
        head.temperature          []            classifiers: the head's calibration temperature (optional)
        head.dense.weight / .bias [H, H] / [H]  classifiers: a first-token head imported from a sequence
                                                classifier (``adapters.classification.TokenHead``; optional)
        stats.mean/scatter/count  [d] / [d, d] / []   Gaussian-router statistics (float64)
        novelty.centre/spread     [d] / [2]     base-model fallback statistics (float64; optional)

    A task's state depends on nothing but the task (with the Gaussian router, each task trains only its
    own entries), which is what makes ``remove_task`` and merging directories exact.
    """

    kind: str  # "classifier" (SLM) or "generative" (GenerativeSLM): a model directory's "kind"
    # Set by the store on a model it loaded: called with a task's name before the model first reads that
    # task's saved tensors (until then they map the task file). It verifies the file against its checksum
    # and returns the verified tensors (by state name), which replace the mapped ones; None: nothing to
    # replace. Routing calls it for the tasks it picked, ``task_state`` for its task.
    before_read: Callable[[str], dict[str, torch.Tensor] | None] | None = None

    # ---- placement ----------------------------------------------------------------------------------
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    def to(self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None):
        """Move the whole model to one ``device`` and compute ``dtype`` (``scalable_lm.device``); returns self.

        The frozen backbone and the query encoder take ``dtype``; keys, values and heads stay float32 and the
        router statistics float64 (float32 on MPS). ``None`` keeps the current device or dtype; ``"auto"``
        picks CUDA, then MPS, then CPU. Safe at any time: learned tasks move with the model, unchanged.
        """
        from scalable_lm.backbones import is_skeleton, move_loaded, remember_fingerprint
        from scalable_lm.core.routers import precise_dtype
        from scalable_lm.device import resolve_device, resolve_dtype

        device = resolve_device(device) if device is not None else self.device
        dtype = resolve_dtype(dtype) if dtype is not None else self.dtype
        skeleton = is_skeleton(self.backbone_module)  # a router-only load: (most) backbone weights absent
        for model in (self.backbone_module, self.encoder.model):  # identities of the weights as loaded
            if not is_skeleton(model):
                remember_fingerprint(model)
        # the trained factors live inside the backbone's wrapped layers: take them out while the backbone is
        # cast, so that a bfloat16 backbone does not round them, then put them back (float32, moved)
        factors = {}
        for name, layer in self.layers.items():
            factors[name] = (layer.lora_A, layer.lora_B)
            layer.lora_A, layer.lora_B = torch.nn.ParameterList(), torch.nn.ParameterList()
        if not skeleton:
            self.backbone_module.to(device=device, dtype=dtype)
        else:  # a router-only load: only the parts with weights (a shared query's first blocks) move
            move_loaded(self.backbone_module, device, dtype)
        for name, layer in self.layers.items():
            layer.lora_A, layer.lora_B = factors[name]
            layer.to_device(device)
        for head in self._heads():
            head.to(device=device, dtype=torch.float32)
        if self.encoder.model is not self.backbone_module:  # a shared prefix is the backbone, moved above
            self.encoder.model.to(device=device, dtype=dtype)
        self.bank.to_device(device, precise_dtype(device))
        self.device, self.dtype = device, dtype
        return self

    def _query_encoder(self, given, model: torch.nn.Module, tokenizer):
        """The query encoder ``config.model.encoder`` names (``given``, if a caller passed one): a separate
        encoder, or for ``shared-lN`` the backbone's own first N blocks (``encoder.SharedPrefixEncoder``)."""
        from scalable_lm.encoder import query_encoder, shared_prefix_depth

        name = self.config.model.encoder
        if given is None:
            return query_encoder(name, model, tokenizer, self.config.train.max_length)
        if shared_prefix_depth(name) is not None and not (getattr(given, "shared", False) and given.model is model):
            raise ValueError(f"encoder {name!r} reads the backbone's own blocks: pass no separate encoder")
        return given

    def _heads(self) -> list[torch.nn.Module]:
        """Modules outside the backbone that are trained per task (classification heads)."""
        return []

    def _reading(self, entries: torch.Tensor) -> None:
        """Call ``before_read`` once per task, for the tasks owning ``entries`` (before their factors are read)."""
        if self.before_read is None:
            return
        for t in torch.unique(entries // self.bank.entries_per_task).tolist():
            self._read_task(t)

    def _read_task(self, t: int) -> None:
        if self.before_read is None:
            return
        checked = self.__dict__.setdefault("_read_checked", set())
        name = self.task_names[t]
        if name in checked:
            return
        verified = self.before_read(name) or {}
        params = self._named_task_params(t)
        for n, tensor in verified.items():
            # values and head: what answering reads. Keys and statistics come from the (verified) index; the
            # scatter stays mapped (1.2 MB per task at d=384, read only when the pool is rebuilt).
            target = params.get(n)
            if target is None or n == "keys":
                continue
            if tuple(tensor.shape) != tuple(target.shape):
                raise TaskStateError(f"task '{name}': {n} has shape {tuple(tensor.shape)} in its file, "
                                     f"{tuple(target.shape)} in the model")
            target.data = tensor.to(device=target.device, dtype=target.dtype)
        checked.add(name)

    def _new_entries(self, generator: torch.Generator, state: dict[str, torch.Tensor] | None = None) -> list:
        """A new task's keys and values at every wrapped layer (keys first): drawn from ``generator``, or
        ``state``'s tensors as they are (``add_task_state``). ``_add_task`` adds the rest (a head, names)."""
        if state is not None:
            params = [self.bank.add_task(keys=state["keys"])]
            for name, layer in self.layers.items():
                params += layer.add_factors(state[f"values.{name}.A"], state[f"values.{name}.B"])
            return params
        params = [self.bank.add_task(generator)]
        for layer in self.layers.values():
            params += layer.add_task(self.bank.entries_per_task, generator)
        return params

    def _state_options(self, state: dict[str, torch.Tensor]) -> dict:
        """Keyword arguments of ``_add_task`` that a task's state implies (the kind of its head)."""
        return {}

    def task_index(self, name: str) -> int:
        if name not in self.task_names:
            raise KeyError(f"unknown task '{name}'; learned tasks: {self.task_names}")
        return self.task_names.index(name)

    def route(self, queries: torch.Tensor, task: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row ``(entries [B, K], weights [B, K])`` for ``queries [B, d]``: over the whole bank, or over
        ``task``'s entries only (SLM-TI)."""
        return self._route(queries, only=self.task_index(task) if task is not None else None)

    def task_state(self, task: str | int) -> dict[str, torch.Tensor]:
        """Every tensor of one task (by name or index), detached and on the CPU (device-free, as saved), under
        the names in the class docstring."""
        t = self.task_index(task) if isinstance(task, str) else task
        self._read_task(t)
        state = {name: p for name, p in self._named_task_params(t).items()}
        state.update(zip(STATS, self.bank.stats[t]))
        if t < len(self.bank.novelty):
            state.update(zip(NOVELTY, self.bank.novelty[t]))
        return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}

    def add_task_state(self, name: str, label_names: list[str] | None, state: dict[str, torch.Tensor]) -> None:
        """Append a task from its ``task_state`` (frozen, as a learned task is).

        Raises ``TaskStateError`` (and leaves the model as it was) when a tensor is missing, extra or of the
        wrong shape; the novelty tensors may be absent (that task then never falls back to the base model).
        The tensors are used as they are, not copied (a loaded directory's map its files): do not modify them
        afterwards.
        """
        if name in self.task_names:
            raise TaskStateError(f"task '{name}' is already in the bank")
        t = len(self.task_names)
        d = self.bank.dim
        # Checked before anything is allocated: the new task's factors are sized by the config, so a config
        # with a huge rank or entry count must fail here, not after allocating gigabytes.
        p, g = self.bank.entries_per_task, self.bank.groups
        planned = {"keys": (g, p, d // g)}
        for layer_name, layer in self.layers.items():
            d_in, d_out = layer.base_layer.in_features, layer.base_layer.out_features
            planned[f"values.{layer_name}.A"] = (p, layer.rank, d_in)
            planned[f"values.{layer_name}.B"] = (p, d_out, layer.rank)
        for n, shape in planned.items():
            if n in state and tuple(state[n].shape) != shape:
                raise TaskStateError(f"{n} has shape {tuple(state[n].shape)}, expected {shape}")
        options = self._state_options(state)
        if set(planned) <= set(state):  # keys and values taken as given (nothing drawn, nothing copied)
            options["state"] = state
        with torch.random.fork_rng(devices=[]):  # a head's init draws from the global RNG; it is overwritten
            self._add_task(name, list(label_names or []), torch.Generator().manual_seed(0), **options)
        try:
            params = self._named_task_params(t)
            given = set(state) - set(NOVELTY)
            expected = set(params) | set(STATS)
            if given != expected:
                missing, extra = sorted(expected - given), sorted(given - expected)
                raise TaskStateError(f"tensor names differ from this model's: missing {missing}, unexpected {extra}")
            shapes = {**{n: tuple(p.shape) for n, p in params.items()},
                      **dict(zip(STATS, [(d,), (d, d), ()])), **dict(zip(NOVELTY, [(d,), (2,)]))}
            for n, tensor in state.items():
                if tuple(tensor.shape) != shapes[n]:
                    raise TaskStateError(f"{n} has shape {tuple(tensor.shape)}, expected {shapes[n]}")
            novelty = [n for n in NOVELTY if n in state]
            if novelty and len(novelty) != len(NOVELTY):
                raise TaskStateError(f"novelty statistics incomplete: only {novelty}")
            for n, p in params.items():  # the given tensors are used as they are (not copied): mapped from a
                p.data = state[n].to(device=p.device, dtype=p.dtype)  # file, they stay unread until used
                p.requires_grad_(False)
            self.bank.set_statistics(t, tuple(state[n] for n in STATS))
            self.bank.set_novelty(t, tuple(state[n] for n in NOVELTY) if novelty else None)
        except BaseException:
            self._drop_last_task()
            raise

    def import_task(self, name: str, label_names: list[str] | None, values: dict[str, torch.Tensor],
                    inputs: list[str], progress: bool = False) -> dict:
        """Add a task whose values (and head) were made elsewhere, e.g. a LoRA adapter trained with PEFT.

        ``values`` holds the task's parameters except its keys (``values.<layer>.A/B``, and ``head.*`` for
        classifiers). The keys and router statistics come from ``inputs``, example inputs of the task, by
        the preparation stage of ``learn`` (seeded the same way); nothing in ``values`` is trained.
        Returns ``{"task", "inputs", "key_loss"}``.
        """
        from scalable_lm import training
        from scalable_lm.core import retrieval, routers
        from scalable_lm.data.tasks import DataError

        if not inputs:
            raise DataError(f"task '{name}': no example inputs to build its keys and router statistics from")
        generator = torch.Generator().manual_seed(self.config.train.seed + len(self.task_names))
        queries = self.encoder.encode(list(inputs), progress=progress)
        bank = self.bank
        keys = torch.nn.Parameter(retrieval.init_keys(bank.groups, bank.entries_per_task, bank.dim // bank.groups,
                                                      generator).to(queries.device))
        key_loss = training.train_keys(keys, queries, self.config.keys, generator)
        state = {"keys": keys.detach(), **values}
        state.update(zip(STATS, routers.task_statistics(queries)))
        state.update(zip(NOVELTY, routers.novelty_statistics(queries)))
        self.add_task_state(name, label_names, state)
        return {"task": name, "inputs": len(inputs), "key_loss": key_loss[-1] if key_loss else None}

    # ``save_pretrained`` / ``from_pretrained`` (the transformers / PEFT names) are defined in ``scalable_lm.store``,
    # which owns model directories and sits above this layer, and put on this class when the store is imported
    # (``scalable_lm.SLM``, ``scalable_lm.GenerativeSLM`` and ``scalable_lm.load`` import it): nothing here imports
    # it. Until then these say so.
    def save_pretrained(self, directory, task_info: dict[str, dict] | None = None) -> list[str]:
        raise RuntimeError("save_pretrained is provided by scalable_lm.store: `import scalable_lm.store` first, or "
                           "use scalable_lm.SLM / scalable_lm.GenerativeSLM")

    @classmethod
    def from_pretrained(cls, directory, backbone=None, encoder=None, device="auto", dtype="float32"):
        raise RuntimeError("from_pretrained is provided by scalable_lm.store: `import scalable_lm.store` first, or "
                           "use scalable_lm.SLM / scalable_lm.GenerativeSLM")

    def remove_task(self, name: str) -> None:
        """Forget one task: its keys, values, head and statistics leave the model.

        The tasks after it are re-added from their states, so the model equals one that learned the same
        tasks without it (exactly so with the Gaussian router; with DTKR, later tasks were trained beside
        this task's entries, see ``store.remove``).
        """
        t = self.task_index(name)
        for i in range(t):  # the pool is summed again from the kept tasks' scatters: their files are verified
            self._read_task(i)  # first (a loaded model maps them; ``before_read``)
        later = [(self.task_names[i], self.label_names[i], {k: v.clone() for k, v in self.task_state(i).items()})
                 for i in range(t + 1, len(self.task_names))]
        while len(self.task_names) > t:
            self._drop_last_task()
        for args in later:
            self.add_task_state(*args)
        self.routing.pop(name, None)  # the others' records keep what they measured, less the removed task
        self.file_checksums.pop(name, None)
        for record in self.routing.values():
            record["routes_to"].pop(name, None)
            record["captures"].pop(name, None)

    @property
    def file_checksums(self) -> dict[str, str]:
        """Per task, the SHA-256 of the task file it was read from or last written to (set by the store): a
        directory holding a file of that checksum holds this task as it is in memory."""
        return self.__dict__.setdefault("_file_checksums", {})

    # ---- how a task's inputs route, recorded when it is learned ---------------------------------------------
    @property
    def routing(self) -> dict[str, dict]:
        """Per task, recorded when it was learned (``learn``; kept in a model directory's manifest)::

            {"self": s, "routes_to": {older task: share}, "captures": {older task: share}, "rows": n}

        ``self``: the share of the task's held-out inputs routed to it; ``routes_to``: to each older task;
        ``captures``: the share of each older task's inputs this task takes, estimated without their data
        (``core.overlap``). Shares are 0-1, those under ``MIN_SHARE`` left out; ``rows``: the held-out queries
        measured. A task added from a state (a directory written before 0.4.0, an import) has no record."""
        return self.__dict__.setdefault("_routing", {})

    def overlaps(self, threshold: float = OVERLAP_THRESHOLD, task: str | None = None) -> list[dict]:
        """Pairs of tasks whose recorded routing passes ``threshold`` (a share, 0-1), largest first:
        ``[{"task", "other", "routes_to", "captures"}]`` where ``task`` was learned after ``other``,
        ``routes_to`` is the share of ``task``'s inputs that go to ``other`` and ``captures`` the share of
        ``other``'s inputs that ``task`` takes. ``task``: only the pairs that task was learned into."""
        from scalable_lm.core import overlap

        out = []
        for name in [task] if task is not None else self.task_names:
            record = self.routing.get(name)
            if record is None:
                continue
            for other in dict.fromkeys([*record["routes_to"], *record["captures"]]):
                if other not in self.task_names:  # removed since
                    continue
                out.append({"task": name, "other": other, "routes_to": record["routes_to"].get(other, 0.0),
                            "captures": record["captures"].get(other, 0.0)})
        return overlap.above(out, threshold)

    @torch.no_grad()
    def _measure_routing(self, train_rows, val_rows) -> dict:
        """The newest task's routing record (``routing``), measured on its held-out rows. Gaussian router:
        validation rows plus cross-validated training rows (``core.overlap.held_out_routes``; reads the pooled
        statistics and the task means, no older task's file); DTKR: the validation rows as ``predict`` routes
        them. ``captures``: ``core.overlap.pooled_captures`` (the means and the pool, no older task's file)."""
        from scalable_lm.core import overlap

        t = len(self.task_names) - 1
        if t == 0:
            return {"self": 1.0, "routes_to": {}, "captures": {}, "rows": 0}
        b = self.config.bank
        val_q = self.encoder.encode([x for x, _ in val_rows]) if val_rows else None
        means = torch.stack([s[0] for s in self.bank.stats])
        if b.router == "gaussian":
            train_q = self.encoder.encode([x for x, _ in train_rows])  # cached: encoded when the task was learned
            routes = overlap.held_out_routes(means, self.bank.pooled_without_last(), t, train_q, val_q, b.shrinkage)
        elif val_q is not None:
            entries, weights = self._route(val_q)
            owner = self.bank.entry_task()
            per_task = weights.new_zeros(len(val_q), t + 1).scatter_add_(1, owner[entries], weights)
            routes = per_task.argmax(-1)[per_task.sum(-1) > 0]  # a row sent to the base model is no task's
        else:
            routes = torch.zeros(0, dtype=torch.long)
        shares = overlap.shares(routes.cpu(), t + 1)
        captures = overlap.pooled_captures(means, self.bank.pooled(), b.shrinkage, seed=self.config.train.seed + t)

        def kept(values) -> dict[str, float]:
            return {self.task_names[j]: round(float(v), 4) for j, v in enumerate(values) if float(v) >= MIN_SHARE}
        return {"self": round(float(shares[t]), 4), "routes_to": kept(shares[:t]), "captures": kept(captures),
                "rows": len(routes)}

    def learn(self, task, progress: bool = True) -> dict:
        """Learn one new task; returns the report of ``_learn_new`` with ``routing`` (the task's routing
        record, also kept in ``self.routing``)."""
        import torch

        from scalable_lm.data.tasks import DataError, split_validation

        if task.name in self.task_names:
            raise DataError(f"task '{task.name}' is already in the bank")
        if not task.train:
            raise DataError(f"task '{task.name}' has no training rows")
        seed = self.config.train.seed + len(self.task_names)
        generator = torch.Generator().manual_seed(seed)
        train_rows, val_rows = split_validation(task.train, self.config.train.val_fraction, seed)
        logging.getLogger("scalable_lm").info(
            "learning task %s: %d training rows, %d validation rows, on %s in %s", task.name, len(train_rows),
            len(val_rows), self.device, str(self.dtype).removeprefix("torch."))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self._add_task(task.name, getattr(task, "label_names", None), generator)
            try:
                report = self._learn_new(train_rows, val_rows, generator, progress)
                report["routing"] = self.routing[task.name] = self._measure_routing(train_rows, val_rows)
                return report
            except BaseException:
                self.routing.pop(task.name, None)
                self._drop_last_task()
                raise
