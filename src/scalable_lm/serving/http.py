"""``slm serve``: an OpenAI-compatible HTTP server (FastAPI + uvicorn) in front of one engine (``serving.ENGINES``).

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions`` (generative models;
streaming as server-sent events), ``POST /v1/classify`` (classifiers), ``GET /health``, ``GET /metrics``
(Prometheus). A request's ``model`` is ``"auto"`` (routed by its own query), ``"base"`` (the frozen
model) or a task name (SLM-TI). Each choice carries an ``slm`` field (ignored by OpenAI clients): the task,
the entries and weights, and whether the base-model fallback answered.

This layer only parses, checks limits, authenticates and serialises: ``Routes`` holds one method per endpoint,
``create_app`` wires them, the request bodies are in ``serving.bodies``, the key/limits/metrics middleware in
``serving.middleware``, the reply JSON and streams in ``serving.replies``, the uvicorn process in
``serving.launch``. It routes nothing itself (``serving.front`` does) and calls engines only through
``serving.protocol.EngineProtocol``. Errors are OpenAI-style JSON bodies that never hold file paths or stack
traces. Nothing here writes to the model directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from scalable_lm.serving import front, replies
from scalable_lm.serving.bodies import (ChatRequest, ClassifyRequest, CompletionRequest, Sampling, stop_strings,
                                        text_of, valid_unicode)
from scalable_lm.serving.engines import ENGINES
from scalable_lm.serving.front import AUTO
from scalable_lm.serving.launch import KEEP_ALIVE, MAX_CONNECTIONS, serve_app
from scalable_lm.serving.local import LIFO_AFTER
from scalable_lm.serving.middleware import MAX_BODY_BYTES, READ_TIMEOUT, AuthAndMetrics, Metrics, error_response
from scalable_lm.serving.protocol import EngineProtocol, Job, ServeError
from scalable_lm.serving.watcher import ModelWatcher

MAX_INPUTS = 256  # --max-inputs: most inputs in one /v1/classify request (413 above)

log = logging.getLogger("scalable_lm.serve")


@dataclass
class Limits:
    """What one request may ask of the server (``slm serve --help`` names the flags)."""

    api_key: str | None = None
    max_inputs: int = MAX_INPUTS
    max_new_tokens: int = 256
    request_timeout: float = 120.0


class Routes:
    """The endpoints, one method each, over one engine (set by the app's lifespan) and the directory watcher."""

    def __init__(self, watcher: ModelWatcher, metrics: Metrics, limits: Limits):
        self.watcher, self.metrics, self.limits = watcher, metrics, limits
        self.engine: EngineProtocol | None = None
        # prompts are tokenised off the event loop (a long one would stall /health), on one thread of their own:
        # the request tokenizer is used by that thread alone (a fast tokenizer is not thread-safe)
        self.tokenize_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slm-tokenize")

    # ---- status ------------------------------------------------------------------------------------
    async def health(self):
        """Open without the API key (for probes), so with --api-key it names no task: only their count."""
        engine, hide = self.engine, self.limits.api_key is not None
        loaded = engine.loaded
        if loaded is None:
            error = engine.startup_error or (self.watcher.last_error and "the model directory did not load; "
                                             "see the server log")
            return JSONResponse({"status": "loading", "error": error}, status_code=503)
        tasks = {"task_count": len(loaded.tasks)} if hide else {"tasks": loaded.tasks}
        extra = engine.status() or {}
        if hide and extra:  # engine addresses are not for anonymous probes
            extra = {"engine": extra["engine"], "engines_healthy": sum(e["healthy"] for e in extra["engines"])}
        return {"status": "ok", "kind": loaded.kind, **tasks, "bank": loaded.generation,
                "queue": engine.queue_length, "reload_error": self.watcher.last_error is not None, **extra}

    async def prometheus(self):
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def models(self):
        loaded = self.engine.check(AUTO)
        return {"object": "list", "data": [_model_card(loaded, m) for m in loaded.models]}

    async def model(self, model_id: str):
        return _model_card(self.engine.check(model_id), model_id)  # 404 naming the valid ones

    # ---- classification ----------------------------------------------------------------------------
    async def classify(self, body: ClassifyRequest, request: Request):
        loaded = self.engine.check(body.model)
        if loaded.kind != "classifier":
            raise ServeError(400, "this is a generative model: use /v1/chat/completions or /v1/completions")
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        if not texts:
            raise ServeError(400, "input is empty", param="input")
        if len(texts) > self.limits.max_inputs:
            raise ServeError(413, f"{len(texts)} inputs in one request; this server takes at most "
                             f"{self.limits.max_inputs} (slm serve --max-inputs): send them in several requests",
                             param="input")
        for i, text in enumerate(texts):
            if not text.strip():
                raise ServeError(400, f"input {i} is empty", param="input")
            valid_unicode(text, "input", f"input {i}")
        texts, cut = front.cut_inputs(loaded, texts)  # "truncated" says so, as for inputs cut at max_length
        # tokenising (length checks included) happens in the batch thread: a fast tokenizer is not thread-safe
        job = self.engine.submit(Job("classify", body.model, texts, cut=cut, abstain=body.abstain,
                                     deadline=time.perf_counter() + self.limits.request_timeout))
        result = await replies.wait(job, self.limits.request_timeout, request)
        data = [{"index": i, "label": p.label, "task": p.task, "confidence": p.confidence, "entries": p.entries,
                 "weights": p.weights, "abstained": p.abstained, "truncated": was_cut}
                for i, (p, was_cut) in enumerate(zip(result["predictions"], result["truncated"]))]
        return {"object": "list", "model": body.model, "data": data}

    # ---- generation --------------------------------------------------------------------------------
    async def chat(self, body: ChatRequest, request: Request):
        loaded = self.engine.check(body.model)
        messages = [{"role": m.role, "content": text_of(m.content)} for m in body.messages]
        users = [m["content"] for m in messages if m["role"] == "user"]
        if not users:
            raise ServeError(400, "messages hold no user message", param="messages")
        # the query is the last user turn, as in training; the engine renders the whole conversation
        job = await self._job(body, users[-1], messages, loaded)
        return await self._respond(job, body, replies.CHAT, request)

    async def completions(self, body: CompletionRequest, request: Request):
        loaded = self.engine.check(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if len(prompts) != 1:
            raise ServeError(400, "send one prompt per request", param="prompt")
        job = await self._job(body, valid_unicode(prompts[0], "prompt"), None, loaded)
        return await self._respond(job, body, "text_completion", request)

    async def _job(self, body: Sampling, query: str, messages: list[dict] | None, loaded) -> Job:
        front.check_generative(loaded)
        limit, where = self.limits.max_new_tokens, "messages" if messages else "prompt"
        if body.n != 1:
            raise ServeError(400, "only n=1 is supported", param="n")
        max_tokens = body.max_completion_tokens or body.max_tokens or min(16, limit)
        if max_tokens > limit:
            raise ServeError(400, f"max_tokens={max_tokens} is above this server's limit of {limit} "
                             "(slm serve --max-new-tokens)", param="max_tokens")
        if not query.strip():
            raise ServeError(400, "the prompt is empty", param=where)
        # tokenised here, once, on this layer's own thread and tokenizer (the batch thread uses the model's): a
        # too-long prompt is refused before a stream starts
        prompt = await asyncio.get_running_loop().run_in_executor(
            self.tokenize_pool, front.request_prompt, loaded, query, messages)
        if len(prompt) + max_tokens > loaded.context:
            raise ServeError(400, f"the prompt has {len(prompt)} tokens and max_tokens is {max_tokens}; this "
                             f"model's context is {loaded.context} tokens", param=where)
        return Job("generate", body.model, [query], prompt=prompt, max_tokens=max_tokens,
                   temperature=body.temperature, top_p=body.top_p, seed=body.seed, stop=stop_strings(body.stop),
                   stream=body.stream, ignore_eos=body.ignore_eos,
                   deadline=time.perf_counter() + self.limits.request_timeout)

    async def _respond(self, job: Job, body: Sampling, kind: str, request: Request):
        ident = ("chatcmpl-" if kind == replies.CHAT else "cmpl-") + uuid.uuid4().hex[:24]
        created, timeout = int(time.time()), self.limits.request_timeout
        self.engine.submit(job)
        if not job.stream:
            return replies.completion(kind, ident, created, body.model, await replies.wait(job, timeout, request))
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        events = replies.events(job, kind, ident, created, body.model, include_usage, timeout,
                                on_error=lambda status: self.metrics.requests.labels("stream-error", status).inc())
        return StreamingResponse(events, media_type="text/event-stream")


def _model_card(loaded, model_id: str) -> dict:
    """An OpenAI model object; ``slm`` adds (clients ignore it) a task's routing record, or for ``auto`` the
    pairs of tasks whose recorded routing overlaps (``front.model_info``)."""
    return {"id": model_id, "object": "model", "created": int(loaded.loaded_at), "owned_by": "scalable-lm",
            "slm": front.model_info(loaded, model_id)}


def _state_dir(model_dir: str) -> str:
    """Where the vLLM front keeps its adapters and the child's log: beside the query cache, one folder per
    model directory (never inside the model directory, which the server does not write)."""
    import hashlib
    from pathlib import Path

    from scalable_lm.encoder import cache_dir

    return str(cache_dir() / "vllm-front" / hashlib.sha256(str(Path(model_dir).resolve()).encode()).hexdigest()[:16])


def _add_error_handlers(app: FastAPI) -> None:
    """One OpenAI-style body for every error: ours, pydantic's, Starlette's and any other (500, no trace)."""

    async def serve_error(request: Request, err: ServeError):
        return error_response(err.status, err.message, err.kind, err.param, err.headers)

    async def invalid(request: Request, err: RequestValidationError):
        problems = []
        for e in err.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
            problems.append("the body is not valid JSON" if e.get("type") == "json_invalid"
                            else f"{where}: {e.get('msg')}")
        return error_response(400, "; ".join(problems), "invalid_request_error")

    async def http_error(request: Request, err: StarletteHTTPException):
        return error_response(err.status_code, str(err.detail), "invalid_request_error")

    async def internal(request: Request, err: Exception):
        log.exception("internal error on %s", request.url.path)
        return error_response(500, "internal error", "server_error")

    for kind, handler in ((ServeError, serve_error), (RequestValidationError, invalid),
                          (StarletteHTTPException, http_error), (Exception, internal)):
        app.add_exception_handler(kind, handler)


def create_app(model_dir: str, *, api_key: str | None = None, max_batch: int = 16, max_wait_ms: float = 5.0,
               max_queue: int = 256, max_new_tokens: int = 256, request_timeout: float = 120.0,
               reload_interval: float = 1.0, query_cache: int = 0, loader=None, max_body_bytes: int = MAX_BODY_BYTES,
               max_inputs: int = MAX_INPUTS, read_timeout: float = READ_TIMEOUT,
               lifo_after: float | None = LIFO_AFTER, engine: str = "local", vllm_urls: list[str] | None = None,
               vllm_python: str | None = None, vllm_args: list[str] | None = None,
               vllm_state: str | None = None) -> FastAPI:
    """The ASGI app serving ``model_dir`` (see ``slm serve --help`` for the options)."""
    spec = ENGINES[engine]
    metrics = Metrics(lambda: routes.engine)
    # an engine that holds the model elsewhere (vLLM) needs only the router here: no backbone weights loaded
    watcher = ModelWatcher(model_dir, reload_interval, loader=loader, query_cache=query_cache,
                           on_event=lambda result: metrics.reloads.labels(result).inc(),
                           router_only=not spec.holds_model)
    routes = Routes(watcher, metrics, Limits(api_key, max_inputs, max_new_tokens, request_timeout))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        routes.engine = spec.build(watcher, metrics=metrics, max_batch=max_batch, max_wait_ms=max_wait_ms,
                                   max_queue=max_queue, max_new_tokens=max_new_tokens, lifo_after=lifo_after,
                                   vllm_urls=vllm_urls, vllm_python=vllm_python, vllm_args=vllm_args,
                                   state_dir=vllm_state or _state_dir(model_dir))
        routes.engine.start()
        watcher.start()
        yield
        log.info("shutting down: in-flight requests have finished")
        watcher.stop()
        await routes.engine.stop()
        routes.tokenize_pool.shutdown(wait=False)

    app = FastAPI(title="scalable-lm", lifespan=lifespan,
                  description="OpenAI-compatible API of scalable-lm. With --api-key every path but /health and "
                  "/metrics (these docs included) needs 'Authorization: Bearer KEY'.")
    _add_error_handlers(app)
    app.add_middleware(AuthAndMetrics, api_key=api_key, metrics=metrics, max_body_bytes=max_body_bytes,
                       read_timeout=read_timeout)
    app.add_api_route("/health", routes.health, methods=["GET", "HEAD"])
    app.add_api_route("/metrics", routes.prometheus, methods=["GET"])
    app.add_api_route("/v1/models", routes.models, methods=["GET"])
    app.add_api_route("/v1/models/{model_id}", routes.model, methods=["GET"])
    app.add_api_route("/v1/classify", routes.classify, methods=["POST"])
    app.add_api_route("/v1/chat/completions", routes.chat, methods=["POST"])
    app.add_api_route("/v1/completions", routes.completions, methods=["POST"])
    return app


def run(model_dir: str, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
        max_connections: int = MAX_CONNECTIONS, keep_alive: int = KEEP_ALIVE, **options) -> None:
    """Serve ``model_dir`` until SIGTERM or Ctrl-C: new connections are refused, in-flight requests finish
    (uvicorn's graceful shutdown, at most ``request_timeout`` seconds), then this returns normally.

    ``max_connections``: open connections and requests in progress beyond this get 503 (uvicorn's
    ``limit_concurrency``); ``keep_alive``: seconds an idle keep-alive connection stays open."""
    serve_app(create_app(model_dir, **options), host, port, log_level, max_connections, keep_alive,
              read_timeout=float(options.get("read_timeout", READ_TIMEOUT)),
              graceful=options.get("request_timeout", 120))
