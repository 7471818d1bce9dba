"""scalable-lm: continual learning of many tasks in one language model (SLM, ICLR 2024)."""

__version__ = "0.1.0"

from scalable_lm.config import BankConfig, KeyConfig, ModelConfig, SLMConfig, TrainConfig  # noqa: E402
from scalable_lm.data.tasks import DataError, Task, load_task  # noqa: E402
from scalable_lm.methods.base import Prediction  # noqa: E402
from scalable_lm.methods.generative import GenerativeSLM  # noqa: E402
from scalable_lm.methods.slm import SLM  # noqa: E402
from scalable_lm.runner import RunResult, evaluate, run_stream  # noqa: E402
from scalable_lm.store import ModelDirError, load, save  # noqa: E402

__all__ = ["BankConfig", "DataError", "GenerativeSLM", "KeyConfig", "ModelConfig", "ModelDirError", "Prediction",
           "RunResult", "SLM", "SLMConfig", "Task", "TrainConfig", "evaluate", "load", "load_task", "run_stream", "save"]
