"""The request bodies of the HTTP layer (pydantic; extra fields are accepted, as OpenAI clients send many) and the
checks of their text that run on the request's own thread, before anything reaches an engine."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from scalable_lm.serving.front import AUTO
from scalable_lm.serving.protocol import ServeError

SEED_RANGE = (-(1 << 63), (1 << 64) - 1)  # what torch.Generator.manual_seed takes


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class Message(_Body):
    role: str
    content: str | list[dict[str, Any]] | None = None


class Sampling(_Body):
    """What every generation request has: the model (``auto``, ``base`` or a task) and how to sample."""

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


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(Sampling):
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


def text_of(content) -> str:
    """The text of a chat message's ``content`` (a string or OpenAI's list of parts; only text parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return valid_unicode(content, "messages")
    parts = []
    for part in content:
        if part.get("type") != "text":
            raise ServeError(400, f"only text content is supported, not '{part.get('type')}'", param="messages")
        parts.append(str(part.get("text", "")))
    return valid_unicode("".join(parts), "messages")


def valid_unicode(text: str, param: str, what: str = "the text") -> str:
    """``text`` if it is valid Unicode; JSON can carry lone surrogates (``"\\ud800"``), which no tokenizer takes:
    refused here, on the request's own thread, so they never reach (and fail) a batch."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ServeError(400, f"{what} is not valid Unicode (a lone surrogate at character {err.start})",
                         param=param) from None
    return text


def stop_strings(stop: str | list[str] | None) -> list[str]:
    """A request's ``stop`` as a list: up to 4 non-empty, valid strings (400 otherwise)."""
    stop = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stop) > 4 or any(not s for s in stop):
        raise ServeError(400, "stop takes up to 4 non-empty strings", param="stop")
    for text in stop:
        valid_unicode(text, "stop", "a stop string")
    return stop
