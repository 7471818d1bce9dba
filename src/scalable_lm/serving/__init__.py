"""Serving: an HTTP layer, a routing front and engines behind one protocol.

::

    client ──HTTP──► http.py ──► front.py ──────────────► engine (protocol.py)
                     parse,      query → route,           local.py: batches in this process
                     limits,     auto / base / task,      vllm/:    relays to vLLM servers
                     auth, SSE   fallback, `slm` block              (and may start one)
                                        ▲
                          watcher.py: the model directory, watched and hot-swapped

- ``http``: FastAPI app (``create_app``, ``run``): parsing, limits, auth, SSE, OpenAI JSON; calls the front and
  the engine's protocol only.
- ``front``: the one place that routes a request and builds the ``slm`` block of its reply.
- ``protocol``: ``Job``, ``ServeError``, ``QueueFull`` and ``EngineProtocol``.
- ``watcher``: ``ModelWatcher`` and ``Loaded``; a router-only load for engines that hold the model.
- ``local``: the in-process batcher (``Engine``); ``vllm``: ``VLLMEngine`` and the vLLM child process.
- ``ENGINES``: the registry the CLI reads its ``--engine`` choices from.

The names of the former ``scalable_lm.serving`` module are importable from here for one release.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from scalable_lm.serving.protocol import EngineProtocol

# the former ``scalable_lm.serving`` module's names, imported when first used (PEP 562): the CLI reads ENGINES
# without loading torch
_OLD_NAMES = {
    "front": ["AUTO", "BASE", "_base_name", "prompt_tokens"],
    "local": ["CHUNK_ROWS", "LIFO_AFTER", "Engine", "_give_memory_back", "_TextStream"],
    "protocol": ["EngineProtocol", "Job", "QueueFull", "ServeError", "cancelled_error", "timeout_error"],
    "watcher": ["Loaded", "ModelWatcher", "_manifest_sha", "_manifest_state"],
}
_WHERE = {name: module for module, names in _OLD_NAMES.items() for name in names}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"scalable_lm.serving.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'scalable_lm.serving' has no attribute {name!r}")


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
