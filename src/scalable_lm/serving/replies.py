"""OpenAI reply JSON of the HTTP layer: a whole completion, its server-sent-event stream, and the wait for a job's
result that cancels the job when its client goes away."""

from __future__ import annotations

import asyncio
import json

from starlette.requests import Request

from scalable_lm.serving.protocol import Job, ServeError, cancelled_error, timeout_error

CHAT = "chat.completion"


def usage(result: dict) -> dict:
    return {"prompt_tokens": result["prompt_tokens"], "completion_tokens": result["completion_tokens"],
            "total_tokens": result["prompt_tokens"] + result["completion_tokens"]}


def completion(kind: str, ident: str, created: int, model: str, result: dict) -> dict:
    """The whole reply of a non-streaming request (``kind``: ``chat.completion`` or ``text_completion``)."""
    if kind == CHAT:
        choice = {"index": 0, "message": {"role": "assistant", "content": result["text"]}}
    else:
        choice = {"index": 0, "text": result["text"]}
    choice.update(finish_reason=result["finish_reason"], logprobs=None, slm=result["slm"])
    return {"id": ident, "object": kind, "created": created, "model": model, "usage": usage(result),
            "choices": [choice]}


def _error_event(err: ServeError) -> str:
    return f"data: {json.dumps({'error': {'message': err.message, 'type': err.kind, 'code': err.status}})}\n\n"


async def events(job: Job, kind: str, ident: str, created: int, model: str, include_usage: bool, timeout: float,
                 on_error=None):
    """The server-sent events of a streaming request: its pieces as they come, the final chunk with the ``slm``
    block (and usage if asked), ``[DONE]``; an error event if the job fails or times out (``on_error(status)``
    is then called). However the stream ends, the job is cancelled: a client gone mid-stream frees its row."""
    chunk_kind = "chat.completion.chunk" if kind == CHAT else "text_completion"

    def chunk(choices, usage_=None):
        out = {"id": ident, "object": chunk_kind, "created": created, "model": model, "choices": choices}
        if usage_ is not None:
            out["usage"] = usage_
        return f"data: {json.dumps(out)}\n\n"

    def piece(text=None, reason=None, slm=None, role=False):
        if kind == CHAT:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": reason}
        if slm is not None:
            choice["slm"] = slm
        return choice

    failed: ServeError | None = None
    try:
        if kind == CHAT:
            yield chunk([piece(role=True)])
        while True:
            item = await asyncio.wait_for(job.events.get(), timeout=timeout)
            if isinstance(item, str):
                yield chunk([piece(item)])
            elif isinstance(item, Exception):
                failed = item if isinstance(item, ServeError) else ServeError(500, "internal error", "server_error")
                yield _error_event(failed)
                break
            else:
                result = item["done"]
                yield chunk([piece(reason=result["finish_reason"], slm=result["slm"])])
                if include_usage:
                    yield chunk([], usage(result))
                break
        yield "data: [DONE]\n\n"
    except asyncio.TimeoutError:
        failed = timeout_error()
        yield _error_event(failed)
    finally:
        job.cancelled.set()
        if failed is not None and on_error is not None:
            on_error(str(failed.status))


async def wait(job: Job, timeout: float, request: Request):
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
