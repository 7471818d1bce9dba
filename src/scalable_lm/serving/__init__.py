"""Serving: an HTTP layer, a routing front and engines behind one protocol.

::

    client ──HTTP──► http.py ──► front.py ──────────────► engine (protocol.py)
                     parse,      query → route,           local.py: batches in this process
                     limits,     auto / base / task,      vllm/:    relays to vLLM servers
                     auth, SSE   fallback, `slm` block              (and may start one)
                                        ▲
                          watcher.py: the model directory, watched and hot-swapped

- ``http``: FastAPI app (``create_app``, ``run``; one ``Routes`` method per endpoint): calls the front and the
  engine's protocol only. Its parts: ``bodies`` (request bodies, text checks), ``middleware`` (API key, body
  limits, Prometheus metrics), ``replies`` (OpenAI JSON, server-sent events), ``launch`` (uvicorn).
- ``front``: the one place that routes a request and builds the ``slm`` block of its reply.
- ``protocol``: ``Job``, ``ServeError``, ``QueueFull`` and ``EngineProtocol`` (start, stop, health, check,
  submit, load and unload a task).
- ``watcher``: ``ModelWatcher`` and ``Loaded``; a router-only load for engines that hold the model.
- ``local``: the in-process batcher (``Engine``); ``vllm``: ``VLLMEngine`` and the vLLM child process.
- ``engines``: ``ENGINES``, the registry the CLI reads its ``--engine`` choices from.

The names of the former ``scalable_lm.serving`` module are importable from here for one release.
"""

from __future__ import annotations

import importlib

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


from scalable_lm.serving.engines import ENGINES, EngineSpec  # noqa: E402,F401 - the registry (no torch)
