"""Encoder classifier: a frozen HF encoder (``AutoModel``), masked mean pooling, one linear head per task.

Heads are per task because tasks have different label sets; which head answers an input is decided by
the caller (``methods.slm``) from the retrieval, never from the task name or the number of classes.
"""

from __future__ import annotations

import torch
from torch import nn

from scalable_lm.device import module_device
from scalable_lm.encoder import max_positions, mean_pool


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

    @property
    def device(self) -> torch.device:
        """The backbone's device: batches and new heads are put there."""
        return module_device(self.backbone)

    def add_head(self, num_labels: int) -> nn.Linear:
        """A new float32 head on the backbone's device (initialised on the CPU, so seeds agree across devices)."""
        self.heads.append(nn.Linear(self.hidden, num_labels).to(self.device))
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

    def head_logits(self, features: torch.Tensor, head: int) -> torch.Tensor:
        """``[B, C_head]`` float32 logits of one task's head (features of a half-precision backbone are cast)."""
        layer = self.heads[head]
        return layer(features.to(layer.weight.dtype))
