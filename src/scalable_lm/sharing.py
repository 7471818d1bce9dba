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
from scalable_lm.methods.base import TaskStateError
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
    backbone = manifest["backbone"]["name"]
    config = LoraConfig(r=rank, lora_alpha=b.alpha / b.rank * rank, target_modules=list(slm.layers), lora_dropout=0.0,
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
            save_file(head, str(tmp / HEAD_FILE))
            info.update(pooling="mean over tokens (attention mask)", max_length=slm.config.train.max_length)
        (tmp / TASK_FILE).write_text(json.dumps(info, indent=2))
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except (OSError, SafetensorError) as err:
        raise AdapterError(f"cannot write {out}: {getattr(err, 'strerror', None) or err}") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"task": task, "rank": rank, "lora_alpha": config.lora_alpha, "weights": info["weights"],
            "targets": list(slm.layers), "out": str(out)}


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
    for key in ("rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform"):
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
    for key, tensor in tensors.items():
        m = _KEY.match(key)
        if m is None:
            strange.append(key)
        else:
            modules.setdefault(m["module"], {})[m["part"]] = tensor
    if strange:
        raise AdapterError(f"{where}: tensors that are not LoRA factors: {strange[:5]}{' ...' if len(strange) > 5 else ''}")
    foreign = sorted(set(modules) - set(slm.layers))
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
    if exported and len(exported.get("weights", [])) == p and r_a == p * b.rank and math.isclose(ratio, 1.0) \
            and all(w > 0 for w in exported["weights"]):
        return _split_export(slm, modules, exported["weights"], where)
    values = {}
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
                   task_info: dict | None = None) -> dict:
    """Add the LoRA adapter ``adapter_dir`` to the model directory ``directory`` as task ``task``.

    ``inputs`` are example inputs of the task (their queries give its keys and router statistics). The
    adapter's base model (``base_model_name_or_path``) must name this directory's backbone (its name,
    folder or hub id) unless ``trust_base``. ``loader(directory)`` replaces ``store.load`` (tests).
    Holds the directory's lock. Returns ``{"task", "inputs", "key_loss", "rank", "modules"}``.
    """
    directory = Path(directory)
    store.check_task_name(task)
    config, tensors = read_adapter(adapter_dir)
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
        meta_path = Path(adapter_dir) / TASK_FILE
        exported = json.loads(meta_path.read_text()) if meta_path.is_file() else None
        values = adapter_values(slm, config, tensors, str(adapter_dir), exported)
        label_names = None
        if store.kind_of(slm) == "classifier":
            head, meta = Path(adapter_dir) / HEAD_FILE, Path(adapter_dir) / TASK_FILE
            if not head.is_file() or not meta.is_file():
                raise AdapterError(f"{adapter_dir} has no classifier head ({HEAD_FILE} + {TASK_FILE}, as "
                                   "`slm export` writes); a classifier task needs one")
            h = load_file(str(head))
            label_names = exported["label_names"]
            values.update({"head.weight": h["weight"], "head.bias": h["bias"]})
            if "temperature" in h:  # exported by `slm export` since heads are calibrated; else the raw softmax
                values["head.temperature"] = h["temperature"]
        try:
            report = slm.import_task(task, label_names, values, inputs, progress=progress)
        except TaskStateError as err:
            raise AdapterError(f"{adapter_dir}: {err}") from err
        info = {"imported_from": str(adapter_dir), "adapter_rank": int(config.get("r", 0)),
                "adapter_base_model": base, "example_inputs": len(inputs), **(task_info or {})}
        store.save(slm, directory, {task: info})
    modules = sorted({m["module"] for k in tensors if (m := _KEY.match(k))})
    return {**report, "rank": int(config.get("r", 0)), "modules": modules}
