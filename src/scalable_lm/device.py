"""Where a model runs: one device and one compute dtype per model (``--device``, ``--dtype``).

The frozen backbone and the query encoder run in the compute dtype. What is trained or numerically
sensitive stays in float32 whatever the compute dtype: keys, values (the low-rank factors) and heads (so
the optimiser state is float32 too), and the router's statistics are float64 (float32 on Apple MPS,
which has no float64). Model directories are device-free: tensors are saved from, and loaded to, the CPU
and then placed.
"""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` → CUDA if available, else MPS if available, else CPU; anything else is checked to exist.

    Raises ``ValueError`` naming the device when it is unknown or not available on this machine.
    """
    if isinstance(device, torch.device):
        name = str(device)
    else:
        name = (device or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from err
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but this machine has no CUDA GPU usable by torch "
                             f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'})")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif resolved.type == "mps" and not _mps_available():
        raise ValueError(f"device {name!r} asked for, but Apple MPS is not available here")
    elif resolved.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None = "float32") -> torch.dtype:
    """``float32`` / ``bfloat16`` / ``float16`` (or the torch dtype itself) → ``torch.dtype``."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"unsupported dtype {dtype}: use one of {', '.join(DTYPES)}")
        return dtype
    name = (dtype or "float32").strip().lower().removeprefix("torch.")
    name = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}.get(name, name)
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (CPU for a module without any)."""
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
