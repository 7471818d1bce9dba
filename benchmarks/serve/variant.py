"""Comparison servers for benchmarks/serve/run.py: the same `slm serve` code, with the model replaced by
what it is compared against. Not part of the library: these exist only to measure what routing costs.

    python benchmarks/serve/variant.py plain  --model DIR --port P   # classifier backbone, no routing
    python benchmarks/serve/variant.py merged --model DIR --port P   # one merged LoRA; send model "base"
"""

from __future__ import annotations

import argparse

import torch

from scalable_lm import store
from scalable_lm.methods.base import Prediction
from scalable_lm.server import run


class PlainClassifier:
    """The frozen backbone with task 0's head: no query encoding, no mixing (what a server of one plain
    fine-tuned classifier does per request)."""

    def __init__(self, slm):
        self.slm, self.classifier, self.task_names = slm, slm.classifier, slm.task_names
        self.label_names, self.config = slm.label_names, slm.config

    def __getattr__(self, name):  # everything else the server reads (kind, encoder, ...) is the directory's
        return getattr(self.slm, name)

    @torch.no_grad()
    def predict(self, texts, batch_size=32, progress=False, task=None, abstain=None):
        batch = self.classifier.tokenize(texts, self.config.train.max_length)
        probs = torch.softmax(self.classifier.head_logits(self.classifier.features(batch), 0), dim=-1)
        return [Prediction(label=self.label_names[0][int(p.argmax())], task=self.task_names[0],
                           confidence=float(p.max())) for p in probs]


def plain(directory):
    return PlainClassifier(store.load(directory))


def merged(directory):
    """Task 0's P entries merged with equal weights into every target layer's frozen weight (one LoRA
    merged into the model); requests that name model "base" then run the plain layers."""
    slm = store.load(directory)
    with torch.no_grad():
        for layer in slm.layers.values():
            a, b = layer.lora_A[0], layer.lora_B[0]  # (P, r, d_in), (P, d_out, r)
            delta = torch.einsum("por,pri->oi", b, a) / a.shape[0] * layer.scaling
            layer.base_layer.weight += delta.to(layer.base_layer.weight.dtype)
    return slm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=["plain", "merged"])
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    run(args.model, port=args.port, log_level="warning", loader={"plain": plain, "merged": merged}[args.variant])


if __name__ == "__main__":
    main()
