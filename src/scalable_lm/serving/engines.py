"""The registry of engines (``ENGINES``) that ``slm serve --engine`` reads its choices from: how each is built from
the front's options and whether the front must load the whole model for it. Importing this loads no torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from scalable_lm.serving.protocol import EngineProtocol


@dataclass(frozen=True)
class EngineSpec:
    """An engine the CLI offers (``slm serve --engine NAME``): how to build it from the front's options, whether
    it needs the front to load the whole model (``holds_model``), and its one-line help."""

    build: Callable[..., "EngineProtocol"]
    holds_model: bool
    help: str


def _local(watcher, *, metrics=None, max_batch=16, max_wait_ms=5.0, max_queue=256, max_new_tokens=256,
           lifo_after=1.0, **_):
    from scalable_lm.serving.local import Engine

    return Engine(watcher, max_batch, max_wait_ms, max_queue, max_new_tokens, metrics, lifo_after=lifo_after)


def _vllm(watcher, *, metrics=None, max_queue=256, vllm_urls=None, vllm_python=None, vllm_args=None,
          state_dir=None, **_):
    from scalable_lm.serving.vllm import VLLMEngine

    return VLLMEngine(watcher, vllm_urls, state_dir=state_dir, python=vllm_python, vllm_args=vllm_args,
                      max_queue=max_queue, metrics=metrics)


ENGINES: dict[str, EngineSpec] = {
    "local": EngineSpec(_local, True, "batches requests in this process (default)"),
    "vllm": EngineSpec(_vllm, False, "routes here, generates on vLLM (started here, or --vllm-url); this process "
                       "loads only the router: no backbone weights"),
}
