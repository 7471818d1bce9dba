"""Skills in and out of the PEFT ecosystem: a task as a standard LoRA adapter, a LoRA adapter as a task.

Export (``export_task``). A task owns ``P`` entries of rank ``r`` at each wrapped layer; SLM mixes the
retrieved ones per input with weights from the input's query (``Σ_k w_k B_k A_k``, ``core.mixing``). A
fixed adapter cannot change its weights per input, so the export freezes them: the weights are those the
task's own inputs get on average (``inputs``), or, without inputs, those of the task's mean training
query (kept in the task's statistics). The entries are concatenated into one LoRA of rank ``n·r`` (``n``
entries with a non-zero weight), each ``B`` scaled by its weight:

    A = [A_1; ...; A_n]   (n·r, d_in)        B = [w_1 B_1, ..., w_n B_n]   (d_out, n·r)

with ``lora_alpha = (alpha / r) · n·r`` so that PEFT's scaling ``lora_alpha / rank`` equals the bank's. For
an input whose own weights equal the frozen ones the adapter is exact; for others it is the task's mixture
at an average weighting (``benchmarks/share`` measures how often the answers agree). A classifier's head
goes beside it (``head.safetensors``: weight, bias and calibration temperature; ``slm_task.json``: label
names, pooling, max length).

Import (``import_adapter``). A LoRA adapter (rank ``r_a <= r``, same base model, target layers among the
bank's) becomes a new task whose ``P`` entries all hold the adapter's factors, zero-padded to rank ``r``
and rescaled from PEFT's scaling to the bank's. Mixing weights sum to one (``normalize`` and ``softmax``
alike), so any mixture of these entries is the adapter itself: an input routed to the task is answered
exactly as ``PeftModel`` answers it (to float rounding). Keys and router statistics come from example
inputs (``GrowsByTask.import_task``); the factors are not retrained. An adapter that ``export_task``
wrote (its ``slm_task.json`` beside it) from a bank of the same shape is split back into the task's entries
instead: the task returns as SLM had it, mixed per input, not frozen at the exported weights.

A classifier adapter brings its head in one of two forms. ``slm export`` writes ``head.safetensors`` and
``slm_task.json`` beside the adapter (a linear head on the mean-pooled tokens, or a first-token head). PEFT's
sequence-classification recipe (``AutoModelForSequenceClassification`` + ``LoraConfig(task_type="SEQ_CLS")``)
saves the head among the adapter's tensors (``modules_to_save``) and prefixes the encoder's module names with
the architecture's base name (``bert.``, ``mpnet.``); ``sequence_classifier_head`` reads such a head as the
architecture computes it: BERT's pooler (the backbone's own, frozen) and ``classifier``, or the
``classifier.dense`` / ``classifier.out_proj`` head of MPNet and RoBERTa, both on the first token
(``adapters.classification.TokenHead``). Label names come from the caller, else ``slm_task.json``, else the
``id2label`` of a ``config.json`` beside the adapter, else ``LABEL_0`` ... as transformers names them.

PEFT's own classes write the adapter configuration (``LoraConfig.save_pretrained``) and read it back
(``PeftConfig.from_pretrained``); the tensors are written with safetensors under PEFT's key names
(``base_model.model.<module>.lora_A.weight``). Pickled adapters (``adapter_model.bin``) are refused.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from scalable_lm import store
from scalable_lm.adapters.inject import below_candidates
from scalable_lm.methods.base import TaskStateError
from scalable_lm.methods.slm import BELOW, below_factors
from scalable_lm.store import ModelDirError

ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"
HEAD_FILE, TASK_FILE = "head.safetensors", "slm_task.json"
# hub ids of the packaged models, written as an exported adapter's base model and accepted on import
HUB_IDS = {"smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct", "minilm": "sentence-transformers/all-MiniLM-L6-v2",
           "mpnet": "sentence-transformers/all-mpnet-base-v2"}
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")


class AdapterError(ModelDirError):
    """An adapter that cannot be exported or imported; the message names the problem."""


def mean_weights(slm, task: str, inputs: list[str] | None = None) -> torch.Tensor:
    """``[P]`` average mixing weight of each of ``task``'s entries, over ``inputs`` routed to the task alone
    (SLM-TI), or at the task's mean training query when ``inputs`` is None."""
    t = slm.task_index(task)
    if inputs:
        queries = slm.encoder.encode(list(inputs))
    else:
        queries = slm.task_state(t)["stats.mean"].to(torch.float32)[None].to(slm.device)
    entries, weights = slm.route(queries, task=task)
    p = slm.bank.entries_per_task
    local = (entries - t * p).cpu()
    out = torch.zeros(len(queries), p, dtype=torch.float64).scatter_add_(1, local, weights.cpu().to(torch.float64))
    return out.mean(dim=0)


def export_task(directory: str | Path, task: str, out: str | Path, inputs: list[str] | None = None,
                slm=None, loader=None) -> dict:
    """Write ``task`` of ``directory`` as a PEFT LoRA adapter directory ``out`` (new or empty).

    Returns ``{"task", "rank", "lora_alpha", "weights", "targets", "out"}``.
    """
    from peft import LoraConfig

    directory, out = Path(directory), Path(out)
    slm = slm if slm is not None else (loader or store.load)(directory)
    manifest = store.read_manifest(directory)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AdapterError(f"{out} exists and is not an empty directory")
    t = slm.task_index(task)
    kind = store.kind_of(slm)
    state = slm.task_state(t)
    w = mean_weights(slm, task, inputs)
    kept = [p for p in range(len(w)) if w[p] > 0]
    if not kept:
        raise AdapterError(f"task '{task}': every entry has weight 0 for these inputs (all fell back to the base model)")
    b = slm.config.bank
    rank = len(kept) * b.rank
    tensors = {}
    for name in slm.layers:
        a, bb = state[f"values.{name}.A"], state[f"values.{name}.B"]
        tensors[f"base_model.model.{name}.lora_A.weight"] = torch.cat([a[p] for p in kept], dim=0).contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = torch.cat(
            [(float(w[p]) * bb[p].to(torch.float64)).to(bb.dtype) for p in kept], dim=1).contiguous()
    below = below_factors(state)
    share = float(w[kept].sum())  # the weight the task's route gives its increments below the query
    for name, (a, bb) in sorted(below.items()):  # PEFT wants one rank: zero-padded (the padding adds nothing)
        if a.shape[0] > rank:
            raise AdapterError(f"task '{task}': its increments at {name} have rank {a.shape[0]}, more than the "
                               f"exported rank {rank}")
        pad_a = torch.zeros(rank, a.shape[1], dtype=a.dtype)
        pad_b = torch.zeros(bb.shape[0], rank, dtype=bb.dtype)
        pad_a[: a.shape[0]], pad_b[:, : a.shape[0]] = a, (share * bb.to(torch.float64)).to(bb.dtype)
        tensors[f"base_model.model.{name}.lora_A.weight"] = pad_a
        tensors[f"base_model.model.{name}.lora_B.weight"] = pad_b
    targets = list(slm.layers) + sorted(below)
    backbone = manifest["backbone"]["name"]
    config = LoraConfig(r=rank, lora_alpha=b.alpha / b.rank * rank, target_modules=targets, lora_dropout=0.0,
                        bias="none", task_type="CAUSAL_LM" if kind == "generative" else "FEATURE_EXTRACTION",
                        base_model_name_or_path=HUB_IDS.get(backbone, backbone))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        config.save_pretrained(str(tmp))
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        info = {"task": task, "kind": kind, "source": str(directory), "backbone": manifest["backbone"],
                "entries": kept, "weights": [float(w[p]) for p in kept],
                "weights_from": f"{len(inputs)} inputs" if inputs else "the task's mean training query",
                "label_names": slm.label_names[t]}
        if kind == "classifier":
            head = {"weight": state["head.weight"], "bias": state["head.bias"]}
            if "head.temperature" in state:  # the head's calibration (SLM.temperatures)
                head["temperature"] = state["head.temperature"]
            first_token = "head.dense.weight" in state
            if first_token:  # imported from a sequence classifier: its own dense + tanh on the first token
                head.update({"dense.weight": state["head.dense.weight"], "dense.bias": state["head.dense.bias"]})
            save_file(head, str(tmp / HEAD_FILE))
            info.update(pooling=("first token, then tanh(dense) (logits = weight @ tanh(dense.weight @ h_0 + "
                                 "dense.bias) + bias)") if first_token else "mean over tokens (attention mask)",
                        max_length=slm.config.train.max_length)
        (tmp / TASK_FILE).write_text(json.dumps(info, indent=2))
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except (OSError, SafetensorError) as err:
        raise AdapterError(f"cannot write {out}: {getattr(err, 'strerror', None) or err}") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"task": task, "rank": rank, "lora_alpha": config.lora_alpha, "weights": info["weights"],
            "targets": targets, "out": str(out)}


def read_adapter(adapter_dir: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(adapter config as a dict, tensors)`` of a PEFT LoRA adapter directory, checked for what import needs."""
    from peft import PeftConfig

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise AdapterError(f"{adapter_dir} is not a PEFT adapter directory (no {ADAPTER_CONFIG})")
    if not (adapter_dir / ADAPTER_WEIGHTS).is_file():
        if (adapter_dir / "adapter_model.bin").exists():
            raise AdapterError(f"{adapter_dir} holds adapter_model.bin (pickle), which is never loaded; save the "
                               "adapter with safe_serialization=True (adapter_model.safetensors)")
        raise AdapterError(f"{adapter_dir} has no {ADAPTER_WEIGHTS}")
    try:
        config = PeftConfig.from_pretrained(str(adapter_dir)).to_dict()
    except (ValueError, TypeError, KeyError, json.JSONDecodeError) as err:
        raise AdapterError(f"{adapter_dir / ADAPTER_CONFIG} cannot be read by PEFT: {err}") from err
    peft_type = str(config.get("peft_type", "")).split(".")[-1].upper()
    if peft_type != "LORA":
        raise AdapterError(f"{adapter_dir} is a {peft_type or 'unknown'} adapter; only LoRA adapters can be imported")
    unsupported = [(k, config.get(k)) for k in ("use_dora", "fan_in_fan_out", "lora_bias") if config.get(k)]
    if config.get("bias", "none") != "none":
        unsupported.append(("bias", config["bias"]))
    for key in ("rank_pattern", "alpha_pattern", "layers_to_transform"):
        if config.get(key):
            unsupported.append((key, config[key]))
    if unsupported:
        raise AdapterError(f"{adapter_dir}: LoRA options the bank cannot hold: "
                           + ", ".join(f"{k}={v!r}" for k, v in unsupported))
    try:
        tensors = load_file(str(adapter_dir / ADAPTER_WEIGHTS))
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise AdapterError(f"cannot read {adapter_dir / ADAPTER_WEIGHTS}: {err}") from err
    return config, tensors


def adapter_values(slm, config: dict, tensors: dict[str, torch.Tensor], where: str = "adapter",
                   exported: dict | None = None) -> dict[str, torch.Tensor]:
    """The ``values.<layer>.A/B`` of a task whose every entry is the adapter (zero-padded, rescaled).

    ``exported`` (the ``slm_task.json`` of an adapter ``export_task`` wrote from a bank of the same ``P`` and
    ``r``, every entry kept): the rank ``P·r`` adapter is split back into the task's ``P`` entries (each ``B``
    divided by the weight it was exported at), so the task comes back as SLM had it, mixed per input.
    """
    modules: dict[str, dict[str, torch.Tensor]] = {}
    strange = []
    prefix = _model_prefix(slm)
    for key, tensor in tensors.items():
        m = _KEY.match(key)
        if m is None:
            strange.append(key)
        else:
            module = m["module"]
            if prefix and module.startswith(prefix) and module not in slm.layers:  # PEFT on a *ForSequenceClassification
                module = module[len(prefix):]
            modules.setdefault(module, {})[m["part"]] = tensor
    if strange:
        raise AdapterError(f"{where}: tensors that are not LoRA factors: {strange[:5]}{' ...' if len(strange) > 5 else ''}")
    foreign = sorted(set(modules) - set(slm.layers))
    # layers at or below a shared-prefix query's block (PEFT's usual targets: every block): kept as the task's
    # own increments there, applied in a second pass for the rows routed to it (SLM._second_pass)
    below = sorted(set(foreign) & below_candidates(slm.backbone_module, slm.depth)) if getattr(slm, "depth", 0) else []
    foreign = sorted(set(foreign) - set(below))
    if foreign:
        raise AdapterError(f"{where} targets modules the bank cannot hold: {foreign[:5]}; this model's bank has "
                           f"increments at {list(slm.layers)[:3]}{' ...' if len(slm.layers) > 3 else ''} "
                           f"(bank targets {slm.config.bank.targets}); is it for another base model?")
    b = slm.config.bank
    r_a = int(config.get("r", 0))
    alpha_a = float(config.get("lora_alpha", r_a))
    scaling_a = alpha_a / (math.sqrt(r_a) if config.get("use_rslora") else r_a) if r_a else 0.0
    ratio = scaling_a / (b.alpha / b.rank)
    p = b.entries_per_task
    if exported and len(exported.get("weights") or []) == p and r_a == p * b.rank and math.isclose(ratio, 1.0) \
            and all(w > 0 for w in exported["weights"]):
        # exported below-query increments were weighted by the task's summed entry weights: undone here
        share = math.fsum(exported["weights"])
        return {**_split_export(slm, modules, exported["weights"], where),
                **_below_values(modules, below, ratio / share, where)}
    values = _below_values(modules, below, ratio, where)
    for name, layer in slm.layers.items():
        d_in, d_out = layer.base_layer.in_features, layer.base_layer.out_features
        a_full = torch.zeros(p, b.rank, d_in)
        b_full = torch.zeros(p, d_out, b.rank)
        if name in modules:
            parts = modules[name]
            if set(parts) != {"A", "B"}:
                raise AdapterError(f"{where}: module {name} lacks lora_{'B' if 'A' in parts else 'A'}")
            a, bb = parts["A"], parts["B"]
            if a.ndim != 2 or bb.ndim != 2 or a.shape[1] != d_in or bb.shape[0] != d_out or a.shape[0] != bb.shape[1]:
                raise AdapterError(f"{where}: module {name} has factors {tuple(a.shape)} and {tuple(bb.shape)}; this "
                                   f"model's layer is {d_in} -> {d_out}: the adapter is for another base model")
            rank = a.shape[0]
            if rank > b.rank:
                raise AdapterError(f"{where}: module {name} has rank {rank}, more than the bank's rank {b.rank}; "
                                   "create the directory with --rank >= the adapter's rank")
            a_full[:, :rank] = a.to(torch.float32)
            b_full[:, :, :rank] = (bb.to(torch.float64) * ratio).to(torch.float32)
        values[f"values.{name}.A"], values[f"values.{name}.B"] = a_full, b_full
    return values


def _below_values(modules: dict, below: list[str], ratio: float, where: str) -> dict[str, torch.Tensor]:
    """``values.below.<layer>.A/B`` of the adapter's modules at or below the query's block (``B`` rescaled by
    ``ratio``); ranks are kept as the adapter has them."""
    values = {}
    for name in below:
        parts = modules[name]
        if set(parts) != {"A", "B"}:
            raise AdapterError(f"{where}: module {name} lacks lora_{'B' if 'A' in parts else 'A'}")
        values[f"{BELOW}{name}.A"] = parts["A"].to(torch.float32).contiguous()
        values[f"{BELOW}{name}.B"] = (parts["B"].to(torch.float64) * ratio).to(torch.float32).contiguous()
    return values


def _model_prefix(slm) -> str:
    """``"bert."`` for a BERT backbone: what PEFT puts before its module names when the adapter was trained on
    the architecture's ``*ForSequenceClassification`` model (a generative backbone is the model PEFT wrapped)."""
    if store.kind_of(slm) != "classifier":
        return ""
    name = getattr(slm.backbone_module, "base_model_prefix", "")
    return f"{name}." if name else ""


def split_head_tensors(config: dict, tensors: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """``(LoRA tensors, head tensors)`` of an adapter: the head is what PEFT saved for ``modules_to_save``
    (keys ``base_model.model.<module>.<param>``), keyed ``<module>.<param>``."""
    saved = list(config.get("modules_to_save") or [])
    lora, head = {}, {}
    for key, tensor in tensors.items():
        rest = key.removeprefix("base_model.model.")
        module = f".{rest.rpartition('.')[0]}."
        if _KEY.match(key) is None and any(f".{m}." in module for m in saved):  # PEFT matches names so too
            head[rest] = tensor
        else:
            lora[key] = tensor
    return lora, head


def sequence_classifier_head(slm, head: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """The task-state head (``head.weight``/``bias`` and ``head.dense.weight``/``bias``: a ``TokenHead``) of a
    PEFT sequence classifier's saved head ``{"classifier.weight": ..., ...}``.

    BERT (``classifier.weight/bias``): the classifier reads the backbone's pooler (dense + tanh on the first
    token), which PEFT does not save because it is frozen; the pooler is copied from this model's backbone.
    MPNet and RoBERTa (``classifier.dense.*`` + ``classifier.out_proj.*``): the head holds its own dense layer.
    """
    hidden = slm.classifier.hidden
    names = sorted(head)
    if set(names) == {"classifier.weight", "classifier.bias"}:
        pooler = getattr(getattr(slm.backbone_module, "pooler", None), "dense", None)
        if not isinstance(pooler, torch.nn.Linear):
            raise AdapterError(f"{where}: its head reads the backbone's pooler (BERT's classifier), but this model's "
                               f"backbone ({type(slm.backbone_module).__name__}) has none")
        dense_w, dense_b = pooler.weight.detach().cpu(), pooler.bias.detach().cpu()
        out_w, out_b = head["classifier.weight"], head["classifier.bias"]
    elif set(names) == {"classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight",
                        "classifier.out_proj.bias"}:
        dense_w, dense_b = head["classifier.dense.weight"], head["classifier.dense.bias"]
        out_w, out_b = head["classifier.out_proj.weight"], head["classifier.out_proj.bias"]
    else:
        raise AdapterError(
            f"{where}: modules_to_save holds {names[:6]}; scalable-lm reads the sequence-classification heads of "
            "BERT-like models (classifier.weight/bias on the pooler) and of MPNet/RoBERTa (classifier.dense + "
            "classifier.out_proj); any other saved module changes the frozen backbone and cannot be imported")
    if out_w.ndim != 2 or out_w.shape[1] != hidden or out_b.shape != (out_w.shape[0],) \
            or tuple(dense_w.shape) != (hidden, hidden) or tuple(dense_b.shape) != (hidden,):
        raise AdapterError(f"{where}: classifier head of shape {tuple(out_w.shape)}; this model's hidden size is "
                           f"{hidden}: the adapter is for another base model")
    return {"head.weight": out_w.to(torch.float32), "head.bias": out_b.to(torch.float32),
            "head.dense.weight": dense_w.to(torch.float32).clone(), "head.dense.bias": dense_b.to(torch.float32).clone()}


def adapter_label_names(adapter_dir: Path, num_labels: int, given: list[str] | None, exported: dict | None
                        ) -> tuple[list[str], str]:
    """``(label names, where they came from)``: ``given``, else ``slm_task.json``'s, else the ``id2label`` of a
    ``config.json`` in the adapter directory, else ``LABEL_0`` ... (transformers' default names)."""
    where = adapter_dir / TASK_FILE
    if given:
        names, source = list(given), "given"
    elif exported is not None and exported.get("label_names") is not None:
        names, source = exported["label_names"], str(where)
    elif (adapter_dir / "config.json").is_file():
        try:
            id2label = json.loads((adapter_dir / "config.json").read_text()).get("id2label") or {}
            names = [id2label[k] for k in sorted(id2label, key=int)]
        except (ValueError, TypeError, AttributeError) as err:
            raise AdapterError(f"{adapter_dir / 'config.json'}: cannot read id2label ({err})") from err
        source = str(adapter_dir / "config.json")
    else:
        names, source = [f"LABEL_{i}" for i in range(num_labels)], "default"
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise AdapterError(f"label names from {source} must be a list of non-empty strings, got {names!r}")
    if len(names) != num_labels:
        raise AdapterError(f"{len(names)} label names from {source} ({names[:5]}) for a head of {num_labels} "
                           "classes")
    if len(set(names)) != len(names):
        raise AdapterError(f"label names from {source} repeat a name: {names}")
    return names, source


def _split_export(slm, modules: dict, weights: list[float], where: str) -> dict[str, torch.Tensor]:
    b = slm.config.bank
    p, r = b.entries_per_task, b.rank
    values = {}
    for name, layer in slm.layers.items():
        d_in, d_out = layer.base_layer.in_features, layer.base_layer.out_features
        parts = modules.get(name)
        if parts is None or set(parts) != {"A", "B"} or tuple(parts["A"].shape) != (p * r, d_in) \
                or tuple(parts["B"].shape) != (d_out, p * r):
            raise AdapterError(f"{where}: written by slm export, but module {name} does not hold {p} entries of "
                               f"rank {r} for a {d_in} -> {d_out} layer")
        a = parts["A"].to(torch.float32).reshape(p, r, d_in)
        w = torch.tensor(weights, dtype=torch.float64)
        bb = (parts["B"].to(torch.float64).reshape(d_out, p, r).permute(1, 0, 2) / w[:, None, None]).to(torch.float32)
        values[f"values.{name}.A"], values[f"values.{name}.B"] = a.contiguous(), bb.contiguous()
    return values


def _base_names(manifest: dict) -> set[str]:
    from scalable_lm.backbones import resolve

    name = manifest["backbone"]["name"]
    names = {name, HUB_IDS.get(name, name)}
    try:
        names.add(str(resolve(name)))
    except Exception:  # noqa: BLE001 - an unresolvable name only narrows what is accepted
        pass
    return names


def import_adapter(directory: str | Path, task: str, adapter_dir: str | Path, inputs: list[str],
                   trust_base: bool = False, wait: float = 0.0, progress: bool = False, loader=None,
                   task_info: dict | None = None, label_names: list[str] | None = None) -> dict:
    """Add the LoRA adapter ``adapter_dir`` to the model directory ``directory`` as task ``task``.

    ``inputs`` are example inputs of the task (their queries give its keys and router statistics). The
    adapter's base model (``base_model_name_or_path``) must name this directory's backbone (its name,
    folder or hub id) unless ``trust_base``. A classifier adapter brings its head (module docstring);
    ``label_names`` name its classes in index order (else ``adapter_label_names``). ``loader(directory)``
    replaces ``store.load`` (tests). Holds the directory's lock. Returns ``{"task", "inputs", "key_loss",
    "rank", "modules", "head", "label_names", "labels_from"}``.
    """
    directory = Path(directory)
    adapter_dir = Path(adapter_dir)
    store.check_task_name(task)
    store.read_manifest(directory)  # a mistyped --model is refused before the lock creates anything
    config, tensors = read_adapter(adapter_dir)
    tensors, saved_head = split_head_tensors(config, tensors)
    with store.DirectoryLock(directory, wait, command=f"slm import --task {task}"):
        manifest = store.read_manifest(directory)
        if task in [t["name"] for t in manifest["tasks"]]:
            raise AdapterError(f"task '{task}' is already in {directory}")
        base = config.get("base_model_name_or_path")
        if base and not trust_base and base not in _base_names(manifest):
            raise AdapterError(f"{adapter_dir} was trained on base model '{base}'; {directory} uses "
                               f"'{manifest['backbone']['name']}'. If that is the same model under another name, "
                               "pass --trust-base")
        slm = (loader or store.load)(directory)
        exported = _task_file(adapter_dir)
        classifier = store.kind_of(slm) == "classifier"
        if saved_head and not classifier:
            raise AdapterError(f"{adapter_dir} saves modules outside its LoRA factors (modules_to_save: "
                               f"{sorted(saved_head)[:4]}); a generative model's task is its LoRA factors alone")
        values = adapter_values(slm, config, tensors, str(adapter_dir), exported)
        names, labels_from, head_kind = None, None, None
        if classifier:
            if saved_head:  # PEFT's sequence-classification recipe
                head = sequence_classifier_head(slm, saved_head, str(adapter_dir))
                head_kind = "first token (sequence classifier)"
            elif (adapter_dir / HEAD_FILE).is_file():  # `slm export`
                head = _exported_head(adapter_dir / HEAD_FILE, slm.classifier.hidden)
                head_kind = "first token" if "head.dense.weight" in head else "mean of tokens"
            else:
                raise AdapterError(
                    f"{adapter_dir} has no classifier head; a classifier task needs one: either PEFT's own "
                    f"(LoraConfig(task_type='SEQ_CLS') on an AutoModelForSequenceClassification saves it in "
                    f"modules_to_save) or the {HEAD_FILE} + {TASK_FILE} that `slm export` writes")
            values.update(head)
            names, labels_from = adapter_label_names(adapter_dir, int(head["head.weight"].shape[0]), label_names,
                                                     exported)
        elif label_names:
            raise AdapterError("label names are for classifier tasks; this is a generative model")
        try:
            report = slm.import_task(task, names, values, inputs, progress=progress)
        except TaskStateError as err:
            raise AdapterError(f"{adapter_dir}: {err}") from err
        info = {"imported_from": str(adapter_dir), "adapter_rank": int(config.get("r", 0)),
                "adapter_base_model": base, "example_inputs": len(inputs), **(task_info or {})}
        if classifier:
            info.update(head=head_kind, labels_from=labels_from)
        store.save(slm, directory, {task: info})
    modules = sorted({m["module"] for k in tensors if (m := _KEY.match(k))})
    return {**report, "rank": int(config.get("r", 0)), "modules": modules, "head": head_kind,
            "label_names": names, "labels_from": labels_from}


def _task_file(adapter_dir: Path) -> dict | None:
    """The adapter's ``slm_task.json`` (written by ``slm export``, or by hand), checked to be a JSON object."""
    path = adapter_dir / TASK_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise AdapterError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(meta, dict):
        raise AdapterError(f"{path}: expected a JSON object, found {type(meta).__name__}")
    weights = meta.get("weights")
    if weights is not None and not (isinstance(weights, list) and all(isinstance(w, (int, float)) for w in weights)):
        raise AdapterError(f"{path}: 'weights' must be a list of numbers, got {weights!r}")
    return meta


def _exported_head(path: Path, hidden: int) -> dict[str, torch.Tensor]:
    """The task-state head of ``head.safetensors`` (``slm export``): weight, bias, optional temperature and,
    for a first-token head, dense.weight/bias."""
    try:
        h = load_file(str(path))
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise AdapterError(f"cannot read {path}: {err}") from err
    missing = sorted({"weight", "bias"} - set(h))
    if missing:
        raise AdapterError(f"{path} lacks {missing}: a head holds weight [C, H] and bias [C]")
    extra = sorted(set(h) - {"weight", "bias", "temperature", "dense.weight", "dense.bias"})
    if extra:
        raise AdapterError(f"{path} holds tensors a head does not have: {extra}")
    if h["weight"].ndim != 2 or h["weight"].shape[1] != hidden:
        raise AdapterError(f"{path}: head weight of shape {tuple(h['weight'].shape)}; this model's hidden size is "
                           f"{hidden}")
    head = {f"head.{k}": v for k, v in h.items()}  # the temperature, when exported, travels too
    if ("head.dense.weight" in head) != ("head.dense.bias" in head):
        raise AdapterError(f"{path}: dense.weight and dense.bias go together")
    return head
