"""The engine protocol of the routing front: what ``serving.http`` hands an engine (a ``Job``), what an engine
answers with (a result dict, streamed pieces, or a ``ServeError``), and the methods every engine has.

Two engines implement it: ``serving.local.Engine`` (batches in this process) and ``serving.vllm.VLLMEngine``
(relays routed requests to vLLM servers). A third (SGLang, llama.cpp) implements ``EngineProtocol`` and is
added to ``serving.ENGINES``; the routing itself stays in ``serving.front``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


class ServeError(Exception):
    """A request the server refuses; ``status`` is the HTTP status, ``kind`` the OpenAI error type."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.headers = status, message, kind, param, headers or {}


@dataclass
class Job:
    """One request waiting for, or in, a batch."""

    kind: str  # "classify" | "generate"
    model: str
    texts: list[str]  # classify: the inputs; generate: [routing query]
    cut: list[bool] = field(default_factory=list)  # classify: per input, whether it was cut on arrival (chars)
    prompt: list[int] | None = None  # generate: every token of the rendered prompt (``prompt_tokens``)
    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    ignore_eos: bool = False  # vLLM's extension: always generate max_tokens (load tests)
    abstain: float | None = None  # classify: SLM.predict's abstain (None: always answer)
    deadline: float = float("inf")
    enqueued: float = field(default_factory=time.perf_counter)
    cancelled: threading.Event = field(default_factory=threading.Event)
    future: asyncio.Future | None = None
    events: asyncio.Queue | None = None  # streaming: text pieces, then a final dict
    loop: asyncio.AbstractEventLoop | None = None
    streamed: bool = False  # some text was already sent (such a row is never run again after a failure)

    def expired(self) -> bool:
        return time.perf_counter() > self.deadline

    def attach(self, loop: asyncio.AbstractEventLoop) -> Job:
        """Give the job the future (and, streaming, the queue) its request waits on, in ``loop``."""
        self.loop = loop
        self.future = loop.create_future()
        if self.stream:
            self.events = asyncio.Queue()
        return self

    def push(self, item) -> None:
        if isinstance(item, str):
            self.streamed = True
        if self.events is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)

    def finish(self, result=None, error: Exception | None = None) -> None:
        """Resolve the request from the worker thread."""
        if self.loop is None or self.future is None:
            return

        def resolve():
            if self.future.done():
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)
        self.loop.call_soon_threadsafe(resolve)
        if self.events is not None:
            self.push(error if error is not None else {"done": result})


class QueueFull(ServeError):
    def __init__(self, limit: int, retry_after: int = 1):
        super().__init__(429, f"the request queue is full ({limit} requests waiting); retry later",
                         kind="rate_limit_error", headers={"Retry-After": str(retry_after)})


def cancelled_error() -> ServeError:
    return ServeError(499, "client closed the request", kind="cancelled")


def timeout_error() -> ServeError:
    return ServeError(408, "the request timed out before its answer was complete", kind="timeout")


@runtime_checkable
class EngineProtocol(Protocol):
    """What the HTTP layer and the CLI use of an engine (nothing else: no duck typing beyond this).

    - ``start()`` inside the running event loop; ``await stop()`` drains and releases everything it started.
    - ``loaded``: the bank being served (a ``watcher.Loaded``), or None before the first one.
    - ``check(model)``: the ``Loaded`` that will answer a request naming ``model`` (``auto``, ``base`` or a
      task), or a ``ServeError`` (404 for an unknown name, 503 while nothing is served).
    - ``submit(job)``: queue a routed request (``QueueFull`` when full); the job is finished with a result
      dict (``text``, ``finish_reason``, ``prompt_tokens``, ``completion_tokens``, ``slm``) or an error.
    - ``queue_length``: requests waiting or running (``/metrics``).
    - ``status()``: the engine's own health beyond the bank (``/health``), or None; ``startup_error``: why
      it cannot serve at all (None when it can).
    - ``await load_task(loaded, task)``: make ``task``, as the bank ``loaded`` holds it, answerable by this
      engine (the vLLM engine exports it as an adapter and loads it into every engine it relays to; the local
      engine answers from the bank itself and only checks the name); returns the engine's handle of that version
      of the task. ``await unload_task(handle)``: free a version no served bank uses any more.
    - ``holds_model``: whether this engine needs the front to load the backbone (True for the in-process
      engine); an engine that holds the model elsewhere lets the front load only the router.
    """

    holds_model: bool
    startup_error: str | None

    def start(self) -> None: ...

    async def stop(self) -> None: ...

    @property
    def loaded(self): ...

    def check(self, model: str): ...

    def submit(self, job: Job) -> Job: ...

    async def load_task(self, loaded, task: str) -> str: ...

    async def unload_task(self, handle: str) -> None: ...

    @property
    def queue_length(self) -> int: ...

    def status(self) -> dict | None: ...
