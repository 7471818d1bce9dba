"""Typed configuration. The dataclasses are the single description of every option: the CLI builds its
flags from them (field ``help`` metadata), and a model directory's manifest stores them as JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


AUTO = "auto"  # a default resolved when the model is built (``resolve_classifier``), then stored resolved
PAPER_TARGETS = ["attention.output.dense"]  # the paper's: the attention output of every block
# a shared-prefix classifier (BERT/MiniLM names): every linear layer of the blocks above the query's block; chosen
# on validation rows against the attention output alone (benchmarks/results/route_free)
SHARED_PREFIX_TARGETS = ["attention.self.query", "attention.self.key", "attention.self.value",
                         "attention.output.dense", "intermediate.dense", "output.dense"]
CLASSIFIER_ENCODER = "shared-l4"  # what encoder 'auto' is for a classifier (route_free); generative: minilm-l4
GENERATIVE_ENCODER = "minilm-l4"


def resolve_targets(targets: list[str], encoder: str | None) -> list[str]:
    """``targets`` with ``['auto']`` made concrete for an encoder classifier: every linear layer above a shared
    prefix (``encoder`` = ``shared-lN``), else the paper's attention output (also for ``encoder=None``: the
    classifier baselines, which route nothing)."""
    if targets != [AUTO]:
        return list(targets)
    return list(SHARED_PREFIX_TARGETS if encoder and encoder.startswith("shared-l") else PAPER_TARGETS)


def resolve_classifier(config: "SLMConfig", given_encoder=None) -> "SLMConfig":
    """Make an encoder classifier's 'auto' defaults concrete, in place: the encoder (the given encoder's name
    when one is passed, else ``CLASSIFIER_ENCODER``), then the targets (``resolve_targets``). A directory
    stores the resolved values, so a later change of a default never changes a saved model."""
    if config.model.encoder == AUTO:
        config.model.encoder = given_encoder.name if given_encoder is not None else CLASSIFIER_ENCODER
    config.bank.targets = resolve_targets(config.bank.targets, config.model.encoder)
    return config


@dataclass
class BankConfig:
    """Shape of the knowledge bank and the retrieval rule (SPEC: DTKR and JARe)."""

    groups: int = field(default=6, metadata={"help": "G: query groups for DTKR (query dim must divide by it)"})
    entries_per_task: int = field(default=4, metadata={
        "help": "P: entries (key + value) added per task (a new generative directory: 1, unless a layout flag "
                "--entries-per-task/--top-k/--rank/--alpha is given)"})
    rank: int = field(default=12, metadata={"help": "r: rank of every low-rank increment (new generative: 48)"})
    alpha: float = field(default=24.0, metadata={"help": "increments are scaled by alpha/rank (new generative: 96)"})
    top_k: int = field(default=4, metadata={"help": "K: entries mixed per input (new generative: 1)"})
    targets: list[str] = field(
        default_factory=lambda: [AUTO],
        metadata={"help": "suffixes of the nn.Linear layers that get increments; 'auto' (default): every linear layer "
                          "of the blocks above the query's (a classifier with --encoder shared-lN), the attention "
                          "output (the paper's choice: a separate encoder, and the classifier baselines), o_proj "
                          "(decoder LMs)"},
    )
    # default chosen on validation data by benchmarks/retrieval.py (results/retrieval/minilm.json):
    # gaussian 93.2% vs dtkr 73.6% retrieval on the CL-5 validation splits
    router: str = field(default="gaussian", metadata={
        "help": "'gaussian' (default, chosen on validation data): pick the task by Mahalanobis distance to each "
                "task's query mean (shared covariance), then mix that task's entries by their keys; 'dtkr': the "
                "paper's keys over all entries"})
    shrinkage: float = field(default=0.1, metadata={"help": "covariance shrinkage of the gaussian router"})
    fallback: float = field(default=3.0, metadata={
        "help": "generative models, gaussian router: an input whose cosine distance to its routed task's query "
                "centre exceeds that task's mean held-out distance by more than this many standard deviations is "
                "answered by the frozen base model (keeps general abilities for inputs of none of the tasks); "
                "0 = off. Classifiers always use a task's head"})
    weighting: str = field(default="normalize", metadata={"help": "'normalize' (w=s/sum s, paper) or 'softmax'"})
    temperature: float = field(default=0.1, metadata={"help": "softmax temperature (weighting=softmax only)"})


@dataclass
class KeyConfig:
    """Preparation stage: training the new task's keys on its cached queries."""

    key_epochs: int = field(default=30, metadata={"help": "epochs over the task's queries (paper: 3, too few here)"})
    key_lr: float = field(default=1e-2, metadata={"help": "AdamW learning rate for keys (paper: 1e-3)"})
    key_batch_size: int = field(default=16, metadata={"help": "queries per key step"})
    mask_prob: float = field(default=0.25, metadata={"help": "probability of masking each key (paper: 0.25)"})
    k_prep: int = field(default=2, metadata={"help": "keys selected per group in the key loss (paper: 2)"})


@dataclass
class TrainConfig:
    """Fine-tune stage: the new task's values and head."""

    epochs: int = field(default=3, metadata={"help": "epochs over the task's training split"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate for values and head"})
    batch_size: int = field(default=16, metadata={"help": "training batch size"})
    # measured on SmolLM2-135M (benchmarks/results/learn_memory): a 128-token row holds about 0.26 GB of
    # activations while it learns, over about 1.2 GB for the process; 384 tokens (3 such rows) peaked at 2.001 GB,
    # on the 2 GB line, so the default is 256 (2 rows). Smaller parts cost time (less work per matrix product);
    # 0 turns the split off
    micro_batch_tokens: int = field(default=256, metadata={
        "help": "generative models: most padded tokens (rows x length) in one forward pass while learning; a larger "
                "batch runs as micro-batches whose gradients add up to the batch's (the same step, less memory); "
                "0: never split"})
    max_length: int = field(default=128, metadata={"help": "tokens per input (longer inputs are truncated)"})
    val_fraction: float = field(default=0.1, metadata={"help": "share of train held out to pick the best epoch"})
    seed: int = field(default=0, metadata={"help": "seed for init, shuffling and splits"})
    # off by default: on CL-5 the temperature fitted on 50 validation rows (also used to pick the epoch, so
    # optimistic) sharpened the heads and doubled the test calibration error (benchmarks/results/calibration)
    calibrate: bool = field(default=False, metadata={
        "help": "classifiers: fit a temperature to each head's confidences on the validation split (needs >= 20 "
                "validation rows)"})


@dataclass
class ModelConfig:
    """Which frozen networks to use. 'minilm' = the packaged all-MiniLM-L6-v2 (offline)."""

    backbone: str = field(default="minilm", metadata={
        "help": "backbone: 'minilm' (classifier); for instruction data 'smollm2' (used when this is left at "
                "minilm), 'gemma3' (a base model, after `make gemma3`) or 'qwen1.5b' (Qwen2.5-Coder-1.5B-Instruct, "
                "after `make qwen`); or a local folder or hub id"})
    # default chosen on validation data by benchmarks/retrieval.py (results/retrieval/README.md): the first
    # 4 layers of MiniLM route best (98.8% validation retrieval vs 93.2% for all 6 layers and 94.4% for mpnet)
    # 'auto' = shared-l4 for classifiers, chosen on validation rows by benchmarks/results/route_free (same
    # routing as the separate minilm-l4 encoder, one forward pass instead of two); minilm-l4 for generative models
    encoder: str = field(default=AUTO, metadata={
        "help": "query encoder: 'auto' (default: 'shared-l4' for classifiers, 'minilm-l4' for generative models); "
                "'shared-lN': the backbone's own hidden state after block N (no second model; one forward pass "
                "routes and answers; increments only in the blocks above N); or a separate encoder: 'minilm-l4' "
                "(the first 4 layers of MiniLM), 'minilm', 'minilm-lN', 'mpnet' (after `make mpnet`), a local "
                "folder or hub id"})
    prompt_format: str = field(default="", metadata={
        "help": "generative model without a chat template (a base model): how it reads a prompt, a text with "
                "'{prompt}' in it, e.g. '{prompt}\\nAnswer:' (an answer after ':' follows a space); "
                "empty: the backbone's default ('{prompt}\\nAnswer:' for gemma3, else '{prompt}\\n'); in a shell "
                "$'...' gives a real line break"})


# The bank layout of a new generative model: one entry of rank P·r per task instead of P entries of rank r (the
# same parameters), so that an engine applying one adapter per request (vLLM, PEFT) serves exactly what `slm
# predict` answers. Chosen by the rule written before its runs (benchmarks/results/layout). A directory keeps
# the layout it was created with; the classifier's stays P entries.
GENERATIVE_LAYOUT = {"entries_per_task": 1, "top_k": 1, "rank": 48, "alpha": 96.0}


@dataclass
class SLMConfig:
    """Everything an SLM model directory needs to be rebuilt."""

    model: ModelConfig = field(default_factory=ModelConfig)
    bank: BankConfig = field(default_factory=BankConfig)
    keys: KeyConfig = field(default_factory=KeyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def generative(cls, base: SLMConfig | None = None) -> SLMConfig:
        """The options of a new generative model: a copy of ``base`` (every default when None) with the bank in
        ``GENERATIVE_LAYOUT``."""
        config = cls() if base is None else cls.from_dict(base.to_dict())
        for name, value in GENERATIVE_LAYOUT.items():
            setattr(config.bank, name, value)
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> SLMConfig:
        """Raise ``ValueError`` naming the first option whose value cannot work (before any training)."""
        import math

        def need(ok: bool, flag: str, what: str, value) -> None:
            if not ok:
                raise ValueError(f"--{flag.replace('_', '-')} must be {what}, got {value!r}")

        def finite(x) -> bool:
            return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

        def whole(x) -> bool:
            return isinstance(x, int) and not isinstance(x, bool)

        b, k, t = self.bank, self.keys, self.train
        for name in ("groups", "entries_per_task", "rank", "top_k"):
            need(whole(getattr(b, name)) and getattr(b, name) >= 1, name, "a whole number >= 1", getattr(b, name))
        need(finite(b.alpha) and b.alpha > 0, "alpha", "a finite number > 0", b.alpha)
        need(b.router in ("gaussian", "dtkr"), "router", "'gaussian' or 'dtkr'", b.router)
        need(b.weighting in ("normalize", "softmax"), "weighting", "'normalize' or 'softmax'", b.weighting)
        need(finite(b.temperature) and b.temperature > 0, "temperature", "a finite number > 0", b.temperature)
        need(finite(b.shrinkage) and 0 <= b.shrinkage <= 1, "shrinkage", "between 0 and 1", b.shrinkage)
        need(finite(b.fallback) and b.fallback >= 0, "fallback", "a finite number >= 0", b.fallback)
        need(isinstance(b.targets, list) and bool(b.targets) and all(isinstance(x, str) and x for x in b.targets),
             "targets", "one or more layer names", b.targets)
        for name in ("key_epochs", "key_batch_size", "k_prep"):
            need(whole(getattr(k, name)) and getattr(k, name) >= 1, name, "a whole number >= 1", getattr(k, name))
        need(finite(k.key_lr) and k.key_lr > 0, "key_lr", "a finite number > 0", k.key_lr)
        # The key loss only steers routing under DTKR; under the Gaussian router the keys are trained but unused,
        # and the loss takes min(k_prep, entries) anyway, so a single-entry bank (the per-task oracle) with the
        # default k_prep = 2 is a valid model there and must load again.
        if b.router == "dtkr":
            need(k.k_prep <= b.entries_per_task, "k_prep", f"at most --entries-per-task ({b.entries_per_task}) "
                 "with the dtkr router", k.k_prep)
        need(finite(k.mask_prob) and 0 <= k.mask_prob < 1, "mask_prob", "at least 0 and below 1", k.mask_prob)
        for name in ("epochs", "batch_size", "max_length"):
            need(whole(getattr(t, name)) and getattr(t, name) >= 1, name, "a whole number >= 1", getattr(t, name))
        need(finite(t.lr) and t.lr > 0, "lr", "a finite number > 0", t.lr)
        need(whole(t.micro_batch_tokens) and t.micro_batch_tokens >= 0, "micro_batch_tokens",
             "a whole number >= 0 (0: never split a batch)", t.micro_batch_tokens)
        need(isinstance(t.calibrate, bool), "calibrate", "true or false", t.calibrate)
        need(finite(t.val_fraction) and 0 <= t.val_fraction < 1, "val_fraction", "at least 0 and below 1",
             t.val_fraction)
        need(whole(t.seed) and t.seed >= 0, "seed", "a whole number >= 0", t.seed)
        for name in ("backbone", "encoder"):
            value = getattr(self.model, name)
            need(isinstance(value, str) and bool(value.strip()), name, "a model name or folder", value)
        shared = self.model.encoder.removeprefix("shared-l") if isinstance(self.model.encoder, str) else ""
        if isinstance(self.model.encoder, str) and self.model.encoder.startswith("shared-l"):
            need(shared.isdigit() and int(shared) >= 1, "encoder", "shared-lN with N a whole number >= 1",
                 self.model.encoder)
        fmt = self.model.prompt_format
        need(isinstance(fmt, str) and (fmt == "" or fmt.count("{prompt}") == 1), "prompt_format",
             "empty or a text holding '{prompt}' once", fmt)
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SLMConfig:
        """Rebuild from ``to_dict`` output; unknown keys are an error, missing keys take defaults."""
        parts = {}
        for f in dataclasses.fields(cls):
            sub_cls = f.default_factory().__class__  # type: ignore[misc]
            values = dict(data.get(f.name, {}))
            known = {g.name for g in dataclasses.fields(sub_cls)}
            unknown = set(values) - known
            if unknown:
                raise ValueError(f"unknown {f.name} option(s) in config: {sorted(unknown)}")
            parts[f.name] = sub_cls(**values)
        return cls(**parts)

