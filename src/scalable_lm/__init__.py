"""scalable-lm: continual learning of many tasks in one language model (SLM, ICLR 2024)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.4.0"

# The public names, each loaded from its module on first use (PEP 562). Importing the package itself stays
# light: `slm --help`, `slm --version` and the commands that fail on their arguments (or are refused a
# model directory's lock) answer without loading torch and transformers.
_EXPORTS = {
    "BankConfig": "scalable_lm.config", "KeyConfig": "scalable_lm.config", "ModelConfig": "scalable_lm.config",
    "SLMConfig": "scalable_lm.config", "TrainConfig": "scalable_lm.config",
    "DataError": "scalable_lm.data.tasks", "Task": "scalable_lm.data.tasks", "load_task": "scalable_lm.data.tasks",
    "Prediction": "scalable_lm.methods.base",
    "GenerativeSLM": "scalable_lm.methods.generative",
    "SLM": "scalable_lm.methods.slm",
    "RunResult": "scalable_lm.runner", "evaluate": "scalable_lm.runner", "run_stream": "scalable_lm.runner",
    "ModelDirError": "scalable_lm.store", "load": "scalable_lm.store", "save": "scalable_lm.store",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'scalable_lm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    if name in ("SLM", "GenerativeSLM"):  # their save_pretrained / from_pretrained live in the store
        importlib.import_module("scalable_lm.store").attach_pretrained_names()
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from scalable_lm.config import BankConfig, KeyConfig, ModelConfig, SLMConfig, TrainConfig  # noqa: F401
    from scalable_lm.data.tasks import DataError, Task, load_task  # noqa: F401
    from scalable_lm.methods.base import Prediction  # noqa: F401
    from scalable_lm.methods.generative import GenerativeSLM  # noqa: F401
    from scalable_lm.methods.slm import SLM  # noqa: F401
    from scalable_lm.runner import RunResult, evaluate, run_stream  # noqa: F401
    from scalable_lm.store import ModelDirError, load, save  # noqa: F401
