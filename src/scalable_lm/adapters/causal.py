"""Decoder LMs (``AutoModelForCausalLM``, LLaMA family first): prompts, answer-only loss, generation.

Routing is per row and set once per prompt by the caller (``adapters.inject.routed``) around the whole
``generate`` call: greedy decoding keeps the batch's rows in place, so each row keeps its entries and
weights at every step, and the KV cache is untouched (the increments change the layer, not the cache).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CausalLM(nn.Module):
    """A frozen causal LM with its tokenizer.

    Args:
        model: an ``AutoModelForCausalLM``; frozen here.
        tokenizer: its tokenizer; the chat template is used when it has one.
        max_length: most tokens of prompt + answer in training (the prompt is cut from the left).
    """

    def __init__(self, model: nn.Module, tokenizer, max_length: int = 256):
        super().__init__()
        self.model = model.requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no end-of-sequence token")

    def render(self, prompt: str) -> str:
        """The text the model sees before its answer (chat template with the generation prompt)."""
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                      add_generation_prompt=True, tokenize=False)
        return prompt + "\n"

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def training_batch(self, prompts: list[str], answers: list[str]) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids``/``attention_mask`` and ``labels`` that are ``-100`` except on the answer
        tokens and the closing end-of-sequence token (the loss is on the answer only)."""
        rows, labels = [], []
        for prompt, answer in zip(prompts, answers):
            answer_ids = self._ids(answer)[: self.max_length // 2] + [self.tokenizer.eos_token_id]
            prompt_ids = self._ids(self.render(prompt))[-(self.max_length - len(answer_ids)):]
            rows.append(prompt_ids + answer_ids)
            labels.append([-100] * len(prompt_ids) + answer_ids)
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        return {
            "input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in rows]),
            "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
            "labels": torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels]),
        }

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy of the answer tokens."""
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100)

    @torch.no_grad()
    def generate(self, prompts: list[str], max_new_tokens: int = 64) -> list[tuple[str, float]]:
        """Greedy answers, batched with left padding: ``(text, mean log-probability of its tokens)``."""
        ids = [self._ids(self.render(p))[-self.max_length:] for p in prompts]
        width = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
        out = self.model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                  do_sample=False, pad_token_id=pad, eos_token_id=self.tokenizer.eos_token_id,
                                  output_scores=True, return_dict_in_generate=True)
        new = out.sequences[:, width:]
        logprobs = torch.stack([torch.log_softmax(s.float(), dim=-1) for s in out.scores], dim=1)  # (B, T, V)
        chosen = logprobs.gather(-1, new[..., None])[..., 0]
        answers = []
        for row in range(len(prompts)):
            tokens = new[row].tolist()
            stop = tokens.index(self.tokenizer.eos_token_id) if self.tokenizer.eos_token_id in tokens else len(tokens)
            text = self.tokenizer.decode(tokens[:stop], skip_special_tokens=True).strip()
            answers.append((text, float(chosen[row, : max(stop, 1)].mean())))
        return answers


class Seq2SeqLM(nn.Module):
    """An encoder-decoder (``AutoModelForSeq2SeqLM``, T5 family) with the same interface as ``CausalLM``:
    the prompt goes to the encoder, the answer is the decoder's target (text-to-text labels)."""

    def __init__(self, model: nn.Module, tokenizer, max_length: int = 256):
        super().__init__()
        self.model = model.requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs end-of-sequence and padding tokens")

    def render(self, prompt: str) -> str:
        return prompt

    def _encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")

    def training_batch(self, prompts: list[str], answers: list[str]) -> dict[str, torch.Tensor]:
        batch = self._encode(prompts)
        targets = [self.tokenizer(a, add_special_tokens=False)["input_ids"][: self.max_length // 2]
                   + [self.tokenizer.eos_token_id] for a in answers]
        width = max(len(t) for t in targets)
        batch["labels"] = torch.tensor([t + [-100] * (width - len(t)) for t in targets])
        return dict(batch)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss

    @torch.no_grad()
    def generate(self, prompts: list[str], max_new_tokens: int = 64) -> list[tuple[str, float]]:
        batch = self._encode(prompts)
        out = self.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  max_new_tokens=max_new_tokens, do_sample=False, output_scores=True,
                                  return_dict_in_generate=True, eos_token_id=self.tokenizer.eos_token_id,
                                  pad_token_id=self.tokenizer.pad_token_id)
        new = out.sequences[:, 1:]  # after the decoder start token
        logprobs = torch.stack([torch.log_softmax(s.float(), dim=-1) for s in out.scores], dim=1)
        chosen = logprobs.gather(-1, new[..., None])[..., 0]
        answers = []
        for row in range(len(prompts)):
            tokens = new[row].tolist()
            eos = self.tokenizer.eos_token_id
            stop = tokens.index(eos) if eos in tokens else len(tokens)
            text = self.tokenizer.decode(tokens[:stop], skip_special_tokens=True).strip()
            answers.append((text, float(chosen[row, : max(stop, 1)].mean())))
        return answers
