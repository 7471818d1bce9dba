"""The serving engine behind ``slm serve``: one model directory, watched and hot-swapped; requests of any
task gathered into mixed batches, each row routed by its own query.

No web framework here (``server.py`` is the HTTP layer): this module owns

- ``ModelWatcher``: loads the directory through ``store.load`` (task files verified when first used) and
  polls its manifest; when another process adds (or removes) a task, the new bank is loaded in a
  background thread and offered to the engine, which swaps it in *between* batches. A batch keeps the
  model it started with. A directory that does not load (corrupt or half-written file, bad manifest) is
  never served: the last good bank stays and the reason is logged and counted.
- ``Engine``: a bounded queue (``QueueFull`` → HTTP 429), a batcher that waits up to ``max_wait_ms`` for
  up to ``max_batch`` requests, and one worker thread that runs each batch (the wrapped layers hold the
  batch's routes, so batches never overlap). Generation uses ``CausalLM.decode``: every row has its own
  route, length, temperature, stop strings and random stream, so an answer never depends on its
  batch-mates. Tokens are streamed to the waiting request as they are made.

Batching is static: a batch runs to its last token before the next starts (see the serving benchmark's
README for what that costs on a 2-core CPU and why continuous batching was not built).
"""

from __future__ import annotations

import asyncio
import collections
import copy
import hashlib
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from scalable_lm import store
from scalable_lm.encoder import max_positions

log = logging.getLogger("scalable_lm.serve")

AUTO, BASE = "auto", "base"
CHUNK_ROWS = 64  # classify inputs per forward pass in the server (Engine.chunk_rows)
LIFO_AFTER = 1.0  # seconds; Engine.lifo_after (slm serve --lifo-after)


class ServeError(Exception):
    """A request the server refuses; ``status`` is the HTTP status, ``kind`` the OpenAI error type."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.headers = status, message, kind, param, headers or {}


@dataclass
class Loaded:
    """One loaded bank: the model, the manifest it came from, and when."""

    slm: object
    kind: str  # "classifier" | "generative"
    tasks: list[str]
    manifest_sha: str
    generation: int
    loaded_at: float = field(default_factory=time.time)
    # a copy of the model's tokenizer for the request thread: a fast tokenizer must not be used from two
    # threads at once, and the batch thread uses the model's own
    request_tokenizer: object | None = None

    @property
    def models(self) -> list[str]:
        """Valid values of a request's ``model``."""
        return [AUTO, *([BASE] if self.kind == "generative" else []), *self.tasks]

    def check(self, model: str) -> Loaded:
        """This bank, after checking that ``model`` names something in it (404 listing the valid ones)."""
        if model not in self.models:
            raise ServeError(404, f"model '{model}' does not exist; valid models: {self.models}",
                             kind="not_found_error", param="model")
        return self

    @property
    def context(self) -> int:
        """Most tokens the backbone can read (its position table)."""
        module = self.slm.backbone_module
        return int(getattr(module.config, "max_position_embeddings", 0) or 10**9)


def _manifest_state(directory: Path) -> tuple[int, int, int] | None:
    try:
        st = (directory / store.MANIFEST).stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def _manifest_sha(directory: Path) -> str:
    return hashlib.sha256((directory / store.MANIFEST).read_bytes()).hexdigest()


class ModelWatcher:
    """Load ``directory`` and keep loading it again when its manifest changes.

    Args:
        directory: a model directory (``slm learn`` output).
        interval: seconds between manifest checks (0: never reload).
        loader: ``loader(directory) -> slm`` (default ``store.load``); tests and benchmarks pass their own.
        on_event: ``on_event(result)`` with ``"loaded"`` or ``"failed"`` after each load attempt (metrics).
        query_cache: most query embeddings kept in memory (0: none). The encoder is frozen, so a repeated
            input skips its encoding; the bound keeps a long-running server's memory flat.
    """

    def __init__(self, directory: str | Path, interval: float = 1.0, loader=None, on_event=None, query_cache: int = 0):
        self.directory = Path(directory)
        self.query_cache = query_cache
        self.interval = interval
        self.loader = loader or store.load
        self.on_event = on_event or (lambda result: None)
        self.current: Loaded | None = None  # the last good bank
        self.pending: Loaded | None = None  # a newer good bank, not yet swapped in by the engine
        self.last_error: str | None = None
        self._seen: tuple | None = None  # manifest state of the last attempt (good or bad)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._generation = 0

    def load_now(self) -> Loaded:
        """Load the directory (raises ``ModelDirError`` when it cannot be served)."""
        state = _manifest_state(self.directory)
        sha = _manifest_sha(self.directory) if state is not None else ""
        self._seen = state
        slm = self.loader(self.directory)
        if self.current is not None:  # tasks added since the bank being served: verified now, so that a
            for name in set(slm.task_names) - set(self.current.tasks):  # bad file is never served
                slm.task_state(name)
        if getattr(slm, "encoder", None) is not None:
            slm.encoder.cache_limit = self.query_cache
        self._generation += 1
        kind = store.kind_of(slm)
        lm = getattr(slm, "lm", None)
        tokenizer = lm.tokenizer if lm is not None else getattr(getattr(slm, "classifier", None), "tokenizer", None)
        return Loaded(slm, kind, list(slm.task_names), sha, self._generation,
                      request_tokenizer=copy.deepcopy(tokenizer) if tokenizer is not None else None)

    def start(self) -> None:
        """Load in the background (``/health`` says ``loading`` until done), then watch."""
        self._thread = threading.Thread(target=self._run, name="slm-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _attempt(self) -> None:
        try:
            loaded = self.load_now()
        except Exception as err:  # noqa: BLE001 - whatever the directory holds, keep serving the last good bank
            self.last_error = str(err)
            held = f"keeping the {len(self.current.tasks)} tasks already served" if self.current else "nothing to serve yet"
            log.warning("model directory %s not loaded (%s); %s", self.directory, err, held)
            self.on_event("failed")
            return
        if self.current is not None and loaded.manifest_sha == self.current.manifest_sha:
            self.last_error = None  # put back as it was served: nothing is wrong any more
            return  # touched, not changed
        self.last_error = None
        if self.current is None:
            self.current = loaded
            log.info("serving %s: %s model, tasks %s", self.directory, loaded.kind, loaded.tasks)
        else:
            self.pending = loaded
            log.info("loaded a new bank from %s: tasks %s (was %s); swapping it in between batches",
                     self.directory, loaded.tasks, self.current.tasks)
        self.on_event("loaded")

    def _run(self) -> None:
        self._attempt()
        while not self._stop.wait(self.interval if self.interval > 0 else 3600):
            state = _manifest_state(self.directory)
            if self.interval <= 0 or state == self._seen:
                continue
            try:
                unchanged = self.current is not None and _manifest_sha(self.directory) == self.current.manifest_sha
            except OSError:
                unchanged = False
            if unchanged:  # touched, or put back as served (after a bad copy): nothing to load, nothing wrong
                self._seen = state
                self.last_error = None
                continue
            self._attempt()

    def take(self) -> Loaded | None:
        """The bank the next batch should use (swaps in a pending one)."""
        if self.pending is not None:
            self.current, self.pending = self.pending, None
        return self.current


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


class Engine:
    """Gather requests into mixed batches and run them one batch at a time on the current bank.

    Args:
        watcher: where the bank comes from (``ModelWatcher``).
        max_batch: most requests per batch (a classify request counts once, whatever its list length).
        max_wait_ms: how long the first request of a batch waits for others.
        max_queue: most requests waiting; more are refused (``QueueFull``).
        max_new_tokens: the largest ``max_tokens`` a request may ask for.
        metrics: a ``server.Metrics`` (or None).
        chunk_rows: most classify inputs run through the model at once: a request of any length is worked
            through in chunks, so peak memory does not grow with it (and a request whose client has gone
            stops at the next chunk).
        lifo_after: seconds the oldest waiting request may wait before batches take the newest requests first
            (adaptive LIFO: goodput under overload, when clients time out); None: always oldest first.
    """

    def __init__(self, watcher: ModelWatcher, max_batch: int = 16, max_wait_ms: float = 5.0, max_queue: int = 256,
                 max_new_tokens: int = 256, metrics=None, chunk_rows: int = CHUNK_ROWS,
                 lifo_after: float | None = LIFO_AFTER):
        self.watcher = watcher
        self.max_batch, self.max_wait = max(1, max_batch), max(0.0, max_wait_ms) / 1000
        self.max_queue, self.max_new_tokens = max_queue, max_new_tokens
        self.metrics = metrics
        self.chunk_rows = max(1, chunk_rows)
        self.lifo_after = lifo_after
        self._queue: collections.deque[Job] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slm-batch")
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.running = 0  # requests in the batch being run

    # ---- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._worker())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)
        for job in self._queue:
            job.finish(error=ServeError(503, "the server is shutting down", kind="server_error"))
        self._queue.clear()

    @property
    def loaded(self) -> Loaded | None:
        return self.watcher.current

    @property
    def queue_length(self) -> int:
        return len(self._queue)

    # ---- requests -----------------------------------------------------------------------------------
    def check(self, model: str) -> Loaded:
        """The served bank, after checking that ``model`` names something in it."""
        loaded = self.watcher.pending or self.watcher.current
        if loaded is None:
            raise ServeError(503, "the model is still loading; retry shortly", kind="server_error")
        return loaded.check(model)

    def submit(self, job: Job) -> Job:
        """Queue ``job`` (raises ``QueueFull``); its ``future`` resolves with the result."""
        if len(self._queue) >= self.max_queue:
            raise QueueFull(self.max_queue)
        self._queue.append(job.attach(self._loop))
        self._wake.set()
        return job

    # ---- the batch loop -----------------------------------------------------------------------------
    async def _worker(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            first = time.perf_counter()
            while len(self._queue) < self.max_batch and time.perf_counter() - first < self.max_wait:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.max_wait - (time.perf_counter() - first))
                except asyncio.TimeoutError:
                    break
            batch = []
            # requests whose client has gone or whose deadline passed leave the queue now, wherever they are
            # (under LIFO the oldest would otherwise hold queue places until the load drops)
            for job in [j for j in self._queue if j.cancelled.is_set() or j.expired()]:
                self._queue.remove(job)
                job.finish(error=cancelled_error() if job.cancelled.is_set() else timeout_error())
            if not self._queue:
                continue
            # adaptive LIFO: under overload (the oldest request has waited more than lifo_after seconds) take
            # the newest first. Their clients are still waiting; the oldest are the likeliest to have given up
            # (their work would be wasted) and are served when the load drops, or get 408 at their deadline.
            lifo = self.lifo_after is not None and time.perf_counter() - self._queue[0].enqueued > self.lifo_after
            while self._queue and len(batch) < self.max_batch:  # all of it live: just purged, nothing awaited
                batch.append(self._queue.pop() if lifo else self._queue.popleft())
            loaded = self.watcher.take()  # a new bank, if one was loaded, starts with this batch
            self.running = len(batch)
            if self.metrics is not None:
                self.metrics.batch_size.observe(len(batch))
            try:
                await self._loop.run_in_executor(self._executor, self._run, loaded, batch)
            finally:
                self.running = 0

    def _run(self, loaded: Loaded, batch: list[Job]) -> None:
        try:
            self._run_batch(loaded, batch)
        finally:
            if sum(len(job.texts) for job in batch) > self.chunk_rows:
                _give_memory_back()

    def _run_batch(self, loaded: Loaded, batch: list[Job]) -> None:
        """Run ``batch``; when it fails as a whole, run each of its requests alone, so that an error that
        belongs to one request (an input the tokenizer rejects, a setting the model cannot take) answers that
        request alone and never its batch-mates. A streamed row that already sent text is not run again."""
        try:
            if batch[0].kind == "classify":
                self._classify(loaded, batch)
            else:
                self._generate(loaded, batch)
            return
        except Exception as err:  # noqa: BLE001 - one failed batch must not stop the server
            if len(batch) == 1:
                log.exception("a %s request failed", batch[0].kind)
                batch[0].finish(error=err if isinstance(err, ServeError) else
                                ServeError(500, f"internal error ({type(err).__name__})", kind="server_error"))
                return
            log.warning("batch of %d requests failed (%s: %s); running each alone", len(batch), type(err).__name__, err)
        for job in batch:
            if job.future is not None and job.future.done():
                continue
            if job.streamed:
                job.finish(error=ServeError(500, "internal error (its batch failed mid-answer)", kind="server_error"))
                continue
            self._run_batch(loaded, [job])

    def _classify(self, loaded: Loaded, batch: list[Job]) -> None:
        slm = loaded.slm
        # as `slm predict` and `slm eval`: longer inputs are truncated (at the backbone's positions, if fewer)
        limit = min(slm.config.train.max_length, max_positions(getattr(slm.classifier, "backbone", None)))
        tokenizer = slm.classifier.tokenizer
        truncated = {id(job): [cut or len(ids) > limit for cut, ids in
                               zip(job.cut or [False] * len(job.texts), tokenizer(job.texts)["input_ids"])]
                     for job in batch}
        by_model: dict[tuple[str, float | None], list[tuple[Job, int]]] = {}
        for job in batch:
            by_model.setdefault((job.model, job.abstain), []).extend((job, i) for i in range(len(job.texts)))
        results: dict[int, list] = {id(job): [None] * len(job.texts) for job in batch}
        for (model, abstain), rows in by_model.items():
            for start in range(0, len(rows), self.chunk_rows):  # peak memory bounded by the chunk, not the request
                chunk = [(job, i) for job, i in rows[start:start + self.chunk_rows] if not job.cancelled.is_set()]
                if not chunk:
                    continue
                preds = slm.predict([job.texts[i] for job, i in chunk], batch_size=self.chunk_rows,
                                    task=None if model == AUTO else model,
                                    **({} if abstain is None else {"abstain": abstain}))
                for (job, i), pred in zip(chunk, preds):
                    results[id(job)][i] = pred
        for job in batch:
            if job.cancelled.is_set():
                job.finish(error=cancelled_error())
                continue
            job.finish({"predictions": results[id(job)], "truncated": truncated[id(job)],
                        "generation": loaded.generation})

    def _generate(self, loaded: Loaded, batch: list[Job]) -> None:
        from scalable_lm.adapters.inject import routed

        slm = loaded.slm
        lm = slm.lm
        ids = [lm.clip(job.prompt) for job in batch]  # cut from the left as in training and `slm predict`
        models = [job.model for job in batch]
        if all(m == BASE for m in models):  # the frozen model alone: no query, no mixing
            entries = weights = None
            infos = [{"task": _base_name(), "entries": [], "weights": [], "fallback": False} for _ in batch]
        else:
            entries, weights, infos = slm.route_rows([job.texts[0] for job in batch], models)
        generators = []
        for job in batch:
            if job.temperature > 0:
                seed = job.seed if job.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
                generators.append(torch.Generator().manual_seed(seed))  # the seed's range is checked on arrival
            else:
                generators.append(None)
        streams = [_TextStream(lm.tokenizer, job, lm.stop_ids) for job in batch]

        def on_token(row: int, token: int) -> bool:
            job = batch[row]
            if job.cancelled.is_set() or job.expired():
                return False
            return streams[row].add(token)

        limits = [job.max_tokens for job in batch]
        temps, top_p = [job.temperature for job in batch], [job.top_p for job in batch]
        start = time.perf_counter()
        if entries is None:
            tokens = lm.decode(ids, limits, temps, top_p, generators, on_token, [job.ignore_eos for job in batch])
        else:
            with routed(slm.layers, entries, weights):
                tokens = lm.decode(ids, limits, temps, top_p, generators, on_token, [job.ignore_eos for job in batch])
        elapsed = time.perf_counter() - start
        if self.metrics is not None:
            self.metrics.tokens.inc(sum(len(t) for t in tokens))
        for row, job in enumerate(batch):
            if job.cancelled.is_set():
                job.finish(error=cancelled_error())
                continue
            if job.expired():
                job.finish(error=timeout_error())
                continue
            text, reason = streams[row].final(tokens[row], limits[row])
            job.finish({"text": text, "finish_reason": reason, "prompt_tokens": len(ids[row]),
                        "completion_tokens": streams[row].count, "slm": {**infos[row], "bank": loaded.generation},
                        "decode_s": elapsed})


def _give_memory_back() -> None:
    """After a large batch: collect garbage and ask glibc to return freed heap pages to the system.

    PyTorch's CPU allocator frees into the C heap, which glibc keeps for reuse, so a server's RSS stays at
    its largest batch's peak; ``malloc_trim`` (glibc only, called through ctypes as no library wraps it)
    hands the free pages back. Elsewhere this is a no-op.
    """
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def prompt_tokens(tokenizer, lm, query: str, messages: list[dict] | None) -> list[int]:
    """Every token of a generation request's prompt, as ``lm`` renders it (its chat template, if any):
    ``messages`` (a chat) or ``query`` alone (a completion). Runs on the request thread with its own copy of
    the tokenizer (``Loaded.request_tokenizer``), so the batch thread only cuts and decodes.

    Raises ``ServeError`` (400) for a conversation the model cannot format.
    """
    turns = messages if messages is not None else [{"role": "user", "content": query}]
    param = "messages" if messages is not None else "prompt"
    if getattr(tokenizer, "chat_template", None):  # what CausalLM.render does, on this thread's tokenizer
        try:
            text = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
        except Exception as err:  # noqa: BLE001 - e.g. a template that rejects the roles given
            raise ServeError(400, f"cannot format the conversation ({type(err).__name__})", param=param) from err
    elif len(turns) > 1:
        raise ServeError(400, "this model has no chat template: send one user message", param=param)
    else:  # no template: render does not touch the tokenizer; a base model's BOS goes first
        return lm.start_ids + tokenizer(lm.render(query), add_special_tokens=False)["input_ids"]
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _base_name() -> str:
    from scalable_lm.methods.generative import BASE_MODEL

    return BASE_MODEL


def cancelled_error() -> ServeError:
    return ServeError(499, "client closed the request", kind="cancelled")


def timeout_error() -> ServeError:
    return ServeError(408, "the request timed out before its answer was complete", kind="timeout")


class _TextStream:
    """Turn one row's tokens into text: stop strings, and the pieces a streaming client is sent.

    Text is decoded from all tokens so far (a token alone may be half a character); a piece is sent only
    once it cannot be the start of a stop string and does not end in an incomplete character.
    """

    def __init__(self, tokenizer, job: Job, stop_ids: list[int] | None = None):
        self.tokenizer, self.job = tokenizer, job
        self.stop_ids = set(stop_ids if stop_ids is not None else [tokenizer.eos_token_id])
        self.tokens: list[int] = []
        self.sent = 0  # characters already streamed
        self.stopped_at: int | None = None
        self.count = 0  # tokens counted as the completion (up to a stop string)
        self.hold = max((len(s) for s in job.stop), default=1) - 1

    def _text(self) -> str:
        return self.tokenizer.decode(self.tokens, skip_special_tokens=True).lstrip()  # as ``generate``

    def add(self, token: int) -> bool:
        """Record a token; False once a stop string appeared (the row is then finished)."""
        if token in self.stop_ids:
            self.count += self.job.ignore_eos
            return self.job.ignore_eos
        self.tokens.append(token)
        self.count += 1
        text = self._text()
        for stop in self.job.stop:
            at = text.find(stop, max(0, self.sent - len(stop)))
            if at >= 0 and (self.stopped_at is None or at < self.stopped_at):
                self.stopped_at = at
        if self.stopped_at is not None:
            self._send(text[: self.stopped_at].rstrip())
            return False
        # hold back what may start a stop string, trailing spaces (the answer is stripped at the end) and a
        # half-decoded character
        self._send(text[: max(0, len(text) - self.hold)].rstrip().rstrip("\ufffd"))
        return True

    def _send(self, text: str) -> None:
        if self.job.stream and len(text) > self.sent:
            self.job.push(text[self.sent:])
        self.sent = max(self.sent, len(text))

    def final(self, tokens: list[int], limit: int) -> tuple[str, str]:
        """``(answer text, finish_reason)``; the rest of the text is streamed."""
        text = self._text()
        if self.stopped_at is not None:
            text, reason = text[: self.stopped_at], "stop"
        else:
            reason = "length" if len(tokens) >= limit else "stop"
        text = text.rstrip()
        self._send(text)
        return text, reason
