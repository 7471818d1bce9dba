"""Model directories: a JSON manifest plus one safetensors file per task, written atomically.

    DIR/manifest.json             format, config, backbone/encoder identity, versions, task list + sha256
    DIR/tasks/000-agnews.safetensors   one task's state (``methods.base.GrowsByTask.task_state``)
    DIR/index.safetensors         what routing needs of every task, O(d) each (``index_tensors``)
    DIR/.lock, DIR/.lock.owner    the writers' lock and who holds it (``DirectoryLock``)

Thousands of tasks. Loading reads the manifest and the index (per task: query mean and count, keys, novelty
statistics, head temperature; plus the pooled scatter of all tasks) and maps each task file without reading
it; a task's values, head and scatter are read from its file, verified against its checksum first, only when
a route first uses the task (``GrowsByTask.before_read``). Learning one more task reads nothing of the others
and writes its file and a new index. Format ``scalable-lm/2`` added the index; ``scalable-lm/1`` directories
(no index) load by reading every task file, as before, and gain the index at their next write.

Adding a task writes its file (temp file, then rename) and only then replaces the manifest (temp file,
then rename). An interrupted write leaves the previous manifest, which names only complete, checksummed
files, so the directory stays loadable exactly as before; the next writer removes what was left unlisted
(``recover``). Nothing is pickled. Every command that writes (learn, import, merge, remove) holds the
directory's lock; readers (predict, eval, serve) never take it: the manifest they read is always whole.

The model's tensors are read and written only through the methods' public per-task interface
(``task_state`` / ``add_task_state`` / ``remove_task``); this module owns the files.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import re
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError  # the error type only: importing safetensors does not load torch

from scalable_lm.fileio import TMP_SUFFIX, atomic_write, sha256  # noqa: F401  (re-exported: store.sha256)

if TYPE_CHECKING:
    import torch

# torch, safetensors.torch and the methods are imported inside the functions that need them: a writer
# that is refused the lock (or any command that fails on its arguments) then answers before torch has
# even loaded (~2.5 s here), which is what issue 15 asks of a second writer.

FORMAT = "scalable-lm/2"
READABLE_FORMATS = ("scalable-lm/1", FORMAT)  # /1: no index (scalable-lm 0.1.x and up to this change)
MANIFEST = "manifest.json"
TASKS = "tasks"
INDEX = "index.safetensors"
LOCK, LOCK_OWNER = ".lock", ".lock.owner"
OURS = {MANIFEST, TASKS, INDEX, LOCK, LOCK_OWNER}  # what a model directory may hold besides temp files
# Options fixed when a directory is created: they decide how every stored task is used at inference.
# The key and train sections only shape how a new task is learned; they may differ from task to task and
# are recorded in each task's manifest entry.
FIXED_SECTIONS = ("model", "bank")
MAX_TASK_NAME = 100


class ModelDirError(RuntimeError):
    """A model directory that cannot be created, read or extended; the message says why."""


# ---- reading and checking a manifest ------------------------------------------------------------------
def read_manifest(directory: str | Path) -> dict:
    """The manifest of ``directory``, checked for shape and for task files that stay inside the directory."""
    directory = Path(directory)
    path = directory / MANIFEST
    _not_a_file(directory)
    if not path.is_file():
        raise ModelDirError(f"{directory} is not a model directory (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelDirError(f"{path} is not valid JSON: {getattr(err, 'msg', err)}") from err
    if not isinstance(manifest, dict):
        raise ModelDirError(f"{path}: expected a JSON object, found {type(manifest).__name__}")
    if manifest.get("format") not in READABLE_FORMATS:
        raise ModelDirError(f"{path}: unsupported format {manifest.get('format')!r} (this version reads "
                            f"{', '.join(READABLE_FORMATS)}; a newer scalable-lm may have written it)")
    _check_manifest(manifest, directory)
    return manifest


def _check_manifest(manifest: dict, directory: Path) -> None:
    from scalable_lm.config import SLMConfig

    path = directory / MANIFEST

    def bad(what: str) -> ModelDirError:
        return ModelDirError(f"{path}: {what}")

    for role in ("backbone", "encoder"):
        part = manifest.get(role)
        if not isinstance(part, dict) or not all(isinstance(part.get(k), str) for k in ("name", "fingerprint")):
            raise bad(f"'{role}' must be an object with string 'name' and 'fingerprint'")
    if manifest.get("kind", "classifier") not in ("classifier", "generative"):
        raise bad(f"unknown kind {manifest.get('kind')!r}")
    if not isinstance(manifest.get("config"), dict):
        raise bad("'config' must be an object")
    try:
        config = SLMConfig.from_dict(manifest["config"])
    except (TypeError, ValueError) as err:
        raise bad(f"invalid config: {err}") from err
    try:
        config.validate()
    except ValueError as err:
        raise bad(f"invalid config: {err}") from err
    tasks = manifest.get("tasks")
    if not isinstance(tasks, list):
        raise bad("'tasks' must be a list")
    names = set()
    for i, task in enumerate(tasks):
        if not isinstance(task, dict):
            raise bad(f"task {i} must be an object")
        for key, kind in (("name", str), ("file", str), ("sha256", str), ("label_names", list)):
            if not isinstance(task.get(key), kind):
                raise bad(f"task {i}: '{key}' missing or not a {kind.__name__}")
        if task["name"] in names:
            raise bad(f"task name '{task['name']}' appears twice")
        names.add(task["name"])
        safe_task_path(directory, task["file"], path)


def safe_task_path(directory: Path, rel: str, where: Path | None = None) -> Path:
    """``directory / rel`` for a manifest's task ``file``, refusing anything that would leave the directory:
    absolute paths, ``..``, a name outside ``tasks/``, or a symlinked ``tasks/`` or file."""
    where = where or directory / MANIFEST
    parts = Path(rel).parts
    if Path(rel).is_absolute() or len(parts) != 2 or parts[0] != TASKS or parts[1] in ("..", ".") \
            or not parts[1].endswith(".safetensors") or "\\" in rel:
        raise ModelDirError(f"{where}: task file '{rel}' is not a file under {TASKS}/ of the directory; refused")
    for p in (directory / TASKS, directory / rel):
        if p.is_symlink():
            raise ModelDirError(f"{where}: {p} is a symbolic link; refused (task files must live in the directory)")
    return directory / rel


# ---- the writers' lock and recovery ---------------------------------------------------------------------
_held: dict[Path, int] = {}  # directories whose lock this process holds (nested holds are reentrant)


@contextlib.contextmanager
def DirectoryLock(directory: str | Path, wait: float = 0.0, command: str | None = None) -> Iterator[Path]:
    """Hold ``directory``'s writers' lock (``filelock``; created with the directory if needed).

    A second writer fails at once with a ``ModelDirError`` naming the holder, or waits up to ``wait``
    seconds. On entry, files an interrupted writer left behind are removed (``recover``). Readers never
    take the lock. Nested holds in one process are reentrant.
    """
    from filelock import FileLock, Timeout

    directory = Path(directory)
    _not_a_file(directory)
    key = directory.resolve()
    if key in _held:
        _held[key] += 1
        try:
            yield directory
        finally:
            _held[key] -= 1
        return
    created = not directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if not os.access(directory, os.W_OK):
            raise ModelDirError(f"cannot write to {directory}: permission denied")
        lock = FileLock(str(directory / LOCK), timeout=wait)
        lock.acquire()
    except Timeout:
        raise ModelDirError(f"{directory} is being written by another process ({_lock_holder(directory)}); "
                            "try again when it ends, or pass --wait SECONDS") from None
    except OSError as err:
        raise ModelDirError(f"cannot write to {directory}: {err.strerror}") from None
    _held[key] = 1
    try:
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "command": command or " ".join(sys.argv),
                 "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        with contextlib.suppress(OSError):
            (directory / LOCK_OWNER).write_text(json.dumps(owner))
        removed = recover(directory)
        if removed:
            print(f"slm: removed {len(removed)} file(s) an interrupted write left in {directory}: "
                  f"{', '.join(removed)}", file=sys.stderr)
        yield directory
    finally:
        del _held[key]
        with contextlib.suppress(OSError):
            (directory / LOCK_OWNER).unlink()
        # A first write that failed leaves no empty model directory behind (only one this call created)
        emptied = created and {p.name for p in directory.iterdir()} == {LOCK}
        if emptied:
            with contextlib.suppress(OSError):
                (directory / LOCK).unlink()
        lock.release()
        if emptied:
            with contextlib.suppress(OSError):
                directory.rmdir()


def _lock_holder(directory: Path) -> str:
    try:
        owner = json.loads((directory / LOCK_OWNER).read_text())
        return f"pid {owner['pid']} on {owner['host']}, since {owner['since']}: {owner['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


def recover(directory: str | Path) -> list[str]:
    """Remove what an interrupted writer left: temp files, and task files the manifest does not list.

    Call only while holding the lock. Returns the removed paths relative to ``directory``. A directory
    without a manifest counts as an interrupted first write when it holds nothing but our files.
    """
    directory = Path(directory)
    listed = set()
    if (directory / MANIFEST).is_file():
        listed = {t["file"] for t in read_manifest(directory)["tasks"]}
    removed = []
    candidates = list(directory.glob(f".*{TMP_SUFFIX}"))
    tasks = directory / TASKS
    if tasks.is_dir() and not tasks.is_symlink():
        candidates += [p for p in tasks.iterdir() if p.is_file() and (
            p.name.endswith(TMP_SUFFIX) or (p.suffix == ".safetensors" and f"{TASKS}/{p.name}" not in listed))]
    for p in candidates:
        p.unlink(missing_ok=True)
        removed.append(str(p.relative_to(directory)))
    if tasks.is_dir() and not tasks.is_symlink() and not any(tasks.iterdir()) and not listed:
        tasks.rmdir()
    return sorted(removed)


def check_new_directory(directory: Path) -> None:
    """Refuse to create a model in a directory that holds anything besides our own (lock) files."""
    _not_a_file(directory)
    if directory.exists():
        foreign = sorted(p.name for p in directory.iterdir() if p.name not in OURS)
        if foreign:
            raise ModelDirError(f"{directory} exists, is not empty and is not a model directory "
                                f"(holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''})")
    if not os.access(directory if directory.exists() else _existing_parent(directory), os.W_OK):
        raise ModelDirError(f"cannot write to {directory}: permission denied")


def _not_a_file(directory: Path) -> None:
    if directory.exists() and not directory.is_dir():
        raise ModelDirError(f"{directory} is a file, not a model directory")


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_task_name(name: str) -> None:
    """A task name must be printable, not blank, at most ``MAX_TASK_NAME`` characters."""
    if not isinstance(name, str) or not name.strip():
        raise ModelDirError("a task name must not be empty")
    if len(name) > MAX_TASK_NAME:
        raise ModelDirError(f"task name is {len(name)} characters long; at most {MAX_TASK_NAME}")
    if not name.isprintable():
        raise ModelDirError(f"task name {name!r} contains control characters")


def task_file(index: int, name: str) -> str:
    """``tasks/007-name.safetensors``: the index keeps names unique, the name keeps them readable."""
    return f"{TASKS}/{index:03d}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)[:60]}.safetensors"


def _versions() -> dict[str, str]:
    import torch
    import transformers

    import scalable_lm

    return {"scalable_lm": scalable_lm.__version__, "torch": torch.__version__, "transformers": transformers.__version__}


def _identity(slm) -> dict:
    """Names and fingerprints of the backbone and the encoder; a router-only load's backbone (no weights) has the
    fingerprint None (``check_identity`` then checks its name only)."""
    from scalable_lm.backbones import FINGERPRINT_VERSION, fingerprint, is_skeleton

    skeleton = is_skeleton(slm.backbone_module)
    return {
        "backbone": {"name": slm.config.model.backbone,
                     "fingerprint": None if skeleton else fingerprint(slm.backbone_module),
                     "fingerprint_version": FINGERPRINT_VERSION},
        "encoder": {"name": slm.encoder.name, "fingerprint": fingerprint(slm.encoder.model),
                    "fingerprint_version": FINGERPRINT_VERSION},
    }


def _modules(slm) -> dict:
    return {"backbone": slm.backbone_module, "encoder": slm.encoder.model}


def _fixed(config_dict: dict) -> dict:
    """The sections of a config that are fixed for a directory (normalised: options added later default)."""
    from scalable_lm.config import SLMConfig

    full = SLMConfig.from_dict(config_dict).to_dict()
    return {k: full[k] for k in FIXED_SECTIONS}


def save(slm, directory: str | Path, task_info: dict[str, dict] | None = None) -> list[str]:
    """Create ``directory`` or add to it the tasks it lacks; returns the names of the tasks written.

    ``task_info`` maps a task being written to facts kept in its manifest entry (when it was learned, from
    how many rows, its validation score, its data file's SHA-256: whatever JSON the caller records); each
    new entry also records the key and train options it was learned with (``slm.config``) and its seed.
    Refuses a directory whose backbone, encoder, model/bank options or earlier tasks differ from ``slm``.
    Holds the directory's lock while writing.
    """
    directory = Path(directory)
    with DirectoryLock(directory):
        return _save(slm, directory, task_info)


def _save(slm, directory: Path, task_info: dict[str, dict] | None) -> list[str]:
    from scalable_lm.backbones import is_skeleton

    if is_skeleton(slm.backbone_module):
        raise ModelDirError("a model loaded with router_only=True has no backbone weights and cannot be saved")
    identity = _identity(slm)
    changed = True
    if (directory / MANIFEST).exists():
        manifest = read_manifest(directory)
        changed = check_identity(manifest, identity, directory, _modules(slm))
        if changed:
            manifest.update(identity)  # an older fingerprint version, checked: written anew
        if _fixed(manifest["config"]) != _fixed(slm.config.to_dict()):
            raise ModelDirError(f"{directory} was created with different model or bank options")
        known = [t["name"] for t in manifest["tasks"]]
        if slm.task_names[: len(known)] != known:
            raise ModelDirError(f"{directory} holds tasks {known}; the model in memory has {slm.task_names}")
        for t, entry in enumerate(manifest["tasks"]):
            _check_same_task(slm, t, directory, entry)
    else:
        check_new_directory(directory)
        manifest = {"format": FORMAT, "kind": kind_of(slm), "config": slm.config.to_dict(), "tasks": [], **identity}
    for name in slm.task_names[len(manifest["tasks"]):]:
        check_task_name(name)
    written = []
    used = {t["file"] for t in manifest["tasks"]}
    for t in range(len(manifest["tasks"]), len(slm.task_names)):
        name = slm.task_names[t]
        learned = {"train": {"keys": slm.config.to_dict()["keys"], "train": slm.config.to_dict()["train"]},
                   "seed": slm.config.train.seed + t}
        if name in slm.routing:  # how its inputs routed when it was learned (GrowsByTask.routing)
            learned["routing"] = slm.routing[name]
        entry = _write_task(directory, _free_file(used, len(manifest["tasks"]), name), name, slm.label_names[t],
                            slm.task_state(t), slm.bank.entries_per_task, {**learned, **(task_info or {}).get(name, {})})
        manifest["tasks"].append(entry)
        used.add(entry["file"])
        slm.file_checksums[name] = entry["sha256"]
        written.append(name)
    if not written and not changed:
        logging.getLogger(__name__).info("%s already holds every task of this model (%d), unchanged: nothing written",
                                         directory, len(manifest["tasks"]))
        return written
    _write_index(directory, manifest, index_tensors(slm))
    _write_manifest(directory, manifest, slm)
    return written


def _check_same_task(slm, t: int, directory: Path, entry: dict) -> None:
    """Refuse (one line) when the directory's task ``t`` is not the model's task ``t``: same name, other
    tensors or labels. A task the model read from, or wrote to, a file of this checksum is the same without
    reading anything; any other is compared tensor for tensor with the (verified) file."""
    import torch

    name = entry["name"]
    if slm.file_checksums.get(name) == entry["sha256"]:
        return
    mine = {k: v.detach().to("cpu") for k, v in slm.task_state(t).items()}
    theirs = _verified_tensors(directory, entry, lambda key: True)  # read once, checked against its SHA-256
    same = (list(entry["label_names"]) == list(slm.label_names[t]) and mine.keys() == theirs.keys()
            and all(mine[k].dtype == theirs[k].dtype and torch.equal(mine[k], theirs[k]) for k in mine))
    if not same:
        raise ModelDirError(f"{directory} already holds a task '{name}' that differs from this model's (checksum "
                            f"{entry['sha256'][:12]}): save to another directory, or `slm remove` it there first")
    slm.file_checksums[name] = entry["sha256"]


def _free_file(used: set[str], index: int, name: str) -> str:
    """A task file name not used by the manifest (after a removal, an index can be taken by a later task)."""
    rel = task_file(index, name)
    while rel in used:
        index += 1
        rel = task_file(index, name)
    return rel


def _write_task(directory: Path, rel: str, name: str, label_names: list[str], state: dict[str, torch.Tensor],
                entries: int, info: dict) -> dict:
    """Write one task file (atomic) and return its manifest entry."""
    from safetensors.torch import save_file

    meta = {"task": name, "label_names": json.dumps(label_names)}
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}  # device-free files
    _atomic(directory / rel, lambda tmp: save_file(state, str(tmp), metadata=meta))
    return {**info, "name": name, "file": rel, "sha256": sha256(directory / rel), "label_names": list(label_names),
            "entries": entries}


def _write_manifest(directory: Path, manifest: dict, slm=None) -> None:
    manifest["versions"] = _versions()
    if slm is not None:
        manifest["targets"] = list(slm.layers)
    text = json.dumps(manifest, indent=2)
    _atomic(directory / MANIFEST, lambda tmp: tmp.write_text(text))


def _atomic(path: Path, write) -> None:
    """``atomic_write``, with a failed write (a full disk, no permission) as one ``ModelDirError``."""
    try:
        atomic_write(path, write)
    except (OSError, SafetensorError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        if "StorageFull" in reason or "No space" in reason:
            reason = "no space left on device"
        raise ModelDirError(f"cannot write {path}: {reason}; the directory was left as it was") from err


def kind_of(slm) -> str:
    """``classifier`` (encoder + heads, ``SLM``) or ``generative`` (``GenerativeSLM``): the class's ``kind``."""
    return slm.kind


def check_identity(manifest: dict, identity: dict, directory: Path, modules: dict | None = None) -> bool:
    """Refuse a backbone or encoder other than the directory's; True when the manifest's identity is of an
    older fingerprint version and should be rewritten with ``identity`` at the next save.

    A fingerprint written by scalable-lm 0.1.0 (no ``fingerprint_version``) hashed the whole model config,
    which another transformers line, or a converted folder rebuilt with a fixed eos, writes differently: it is
    checked with the old hash (``modules``); when that differs but the model's name is the one the directory
    names, the directory is used, with a warning (its tensors are checked by shape when loaded).
    """
    import logging

    from scalable_lm.backbones import fingerprint

    legacy = False
    for role in ("backbone", "encoder"):
        saved, current = manifest[role], identity[role]
        if current["fingerprint"] is None:  # a router-only load: the engine holds these weights, not this process
            if saved["name"] != current["name"]:
                raise ModelDirError(f"{directory} was trained with {role} '{saved['name']}', not '{current['name']}'")
            continue
        if saved.get("fingerprint_version", 1) != current.get("fingerprint_version", 1):
            legacy = True
            old = fingerprint(modules[role], version=1) if modules is not None else None
            if old == saved["fingerprint"]:
                continue
            if saved["name"] == current["name"]:
                logging.getLogger(__name__).warning(
                    "%s was written by an older scalable-lm: its %s fingerprint (%s) cannot be checked under this "
                    "transformers version; trusting the name '%s'", directory, role, saved["fingerprint"], saved["name"])
                continue
        elif saved["fingerprint"] == current["fingerprint"]:
            continue
        raise ModelDirError(
            f"{directory} was trained with {role} '{saved['name']}' (fingerprint {saved['fingerprint']}), "
            f"not '{current['name']}' (fingerprint {current['fingerprint']})")
    return legacy


def load(directory: str | Path, backbone=None, encoder=None, device="auto", dtype="float32", router_only: bool = False):
    """Rebuild an SLM from a model directory, verifying identity and the checksum of every file it reads.

    ``router_only`` (a generative directory): what a routing front needs and no
    more: the manifest, the index, the query encoder, the tokenizer and chat template; the backbone is built on
    the meta device (no weights read, none needed on disk) and task files are mapped, read only when a task is
    first routed to or exported. Its backbone is checked by name (the engine holds the weights). Such a model
    routes (``route_rows``) and exports tasks, but cannot generate or be saved. A directory whose query is read
    from the backbone's own blocks (``shared-lN``) reads those N blocks (and the embeddings) and no more. A
    classifier is loaded whole.

    With an index (format ``scalable-lm/2``) the task files are mapped, not read: each is verified when a
    route first uses its task (module docstring). Without one, every task file is verified and read.

    The directory is device-free: it loads onto any ``device`` in any compute ``dtype``
    (``scalable_lm.device``), whatever it was trained on.
    """
    from scalable_lm.config import SLMConfig
    from scalable_lm.methods.slm import SLM

    attach_pretrained_names()
    directory = Path(directory)
    manifest = read_manifest(directory)
    index = _read_index(directory, manifest)
    # without a valid index (a scalable-lm/1 directory), every task file is verified and read now
    files = None if index is not None else [_checked_file(directory, entry) for entry in manifest["tasks"]]
    config = SLMConfig.from_dict(manifest["config"])
    from scalable_lm.device import resolve_device, resolve_dtype

    device, dtype = resolve_device(device), resolve_dtype(dtype)  # a device not here: its own clear error
    generative = manifest.get("kind", "classifier") == "generative"
    if router_only and generative and backbone is None:
        from scalable_lm.backbones import load_generator
        from scalable_lm.encoder import shared_prefix_depth

        backbone = load_generator(config.model.backbone, weights=False,
                                  blocks=shared_prefix_depth(config.model.encoder) or 0)
    try:
        if generative:
            from scalable_lm.methods.generative import GenerativeSLM

            slm = GenerativeSLM(config, backbone=backbone, encoder=encoder, device=device, dtype=dtype)
        else:
            slm = SLM(config, backbone=backbone, encoder=encoder, device=device, dtype=dtype)
    except ValueError as err:  # bank options the encoder cannot hold (groups, entries per task)
        raise ModelDirError(f"{directory / MANIFEST}: its options do not fit this query encoder: {err}") from err
    check_identity(manifest, _identity(slm), directory, _modules(slm))
    if index is None:
        _add_entries(slm, manifest["tasks"], files)
    else:
        _add_mapped(slm, directory, manifest["tasks"], index)
    _add_routing(slm, manifest["tasks"])
    slm.file_checksums.update({entry["name"]: entry["sha256"] for entry in manifest["tasks"]})
    return slm


def routing_record(entry: dict) -> dict | None:
    """A manifest entry's routing record (``GrowsByTask.routing``), or None when it has none (written before
    0.4.0, imported, merged from such) or it is not of the recorded shape (a hand-edited manifest)."""
    record = entry.get("routing")
    if not isinstance(record, dict) or not isinstance(record.get("self"), (int, float)):
        return None
    if not all(isinstance(record.get(k), dict) and all(isinstance(v, (int, float)) for v in record[k].values())
               for k in ("routes_to", "captures")):
        return None
    return record


def _add_routing(slm, entries: list[dict]) -> None:
    for entry in entries:
        record = routing_record(entry)
        if record is not None:
            slm.routing[entry["name"]] = record


def add_tasks(slm, directory: str | Path, names: list[str] | None = None) -> list[str]:
    """Add tasks saved in a model directory (all, or ``names`` in that order) to an existing model ``slm``.

    The directory must have been trained with the same backbone and query encoder; every chosen task file's
    checksum is verified before any is added. Returns the names added. A task already in ``slm``, or whose
    tensors do not fit its bank, raises ``ModelDirError`` with the tasks before it left added. ``load`` is this
    on a fresh model; a benchmark resuming a cut-short stream uses it to put the finished tasks back.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    check_identity(manifest, _identity(slm), directory, _modules(slm))
    entries = manifest["tasks"] if names is None else [task_entry(manifest, n, directory) for n in names]
    _add_entries(slm, entries, [_checked_file(directory, entry) for entry in entries])
    _add_routing(slm, entries)
    slm.file_checksums.update({entry["name"]: entry["sha256"] for entry in entries})
    return [entry["name"] for entry in entries]


def _add_entries(slm, entries: list[dict], files: list[Path]) -> None:
    from scalable_lm.methods.base import TaskStateError

    for entry, path in zip(entries, files):
        try:
            slm.add_task_state(entry["name"], entry["label_names"], _read_tensors(path))
        except TaskStateError as err:
            raise ModelDirError(f"task file {path} does not match this model: {err}") from err


# ---- the index, and task files mapped rather than read ----------------------------------------------------
# Per task, in manifest order: what routing reads (task_scores, the keys, the fallback test, the head's
# temperature), so that loading a directory of thousands of tasks reads O(T·d), and the pooled scatter.
_INDEX_ROWS = ("keys", "stats.mean", "stats.count", "novelty.centre", "novelty.spread")


def index_tensors(slm) -> dict[str, torch.Tensor]:
    """The index of a model in memory (nothing read from task files): each of ``_INDEX_ROWS`` stacked over
    tasks, ``head.temperature [T]`` for classifiers, and ``pooled.scatter [d, d]`` / ``pooled.count []``."""
    import torch

    bank = slm.bank
    if not slm.task_names:
        return {}
    rows = {"keys": torch.stack([k.detach() for k in bank.keys]).float(),
            "stats.mean": torch.stack([s[0] for s in bank.stats]), "stats.count": torch.stack([s[2] for s in bank.stats]),
            "novelty.centre": torch.stack([n[0] for n in bank.novelty]),
            "novelty.spread": torch.stack([n[1] for n in bank.novelty])}
    scatter, count = bank.pooled()
    rows.update({"pooled.scatter": scatter, "pooled.count": count})
    if kind_of(slm) == "classifier":
        rows["head.temperature"] = torch.tensor(slm.temperatures, dtype=torch.float32)
    return _index_dtypes({k: v.detach().to("cpu") for k, v in rows.items()})


def _index_dtypes(rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys and temperatures float32 as the model holds them, statistics float64; contiguous, as saved."""
    import torch

    single = ("keys", "head.temperature")
    return {k: v.to(torch.float32 if k in single else torch.float64).contiguous() for k, v in rows.items()}


def _write_index(directory: Path, manifest: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Write the index (atomic) and record it in ``manifest`` (format ``scalable-lm/2``)."""
    from safetensors.torch import save_file

    manifest["format"] = FORMAT
    if not tensors:
        (directory / INDEX).unlink(missing_ok=True)
        manifest.pop("index", None)
        return
    meta = {"tasks": json.dumps([t["name"] for t in manifest["tasks"]])}
    _atomic(directory / INDEX, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    manifest["index"] = {"file": INDEX, "sha256": sha256(directory / INDEX)}


def _read_index(directory: Path, manifest: dict) -> dict[str, torch.Tensor] | None:
    """The verified index of ``manifest``'s tasks, or ``None`` when there is none or it does not match (a
    write cut short between the index and the manifest): the caller then reads every task file instead."""
    from safetensors.torch import load

    entry, path = manifest.get("index"), directory / INDEX
    if not manifest["tasks"] or not isinstance(entry, dict) or not path.is_file():
        return None
    try:
        data = path.read_bytes()  # read once: hashed, then parsed
        if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            logging.getLogger(__name__).warning("%s does not match the manifest; reading every task file instead", path)
            return None
        header = json.loads(data[8: 8 + int.from_bytes(data[:8], "little")])
        names = json.loads((header.get("__metadata__") or {}).get("tasks", "null"))
        tensors = load(data)
    except (SafetensorError, OSError, ValueError, AttributeError) as err:
        logging.getLogger(__name__).warning("cannot read %s (%s); reading every task file instead", path, err)
        return None
    if names != [t["name"] for t in manifest["tasks"]] or any(
            k not in tensors or len(tensors[k]) != len(names) for k in _INDEX_ROWS):
        logging.getLogger(__name__).warning("%s lists other tasks than the manifest; reading every task file", path)
        return None
    return tensors


_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
           "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def _mapped(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file as views of a private memory map: nothing is read until used.

    safetensors' own ``safe_open(...).get_tensor`` copies each tensor into memory, which is what a bank of
    thousands of tasks must avoid; this reads the format's header (8-byte length + JSON) and maps the rest.
    The views only give shapes to check until the task is verified (``_add_mapped``)."""
    import mmap

    try:
        with path.open("rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # private: writes never reach the file
        return _tensors_in(mm)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelDirError(f"task file {path} is corrupted or truncated (cannot read it: {err})") from err


def _tensors_in(buffer, names=None) -> dict[str, torch.Tensor]:
    """Views of the tensors (all, or ``names``) of safetensors bytes in a writable ``buffer`` (no copy)."""
    import math

    import torch

    size = len(buffer)
    n = int.from_bytes(buffer[:8], "little")
    if not 2 <= n <= min(size - 8, 100_000_000):
        raise ValueError("bad header length")
    header = json.loads(bytes(buffer[8: 8 + n]))
    tensors, base = {}, 8 + n
    for name, info in header.items():
        if name == "__metadata__" or (names is not None and not names(name)):
            continue
        dtype = getattr(torch, _DTYPES[info["dtype"]])
        shape, (start, end) = list(info["shape"]), info["data_offsets"]
        count, itemsize = math.prod(shape), dtype.itemsize
        if end - start != count * itemsize or start < 0 or base + end > size:
            raise ValueError(f"tensor {name} lies outside the file")
        if count == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
        elif (base + start) % itemsize:  # unaligned: copy this one
            tensors[name] = torch.frombuffer(bytearray(buffer[base + start: base + end]), dtype=dtype).view(shape)
        else:
            tensors[name] = torch.frombuffer(buffer, dtype=dtype, count=count, offset=base + start).view(shape)
    return tensors


def _add_mapped(slm, directory: Path, entries: list[dict], index: dict[str, torch.Tensor]) -> None:
    """Add ``entries``' tasks from the index and their mapped files; each file is verified against its
    checksum when the model first reads the task (``before_read``)."""
    from scalable_lm.methods.base import TEMPERATURE, TaskStateError

    for t, entry in enumerate(entries):
        path = safe_task_path(directory, entry["file"])
        if not path.is_file():
            raise ModelDirError(f"task file missing: {path}")
        tensors = _mapped(path)
        state = {k: v for k, v in tensors.items() if k.startswith(("values.", "head.")) or k == "stats.scatter"}
        state.update({k: index[k][t] for k in _INDEX_ROWS})
        if "head.temperature" in index:
            state[TEMPERATURE] = index["head.temperature"][t]
        try:
            slm.add_task_state(entry["name"], entry["label_names"], state)
        except TaskStateError as err:
            raise ModelDirError(f"task file {path} does not match this model: {err}") from err
    slm.bank.set_pooled(index["pooled.scatter"], index["pooled.count"])
    by_name = {entry["name"]: entry for entry in entries}

    def verify(name: str) -> dict[str, torch.Tensor] | None:
        """Read the task's file once, check it against the manifest's SHA-256, and hand its tensors to the
        model (they replace the mapped ones: what is used is exactly what was verified)."""
        entry = by_name.get(name)
        if entry is None:  # a task learned or imported since the model was loaded: in memory
            return None
        used = _verified_tensors(directory, entry, lambda k: k.startswith(("values.", "head.")) and k != TEMPERATURE)
        return {k: v.clone() for k, v in used.items()}  # values and head (what answering reads)

    slm.before_read = verify


def _verified_tensors(directory: Path, entry: dict, names) -> dict[str, torch.Tensor]:
    """Tensors (those ``names(key)`` accepts) of a task file read once and checked against the manifest's
    SHA-256: views of the verified bytes."""
    path = safe_task_path(directory, entry["file"])
    try:
        data = bytearray(path.read_bytes())
    except FileNotFoundError:
        raise ModelDirError(f"task file missing: {path}") from None
    except OSError as err:
        raise ModelDirError(f"task file {path} cannot be read: {err.strerror}") from None
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ModelDirError(f"task file {path} is corrupted or was edited (checksum mismatch)")
    try:
        return _tensors_in(data, names)
    except (ValueError, KeyError, TypeError) as err:
        raise ModelDirError(f"task file {path} is corrupted (cannot read it: {err})") from err


def build_index(directory: Path, manifest: dict) -> dict[str, torch.Tensor]:
    """The index of ``manifest``'s tasks read from their files (each read once and verified): after a removal
    or a merge. The pool is summed in task order as it goes (``routers.pool``'s order: the bits a model that
    learned these tasks in this order keeps), so only one scatter is held at a time."""
    import torch

    if not manifest["tasks"]:
        return {}
    wanted = {*_INDEX_ROWS, "stats.scatter", "head.temperature"}
    rows: dict[str, list[torch.Tensor]] = {k: [] for k in (*_INDEX_ROWS, "head.temperature")}
    classifier = manifest.get("kind", "classifier") == "classifier"
    scatter = count = None
    for entry in manifest["tasks"]:
        tensors = _verified_tensors(directory, entry, lambda k: k in wanted)
        missing = [k for k in ("keys", "stats.mean", "stats.count", "stats.scatter") if k not in tensors]
        if missing:
            raise ModelDirError(f"task file {safe_task_path(directory, entry['file'])} has no {missing[0]}")
        d = tensors["stats.mean"].shape[0]
        tensors.setdefault("novelty.centre", torch.zeros(d, dtype=torch.float64))
        tensors.setdefault("novelty.spread", torch.tensor([0.0, float("inf")], dtype=torch.float64))
        for k in _INDEX_ROWS:
            rows[k].append(tensors[k].clone())
        if classifier:
            rows["head.temperature"].append(tensors.get("head.temperature", torch.tensor(1.0)).clone())
        s, c = tensors["stats.scatter"].to(torch.float64), tensors["stats.count"].to(torch.float64)
        scatter, count = (s.clone(), c.clone()) if scatter is None else (scatter + s, count + c)
    out = _index_dtypes({k: torch.stack(v) for k, v in rows.items() if v})
    return {**out, "pooled.scatter": scatter.contiguous(), "pooled.count": count}


def _checked_file(directory: Path, entry: dict) -> Path:
    path = safe_task_path(directory, entry["file"])
    if not path.is_file():
        raise ModelDirError(f"task file missing: {path}")
    if sha256(path) != entry["sha256"]:
        raise ModelDirError(f"task file {path} is corrupted or was edited (checksum mismatch)")
    return path


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ModelDirError(f"cannot read task file {path}: {err}") from err


def read_task(directory: str | Path, name: str, tensors: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Read one task's tensors (all, or only ``tensors``) without loading the rest of the bank.

    The file's checksum is verified; the tensors are read through ``safe_open``, so only the ones asked
    for are materialised.
    """
    from safetensors import safe_open

    directory = Path(directory)
    path = _checked_file(directory, task_entry(read_manifest(directory), name, directory))
    with safe_open(str(path), framework="pt") as f:
        names = list(f.keys()) if tensors is None else tensors
        missing = [n for n in names if n not in f.keys()]
        if missing:
            raise ModelDirError(f"task file {path} has no tensors {missing}")
        return {n: f.get_tensor(n) for n in names}


def task_entry(manifest: dict, name: str, directory: Path) -> dict:
    entry = next((t for t in manifest["tasks"] if t["name"] == name), None)
    if entry is None:
        raise ModelDirError(f"{directory} has no task '{name}'; tasks: {[t['name'] for t in manifest['tasks']]}")
    return entry


# ---- removing, merging and adding tasks by file --------------------------------------------------------
def remove(directory: str | Path, name: str, force: bool = False, wait: float = 0.0) -> dict:
    """Forget task ``name``: a new manifest without it replaces the old one (atomic), then its file is deleted.

    With the Gaussian router (default) each task's state depends on that task alone and the router's
    shared covariance is recomputed from the remaining tasks' statistics at load, so the directory then
    predicts exactly as one that never learned ``name`` (given the same seeds for the tasks it keeps).
    With DTKR, a task learned after ``name`` was trained routing over ``name``'s entries too; removing
    ``name`` is then not exact and is refused unless ``force`` (it is exact for the last task).
    Returns ``{"removed", "file", "exact"}``.
    """
    directory = Path(directory)
    read_manifest(directory)  # a mistyped directory is refused before the lock creates anything in it
    with DirectoryLock(directory, wait, command=f"slm remove --task {name}"):
        manifest = read_manifest(directory)
        entry = task_entry(manifest, name, directory)
        later = manifest["tasks"][manifest["tasks"].index(entry) + 1:]
        exact = _fixed(manifest["config"])["bank"]["router"] == "gaussian" or not later
        if not exact and not force:
            raise ModelDirError(
                f"{directory} uses the dtkr router: tasks learned after '{name}' ({', '.join(t['name'] for t in later)}) "
                f"were trained routing over its entries too, so removing it cannot give the model that never "
                "learned it; pass --force to remove it anyway")
        manifest["tasks"].remove(entry)
        for other in later:  # the later tasks' routing records keep what they measured, less the removed task
            record = routing_record(other)
            if record is not None:
                record["routes_to"].pop(name, None)
                record["captures"].pop(name, None)
        _write_index(directory, manifest, build_index(directory, manifest))  # the others' files, verified
        _write_manifest(directory, manifest)
        safe_task_path(directory, entry["file"]).unlink(missing_ok=True)
        return {"removed": name, "file": entry["file"], "exact": exact}


def _same_model(part: dict, other: dict) -> str:
    """What ``merge`` compares of a backbone or encoder: its fingerprint, or its name when the two directories
    hold fingerprints of different versions (one written by scalable-lm 0.1.0)."""
    if part.get("fingerprint_version", 1) == other.get("fingerprint_version", 1):
        return part["fingerprint"]
    return part["name"]


@dataclass(frozen=True)
class Merged:
    """What ``merge`` wrote: ``names``, the merged tasks in order, and ``estimated``, the overlaps it estimated
    between tasks of different source directories (``{"task", "other", "routes_to", "captures"}``, ``task``
    the later; shares 0-1; every pair where either share reaches 0.5%, also recorded in the tasks' routing)."""

    names: list[str]
    estimated: list[dict]

    def overlaps(self, threshold: float) -> list[dict]:
        """The estimated pairs above ``threshold`` (a share), largest first, as ``GrowsByTask.overlaps``."""
        from scalable_lm.core import overlap

        return overlap.above(self.estimated, threshold)


def merge(directories: list[str | Path], out: str | Path, rename: dict[str, str] | None = None,
          wait: float = 0.0) -> Merged:
    """Write to ``out`` (new or empty) one directory holding the tasks of ``directories``, in that order.

    The directories must share kind, backbone, encoder, model and bank options (key and train options
    may differ: they are per task). A task name found again in a later directory is an error unless
    ``rename`` maps it to a new name (``{"old": "new"}``, applied to the later copy). Task files are
    copied tensor for tensor, each checksum verified first; the manifest is written last. Returns the
    merged task names and the overlaps estimated across directories (``Merged``). A task that lands at another
    position than it was learned at keeps its tensors, not the seed ``slm learn`` would give it there: the merge
    then differs from learning the tasks in this order, and a warning names those tasks (``reseeded``).
    """
    rename = dict(rename or {})
    out = Path(out)
    if len(directories) < 2:
        raise ModelDirError("merge needs at least two model directories")
    sources = [(Path(d), read_manifest(d)) for d in directories]
    if any(Path(d).resolve() == out.resolve() for d, _ in sources):
        raise ModelDirError(f"--out {out} is one of the directories being merged; write to a new directory")
    first_dir, first = sources[0]
    for d, m in sources[1:]:
        for what, a, b in (("kind", first.get("kind", "classifier"), m.get("kind", "classifier")),
                           ("backbone", _same_model(first["backbone"], m["backbone"]),
                            _same_model(m["backbone"], first["backbone"])),
                           ("encoder", _same_model(first["encoder"], m["encoder"]),
                            _same_model(m["encoder"], first["encoder"]))):
            if a != b:
                raise ModelDirError(f"cannot merge {first_dir} and {d}: different {what} ({a} vs {b})")
        for section in FIXED_SECTIONS:
            a, b = _fixed(first["config"])[section], _fixed(m["config"])[section]
            if a != b:
                diff = sorted(k for k in a if a[k] != b.get(k))
                raise ModelDirError(f"cannot merge {first_dir} and {d}: different {section} options {diff}")
    plan, names, used_renames, origin = [], set(), set(), []  # origin: each planned task's directory's position
    for position, (d, m) in enumerate(sources):
        for entry in m["tasks"]:
            origin.append(position)
            new = entry["name"]
            if new in names:
                if new not in rename or new in used_renames:
                    raise ModelDirError(f"task '{new}' is in more than one directory ({d} again); "
                                        f"rename the later copy with --rename {new}:NEW_NAME")
                used_renames.add(new)
                new = rename[new]
                check_task_name(new)
                if new in names:
                    raise ModelDirError(f"--rename {entry['name']}:{new}: '{new}' is already a task")
            names.add(new)
            plan.append((d, entry, new))
    renamed: dict[str, dict[str, str]] = {}  # per source directory, its tasks that took another name
    for d, entry, new in plan:
        if new != entry["name"]:
            renamed.setdefault(str(d), {})[entry["name"]] = new
    for d, entry, _ in plan:
        record = routing_record(entry)
        if record is not None and str(d) in renamed:
            entry["routing"] = {**record, **{k: {renamed[str(d)].get(n, n): v for n, v in record[k].items()}
                                             for k in ("routes_to", "captures")}}
    unused = set(rename) - used_renames
    if unused:
        raise ModelDirError(f"--rename names tasks that are not duplicated: {sorted(unused)}")
    from scalable_lm.config import SLMConfig

    moved = reseeded(plan, SLMConfig.from_dict(first["config"]).train.seed)  # the merged directory's config
    if moved:
        logging.getLogger(__name__).warning(
            "%d task(s) move to a position whose seed differs from the one they were learned with (%s); their "
            "tensors are copied as they are, so %s does not equal learning these tasks in this order with "
            "`slm learn` (each task's initialisation and validation split depend on its seed)", len(moved),
            ", ".join(f"'{m['task']}': seed {m['seed']}, here {m['here']}" for m in moved[:4])
            + (" ..." if len(moved) > 4 else ""), out)
    created = not out.exists()
    try:
        return _merge_into(out, plan, first, wait, origin)
    except BaseException:
        if created and out.is_dir() and not (out / MANIFEST).exists():  # nothing of a failed merge is left
            import shutil

            shutil.rmtree(out, ignore_errors=True)
        raise


def reseeded(plan: list[tuple[Path, dict, str]], seed: int) -> list[dict]:
    """The tasks of a merge ``plan`` (``(directory, manifest entry, new name)`` in merged order) whose seed
    differs from the one ``slm learn`` would give them at their new position in a directory of train seed
    ``seed`` (``seed`` + position): ``[{"task", "seed", "here"}]``. Entries without a recorded seed (written
    by scalable-lm 0.1.0) are skipped."""
    moved = []
    for i, (_, entry, new) in enumerate(plan):
        if isinstance(entry.get("seed"), int) and entry["seed"] != seed + i:
            moved.append({"task": new, "seed": entry["seed"], "here": seed + i})
    return moved


def _merge_into(out: Path, plan: list, first: dict, wait: float, origin: list[int]) -> Merged:
    with DirectoryLock(out, wait, command="slm merge"):
        check_new_directory(out)
        if (out / MANIFEST).exists():
            raise ModelDirError(f"{out} is already a model directory; merge into a new directory")
        files = [_checked_file(d, entry) for d, entry, _ in plan]  # verify every file before writing any
        manifest = {k: v for k, v in first.items() if k not in ("tasks", "versions", "index")}
        manifest["tasks"] = []
        for i, ((d, entry, new), path) in enumerate(zip(plan, files)):
            info = {k: v for k, v in entry.items() if k not in ("name", "file", "sha256", "label_names", "entries")}
            info["merged_from"] = str(d)
            manifest["tasks"].append(_write_task(out, task_file(i, new), new, entry["label_names"],
                                                 _read_tensors(path), entry["entries"], info))
        index = build_index(out, manifest)
        estimated = _estimate_across(manifest, index, origin)
        _write_index(out, manifest, index)
        _write_manifest(out, manifest)
    return Merged([t["name"] for t in manifest["tasks"]], estimated)


def _estimate_across(manifest: dict, index: dict[str, torch.Tensor], sources: list[int]) -> list[dict]:
    """Add to each merged task's routing record its shares with every earlier task *of another source
    directory*, which no single directory saw: ``captures`` as ``slm learn`` estimates it
    (``core.overlap.pooled_captures``) and ``routes_to`` estimated the same way (``pooled_routes``: the task's
    held-out rows that ``slm learn`` measures it on are not in a model directory). Seeds: train seed +
    position. The pool is the merged one (every task's), not the pool at each position, factorised once.
    ``sources``: each task's directory's position in the merge (one directory given twice is two sources).
    Tasks without a record (written before 0.4.0) stay without one.

    Returns the estimated pairs, in ``GrowsByTask.overlaps``' shape (``{"task", "other", "routes_to",
    "captures"}``, ``task`` the later), each pair where either share reaches ``MIN_SHARE``.
    """
    from scalable_lm.config import SLMConfig
    from scalable_lm.core import overlap
    from scalable_lm.methods.base import MIN_SHARE

    config = SLMConfig.from_dict(manifest["config"])
    pool = overlap.InflatedPool((index["pooled.scatter"], index["pooled.count"]), config.bank.shrinkage) \
        if index else None
    tasks, pairs = manifest["tasks"], []
    for i, entry in enumerate(tasks):
        record = routing_record(entry)
        others = [j for j in range(i) if sources[j] != sources[i]]
        if record is None or not others:
            continue
        means, seed = index["stats.mean"][: i + 1], config.train.seed + i
        estimated = {k: [float(v) for v in f(means, None, config.bank.shrinkage, seed=seed, pool=pool)]
                     for k, f in (("captures", overlap.pooled_captures), ("routes_to", overlap.pooled_routes))}
        entry["routing"] = {**record, **{k: {**record[k], **{tasks[j]["name"]: round(v[j], 4) for j in others
                                                              if v[j] >= MIN_SHARE}}
                                         for k, v in estimated.items()}}
        pairs += [{"task": entry["name"], "other": tasks[j]["name"], "routes_to": round(estimated["routes_to"][j], 4),
                   "captures": round(estimated["captures"][j], 4)} for j in others
                  if max(estimated["routes_to"][j], estimated["captures"][j]) >= MIN_SHARE]
    return pairs




# ---- the transformers / PEFT names on the model classes ---------------------------------------------------
# Defined here, where loading lives, and put on ``GrowsByTask`` (every method class) when this module is
# imported: ``scalable_lm.SLM`` and ``scalable_lm.GenerativeSLM`` import it first. methods/ never imports store.
def _save_pretrained(self, directory, task_info: dict[str, dict] | None = None) -> list[str]:
    """Save to a model directory (``scalable_lm.save``): a manifest plus one safetensors file per task,
    written atomically; only tasks not yet in the directory are written. Returns their names."""
    return save(self, directory, task_info)


def _from_pretrained(cls, directory, backbone=None, encoder=None, device="auto", dtype="float32"):
    """Load a model directory (``scalable_lm.load``) of this class's kind: ``SLM.from_pretrained`` for a
    classifier, ``GenerativeSLM.from_pretrained`` for a generative model (the other kind is refused
    before anything is loaded)."""
    kind = read_manifest(directory).get("kind", "classifier")
    if kind != cls.kind:
        other = {"classifier": "SLM", "generative": "GenerativeSLM"}[kind]
        raise ModelDirError(f"{directory} holds a {kind} model: load it with {other}.from_pretrained "
                            "(or scalable_lm.load, which takes either)")
    return load(directory, backbone=backbone, encoder=encoder, device=device, dtype=dtype)


def attach_pretrained_names() -> None:
    """Put ``save_pretrained`` / ``from_pretrained`` on ``GrowsByTask`` (once ``methods.base`` is imported: this
    module must not load torch by itself, so a writer's lock is taken before torch loads)."""
    base = sys.modules.get("scalable_lm.methods.base")
    if base is not None and base.GrowsByTask.save_pretrained is not _save_pretrained:
        base.GrowsByTask.save_pretrained = _save_pretrained
        base.GrowsByTask.from_pretrained = classmethod(_from_pretrained)


attach_pretrained_names()
