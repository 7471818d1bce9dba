"""What wraps every request before the routes see it: the API key, the body limits, and the Prometheus metrics
(request counts and latency until the last byte); and the one OpenAI-style error body of the server."""

from __future__ import annotations

import asyncio
import secrets
import time

from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

MAX_BODY_BYTES = 1 << 20  # --max-body-bytes: a request body larger than this gets 413
READ_TIMEOUT = 30.0  # --read-timeout: seconds to send the headers and the whole body (408 / closed after)
ENDPOINTS = {"/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/classify"}


def error_response(status: int, message: str, kind: str, param: str | None = None, headers=None) -> JSONResponse:
    """An OpenAI-style error body (never a file path or a stack trace)."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


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


class AuthAndMetrics:
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
            await error_response(status, message, kind, headers=extra)(scope, receive, send)

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
