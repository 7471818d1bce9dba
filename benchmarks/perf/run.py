"""Speed and scale of per-row mixing, measured against the alternatives in one process.

Usage:
    python benchmarks/perf/run.py [--quick] [--threads 2] [--max-tasks 2000]

Writes benchmarks/results/perf/perf.json and README.md. Every figure is the median of repeated runs after
warm-up, with the interquartile range; variants compared with each other run interleaved (A, B, A, B, ...)
in the same process so that load on the machine hits them alike, and each comparison is a ratio.

Sections:
  mixing    MiniLM forward (batch 32, 128 tokens): plain backbone vs ours (K=4 entries per row) vs the
            authors' dense ΔW (per batch, and per row) vs PEFT mixed-adapter batches (one adapter per row)
            vs PEFT Arrow routing.
  growth    per-example latency (routing + forward) with 5 … 2,000 tasks in the bank; memory and file size
            per task; loading a saved bank; reading one task's file lazily.
  training  one fine-tune step with mixing over every earlier entry vs one plain single-LoRA step (ours and
            PEFT's); the preparation stage's share of a task's learning time, from the CL-5 result files.
  end2end   the encoder classifier's prediction with its query encoder (cold and cached queries) vs the
            plain backbone alone.
  decoder   SmolLM2-135M greedy generation (batch 8, 32 new tokens forced): K=2 entries mixed per row on every
            o_proj vs the plain model with one LoRA merged into its weights.
  --sections picks some of them; their figures replace those in an existing perf.json (the others are kept).
Entries are random (synthetic) here: speed does not depend on what the numbers are.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from run import provenance  # noqa: E402

from scalable_lm.adapters.inject import BankLinear, inject, routed  # noqa: E402
from scalable_lm.backbones import load_encoder  # noqa: E402
from scalable_lm.core.bank import KnowledgeBank  # noqa: E402

TARGETS = ["attention.output.dense"]
RANK, ALPHA, P = 12, 24.0, 4


def bench(fns: dict, repeats: int, warmup: int = 2) -> dict:
    """Interleaved timing: ``{name: {median_ms, q1_ms, q3_ms, n}}``."""
    times = {name: [] for name in fns}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(1000 * (time.perf_counter() - start))
    out = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
        out[name] = {"median_ms": statistics.median(ts), "q1_ms": q[0], "q3_ms": q[2], "n": len(ts)}
    return out


def ratio(res: dict, a: str, b: str) -> float:
    return res[a]["median_ms"] / res[b]["median_ms"]


def fill_tasks(layers: dict[str, BankLinear], tasks: int, generator: torch.Generator) -> None:
    """Append ``tasks`` frozen tasks of random factors (B non-zero, as after training)."""
    for _ in range(tasks):
        for layer in layers.values():
            a, b = layer.add_task(P, generator)
            with torch.no_grad():
                b.normal_(0, 0.02, generator=generator)
            a.requires_grad_(False)
            b.requires_grad_(False)


def long_texts(n: int) -> list[str]:
    words = "the model keeps learning new tasks one after another without forgetting old ones".split()
    return [" ".join(words[(i + j) % len(words)] for j in range(200)) for i in range(n)]


# ---- the authors' approach, for comparison only --------------------------------------------------
class DenseDeltaLinear(nn.Module):
    """The official code's mixing: a dense ``d_out × d_in`` increment built from the retrieved entries.

    ``per_row=False``: one ΔW per batch from the batch-averaged weights (their shortcut: one retrieval per
    batch). ``per_row=True``: one ΔW per row (what per-input routing costs with dense increments).
    """

    def __init__(self, bank_layer: BankLinear, per_row: bool):
        super().__init__()
        self.inner, self.per_row = bank_layer, per_row

    def forward(self, x):
        base = self.inner.base_layer
        idx, w = self.inner.route
        a, b = self.inner.gather(idx)  # (B, K, r, d_in), (B, K, d_out, r)
        if not self.per_row:
            delta = torch.einsum("bk,bkor,bkri->oi", w / w.shape[0], b, a) * self.inner.scaling
            return F.linear(x, base.weight + delta, base.bias)
        delta = torch.einsum("bk,bkor,bkri->boi", w, b, a) * self.inner.scaling  # (B, d_out, d_in)
        return base(x) + torch.bmm(x, delta.transpose(1, 2))


def swap_in(model: nn.Module, layers: dict[str, BankLinear], per_row: bool) -> dict[str, DenseDeltaLinear]:
    wrapped = {}
    for name, layer in layers.items():
        parent = model.get_submodule(name.rsplit(".", 1)[0])
        dense = DenseDeltaLinear(layer, per_row)
        setattr(parent, name.rsplit(".", 1)[1], dense)
        wrapped[name] = dense
    return wrapped


def mixing_section(model, tokenizer, repeats: int) -> dict:
    from peft import ArrowConfig, LoraConfig, get_peft_model

    batch = tokenizer(long_texts(32), padding=True, truncation=True, max_length=128, return_tensors="pt")
    assert batch["input_ids"].shape == (32, 128)
    g = torch.Generator().manual_seed(0)
    tasks = 5
    plain = copy.deepcopy(model)
    ours_model = copy.deepcopy(model)
    layers = inject(ours_model, TARGETS, RANK, ALPHA)
    fill_tasks(layers, tasks, g)
    idx = torch.stack([torch.randperm(tasks * P, generator=g)[:4] for _ in range(32)])
    w = torch.softmax(torch.randn(32, 4, generator=g), dim=-1)
    dense_batch_model = copy.deepcopy(ours_model)
    dense_batch_layers = {n: m for n, m in dense_batch_model.named_modules() if isinstance(m, BankLinear)}
    swap_in(dense_batch_model, dense_batch_layers, per_row=False)
    dense_row_model = copy.deepcopy(ours_model)
    dense_row_layers = {n: m for n, m in dense_row_model.named_modules() if isinstance(m, BankLinear)}
    swap_in(dense_row_model, dense_row_layers, per_row=True)
    # PEFT: the same five tasks as five named adapters (one entry each: PEFT applies one adapter per row)
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS),
                                adapter_name="task_0")
    for t in range(1, tasks):
        peft_model.add_adapter(f"task_{t}", LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02, generator=g)
    names = [f"task_{int(i)}" for i in torch.randint(0, tasks, (32,), generator=g)]
    arrow_model = copy.deepcopy(peft_model)
    arrow = ArrowConfig(top_k=3, router_temperature=1.0, rng_seed=0)
    arrow.task_adapter_names, arrow.gks_adapter_names = [f"task_{t}" for t in range(tasks)], []
    arrow_model.add_adapter("arrow_router", LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, arrow_config=arrow))
    arrow_model.set_adapter("arrow_router")
    for m in (plain, ours_model, dense_batch_model, dense_row_model, peft_model, arrow_model):
        m.eval()

    def run_routed(m, lay, i=idx, wt=w):
        def fn():
            with torch.no_grad(), routed(lay, i, wt):
                m(**batch)
        return fn

    def run_plain(m, **kw):
        def fn():
            with torch.no_grad():
                m(**batch, **kw)
        return fn

    res = bench({
        "plain backbone": run_plain(plain),
        "ours, K=4 per row": run_routed(ours_model, layers),
        "ours, K=1 per row (PEFT's amount of work)": run_routed(ours_model, layers, idx[:, :1], torch.ones(32, 1)),
        "authors: dense ΔW per batch": run_routed(dense_batch_model, dense_batch_layers),
        "authors: dense ΔW per row": run_routed(dense_row_model, dense_row_layers),
        "PEFT mixed batch, 1 adapter per row": run_plain(peft_model, adapter_names=names),
        "PEFT Arrow, top-3 per token": run_plain(arrow_model),
    }, repeats)
    # the same comparison on one target layer alone (input [32, 128, 384]), where the differences are not
    # diluted by the rest of the backbone: more repeats, tighter spread
    name = next(iter(layers))
    ours_layer, plain_layer = layers[name], layers[name].base_layer
    peft_layer = peft_model.base_model.model.get_submodule(name)
    h = torch.randn(32, 128, plain_layer.in_features, generator=g)

    def layer_fn(fn):
        def run():
            with torch.no_grad():
                fn()
        return run

    def ours_at(i, wt):
        def run():
            with routed({name: ours_layer}, i, wt):
                ours_layer(h)
        return run

    layer_res = bench({
        "plain nn.Linear": layer_fn(lambda: plain_layer(h)),
        "ours, K=4 per row": layer_fn(ours_at(idx, w)),
        "ours, K=1 per row": layer_fn(ours_at(idx[:, :1], torch.ones(32, 1))),
        "PEFT LoRA layer, 1 adapter per row": layer_fn(lambda: peft_layer(h, adapter_names=names)),
    }, repeats * 10, warmup=5)
    return {
        "setup": {"batch": 32, "tokens": 128, "tasks": tasks, "entries_per_task": P, "rank": RANK, "targets": TARGETS},
        "timings": res,
        "layer_timings": layer_res,
        "layer_ratios": {
            "one layer: ours K=4 / plain Linear": ratio(layer_res, "ours, K=4 per row", "plain nn.Linear"),
            "one layer: PEFT 1 adapter per row / plain Linear": ratio(layer_res, "PEFT LoRA layer, 1 adapter per row", "plain nn.Linear"),
            "one layer: PEFT mixed / ours K=4 (target >= 1.0)": ratio(layer_res, "PEFT LoRA layer, 1 adapter per row", "ours, K=4 per row"),
            "one layer: PEFT mixed / ours K=1 (same work)": ratio(layer_res, "PEFT LoRA layer, 1 adapter per row", "ours, K=1 per row"),
        },
        "ratios": {
            "ours / plain (target <= 1.10)": ratio(res, "ours, K=4 per row", "plain backbone"),
            "PEFT mixed / ours (throughput ours / PEFT; target >= 1.0)": ratio(res, "PEFT mixed batch, 1 adapter per row", "ours, K=4 per row"),
            "PEFT mixed / ours with K=1 (same work: one entry per row)": ratio(res, "PEFT mixed batch, 1 adapter per row", "ours, K=1 per row (PEFT's amount of work)"),
            "PEFT Arrow / ours (throughput ours / Arrow)": ratio(res, "PEFT Arrow, top-3 per token", "ours, K=4 per row"),
            "authors dense per batch / ours": ratio(res, "authors: dense ΔW per batch", "ours, K=4 per row"),
            "authors dense per row / ours": ratio(res, "authors: dense ΔW per row", "ours, K=4 per row"),
        },
    }


def synthetic_bank(tasks: int, dim: int, g: torch.Generator) -> KnowledgeBank:
    bank = KnowledgeBank(dim, 6, P)
    scatter = torch.eye(dim, dtype=torch.float64) * 100  # shared object: synthetic, saves memory here
    for t in range(tasks):
        bank.add_task(g).requires_grad_(False)
        bank.set_statistics(t, (torch.randn(dim, generator=g), scatter, torch.tensor(100.0)))
    return bank


def growth_section(model, tokenizer, sizes: list[int], repeats: int) -> dict:
    """Banks of every size are built first, then timed interleaved, so machine load hits all sizes alike."""
    g = torch.Generator().manual_seed(1)
    batches = {b: tokenizer(long_texts(b), padding=True, truncation=True, max_length=128, return_tensors="pt") for b in (1, 32)}
    queries = {b: torch.randn(b, 384, generator=g) for b in (1, 32)}
    grown = {}
    for size in sizes:
        m = copy.deepcopy(model).eval()
        layers = inject(m, TARGETS, RANK, ALPHA)
        fill_tasks(layers, size, g)
        grown[size] = (m, layers, synthetic_bank(size, 384, g))
    fns = {}
    for size, (m, layers, bank) in grown.items():
        for b in (1, 32):
            for router in ("dtkr", "gaussian"):
                def fn(m=m, layers=layers, bank=bank, b=b, router=router):
                    with torch.no_grad():
                        idx, w = bank.route(queries[b], 4, router)
                        with routed(layers, idx, w):
                            m(**batches[b])
                fns[f"{size} tasks, batch {b}, {router}"] = fn
    res = bench(fns, repeats)
    first, last = sizes[0], sizes[-1]
    ratios = {}
    for b in (1, 32):
        for router in ("dtkr", "gaussian"):
            key = f"batch {b}, {router}"
            ratios[f"{key}: {last} / {first} tasks (target <= 1.15)"] = ratio(res, f"{last} tasks, {key}", f"{first} tasks, {key}")
    per_task = {"values (all target layers)": len(grown[first][1]) * P * RANK * 2 * 384 * 4,
                "keys": P * 384 * 4, "router statistics (mean + scatter, float64)": (384 + 384 * 384 + 1) * 8}
    del grown
    return {"sizes": sizes, "timings": res, "ratios": ratios, "per_task_bytes": per_task,
            "note": "per example = median_ms / batch; routing (scores over every task) included"}


def synthetic_slm(model, tokenizer, tasks: int, g: torch.Generator, encoder: str = "minilm"):
    """A real SLM (MiniLM backbone, query encoder ``encoder``) holding ``tasks`` random, frozen tasks."""
    from scalable_lm.config import SLMConfig
    from scalable_lm.encoder import QueryEncoder
    from scalable_lm.methods.slm import SLM

    query = QueryEncoder(copy.deepcopy(model), tokenizer, name="minilm") if encoder == "minilm" else QueryEncoder.from_name(encoder)
    config = SLMConfig()
    config.model.encoder = encoder  # the saved config must name the query encoder actually used
    slm = SLM(config, backbone=(copy.deepcopy(model), tokenizer), encoder=query)
    for t in range(tasks):
        params = slm._add_task(f"task{t}", ["a", "b", "c", "d"], g)
        slm.bank.set_statistics(t, (torch.randn(384, generator=g), torch.eye(384, dtype=torch.float64) * 100,
                                    torch.tensor(100.0)))
        with torch.no_grad():
            for p in params:
                if p.dim() == 3 and p.shape[1] == 384:  # B factors: non-zero, as after training
                    p.normal_(0, 0.02, generator=g)
        for p in params:
            p.requires_grad_(False)
    return slm


def store_section(model, tokenizer, sizes: list[int]) -> dict:
    """Save and load banks of synthetic tasks with the real store; read one task's file lazily."""
    from scalable_lm import store

    g = torch.Generator().manual_seed(2)
    out = {}
    for size in sizes:
        slm = synthetic_slm(model, tokenizer, size, g)
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp) / "bank"
            t0 = time.perf_counter()
            store.save(slm, directory)
            save_s = time.perf_counter() - t0
            files = sorted((directory / "tasks").glob("*.safetensors"))
            sizes_b = [f.stat().st_size for f in files]
            del slm
            t0 = time.perf_counter()
            loaded = store.load(directory, backbone=(copy.deepcopy(model), tokenizer), encoder=None)
            load_s = time.perf_counter() - t0
            del loaded
            t0 = time.perf_counter()
            one = store.read_task(directory, f"task{size // 2}", ["keys"])
            lazy_ms = 1000 * (time.perf_counter() - t0)
        out[str(size)] = {"save_s": save_s, "load_s": load_s, "read_one_task_keys_ms": lazy_ms,
                          "file_bytes_per_task": statistics.median(sizes_b), "total_bytes": sum(sizes_b),
                          "read_one_task_tensors": sorted(one)}
        print(f"store {size} tasks: save {save_s:.1f}s, load {load_s:.1f}s, one task lazily {lazy_ms:.1f} ms, "
              f"{statistics.median(sizes_b) / 1e6:.2f} MB per task", flush=True)
    return out


def training_section(model, tokenizer, repeats: int) -> dict:
    from peft import LoraConfig, get_peft_model

    g = torch.Generator().manual_seed(3)
    batch = tokenizer(long_texts(16), padding=True, truncation=True, max_length=128, return_tensors="pt")
    labels = torch.randint(0, 4, (16,), generator=g)

    def make_step(m, params, head, ctx):
        opt = torch.optim.AdamW(params + list(head.parameters()), lr=1e-3)

        def fn():
            with ctx():
                hidden = m(**batch).last_hidden_state.mean(1)
            loss = F.cross_entropy(head(hidden), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return fn

    # ours, as SLM's fine-tune stage: 5 frozen tasks + the new one; each row mixes K=4 of all 24 entries
    mixed = copy.deepcopy(model).train()
    layers = inject(mixed, TARGETS, RANK, ALPHA)
    fill_tasks(layers, 5, g)
    new = [p for layer in layers.values() for p in layer.add_task(P, g)]
    idx = torch.stack([torch.randperm(6 * P, generator=g)[:4] for _ in range(16)])
    w = torch.softmax(torch.randn(16, 4, generator=g), dim=-1)
    # ours with a single plain LoRA (one entry, weight 1)
    single = copy.deepcopy(model).train()
    single_layers = inject(single, TARGETS, RANK, ALPHA)
    single_params = [p for layer in single_layers.values() for p in layer.add_task(1, g)]
    ones = (torch.zeros(16, 1, dtype=torch.long), torch.ones(16, 1))
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS))
    peft_model.train()
    peft_params = [p for p in peft_model.parameters() if p.requires_grad]
    res = bench({
        "ours: new task, K=4 of all earlier entries per row": make_step(mixed, new, nn.Linear(384, 4), lambda: routed(layers, idx, w)),
        "ours: one plain LoRA": make_step(single, single_params, nn.Linear(384, 4), lambda: routed(single_layers, *ones)),
        "PEFT: one plain LoRA": make_step(peft_model, peft_params, nn.Linear(384, 4), torch.enable_grad),
    }, repeats)
    out = {"setup": {"batch": 16, "tokens": 128}, "timings": res,
           "ratios": {"mixing step / our plain LoRA step (target <= 1.2)": ratio(res, "ours: new task, K=4 of all earlier entries per row", "ours: one plain LoRA"),
                      "mixing step / PEFT plain LoRA step": ratio(res, "ours: new task, K=4 of all earlier entries per row", "PEFT: one plain LoRA")}}
    # the preparation stage measured here, quietly: statistics + key training on the 450 queries of a CL-5
    # task, against the fine-tune stage's 3 epochs × 29 steps of batch 16 (the mixing step timed above)
    from scalable_lm import training as slm_training
    from scalable_lm.config import KeyConfig
    from scalable_lm.core.routers import task_statistics

    queries = torch.randn(450, 384, generator=g)

    def prepare():
        bank = KnowledgeBank(384, 6, P)
        bank.add_task(torch.Generator().manual_seed(0))
        task_statistics(queries)
        slm_training.train_keys(bank.keys[0], queries, KeyConfig(), torch.Generator().manual_seed(0))

    prep = bench({"preparation stage (450 queries: statistics + keys, 30 epochs)": prepare}, max(3, repeats // 3), warmup=1)
    res.update(prep)
    fine_ms = 3 * math.ceil(450 / 16) * res["ours: new task, K=4 of all earlier entries per row"]["median_ms"]
    out["ratios"]["preparation / fine-tune stage per task (450 rows, 3 epochs; target <= 0.05)"] = (
        prep["preparation stage (450 queries: statistics + keys, 30 epochs)"]["median_ms"] / fine_ms)
    shares = {}
    for path in sorted((ROOT / "results" / "cl5").glob("slm_*.json")):
        r = json.loads(path.read_text())
        for rep in r.get("learn_reports", []):
            if "key_s" in rep:
                fine = rep["total_s"] - rep["encode_s"] - rep["key_s"]
                shares.setdefault(path.stem, {})[rep["task"]] = rep["key_s"] / fine
    # as recorded during the CL-5 runs (which shared the cores with other runs: single tasks' shares are noisy)
    out["preparation_share_of_fine_tune (key_s / fine-tune s, from results/cl5; target <= 0.05)"] = shares
    return out


def end2end_section(model, tokenizer, repeats: int) -> dict:
    from scalable_lm.encoder import mean_pool

    g = torch.Generator().manual_seed(4)
    slm = synthetic_slm(model, tokenizer, 5, g)
    light = synthetic_slm(model, tokenizer, 5, torch.Generator().manual_seed(4), encoder="minilm-l4")
    plain = copy.deepcopy(model).eval()
    head = nn.Linear(384, 4)
    # distinct texts: long_texts repeats every 14 rows, and the query encoder encodes a repeated text once, so
    # repeated texts understated the encoding cost (30% of the backbone measured before this fix)
    texts = [f"text {i}: {t}" for i, t in enumerate(long_texts(32))]

    def plain_predict():
        with torch.no_grad():
            batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
            feats = mean_pool(plain(**batch).last_hidden_state, batch["attention_mask"])
            head(feats).argmax(-1)

    def cold(m):
        def fn():
            m.encoder._cache.clear()
            m.predict(texts, batch_size=32)
        return fn

    res = bench({"plain backbone + head": plain_predict,
                 "SLM predict, queries encoded (MiniLM, 6 layers)": cold(slm),
                 "SLM predict, queries encoded (minilm-l4, the default)": cold(light),
                 "SLM predict, queries cached": lambda: slm.predict(texts, batch_size=32)}, repeats)
    accuracy = {}
    for enc in ("minilm", "minilm-l4"):  # routing accuracy of each query encoder, from the retrieval benchmark
        path = ROOT / "results" / "retrieval" / f"{enc}.json"
        if path.exists():
            r = json.loads(path.read_text())
            chosen = r["default_router_by_validation"]["chosen"]
            accuracy[enc] = {"router": chosen, "validation": r["results"][chosen]["validation"]["mean"],
                             "test": r["results"][chosen]["test"]["mean"]}
    return {"setup": {"batch": 32, "tokens": 128, "tasks": 5}, "timings": res,
            "retrieval_accuracy_by_query_encoder": accuracy,
            "ratios": {"SLM (MiniLM queries encoded) / plain": ratio(res, "SLM predict, queries encoded (MiniLM, 6 layers)", "plain backbone + head"),
                       "SLM (minilm-l4 queries encoded) / plain": ratio(res, "SLM predict, queries encoded (minilm-l4, the default)", "plain backbone + head"),
                       "SLM (queries cached) / plain": ratio(res, "SLM predict, queries cached", "plain backbone + head")}}


def decoder_section(repeats: int, new_tokens: int = 32) -> dict:
    """Generation throughput of SmolLM2 with per-row mixing vs one merged LoRA (same prompts, same length)."""
    from scalable_lm.adapters.causal import CausalLM
    from scalable_lm.backbones import load_causal

    g = torch.Generator().manual_seed(5)
    model, tokenizer = load_causal("smollm2")
    targets, tasks = ["o_proj"], 5
    merged = copy.deepcopy(model)
    with torch.no_grad():  # one LoRA of rank 12 merged into W: the plain model's cost, by construction
        for name, module in merged.named_modules():
            if isinstance(module, nn.Linear) and name.endswith("o_proj"):
                b = torch.randn(module.out_features, RANK, generator=g) * 0.02
                a = torch.randn(RANK, module.in_features, generator=g) / RANK
                module.weight += (ALPHA / RANK) * b @ a
    ours = copy.deepcopy(model)
    layers = inject(ours, targets, RANK, ALPHA)
    fill_tasks(layers, tasks, g)
    lm = CausalLM(model, tokenizer)
    prompts = [lm.render(t[: 300]) for t in long_texts(8)]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    idx = torch.stack([torch.randperm(tasks * P, generator=g)[:2] for _ in range(8)])
    w = torch.softmax(torch.randn(8, 2, generator=g), dim=-1)
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
              pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)

    def gen_merged():
        with torch.no_grad():
            merged.generate(**batch, **kw)

    def gen_ours():
        with torch.no_grad(), routed(layers, idx, w):
            ours.generate(**batch, **kw)

    res = bench({"plain + one merged LoRA": gen_merged, "ours, K=2 per row": gen_ours}, repeats, warmup=1)
    tokens = 8 * new_tokens
    for r in res.values():
        r["tokens_per_s"] = tokens / (r["median_ms"] / 1000)
    return {"setup": {"model": "SmolLM2-135M-Instruct", "batch": 8, "prompt_tokens": int(batch["input_ids"].shape[1]),
                      "new_tokens": new_tokens, "tasks": tasks, "entries_per_task": P, "rank": RANK, "targets": targets},
            "timings": res,
            "ratios": {"throughput ours / merged LoRA (target >= 0.95)": ratio(res, "plain + one merged LoRA", "ours, K=2 per row")}}


def _timing_rows(timings: dict) -> list[str]:
    rows = ["| variant | median ms | IQR ms | n |", "|---|---:|---:|---:|"]
    for name, t in timings.items():
        extra = f" ({t['tokens_per_s']:.0f} tokens/s)" if "tokens_per_s" in t else ""
        rows.append(f"| {name}{extra} | {t['median_ms']:.1f} | {t['q1_ms']:.1f}–{t['q3_ms']:.1f} | {t['n']} |")
    return rows


def write_report(record: dict, path: Path) -> None:
    """Markdown from the JSON only: every ratio with its target, then the timings behind it."""
    lines = ["# Speed and scale (generated by `python benchmarks/perf/run.py`; figures from perf.json)", "",
             f"CPU, {record.get('threads')} threads; medians of interleaved repeats after warm-up; "
             "ratios measured in the same process. Section commits: "
             + ", ".join(f"{k} {v[:7]}" for k, v in record.get("section_commits", {}).items()), ""]
    for name in SECTIONS:
        section = record.get(name)
        if not section:
            continue
        lines += [f"## {name}", ""]
        if "setup" in section:
            lines += ["setup: " + ", ".join(f"{k} {v}" for k, v in section["setup"].items()), ""]
        if "ratios" in section:
            lines += ["| ratio | value |", "|---|---:|"] + [f"| {k} | {v:.3f} |" for k, v in section["ratios"].items()] + [""]
        if "timings" in section:
            lines += _timing_rows(section["timings"]) + [""]
        if "layer_ratios" in section:
            lines += ["One target layer alone (input [32, 128, 384]):", "", "| ratio | value |", "|---|---:|"]
            lines += [f"| {k} | {v:.3f} |" for k, v in section["layer_ratios"].items()] + [""]
            lines += _timing_rows(section["layer_timings"]) + [""]
        if name == "growth":
            lines += ["bytes per task: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in section["per_task_bytes"].items()), ""]
        if name == "training":
            shares = section.get("preparation_share_of_fine_tune (key_s / fine-tune s, from results/cl5; target <= 0.05)", {})
            if shares:
                lines += ["| run | preparation / fine-tune time per task |", "|---|---|"]
                lines += [f"| {run} | " + ", ".join(f"{t} {v:.3f}" for t, v in per.items()) + " |" for run, per in shares.items()]
                lines.append("")
        if name == "store":
            lines += ["| tasks | save s | load s | one task's keys lazily ms | MB per task file | total MB |",
                      "|---:|---:|---:|---:|---:|---:|"]
            lines += [f"| {n} | {v['save_s']:.1f} | {v['load_s']:.1f} | {v['read_one_task_keys_ms']:.1f} | "
                      f"{v['file_bytes_per_task'] / 1e6:.2f} | {v['total_bytes'] / 1e6:.0f} |" for n, v in section.items()]
            lines.append("")
    path.write_text("\n".join(lines) + "\n")


SECTIONS = ("mixing", "growth", "training", "end2end", "store", "decoder")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few repeats and small banks (smoke test)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tasks", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "perf")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--report-only", action="store_true", help="rewrite README.md from perf.json and stop")
    args = parser.parse_args(argv)
    target = args.out / ("perf_quick.json" if args.quick else "perf.json")
    if args.report_only:
        write_report(json.loads(target.read_text()), args.out / "README.md")
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    repeats = 3 if args.quick else 15
    sizes = [s for s in ([5, 50] if args.quick else [5, 50, 500, 2000]) if s <= args.max_tasks]
    model, tokenizer = load_encoder("minilm")
    record = json.loads(target.read_text()) if target.exists() and set(args.sections) != set(SECTIONS) else {}
    record.update({"command": "python benchmarks/perf/run.py" + (" --quick" if args.quick else ""),
                   "threads": args.threads, "provenance": provenance()})
    if not isinstance(record.get("seconds"), dict):  # per section, so that a partial re-run keeps the others
        record["seconds"] = {}
    runs = {
        "mixing": lambda: mixing_section(model, tokenizer, repeats),
        "growth": lambda: growth_section(model, tokenizer, sizes, max(5, repeats // 2)),
        "training": lambda: training_section(model, tokenizer, repeats),
        "end2end": lambda: end2end_section(model, tokenizer, repeats),
        "store": lambda: store_section(model, tokenizer, sizes),
        "decoder": lambda: decoder_section(max(3, repeats // 3)),
    }
    for name in SECTIONS:
        if name not in args.sections:
            continue
        start = time.perf_counter()
        record[name] = runs[name]()
        record["seconds"][name] = time.perf_counter() - start
        record.setdefault("section_commits", {})[name] = record["provenance"].get("git_commit")
        print(name, json.dumps(record[name].get("ratios", ""), indent=1), flush=True)
    record.pop("not_measured", None)
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(target)
    write_report(record, args.out / ("README_quick.md" if args.quick else "README.md"))

if __name__ == "__main__":
    main()
