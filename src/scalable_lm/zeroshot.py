"""Zero-shot multiple choice by log-likelihood (ARC-Easy, ARC-Challenge, PIQA, WinoGrande).

Each choice becomes a (context, continuation) pair; the model's answer is the choice whose continuation
is most likely. ARC and PIQA: context ``"Question: ...\\nAnswer:"``, continuation ``" <choice>"``, scored
by mean log-probability per token (longer answers are not penalised). WinoGrande: the blank is filled with
each option in the context and the rest of the sentence is the continuation (same for both options),
scored by its total log-probability. Plain text, no chat template: this measures what the backbone knows.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from scalable_lm.device import module_device


def multiple_choice_pairs(task: str, row: dict) -> tuple[list[tuple[str, str]], bool]:
    """``([(context, continuation) per choice], normalise_by_length)`` for one row."""
    if task == "winogrande":
        before, _, after = row["question"].partition("_")
        return [(before + choice, after) for choice in row["choices"]], False
    context = f"Question: {row['question']}\nAnswer:"
    return [(context, " " + choice) for choice in row["choices"]], True


@torch.no_grad()
def loglikelihoods(model, tokenizer, pairs: list[tuple[str, str]], max_length: int = 256,
                   start: list[int] | None = None) -> list[tuple[float, int]]:
    """``(sum of log-probabilities of the continuation's tokens, their number)`` per pair, in one batch.

    ``start``: ids put before every context (a base model's BOS, ``CausalLM.start_ids``).

    Routing (which increments each row mixes) is set by the caller around this call, one row per pair.
    """
    rows, spans = [], []
    for context, continuation in pairs:
        ctx = list(start or []) + tokenizer(context, add_special_tokens=False)["input_ids"]
        cont = tokenizer(continuation, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
        ids = (ctx + cont)[-max_length:]
        rows.append(ids)
        spans.append(min(len(cont), len(ids) - 1))
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = module_device(model)
    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
    logprobs = F.log_softmax(model(input_ids=input_ids, attention_mask=mask).logits.float(), dim=-1)
    out = []
    for i, (r, n) in enumerate(zip(rows, spans)):
        positions = torch.arange(len(r) - n - 1, len(r) - 1, device=device)  # each predicts the next token
        targets = torch.tensor(r[len(r) - n:], device=device)
        out.append((float(logprobs[i, positions, targets].sum()), n))
    return out


def choose(scores: list[tuple[float, int]], normalise: bool) -> int:
    values = [s / n if normalise else s for s, n in scores]
    return max(range(len(values)), key=values.__getitem__)


def answer_rows(lm, task: str, rows: list[dict], route=None) -> list[int]:
    """Zero-shot answers of ``lm`` (a ``CausalLM``) to ``rows`` of a multiple-choice ``task``; ``route(pairs)``,
    if given, is the routing context (``routed(...)``) each question's choices are scored under."""
    lm.eval()
    answers = []
    for row in rows:
        pairs, normalise = multiple_choice_pairs(task, row)
        with route(pairs) if route is not None else contextlib.nullcontext():
            scores = loglikelihoods(lm.model, lm.tokenizer, pairs, start=lm.start_ids)
        answers.append(choose(scores, normalise))
    return answers
