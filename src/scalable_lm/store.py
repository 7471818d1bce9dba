"""Model directories: a JSON manifest plus one safetensors file per task, written atomically.

    DIR/manifest.json             format, config, backbone/encoder identity, versions, task list + sha256
    DIR/tasks/000-agnews.safetensors   keys [G,P,d/G], values.<layer>.A/B, head.weight/bias

Adding a task writes its file (temp file, then rename) and only then replaces the manifest (temp file,
then rename). An interrupted write leaves the previous manifest, which names only complete, checksummed
files, so the directory stays loadable exactly as before. Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT = "scalable-lm/1"
STATS = ("stats.mean", "stats.scatter", "stats.count")  # gaussian-router statistics, not parameters
# base-model fallback statistics (routers.novelty_statistics); optional: files written before them load
# with the fallback off for that task
NOVELTY = ("novelty.centre", "novelty.spread")
MANIFEST = "manifest.json"


class ModelDirError(RuntimeError):
    """A model directory that cannot be created, read or extended; the message says why."""


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temp file beside ``path``, fsync it, then rename it onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the mode a plain write would (umask)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    """The process umask (reading it means setting it; restored at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ModelDirError(f"{directory} is not a model directory (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ModelDirError(f"{path} is not valid JSON: {err.msg}") from err
    if manifest.get("format") != FORMAT:
        raise ModelDirError(f"{path}: unsupported format {manifest.get('format')!r} (expected {FORMAT})")
    return manifest


def _versions() -> dict[str, str]:
    import transformers

    import scalable_lm

    return {"scalable_lm": scalable_lm.__version__, "torch": torch.__version__, "transformers": transformers.__version__}


def _identity(slm) -> dict:
    from scalable_lm.backbones import fingerprint

    return {
        "backbone": {"name": slm.config.model.backbone, "fingerprint": fingerprint(slm.backbone_module)},
        "encoder": {"name": slm.encoder.name, "fingerprint": fingerprint(slm.encoder.model)},
    }


def task_tensors(slm, t: int) -> dict[str, torch.Tensor]:
    """Every tensor of task ``t`` under a stable name."""
    tensors = {"keys": slm.bank.keys[t]}
    for name, layer in slm.layers.items():
        tensors[f"values.{name}.A"], tensors[f"values.{name}.B"] = layer.lora_A[t], layer.lora_B[t]
    if hasattr(slm, "classifier"):  # generative models have no heads
        head = slm.classifier.heads[t]
        tensors["head.weight"], tensors["head.bias"] = head.weight, head.bias
    tensors.update(zip(STATS, slm.bank.stats[t]))
    if t < len(slm.bank.novelty):
        tensors.update(zip(NOVELTY, slm.bank.novelty[t]))
    return {k: v.detach().contiguous() for k, v in tensors.items()}


def save(slm, directory: str | Path, task_info: dict[str, dict] | None = None) -> list[str]:
    """Create ``directory`` or add to it the tasks it lacks; returns the names of the tasks written.

    ``task_info`` maps a task being written to facts kept in its manifest entry (when it was learned, from
    how many rows, its validation score, its data file's SHA-256: whatever JSON the caller records).
    Refuses a directory whose backbone, encoder, config or earlier tasks differ from ``slm``.
    """
    from scalable_lm.config import SLMConfig

    directory = Path(directory)
    identity = _identity(slm)
    if (directory / MANIFEST).exists():
        manifest = read_manifest(directory)
        check_identity(manifest, identity, directory)
        if SLMConfig.from_dict(manifest["config"]).to_dict() != slm.config.to_dict():  # options added later default
            raise ModelDirError(f"{directory} was created with a different configuration")
        known = [t["name"] for t in manifest["tasks"]]
        if slm.task_names[: len(known)] != known:
            raise ModelDirError(f"{directory} holds tasks {known}; the model in memory has {slm.task_names}")
    else:
        if directory.exists() and any(directory.iterdir()):
            raise ModelDirError(f"{directory} exists, is not empty and is not a model directory")
        manifest = {"format": FORMAT, "kind": kind_of(slm), "config": slm.config.to_dict(), "tasks": [], **identity}
    written = []
    for t in range(len(manifest["tasks"]), len(slm.task_names)):
        name = slm.task_names[t]
        rel = f"tasks/{t:03d}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.safetensors"
        meta = {"task": name, "label_names": json.dumps(slm.label_names[t])}
        atomic_write(directory / rel, lambda tmp: save_file(task_tensors(slm, t), str(tmp), metadata=meta))
        manifest["tasks"].append({**(task_info or {}).get(name, {}), "name": name, "file": rel,
                                  "sha256": sha256(directory / rel), "label_names": slm.label_names[t],
                                  "entries": slm.bank.entries_per_task})
        written.append(name)
    manifest["versions"] = _versions()
    manifest["targets"] = list(slm.layers)
    text = json.dumps(manifest, indent=2)
    atomic_write(directory / MANIFEST, lambda tmp: tmp.write_text(text))
    return written


def kind_of(slm) -> str:
    """``classifier`` (encoder + heads, ``SLM``) or ``generative`` (``GenerativeSLM``)."""
    return "classifier" if hasattr(slm, "classifier") else "generative"


def check_identity(manifest: dict, identity: dict, directory: Path) -> None:
    for role in ("backbone", "encoder"):
        saved, current = manifest[role], identity[role]
        if saved["fingerprint"] != current["fingerprint"]:
            raise ModelDirError(
                f"{directory} was trained with {role} '{saved['name']}' (fingerprint {saved['fingerprint']}), "
                f"not '{current['name']}' (fingerprint {current['fingerprint']})")


def load(directory: str | Path, backbone=None, encoder=None):
    """Rebuild an SLM from a model directory, verifying identity and every task file's checksum."""
    from scalable_lm.config import SLMConfig
    from scalable_lm.methods.slm import SLM

    directory = Path(directory)
    manifest = read_manifest(directory)
    files = []
    for entry in manifest["tasks"]:  # verify every file before building anything
        path = directory / entry["file"]
        if not path.is_file():
            raise ModelDirError(f"task file missing: {path}")
        if sha256(path) != entry["sha256"]:
            raise ModelDirError(f"task file {path} is corrupted or was edited (checksum mismatch)")
        files.append(path)
    if manifest.get("kind", "classifier") == "generative":
        from scalable_lm.methods.generative import GenerativeSLM

        slm = GenerativeSLM(SLMConfig.from_dict(manifest["config"]), backbone=backbone, encoder=encoder)
    else:
        slm = SLM(SLMConfig.from_dict(manifest["config"]), backbone=backbone, encoder=encoder)
    check_identity(manifest, _identity(slm), directory)
    for entry, path in zip(manifest["tasks"], files):
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise ModelDirError(f"cannot read task file {path}: {err}") from err
        _restore_task(slm, entry, tensors, path)
    return slm


def _restore_task(slm, entry: dict, tensors: dict[str, torch.Tensor], path: Path) -> None:
    t = len(slm.task_names)
    slm._add_task(entry["name"], entry["label_names"], torch.Generator().manual_seed(0))
    slm.bank.set_statistics(t, tuple(tensors.get(name, torch.zeros(())) for name in STATS))
    d = slm.bank.dim
    novelty_ok = all(n in tensors and tuple(tensors[n].shape) == shape for n, shape in zip(NOVELTY, [(d,), (2,)]))
    slm.bank.set_novelty(t, tuple(tensors[n] for n in NOVELTY) if novelty_ok else None)
    names = list(task_tensors(slm, t))  # in the order of slm._task_params(t), statistics last
    expected = set(names) - set(NOVELTY)
    stats_ok = all(n in tensors and tuple(tensors[n].shape) == shape for n, shape in zip(STATS, [(d,), (d, d), ()]))
    partial_novelty = any(n in tensors for n in NOVELTY) and not novelty_ok
    if expected != set(tensors) - set(NOVELTY) or not stats_ok or partial_novelty:
        slm._drop_last_task()
        raise ModelDirError(f"task file {path} does not match this model's layers (tensor names differ)")
    with torch.no_grad():
        for name, target in zip([n for n in names if n not in STATS + NOVELTY], slm._task_params(t)):
            if tensors[name].shape != target.shape:
                slm._drop_last_task()
                raise ModelDirError(f"task file {path}: {name} has shape {tuple(tensors[name].shape)}, "
                                    f"expected {tuple(target.shape)}")
            target.copy_(tensors[name])
            target.requires_grad_(False)


def read_task(directory: str | Path, name: str, tensors: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Read one task's tensors (all, or only ``tensors``) without loading the rest of the bank.

    The file's checksum is verified; the tensors are read through ``safe_open``, so only the ones asked
    for are materialised.
    """
    from safetensors import safe_open

    directory = Path(directory)
    manifest = read_manifest(directory)
    entry = next((t for t in manifest["tasks"] if t["name"] == name), None)
    if entry is None:
        raise ModelDirError(f"{directory} has no task '{name}'; tasks: {[t['name'] for t in manifest['tasks']]}")
    path = directory / entry["file"]
    if not path.is_file():
        raise ModelDirError(f"task file missing: {path}")
    if sha256(path) != entry["sha256"]:
        raise ModelDirError(f"task file {path} is corrupted or was edited (checksum mismatch)")
    with safe_open(str(path), framework="pt") as f:
        names = list(f.keys()) if tensors is None else tensors
        missing = [n for n in names if n not in f.keys()]
        if missing:
            raise ModelDirError(f"task file {path} has no tensors {missing}")
        return {n: f.get_tensor(n) for n in names}
