"""``slm serve``: an OpenAI-compatible HTTP server (FastAPI + uvicorn) in front of one engine (``serving.ENGINES``).

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions`` (generative models;
streaming as server-sent events), ``POST /v1/classify`` (classifiers), ``GET /health``, ``GET /metrics``
(Prometheus). A request's ``model`` is ``"auto"`` (routed by its own query), ``"base"`` (the frozen
model) or a task name (SLM-TI). Each choice carries an ``slm`` field (ignored by OpenAI clients): the task,
the entries and weights, and whether the base-model fallback answered.

This layer only parses, checks limits, authenticates and serialises (and streams server-sent events); it routes
nothing itself (``serving.front`` does) and calls engines only through ``serving.protocol.EngineProtocol``.
Errors are OpenAI-style JSON bodies that never hold file paths or stack traces. Nothing here writes to the model
directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from scalable_lm.serving import front
from scalable_lm.serving.front import AUTO, prompt_tokens
from scalable_lm.serving.local import LIFO_AFTER
from scalable_lm.serving.protocol import EngineProtocol, Job, ServeError, cancelled_error, timeout_error
from scalable_lm.serving.watcher import ModelWatcher

# Defaults of the limits (``slm serve --help`` names the flags; docs/serving.md lists them all)
MAX_BODY_BYTES = 1 << 20  # --max-body-bytes: a request body larger than this gets 413
MAX_INPUTS = 256  # --max-inputs: most inputs in one /v1/classify request (413 above)
READ_TIMEOUT = 30.0  # --read-timeout: seconds to send the headers and the whole body (408 / closed after)
CHARS_PER_TOKEN = 32  # a classify input is cut at this many characters per token the model reads, on arrival
SEED_RANGE = (-(1 << 63), (1 << 64) - 1)  # what torch.Generator.manual_seed takes
MAX_CONNECTIONS = 1024  # --max-connections: more open connections/requests get 503 (uvicorn's limit_concurrency)
KEEP_ALIVE = 5  # --keep-alive: seconds an idle keep-alive connection stays open (uvicorn's default)

log = logging.getLogger("scalable_lm.serve")
ENDPOINTS = {"/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/classify"}


class Metrics:
    """The server's Prometheus metrics, in a registry of its own (several servers can live in one process)."""

    def __init__(self, engine_ref):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("slm_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r)
        self.latency = Histogram("slm_request_latency_seconds", "request latency (until the last byte for streams)",
                                 ["endpoint"], registry=r,
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.batch_size = Histogram("slm_batch_size", "requests per batch", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.tokens = Counter("slm_generated_tokens", "tokens generated", registry=r)
        self.reloads = Counter("slm_reloads", "attempts to load the model directory, by result", ["result"], registry=r)
        queue = Gauge("slm_queue_length", "requests waiting for a batch", registry=r)
        queue.set_function(lambda: engine_ref().queue_length if engine_ref() else 0)
        running = Gauge("slm_running_requests", "requests in the batch being run", registry=r)
        running.set_function(lambda: engine_ref().running if engine_ref() else 0)
        tasks = Gauge("slm_tasks_loaded", "tasks in the bank being served", registry=r)
        tasks.set_function(lambda: len(engine_ref().loaded.tasks) if engine_ref() and engine_ref().loaded else 0)


# ---- request bodies (extra fields are accepted, as OpenAI clients send many) ------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class Message(_Body):
    role: str
    content: str | list[dict[str, Any]] | None = None


class _Sampling(_Body):
    model: str = AUTO
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    ignore_eos: bool = False  # vLLM's extension: generate exactly max_tokens


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(_Sampling):
    prompt: str | list[str]


class ClassifyRequest(_Body):
    model: str = AUTO
    input: str | list[str]
    # answer "(unknown)" for an input farther from its routed task than this many standard deviations of the
    # task's held-out training inputs (``SLM.predict(abstain=...)``); absent: always answer
    abstain: float | None = Field(default=None, ge=0.0, le=1e6, allow_inf_nan=False)

    @field_validator("abstain", mode="before")
    @classmethod
    def _a_number(cls, value):
        if isinstance(value, bool):  # JSON true is not a number of standard deviations
            raise ValueError("must be a number of standard deviations, not a boolean")
        return value


def _state_dir(model_dir: str) -> str:
    """Where the vLLM front keeps its adapters and the child's log: beside the query cache, one folder per
    model directory (never inside the model directory, which the server does not write)."""
    import hashlib
    from pathlib import Path

    from scalable_lm.encoder import cache_dir

    return str(cache_dir() / "vllm-front" / hashlib.sha256(str(Path(model_dir).resolve()).encode()).hexdigest()[:16])


def _error(status: int, message: str, kind: str, param: str | None = None, headers=None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


def _text_of(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return _unicode(content, "messages")
    parts = []
    for part in content:
        if part.get("type") != "text":
            raise ServeError(400, f"only text content is supported, not '{part.get('type')}'", param="messages")
        parts.append(str(part.get("text", "")))
    return _unicode("".join(parts), "messages")


def _unicode(text: str, param: str, what: str = "the text") -> str:
    """``text`` if it is valid Unicode; JSON can carry lone surrogates (``"\\ud800"``), which no tokenizer takes:
    refused here, on the request's own thread, so they never reach (and fail) a batch."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ServeError(400, f"{what} is not valid Unicode (a lone surrogate at character {err.start})",
                         param=param) from None
    return text


def create_app(model_dir: str, *, api_key: str | None = None, max_batch: int = 16, max_wait_ms: float = 5.0,
               max_queue: int = 256, max_new_tokens: int = 256, request_timeout: float = 120.0,
               reload_interval: float = 1.0, query_cache: int = 0, loader=None, max_body_bytes: int = MAX_BODY_BYTES,
               max_inputs: int = MAX_INPUTS, read_timeout: float = READ_TIMEOUT,
               lifo_after: float | None = LIFO_AFTER, engine: str = "local", vllm_urls: list[str] | None = None,
               vllm_python: str | None = None, vllm_args: list[str] | None = None,
               vllm_state: str | None = None) -> FastAPI:
    """The ASGI app serving ``model_dir`` (see ``slm serve --help`` for the options)."""
    from concurrent.futures import ThreadPoolExecutor

    from scalable_lm.serving import ENGINES

    holder: dict[str, EngineProtocol] = {}
    spec = ENGINES[engine]
    # prompts are tokenised off the event loop (a long one would stall /health), on one thread of their own:
    # the request tokenizer is used by that thread alone (a fast tokenizer is not thread-safe)
    tokenize_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slm-tokenize")
    metrics = Metrics(lambda: holder.get("engine"))
    # an engine that holds the model elsewhere (vLLM) needs only the router here: no backbone weights loaded
    watcher = ModelWatcher(model_dir, reload_interval, loader=loader, query_cache=query_cache,
                           on_event=lambda result: metrics.reloads.labels(result).inc(),
                           router_only=not spec.holds_model)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        engine = spec.build(watcher, metrics=metrics, max_batch=max_batch, max_wait_ms=max_wait_ms,
                            max_queue=max_queue, max_new_tokens=max_new_tokens, lifo_after=lifo_after,
                            vllm_urls=vllm_urls, vllm_python=vllm_python, vllm_args=vllm_args,
                            state_dir=vllm_state or _state_dir(model_dir))
        holder["engine"] = engine
        engine.start()
        watcher.start()
        yield
        log.info("shutting down: in-flight requests have finished")
        watcher.stop()
        await engine.stop()
        tokenize_pool.shutdown(wait=False)

    app = FastAPI(title="scalable-lm", lifespan=lifespan,
                  description="OpenAI-compatible API of scalable-lm. With --api-key every path but /health and "
                  "/metrics (these docs included) needs 'Authorization: Bearer KEY'.")

    def engine() -> EngineProtocol:
        return holder["engine"]

    # ---- errors: one OpenAI-style body for everything -----------------------------------------------
    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, err: ServeError):
        return _error(err.status, err.message, err.kind, err.param, err.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        problems = []
        for e in err.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
            problems.append("the body is not valid JSON" if e.get("type") == "json_invalid" else f"{where}: {e.get('msg')}")
        return _error(400, "; ".join(problems), "invalid_request_error")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException):
        return _error(err.status_code, str(err.detail), "invalid_request_error")

    @app.exception_handler(Exception)
    async def _internal(request: Request, err: Exception):
        log.exception("internal error on %s", request.url.path)
        return _error(500, "internal error", "server_error")

    app.add_middleware(_AuthAndMetrics, api_key=api_key, metrics=metrics, max_body_bytes=max_body_bytes,
                       read_timeout=read_timeout)

    # ---- status ------------------------------------------------------------------------------------
    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health():
        """Open without the API key (for probes), so with --api-key it names no task: only their count."""
        loaded = engine().loaded
        if loaded is None:
            error = engine().startup_error or (watcher.last_error and "the model directory did "
                                                "not load; see the server log")
            return JSONResponse({"status": "loading", "error": error}, status_code=503)
        tasks = {"task_count": len(loaded.tasks)} if api_key else {"tasks": loaded.tasks}
        extra = engine().status() or {}
        if api_key and extra:  # engine addresses are not for anonymous probes
            extra = {"engine": extra["engine"], "engines_healthy": sum(e["healthy"] for e in extra["engines"])}
        return {"status": "ok", "kind": loaded.kind, **tasks, "bank": loaded.generation,
                "queue": engine().queue_length, "reload_error": watcher.last_error is not None, **extra}

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def model_card(loaded, model_id: str) -> dict:
        """An OpenAI model object; ``slm`` adds (clients ignore it) a task's routing record, or for ``auto`` the
        pairs of tasks whose recorded routing overlaps by more than 2% (``GrowsByTask.overlaps``)."""
        return {"id": model_id, "object": "model", "created": int(loaded.loaded_at), "owned_by": "scalable-lm",
                "slm": front.model_info(loaded, model_id)}

    @app.get("/v1/models")
    async def models():
        loaded = engine().check(AUTO)
        return {"object": "list", "data": [model_card(loaded, m) for m in loaded.models]}

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str):
        loaded = engine().check(model_id)  # 404 naming the valid ones
        return model_card(loaded, model_id)

    # ---- classification ----------------------------------------------------------------------------
    @app.post("/v1/classify")
    async def classify(body: ClassifyRequest, request: Request):
        loaded = engine().check(body.model)
        if loaded.kind != "classifier":
            raise ServeError(400, "this is a generative model: use /v1/chat/completions or /v1/completions")
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        if not texts:
            raise ServeError(400, "input is empty", param="input")
        if len(texts) > max_inputs:
            raise ServeError(413, f"{len(texts)} inputs in one request; this server takes at most {max_inputs} "
                             "(slm serve --max-inputs): send them in several requests", param="input")
        for i, text in enumerate(texts):
            if not text.strip():
                raise ServeError(400, f"input {i} is empty", param="input")
            _unicode(text, "input", f"input {i}")
        # the model reads at most max_length tokens: characters far beyond them are cut now, before any
        # tokenizer sees them ("truncated" says so, as for inputs cut at max_length tokens)
        chars = CHARS_PER_TOKEN * max(loaded.slm.config.train.max_length, loaded.slm.encoder.max_length)
        cut = [len(t) > chars for t in texts]
        texts = [t[:chars] for t in texts]
        # tokenising (length checks included) happens in the batch thread: a fast tokenizer is not thread-safe
        job = engine().submit(Job("classify", body.model, texts, cut=cut, abstain=body.abstain,
                                  deadline=time.perf_counter() + request_timeout))
        result = await _wait(job, request_timeout, request)
        data = [{"index": i, "label": p.label, "task": p.task, "confidence": p.confidence, "entries": p.entries,
                 "weights": p.weights, "abstained": p.abstained, "truncated": cut} for i, (p, cut) in enumerate(zip(result["predictions"],
                                                                                         result["truncated"]))]
        return {"object": "list", "model": body.model, "data": data}

    # ---- generation --------------------------------------------------------------------------------
    async def _prepare(body: _Sampling, query: str, messages: list[dict] | None, loaded) -> Job:
        front.check_generative(loaded)
        if body.n != 1:
            raise ServeError(400, "only n=1 is supported", param="n")
        max_tokens = body.max_completion_tokens or body.max_tokens or min(16, max_new_tokens)
        if max_tokens > max_new_tokens:
            raise ServeError(400, f"max_tokens={max_tokens} is above this server's limit of {max_new_tokens} "
                             "(slm serve --max-new-tokens)", param="max_tokens")
        if not query.strip():
            raise ServeError(400, "the prompt is empty", param="messages" if messages else "prompt")
        # tokenised here, once, on this thread's own tokenizer (the batch thread uses the model's): a too-long
        # prompt is refused before a stream starts
        prompt = await asyncio.get_running_loop().run_in_executor(
            tokenize_pool, prompt_tokens, loaded.request_tokenizer, loaded.slm.lm, query, messages)
        if len(prompt) + max_tokens > loaded.context:
            raise ServeError(400, f"the prompt has {len(prompt)} tokens and max_tokens is {max_tokens}; this "
                             f"model's context is {loaded.context} tokens", param="messages" if messages else "prompt")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > 4 or any(not s for s in stop):
            raise ServeError(400, "stop takes up to 4 non-empty strings", param="stop")
        for text in stop:
            _unicode(text, "stop", "a stop string")
        return Job("generate", body.model, [query], prompt=prompt, max_tokens=max_tokens,
                   temperature=body.temperature, top_p=body.top_p, seed=body.seed, stop=stop, stream=body.stream,
                   ignore_eos=body.ignore_eos,
                   deadline=time.perf_counter() + request_timeout)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        loaded = engine().check(body.model)
        messages = [{"role": m.role, "content": _text_of(m.content)} for m in body.messages]
        users = [m["content"] for m in messages if m["role"] == "user"]
        if not users:
            raise ServeError(400, "messages hold no user message", param="messages")
        # the query is the last user turn, as in training; the engine renders the whole conversation
        job = await _prepare(body, users[-1], messages, loaded)
        return await _respond(job, body, "chat.completion", request)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        loaded = engine().check(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if len(prompts) != 1:
            raise ServeError(400, "send one prompt per request", param="prompt")
        job = await _prepare(body, _unicode(prompts[0], "prompt"), None, loaded)
        return await _respond(job, body, "text_completion", request)

    async def _respond(job: Job, body: _Sampling, kind: str, request: Request):
        ident = ("chatcmpl-" if kind == "chat.completion" else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        engine().submit(job)
        if not job.stream:
            result = await _wait(job, request_timeout, request)
            usage = {"prompt_tokens": result["prompt_tokens"], "completion_tokens": result["completion_tokens"],
                     "total_tokens": result["prompt_tokens"] + result["completion_tokens"]}
            return {"id": ident, "object": kind, "created": created, "model": body.model, "usage": usage,
                    "choices": [_choice(kind, result["text"], result["finish_reason"], result["slm"])]}
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        return StreamingResponse(_sse(job, kind, ident, created, body.model, include_usage, request),
                                 media_type="text/event-stream")

    async def _sse(job: Job, kind: str, ident: str, created: int, model: str, include_usage: bool, request: Request):
        chunk_kind = "chat.completion.chunk" if kind == "chat.completion" else "text_completion"

        def chunk(choices, usage=None):
            out = {"id": ident, "object": chunk_kind, "created": created, "model": model, "choices": choices}
            if usage is not None:
                out["usage"] = usage
            return f"data: {json.dumps(out)}\n\n"

        def piece(text=None, reason=None, slm=None, role=False):
            if kind == "chat.completion":
                delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
                choice = {"index": 0, "delta": delta, "finish_reason": reason}
            else:
                choice = {"index": 0, "text": text or "", "finish_reason": reason}
            if slm is not None:
                choice["slm"] = slm
            return choice

        status = "200"
        try:
            if kind == "chat.completion":
                yield chunk([piece(role=True)])
            while True:
                item = await asyncio.wait_for(job.events.get(), timeout=request_timeout)
                if isinstance(item, str):
                    yield chunk([piece(item)])
                elif isinstance(item, Exception):
                    err = item if isinstance(item, ServeError) else ServeError(500, "internal error", "server_error")
                    status = str(err.status)
                    yield f"data: {json.dumps({'error': {'message': err.message, 'type': err.kind, 'code': err.status}})}\n\n"
                    break
                else:
                    result = item["done"]
                    yield chunk([piece(reason=result["finish_reason"], slm=result["slm"])])
                    if include_usage:
                        usage = {"prompt_tokens": result["prompt_tokens"], "completion_tokens": result["completion_tokens"],
                                 "total_tokens": result["prompt_tokens"] + result["completion_tokens"]}
                        yield chunk([], usage)
                    break
            yield "data: [DONE]\n\n"
        except asyncio.TimeoutError:
            status = "408"
            err = timeout_error()
            yield f"data: {json.dumps({'error': {'message': err.message, 'type': err.kind, 'code': 408}})}\n\n"
        finally:  # a client gone mid-stream frees its row: the decoding loop stops it at the next token
            job.cancelled.set()
            if status != "200":
                metrics.requests.labels("stream-error", status).inc()

    return app


class _AuthAndMetrics:
    """ASGI middleware: the API key, the body limits, and per-endpoint request counts and latency until the
    last byte (streams included).

    - With an API key every path but ``/health`` and ``/metrics`` (open for probes and scrapers) needs it,
      the OpenAPI docs (``/docs``, ``/redoc``, ``/openapi.json``) included.
    - A body larger than ``max_body_bytes`` gets 413 (from its Content-Length before any of it is read, or
      as soon as a chunked body passes the limit); headers and body not received within ``read_timeout``
      seconds get 408. The body is read here, whole, before the app runs, so a slow or huge upload never
      reaches the model; the app then reads it from memory.

    A plain ASGI class rather than ``@app.middleware("http")``: Starlette's ``BaseHTTPMiddleware`` re-wraps
    every response as a stream and interferes with client-disconnect handling.
    """

    OPEN = ("/health", "/metrics")

    def __init__(self, app, api_key: str | None, metrics: Metrics, max_body_bytes: int = MAX_BODY_BYTES,
                 read_timeout: float = READ_TIMEOUT):
        self.app, self.api_key, self.metrics = app, api_key, metrics
        self.expected = f"Bearer {api_key}".encode() if api_key else b""
        self.max_body_bytes, self.read_timeout = max_body_bytes, read_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, start = scope["path"], time.perf_counter()
        if path not in ENDPOINTS:
            path = "other"  # bounded label values, whatever paths clients try
        headers = dict(scope.get("headers") or [])

        async def refuse(status: int, message: str, kind: str, extra=None):
            self.metrics.requests.labels(path, str(status)).inc()
            await _error(status, message, kind, headers=extra)(scope, receive, send)

        if self.api_key and scope["path"] not in self.OPEN:
            if not secrets.compare_digest(headers.get(b"authorization", b""), self.expected):
                return await refuse(401, "missing or wrong API key (send 'Authorization: Bearer <key>')",
                                    "authentication_error")
        too_big = (f"the request body is larger than this server's limit of {self.max_body_bytes} bytes "
                   "(slm serve --max-body-bytes)")
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            declared = 0
        if declared > self.max_body_bytes:
            return await refuse(413, too_big, "invalid_request_error", {"Connection": "close"})
        messages, size = [], 0
        if scope["method"] in ("POST", "PUT", "PATCH"):
            deadline = start + self.read_timeout
            while True:
                try:
                    message = await asyncio.wait_for(receive(), max(0.0, deadline - time.perf_counter()))
                except asyncio.TimeoutError:
                    return await refuse(408, f"the request body did not arrive within {self.read_timeout:g} s "
                                        "(slm serve --read-timeout)", "timeout", {"Connection": "close"})
                if message["type"] == "http.disconnect":
                    return
                size += len(message.get("body", b""))
                if size > self.max_body_bytes:
                    return await refuse(413, too_big, "invalid_request_error", {"Connection": "close"})
                messages.append(message)
                if not message.get("more_body", False):
                    break
        body = [{"type": "http.request", "body": b"".join(m.get("body", b"") for m in messages), "more_body": False}]

        async def replay():
            return body.pop() if body else await receive()

        status = {"code": 500}

        async def counted_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False) and path != "/metrics":
                self.metrics.requests.labels(path, str(status["code"])).inc()
                self.metrics.latency.labels(path).observe(time.perf_counter() - start)

        await self.app(scope, replay if messages else receive, counted_send)


def _choice(kind: str, text: str, reason: str, slm: dict) -> dict:
    if kind == "chat.completion":
        return {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                "logprobs": None, "slm": slm}
    return {"index": 0, "text": text, "finish_reason": reason, "logprobs": None, "slm": slm}


async def _wait(job: Job, timeout: float, request: Request):
    """The job's result; a client that goes away (or a timeout) cancels the job: a queued job is dropped
    before it runs, a running one stops at its next token or chunk. Starlette does not tell a non-streaming
    handler that its client left, so the connection is watched here (its next ASGI message after the body is
    ``http.disconnect``)."""
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({job.future, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if job.future in done:
            return job.future.result()
        job.cancelled.set()
        if gone in done:
            raise cancelled_error()
        raise timeout_error()
    except asyncio.CancelledError:  # the server cancelled the handler (shutdown, or a client gone)
        job.cancelled.set()
        raise
    finally:
        gone.cancel()


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def run(model_dir: str, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
        max_connections: int = MAX_CONNECTIONS, keep_alive: int = KEEP_ALIVE, **options) -> None:
    """Serve ``model_dir`` until SIGTERM or Ctrl-C: new connections are refused, in-flight requests finish
    (uvicorn's graceful shutdown, at most ``request_timeout`` seconds), then this returns normally.

    ``max_connections``: open connections and requests in progress beyond this get 503 (uvicorn's
    ``limit_concurrency``); ``keep_alive``: seconds an idle keep-alive connection stays open."""
    import signal
    import threading

    import uvicorn

    class _Server(uvicorn.Server):
        # uvicorn re-raises the signal after its graceful shutdown, so the process would die by SIGTERM
        # (exit -15); we want a clean return once the requests are drained. A second Ctrl-C forces the exit.
        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            handled = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    from uvicorn.protocols.http.h11_impl import H11Protocol

    read_timeout = float(options.get("read_timeout", READ_TIMEOUT))

    class _Protocol(H11Protocol):
        # uvicorn times out an idle keep-alive connection only after a response, and any byte received stops
        # that timer: a socket that never sends a request, or trickles its headers, stays open for ever. Here a
        # connection must have started a request within read_timeout of opening or of its last response.
        def connection_made(self, transport):
            super().connection_made(transport)
            self._guard()

        def on_response_complete(self):
            super().on_response_complete()
            self._guard()

        def _guard(self):
            cycle = self.cycle

            def check():
                idle = self.cycle is cycle and (cycle is None or cycle.response_complete)
                if idle and not self.transport.is_closing():
                    self.transport.close()
            self.loop.call_later(read_timeout, check)

    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request to a vLLM engine otherwise
    app = create_app(model_dir, **options)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, http=_Protocol,
                            limit_concurrency=max_connections, timeout_keep_alive=keep_alive,
                            timeout_graceful_shutdown=int(options.get("request_timeout", 120)))
    _Server(config).run()
