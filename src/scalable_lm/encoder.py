"""Frozen query encoder: texts → masked-mean-pooled sentence embeddings, cached by text.

The encoder never trains, so every text is encoded at most once per process (in-memory cache), and the
cache can be saved to / loaded from a safetensors file to survive across runs. It does not normalise:
DTKR normalises per group.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from scalable_lm.device import module_device
from scalable_lm.progress import progress as progress_bar

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
        self.cache_limit: int | None = None  # most cached queries (None: all; a server sets a bound)

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
        """``$SLM_CACHE_DIR/queries-<fingerprint>[-<dtype>].safetensors`` (default dir ``~/.cache/scalable_lm``;
        an encoder run in half precision has its own file: its queries differ slightly from float32's)."""
        import os

        from scalable_lm.backbones import fingerprint

        root = Path(os.environ.get("SLM_CACHE_DIR", Path.home() / ".cache" / "scalable_lm"))
        dtype = next(self.model.parameters()).dtype
        suffix = "" if dtype == torch.float32 else "-" + str(dtype).removeprefix("torch.")
        return root / f"queries-{fingerprint(self.model)}{suffix}.safetensors"

    def save_cache(self, path: str | Path) -> None:
        """Write the cache to a safetensors file (atomic)."""
        from scalable_lm.fileio import atomic_write

        keys = sorted(self._cache)
        tensor = torch.stack([self._cache[k] for k in keys]) if keys else torch.empty(0, self.dim)
        meta = {"encoder": self.name, "keys": json.dumps(keys)}
        atomic_write(Path(path), lambda tmp: save_file({"queries": tensor.contiguous()}, str(tmp), metadata=meta))

    def load_cache(self, path: str | Path) -> int:
        """Merge a saved cache; returns the number of entries read (0 if the file is absent)."""
        path = Path(path)
        if not path.exists():
            return 0
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            keys = json.loads(f.metadata()["keys"])
        tensor = load_file(str(path))["queries"]
        self._cache.update({k: row for k, row in zip(keys, tensor)})
        return len(keys)
