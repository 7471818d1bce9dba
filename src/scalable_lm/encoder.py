"""Frozen query encoder: texts → masked-mean-pooled sentence embeddings, cached by text.

The encoder never trains, so every text is encoded at most once per process (in-memory cache), and the
cache can be saved to / loaded from a safetensors file to survive across runs. It does not normalise:
DTKR normalises per group.

Two kinds: a separate encoder (``QueryEncoder``: its own model, e.g. the first 4 layers of MiniLM), or the
served backbone's own first layers (``SharedPrefixEncoder``, ``--encoder shared-lN``): the query is the
backbone's hidden state after block N, pooled the same way; increments then live only in blocks above N,
so that one forward pass can both route (at block N) and answer (``adapters.inject.routed_from``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from scalable_lm.device import module_device
from scalable_lm.fileio import atomic_write
from scalable_lm.progress import progress as progress_bar

log = logging.getLogger(__name__)
MAX_SHARDS = 16
DEFAULT_MAX_QUERIES = 200_000


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over tokens.

    Args:
        hidden: ``[B, T, H]`` last hidden state.
        mask: ``[B, T]`` attention mask (1 = real token).

    Returns:
        ``[B, H]``.
    """
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def max_positions(model: nn.Module) -> int:
    """The most tokens ``model`` takes (its ``max_position_embeddings``; unbounded when it has none)."""
    n = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 0 else 1 << 30


def layer_stack(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(qualified name, blocks)``: the model's stack of transformer blocks (``encoder.layer`` of BERT and
    MPNet, ``model.layers`` of LLaMA and Gemma), found as the longest ``nn.ModuleList`` whose items are all of
    one class. Raises ``ValueError`` for a model with none, or with two such stacks of the greatest length
    (an encoder-decoder's encoder and decoder): which one a query should come from would be a guess."""
    stacks = [(name, m) for name, m in model.named_modules()
              if isinstance(m, nn.ModuleList) and len(m) > 0 and len({type(b) for b in m}) == 1]
    if not stacks:
        raise ValueError(f"{type(model).__name__} has no stack of transformer blocks (an nn.ModuleList)")
    longest = max(len(m) for _, m in stacks)
    best = [(name, m) for name, m in stacks if len(m) == longest]
    if len(best) > 1:
        raise ValueError(f"{type(model).__name__} has {len(best)} stacks of {longest} blocks "
                         f"({', '.join(name for name, _ in best)}): a shared-prefix query needs exactly one")
    return best[0]


def block_index(name: str, stack: str) -> int | None:
    """The block a module named ``name`` lies in (``encoder.layer.3.attention...`` → 3), None outside ``stack``."""
    prefix = stack + "." if stack else ""
    if not name.startswith(prefix):
        return None
    head = name[len(prefix):].split(".", 1)[0]
    return int(head) if head.isdigit() else None


def shared_prefix_depth(name: str) -> int | None:
    """``shared-lN`` → N (the query is read after the backbone's block N); None for any other encoder name."""
    if not name.startswith("shared-l"):
        return None
    digits = name.removeprefix("shared-l")
    if not digits.isdigit() or int(digits) < 1:
        raise ValueError(f"encoder {name!r}: expected shared-lN with N >= 1 (the query is read after block N)")
    return int(digits)


class _Stop(Exception):  # noqa: N818 - not an error: ends a forward pass once the query's block has run
    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden


def block_output(output) -> torch.Tensor:
    """A block's hidden state ``[B, T, H]`` (transformers blocks return it alone or first in a tuple)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def cache_dir() -> Path:
    """``$SLM_CACHE_DIR`` (default ``~/.cache/scalable_lm``): where caches and the vLLM front's state live."""
    return Path(os.environ.get("SLM_CACHE_DIR", Path.home() / ".cache" / "scalable_lm"))


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class QueryEncoder:
    """Encode texts into queries ``q(x)``.

    Args:
        model: a frozen HF encoder (``AutoModel``) returning ``last_hidden_state``.
        tokenizer: its tokenizer.
        name: identity recorded in model directories.
        max_length: tokens per text (at most the model's ``max_position_embeddings``: longer texts are cut).
        batch_size: texts per forward pass.
    """

    def __init__(self, model: nn.Module, tokenizer, name: str = "custom", max_length: int = 128, batch_size: int = 64):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer, self.name = tokenizer, name
        self.max_length, self.batch_size = min(max_length, max_positions(model)), batch_size
        self.dim = int(model.config.hidden_size)
        self._cache: dict[str, torch.Tensor] = {}
        self._on_disk: set[str] = set()  # keys already in the on-disk cache (save_cache writes only the others)
        self.cache_limit: int | None = None  # most cached queries (None: all; a server sets a bound)

    shared = False  # True: the served backbone's own first blocks (SharedPrefixEncoder)

    @classmethod
    def from_name(cls, name: str, **kwargs) -> QueryEncoder:
        from scalable_lm.backbones import load_encoder

        model, tokenizer = load_encoder(name)
        return cls(model, tokenizer, name=name, **kwargs)

    @property
    def device(self) -> torch.device:
        """Where the encoder runs (its model's device); queries are returned there."""
        return module_device(self.model)

    @torch.no_grad()
    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return mean_pool(hidden, mask).float()  # float32 queries whatever the encoder's dtype

    def encode(self, texts: list[str], progress: bool = False) -> torch.Tensor:
        """``[N, d]`` float32 queries for ``texts`` on the encoder's device; each distinct text is computed
        once and cached (the cache lives on the CPU: it is saved to disk and is device-free)."""
        missing = list(dict.fromkeys(t for t in texts if text_key(t) not in self._cache))
        # longest-first batching wastes less padding; results do not depend on the order
        missing.sort(key=len, reverse=True)
        steps = range(0, len(missing), self.batch_size)
        for start in progress_bar(steps, "encoding queries", progress and len(steps) >= 2):
            chunk = missing[start : start + self.batch_size]
            for text, row in zip(chunk, self._encode_batch(chunk)):
                self._cache[text_key(text)] = row.to("cpu", copy=True)
        if not texts:
            return torch.empty(0, self.dim, device=self.device)
        out = torch.stack([self._cache[text_key(t)] for t in texts]).to(self.device)
        if self.cache_limit is not None:  # a long-running server: keep only the newest entries
            for key in list(self._cache)[: max(0, len(self._cache) - self.cache_limit)]:
                del self._cache[key]
        return out

    @contextlib.contextmanager
    def cold(self) -> Iterator[None]:
        """Within the block every text is encoded afresh (for timing the real cost); the cache is kept."""
        saved, self._cache = self._cache, {}
        try:
            yield
        finally:
            self._cache = saved

    def default_cache_path(self) -> Path:
        """``$SLM_CACHE_DIR/queries-<fingerprint>[-<dtype>]/`` (default dir ``~/.cache/scalable_lm``): this
        encoder's on-disk query cache (``save_cache``); an encoder run in half precision has its own, as its
        queries differ slightly from float32's."""
        from scalable_lm.backbones import fingerprint

        dtype = next(self.model.parameters()).dtype
        suffix = "" if dtype == torch.float32 else "-" + str(dtype).removeprefix("torch.")
        return cache_dir() / f"queries-{fingerprint(self.model)}{suffix}"

    def save_cache(self, path: str | Path, max_queries: int | None = None) -> int:
        """Keep the queries computed in this process in the on-disk cache ``path``; returns how many were written.

        ``path`` is a directory of shard files: each call adds one shard holding only the queries not already
        on disk, so nothing is rewritten and two processes saving at once lose nothing. The cache is bounded:
        once it holds more than ``max_queries`` queries (default ``$SLM_CACHE_MAX_QUERIES`` or 200,000, about
        300 MB for a 384-dimensional encoder) or more than 16 shards, its shards are merged into one holding
        the newest ``max_queries`` (under a lock; a process that finds it taken leaves the work to the next).
        A ``path`` ending in ``.safetensors`` is one file holding the whole in-memory cache, rewritten.
        """
        path = Path(path)
        if path.suffix == ".safetensors":
            keys = list(self._cache)
            _write_shard(path, keys, [self._cache[k] for k in keys], self.name, self.dim)
            return len(keys)
        new = [k for k in self._cache if k not in self._on_disk]
        if new:
            path.mkdir(parents=True, exist_ok=True)
            shard = path / f"{time.time_ns():020d}-{os.getpid()}.safetensors"
            _write_shard(shard, new, [self._cache[k] for k in new], self.name, self.dim)
            self._on_disk.update(new)
        legacy = _legacy_file(path)
        if legacy.is_file() and new:  # a cache from before shards: its queries are in the new shard now
            legacy.unlink(missing_ok=True)
        if path.is_dir():
            _bound(path, max_queries if max_queries is not None else _max_queries(), self.name, self.dim)
        return len(new)

    def load_cache(self, path: str | Path) -> int:
        """Merge a saved cache (a directory of shards, or one ``.safetensors`` file); returns the number of
        queries read (0 if there is none). A shard that cannot be read is skipped (a cache is only a cache)."""
        path = Path(path)
        if path.suffix == ".safetensors":
            keys, rows = _read_shard(path) if path.is_file() else ([], [])
            self._cache.update(zip(keys, rows))
            return len(keys)
        read = 0
        legacy = _legacy_file(path)
        if legacy.is_file():  # from before shards: loaded, and written into a shard by the next save_cache
            with contextlib.suppress(Exception):
                keys, rows = _read_shard(legacy)
                self._cache.update(zip(keys, rows))
                read += len(keys)
        for shard in _shards(path):
            try:
                keys, rows = _read_shard(shard)
            except FileNotFoundError:  # merged away by another process meanwhile
                continue
            except Exception as err:  # noqa: BLE001 - a damaged shard is skipped, and dropped at the next merge
                log.warning("query cache: skipping unreadable %s (%s)", shard, err)
                continue
            self._cache.update(zip(keys, rows))
            self._on_disk.update(keys)
            read += len(keys)
        return read


class SharedPrefixEncoder(QueryEncoder):
    """Queries from the served backbone itself: its hidden state after block ``depth``, masked-mean pooled.

    For the default MiniLM classifier, ``shared-l4`` gives the queries of the separate ``minilm-l4`` encoder
    (the same weights) without loading a second model. ``encode`` runs only the first ``depth`` blocks (the
    forward pass is stopped there); inside a full forward, ``adapters.inject.routed_from`` reads the same
    hidden state on the way up, so routing costs no pass of its own. Blocks up to ``depth`` must carry no
    increments (the methods inject above it only), which keeps the query independent of every task.

    Args:
        model: the backbone (an encoder, or a decoder LM: its prompt's hidden states are pooled).
        tokenizer: its tokenizer.
        depth: N of ``shared-lN``: 1 <= N < the number of blocks (some block must remain for increments).
        max_length: tokens per text: the classifier's own, so a query is computed on the tokens it answers.
    """

    def __init__(self, model: nn.Module, tokenizer, depth: int, max_length: int = 128, batch_size: int = 64):
        self.stack_name, stack = layer_stack(model)
        if not 1 <= depth < len(stack):
            raise ValueError(f"encoder shared-l{depth}: the backbone has {len(stack)} blocks; N must be at least 1 "
                             f"and below {len(stack)} (increments live in the blocks above N)")
        # (the backbone is frozen already; its train/eval mode stays the method's to set, encode() runs in eval)
        super().__init__(model, tokenizer, name=f"shared-l{depth}", max_length=max_length, batch_size=batch_size)
        self.depth, self.block, self.shared = depth, stack[depth - 1], True

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B, d]`` float32 queries from block ``depth``'s hidden state ``[B, T, H]`` and the mask ``[B, T]``."""
        return mean_pool(hidden, mask).float()

    @torch.no_grad()
    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        # right-padded by hand: a decoder's tokenizer may have no pad token, and with the mask (and, in a
        # decoder, causal attention) what follows a text's last token does not change its hidden states
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        width, pad = max(len(x) for x in ids), self.tokenizer.pad_token_id or 0
        input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids], device=self.device)
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=self.device)

        def stop(module, args, output):
            raise _Stop(block_output(output))

        was_training = self.model.training
        self.model.eval()  # the query never sees dropout, whatever the method is doing
        handle = self.block.register_forward_hook(stop)
        try:
            self.model(input_ids=input_ids, attention_mask=mask)
        except _Stop as done:
            return self.pool(done.hidden, mask)
        finally:
            handle.remove()
            self.model.train(was_training)
        raise RuntimeError(f"block {self.depth} of {self.stack_name} did not run in the backbone's forward pass")

    def default_cache_path(self) -> Path:
        """As ``QueryEncoder``'s, with the depth and token limit in the name (the backbone's fingerprint alone
        does not say where its queries are read)."""
        base = super().default_cache_path()
        return base.with_name(f"{base.name}-{self.name}-t{self.max_length}")


def query_encoder(name: str, backbone: nn.Module, tokenizer, max_length: int) -> QueryEncoder:
    """The query encoder a method's ``--encoder`` names: ``shared-lN`` reads the backbone's own block N
    (``SharedPrefixEncoder``, at the method's ``max_length``), any other name loads a separate encoder."""
    depth = shared_prefix_depth(name)
    if depth is None:
        return QueryEncoder.from_name(name)
    return SharedPrefixEncoder(backbone, tokenizer, depth, max_length)


# ---- the on-disk query cache (QueryEncoder.save_cache / load_cache) ------------------------------------------
# Written here rather than with a caching library: the entries are tensors keyed by text hash, stored as
# safetensors (never pickle), and several processes (CLI commands, benchmark runs) add to one cache at once.
def _max_queries() -> int:
    value = os.environ.get("SLM_CACHE_MAX_QUERIES", str(DEFAULT_MAX_QUERIES))
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"SLM_CACHE_MAX_QUERIES must be a whole number, got {value!r}") from None
    if n < 0:
        raise ValueError(f"SLM_CACHE_MAX_QUERIES must be >= 0, got {n}")
    return n


def _legacy_file(directory: Path) -> Path:
    return directory.with_name(directory.name + ".safetensors")


def _shards(directory: Path) -> list[Path]:
    """Shard files, oldest first (their names start with the time they were written)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.suffix == ".safetensors" and not p.name.startswith("."))


def _write_shard(path: Path, keys: list[str], rows: list[torch.Tensor], name: str, dim: int) -> None:
    tensor = torch.stack(rows) if rows else torch.empty(0, dim)
    meta = {"encoder": name, "keys": json.dumps(keys)}
    atomic_write(path, lambda tmp: save_file({"queries": tensor.contiguous()}, str(tmp), metadata=meta))


def _read_shard(path: Path, rows: bool = True) -> tuple[list[str], list[torch.Tensor]]:
    """A shard's keys and query rows (``rows=False``: its keys only, from the header)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        keys = json.loads(f.metadata()["keys"])
        if not rows:
            return keys, []
        tensor = f.get_tensor("queries")
    if len(keys) != len(tensor):
        raise ValueError(f"{len(keys)} keys for {len(tensor)} queries")
    return keys, list(tensor)


def _bound(directory: Path, max_queries: int, name: str, dim: int) -> None:
    """Merge the shards into one with the newest ``max_queries`` queries when there are too many of either."""
    from filelock import FileLock, Timeout

    shards = _shards(directory)
    if len(shards) <= MAX_SHARDS:
        try:
            total = sum(len(_read_shard(p, rows=False)[0]) for p in shards)
        except Exception:  # noqa: BLE001 - a damaged or vanished shard: merging sorts it out
            total = max_queries + 1
        if total <= max_queries:
            return
    try:
        with FileLock(str(directory / ".merge.lock"), timeout=0):
            shards = _shards(directory)
            merged: dict[str, torch.Tensor] = {}
            for shard in shards:  # oldest first: a newer shard's entry replaces an older one's
                with contextlib.suppress(Exception):
                    keys, rows = _read_shard(shard)
                    for k, row in zip(keys, rows):
                        merged.pop(k, None)
                        merged[k] = row
            keep = list(merged)[-max_queries:] if max_queries else []
            if shards:  # named after the newest shard it replaces, so later shards stay newer
                out = shards[-1].with_name(shards[-1].stem + "-merged.safetensors")
                _write_shard(out, keep, [merged[k] for k in keep], name, dim)
                for shard in shards:
                    if shard != out:
                        shard.unlink(missing_ok=True)
            log.debug("query cache %s: %d shards merged, %d of %d queries kept", directory, len(shards), len(keep),
                      len(merged))
    except Timeout:
        pass
