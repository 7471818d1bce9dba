"""The vLLM child process a front may start (``VLLMChild``), the flags it derives from the model directory
(``child_argv``), and where the vLLM interpreter is found (``default_python``)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("scalable_lm.serve")

BASE_NAME = "slm-base"  # the name the engines serve the frozen base model under
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM's --max-lora-rank takes
MAX_FAILED_STARTS = 3  # a vLLM child that exits this many times in a row before answering is not started again


def vllm_rank(rank: int) -> int:
    """The smallest rank vLLM accepts that holds ``rank``."""
    for allowed in LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"an adapter of rank {rank} is above vLLM's largest --max-lora-rank ({LORA_RANKS[-1]})")


def has_vllm(python: str) -> bool:
    """Whether ``python`` exists and can import vLLM (found, not imported: that takes seconds)."""
    try:
        return subprocess.run([python, "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') "
                               "is None)"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


PYTHON_ENV = "SLM_VLLM_PYTHON"  # the interpreter that has vLLM, when it is neither of the two below
# the project's checkout when scalable-lm is installed from it (``pip install -e .``: src/scalable_lm/ here)
PROJECT_ROOT = Path(__file__).resolve().parents[4]


def default_python() -> str:
    """The interpreter that runs vLLM: ``$SLM_VLLM_PYTHON``; else the ``.venv-vllm`` that ``make vllm`` made,
    in the project this package was installed from or in the working directory; else this interpreter.

    The venv's ``bin/python`` is returned as it is, never resolved: it is a symlink to the base interpreter,
    and only through the venv's own path does Python find the venv's packages.
    """
    named = os.environ.get(PYTHON_ENV, "").strip()
    if named:
        return named
    for root in (PROJECT_ROOT, Path.cwd()):
        venv_python = root / ".venv-vllm" / "bin" / "python"
        if venv_python.exists():
            return str(venv_python.absolute())
    return sys.executable


def child_argv(slm, python: str, port: int, extra: list[str] | None = None) -> list[str]:
    """The command that starts a vLLM OpenAI server for ``slm``'s backbone, with LoRA set up for its bank:
    max rank = the task adapters' rank (entries x rank) rounded up to vLLM's values, target modules = the bank's
    targets, float32 on a CPU (as ``slm serve``), the base model served as ``BASE_NAME``."""
    from scalable_lm.backbones import resolve

    bank = slm.config.bank
    extra = list(extra or [])
    argv = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", resolve(slm.config.model.backbone),
            "--served-model-name", BASE_NAME, "--host", "127.0.0.1", "--port", str(port), "--enable-lora",
            "--max-lora-rank", str(vllm_rank(bank.entries_per_task * bank.rank)),
            "--max-loras", str(max(4, min(32, 2 * len(slm.task_names)))),
            "--lora-target-modules", *sorted({t.split(".")[-1] for t in bank.targets}),
            "--max-model-len", str(min(slm.config.train.max_length + 1024,
                                       getattr(slm.backbone_module.config, "max_position_embeddings", 4096)))]
    import torch

    if not torch.cuda.is_available():
        argv += ["--dtype", "float32"]
        if not any(a.startswith("--gpu-memory-utilization") for a in extra):
            argv += ["--gpu-memory-utilization", "0.35"]  # on vLLM-CPU: the share of RAM for weights and KV cache
    return argv + extra


class VLLMChild:
    """One vLLM server started by the front (``child_argv``), its output in ``log_path``; ``start``, ``alive``,
    ``stop`` (SIGTERM, then SIGKILL after ``grace`` seconds)."""

    def __init__(self, argv: list[str], port: int, log_path: Path):
        self.argv, self.port, self.log_path = argv, port, log_path
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{port}"
        self.starts = 0

    def start(self) -> None:
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            try:
                self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                             start_new_session=True)
            except OSError as err:
                raise RuntimeError(f"cannot start vLLM with {self.argv[0]}: {err.strerror}") from err
        self.starts += 1
        log.info("started vLLM (pid %d) on %s; its log: %s", self.proc.pid, self.url, self.log_path)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def reap(self) -> None:
        """After the server process died: kill what it left in its process group (vLLM's engine-core and
        worker processes outlive a server that was killed, holding their memory and CPU)."""
        if self.proc is not None and self.proc.poll() is not None:
            _signal_group(self.proc.pid, signal.SIGKILL)

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM to the whole group, SIGKILL after ``grace`` seconds; returns once no process of the group is
        left (the server exits before its engine-core and workers finish shutting down, so waiting for the
        server alone left them running after the front had exited)."""
        if self.proc is None:
            return
        if self.alive():
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        else:  # the server died earlier: what it left is killed at once, as when the front finds it dead
            self.reap()
        if not _group_gone(self.proc.pid, grace):
            _signal_group(self.proc.pid, signal.SIGKILL)
            _group_gone(self.proc.pid, 5.0)

    def tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text[-lines:])


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_gone(pgid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for process group ``pgid`` to have no process left; whether it has none."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


