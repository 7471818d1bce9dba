"""Encoder classifier: a frozen HF encoder (``AutoModel``) and one head per task.

Heads are per task because tasks have different label sets; which head answers an input is decided by
the caller (``methods.slm``) from the retrieval, never from the task name or the number of classes.

Two kinds of head. A task SLM learns gets a linear head on the masked mean of the last hidden state
(``nn.Linear``). A task imported from a transformers sequence classifier keeps that classifier's own head
(``TokenHead``): the first token's hidden state through a dense layer and tanh, then a linear layer. That is
BERT's pooler + classifier and RoBERTa's/MPNet's classification head alike (BERT's dense is its pooler).
"""

from __future__ import annotations

import torch
from torch import nn

from scalable_lm.device import module_device
from scalable_lm.encoder import max_positions, mean_pool

MEAN, FIRST_TOKEN = 0, 1  # the rows of ``EncoderClassifier.pooled``


class TokenHead(nn.Module):
    """``logits = W tanh(D x_0 + d) + b`` on the first token's hidden state ``x_0`` (``[B, H] -> [B, C]``).

    ``weight [C, H]`` / ``bias [C]`` keep the names of a linear head, so a task's state names differ only
    by ``dense.weight [H, H]`` / ``dense.bias [H]``.
    """

    reads = FIRST_TOKEN

    def __init__(self, hidden: int, num_labels: int):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        out = nn.Linear(hidden, num_labels)
        self.weight, self.bias = out.weight, out.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(torch.tanh(self.dense(x)), self.weight, self.bias)


def head_reads(head: nn.Module) -> int:
    """Which pooled feature a head reads: ``MEAN`` (linear heads) or ``FIRST_TOKEN`` (``TokenHead``)."""
    return getattr(head, "reads", MEAN)


class EncoderClassifier(nn.Module):
    """Backbone + per-task heads.

    Args:
        backbone: HF encoder returning ``last_hidden_state``; frozen here.
        tokenizer: its tokenizer.
    """

    def __init__(self, backbone: nn.Module, tokenizer):
        super().__init__()
        self.backbone = backbone.requires_grad_(False)
        self.tokenizer = tokenizer
        self.hidden = int(backbone.config.hidden_size)
        self.heads = nn.ModuleList()

    def train(self, mode: bool = True) -> "EncoderClassifier":
        """Set the backbone's mode only: heads have no dropout or normalisation, and walking thousands of them
        on every ``predict`` (``nn.Module.train`` visits every submodule) would cost more than the answer."""
        self.training = mode
        self.backbone.train(mode)
        return self

    @property
    def device(self) -> torch.device:
        """The backbone's device: batches and new heads are put there."""
        return module_device(self.backbone)

    def add_head(self, num_labels: int, first_token: bool = False) -> nn.Module:
        """A new float32 head on the backbone's device (initialised on the CPU, so seeds agree across devices):
        linear on the mean, or a ``TokenHead`` when ``first_token``."""
        head = TokenHead(self.hidden, num_labels) if first_token else nn.Linear(self.hidden, num_labels)
        self.heads.append(head.to(self.device))
        return self.heads[-1]

    def tokenize(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        """Padded batch on the backbone's device, each text cut at ``max_length`` tokens (or the backbone's
        positions, if fewer)."""
        max_length = min(max_length, max_positions(self.backbone))
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"].to(self.device), "attention_mask": enc["attention_mask"].to(self.device)}

    def pad(self, tokens: dict[str, list[list[int]]], rows: list[int]) -> dict[str, torch.Tensor]:
        """Right-pad pre-tokenised rows into a batch (tokenisation happens once per dataset, not per batch)."""
        ids = [tokens["input_ids"][i] for i in rows]
        width = max(len(x) for x in ids)
        pad_id = self.tokenizer.pad_token_id or 0
        input_ids = torch.tensor([x + [pad_id] * (width - len(x)) for x in ids], device=self.device)
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=self.device)
        return {"input_ids": input_ids, "attention_mask": mask}

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, H]`` mean-pooled last hidden state (routing, if any, is set by the caller)."""
        out = self.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return mean_pool(out.last_hidden_state, batch["attention_mask"])

    def pooled(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, 2, H]``: the mean-pooled last hidden state (``MEAN``) and the first token's (``FIRST_TOKEN``),
        for a caller whose rows may go to either kind of head."""
        out = self.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        hidden = out.last_hidden_state
        return torch.stack([mean_pool(hidden, batch["attention_mask"]), hidden[:, 0]], dim=1)

    def head_logits(self, features: torch.Tensor, head: int) -> torch.Tensor:
        """``[B, C_head]`` float32 logits of one task's head on ``features`` (``[B, H]`` from ``features``, or
        ``[B, 2, H]`` from ``pooled``); features of a half-precision backbone are cast."""
        layer = self.heads[head]
        if features.ndim == 3:
            features = features[:, head_reads(layer)]
        elif head_reads(layer) != MEAN:
            raise ValueError(f"head {head} reads the first token: pass ``pooled`` features, not mean-pooled ones")
        return layer(features.to(layer.weight.dtype))
