"""Memory of a model at each compute dtype: the frozen backbone and query encoder, and what each task and
each bank entry adds (read from the tensors a new task gets, not computed by hand).

Usage:
    python benchmarks/perf/memory.py [--models minilm smollm2]

Writes benchmarks/results/perf/memory.json, with the CPU's time for one matrix product at each dtype (a CPU
without native bfloat16 / float16 arithmetic runs them far slower than float32). Keys, values (the low-rank factors) and heads are float32 at every
dtype (they are trained; the optimiser state follows their dtype), the router statistics float64; only the
frozen backbone and query encoder take the compute dtype. Nothing is trained: a task's tensors are created
with their real shapes (default options: rank 12, 4 entries per task, MiniLM-L4 query encoder).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from scalable_lm.config import SLMConfig
from scalable_lm.device import DTYPES

OUT = Path(__file__).resolve().parents[1] / "results" / "perf" / "memory.json"


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def measure(kind: str, dtype: str) -> dict:
    if kind == "minilm":
        from scalable_lm.methods.slm import SLM

        slm = SLM(SLMConfig(), device="cpu", dtype=dtype)
        labels = ["a", "b", "c", "d"]
    else:
        from scalable_lm.methods.generative import GenerativeSLM

        slm = GenerativeSLM(SLMConfig(), device="cpu", dtype=dtype)
        labels = None
    frozen = nbytes(p for p in slm.backbone_module.parameters())
    encoder = nbytes(slm.encoder.model.parameters())
    slm._add_task("probe", labels or [], torch.Generator().manual_seed(0))  # real shapes, untrained
    params = slm._named_task_params(0)
    values = nbytes(p for n, p in params.items() if n.startswith("values."))
    keys = nbytes([params["keys"]])
    heads = nbytes(p for n, p in params.items() if n.startswith("head."))
    d = slm.bank.dim
    stats = (d + d * d + 1 + d + 2) * torch.finfo(torch.float64).bits // 8  # mean, scatter, count, novelty
    p = slm.bank.entries_per_task
    return {"model": slm.config.model.backbone, "dtype": dtype, "backbone_bytes": frozen, "encoder_bytes": encoder,
            "wrapped_layers": len(slm.layers), "rank": slm.config.bank.rank, "entries_per_task": p,
            "per_entry_values_bytes": values // p, "per_task_bytes": values + keys + heads + stats,
            "per_task_parts": {"values": values, "keys": keys, "head (4 labels)" if labels else "head": heads,
                               "router statistics (float64)": stats}}


def matmul_seconds(dtype: torch.dtype, repeats: int = 10) -> float:
    """Median seconds of one [2048, 384] x [384, 1536] product (MiniLM's feed-forward at batch 32 x 64 tokens)."""
    import statistics

    a, b = torch.randn(2048, 384, dtype=dtype), torch.randn(384, 1536, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["minilm", "smollm2"], choices=["minilm", "smollm2"])
    args = parser.parse_args(argv)
    rows = [measure(kind, dtype) for kind in args.models for dtype in DTYPES]
    matmul = {name: matmul_seconds(dtype) for name, dtype in DTYPES.items()}
    print("cpu matmul seconds", matmul)
    for r in rows:
        print(json.dumps({k: v for k, v in r.items() if k != "per_task_parts"}))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"command": "python benchmarks/perf/memory.py " + " ".join(argv or []),
                               "date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(),
                               "cpu_matmul_seconds": matmul, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
