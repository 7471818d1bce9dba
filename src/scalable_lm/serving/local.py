"""The serving engine behind ``slm serve``: one model directory, watched and hot-swapped; requests of any
task gathered into mixed batches, each row routed by its own query.

No web framework here (``serving.http`` is the HTTP layer): this module owns

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
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from scalable_lm.encoder import max_positions

from scalable_lm.serving import front
from scalable_lm.serving.front import AUTO
from scalable_lm.serving.protocol import (Job, QueueFull, ServeError, cancelled_error,  # noqa: F401
                                          timeout_error)
from scalable_lm.serving.watcher import Loaded, ModelWatcher  # noqa: F401

log = logging.getLogger("scalable_lm.serve")

CHUNK_ROWS = 64  # classify inputs per forward pass in the server (Engine.chunk_rows)
LIFO_AFTER = 1.0  # seconds; Engine.lifo_after (slm serve --lifo-after)


class Engine:
    """Gather requests into mixed batches and run them one batch at a time on the current bank.

    Args:
        watcher: where the bank comes from (``ModelWatcher``).
        max_batch: most requests per batch (a classify request counts once, whatever its list length).
        max_wait_ms: how long the first request of a batch waits for others.
        max_queue: most requests waiting; more are refused (``QueueFull``).
        max_new_tokens: the largest ``max_tokens`` a request may ask for.
        metrics: a ``middleware.Metrics`` (or None).
        chunk_rows: most classify inputs run through the model at once: a request of any length is worked
            through in chunks, so peak memory does not grow with it (and a request whose client has gone
            stops at the next chunk).
        lifo_after: seconds the oldest waiting request may wait before batches take the newest requests first
            (adaptive LIFO: goodput under overload, when clients time out); None: always oldest first.
    """

    holds_model = True  # the front loads the whole model (EngineProtocol)
    startup_error: str | None = None

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
    def status(self) -> None:
        """No engine state beyond the bank (``EngineProtocol.status``)."""
        return None

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

    # ---- tasks --------------------------------------------------------------------------------------
    async def load_task(self, loaded: Loaded, task: str) -> str:
        """Nothing to move (``EngineProtocol.load_task``): this engine answers from the bank itself, which the
        watcher swaps in whole between batches. Checks that ``loaded`` holds ``task``; its handle is its name."""
        loaded.check(task)
        return task

    async def unload_task(self, handle: str) -> None:
        """Nothing to free: a removed task leaves with the bank it was in."""

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
        entries, weights, infos = front.route(loaded, [job.texts[0] for job in batch], [job.model for job in batch])
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
                        "completion_tokens": streams[row].count, "slm": front.reply_block(infos[row], loaded),
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
