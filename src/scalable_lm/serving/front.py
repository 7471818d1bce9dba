"""The routing front: the one place that turns a request into a route and the ``slm`` block of its reply.

``route(loaded, texts, models)`` routes each row by its own query (``auto``: the whole bank, with the
base-model fallback; ``base``: the frozen model; a task name: that task's entries only) and returns, per row,
``{"task", "entries", "weights", "fallback"}``; ``reply_block`` adds the bank generation (and what an engine
adds, e.g. the vLLM engine that answered). ``prompt_tokens`` renders a request's prompt as the model was
taught (its chat template, if any). Engines call these; none routes by itself.
"""

from __future__ import annotations

from scalable_lm.serving.protocol import ServeError

AUTO, BASE = "auto", "base"
CHARS_PER_TOKEN = 32  # a classify input is cut at this many characters per token the model reads, on arrival


def route(loaded, texts: list[str], models: list[str]):
    """``(entries [B, K], weights [B, K], infos)``: each row routed by its own query (``route_rows``); a batch
    of ``base`` rows only gives ``(None, None, infos)`` (no query is encoded: the frozen model answers)."""
    if all(m == BASE for m in models):
        return None, None, [{"task": _base_name(), "entries": [], "weights": [], "fallback": False} for _ in models]
    return loaded.slm.route_rows(texts, models)


def reply_block(info: dict, loaded, **extra) -> dict:
    """The ``slm`` block of a generative reply: the route, the bank generation that served it, and ``extra``."""
    return {**info, "bank": loaded.generation, **extra}


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




def check_generative(loaded) -> None:
    """Refuse (400) a generation request to a model that cannot answer one here."""
    if loaded.kind != "generative":
        raise ServeError(400, "this is a classifier: use /v1/classify")
    if not getattr(loaded.slm.lm, "generates", True):
        raise ServeError(400, "encoder-decoder models are not served yet; use `slm predict`")


def model_info(loaded, model_id: str) -> dict:
    """The ``slm`` field of a model card: a task's routing record, or for ``auto`` the pairs of tasks whose
    recorded routing overlaps by more than 2% (``GrowsByTask.overlaps``)."""
    slm = loaded.slm
    return ({"overlaps": slm.overlaps()} if model_id == AUTO else {} if model_id == BASE
            else {"routing": slm.routing.get(model_id)})


def cut_inputs(loaded, texts: list[str]) -> tuple[list[str], list[bool]]:
    """Classify inputs cut, on arrival, to ``CHARS_PER_TOKEN`` characters per token the model reads (the most of
    its task and query lengths), and per input whether it was cut: characters far beyond what the model reads
    never reach a tokenizer."""
    slm = loaded.slm
    chars = CHARS_PER_TOKEN * max(slm.config.train.max_length, slm.encoder.max_length)
    return [t[:chars] for t in texts], [len(t) > chars for t in texts]


def request_prompt(loaded, query: str, messages: list[dict] | None) -> list[int]:
    """``prompt_tokens`` with the bank's request-side tokenizer (``Loaded.request_tokenizer``): the HTTP layer
    runs this on its one tokenizing thread."""
    return prompt_tokens(loaded.request_tokenizer, loaded.slm.lm, query, messages)
