"""Retrieval-only benchmark on CL-5: which router and query encoder find an input's task best?

Usage:
    python benchmarks/retrieval.py [--encoder minilm|mpnet] [--data-dir ../shared/datasets]
        [--train-per-task 500] [--test-per-task 500] [--seed 0]

Retrieval does not depend on the values (low-rank increments) or heads, so this trains only what the
routers need, on cached query embeddings, with the exact code SLM uses (``KnowledgeBank.route``,
``training.train_keys``): every task's keys (preparation stage) and its query statistics, on the same
training rows SLM uses (its 10% validation split held out). It reports retrieval accuracy (paper Eq. 13)
on that validation split (used to pick the default router: no test data in the choice) and on the test
rows, per task, for:
  - DTKR as in our default (G=6, P=4, mask 0.25, 30 epochs at lr 1e-2), K=4 and K=1;
  - the paper's ablations (Tab. 12): without groups (G=1), without the random key mask;
  - DTKR with the paper's own key schedule (3 epochs at lr 1e-3);
  - the Gaussian router (per-task mean, shared shrunk covariance; shrinkage 0.02–0.4), and the nearest
    task centroid. The default router (and shrinkage) is the candidate best on the validation split.
It also writes the t-SNE of the default DTKR keys (paper Fig. 4) and their similarity matrix (Fig. 10).
Output: benchmarks/results/retrieval/<encoder>.json, keys_tsne_<encoder>.png (+ .csv: the points) and
key_similarity_<encoder>.png (+ .json: the matrix).
Query embeddings are cached in $SLM_CACHE_DIR (default ~/.cache/scalable_lm).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, build_stream, provenance  # noqa: E402

from scalable_lm import metrics, training  # noqa: E402
from scalable_lm.config import KeyConfig, TrainConfig  # noqa: E402
from scalable_lm.core import routers  # noqa: E402
from scalable_lm.core.bank import KnowledgeBank  # noqa: E402
from scalable_lm.data.tasks import split_validation  # noqa: E402
from scalable_lm.encoder import QueryEncoder  # noqa: E402

ORDER = ["agnews", "yelp", "amazon", "yahoo", "dbpedia"]
# name -> (groups, K, router, KeyConfig overrides; "shrinkage" is the Gaussian router's, default 0.1)
VARIANTS = {
    "dtkr": (6, 4, "dtkr", {}),
    "dtkr_k1": (6, 1, "dtkr", {}),
    "dtkr_no_groups": (1, 4, "dtkr", {}),
    "dtkr_no_mask": (6, 4, "dtkr", {"mask_prob": 0.0}),
    "dtkr_paper_schedule": (6, 4, "dtkr", {"key_epochs": 3, "key_lr": 1e-3}),
    "gaussian": (6, 4, "gaussian", {}),
    **{f"gaussian_shrinkage_{s}": (6, 4, "gaussian", {"shrinkage": s}) for s in (0.02, 0.05, 0.2, 0.4)},
    "centroid": (6, 4, "centroid", {}),
}


def build_bank(train_queries: list[torch.Tensor], groups: int, keys: KeyConfig, seed: int) -> KnowledgeBank:
    """One bank over all tasks, each task's keys and statistics learned as ``SLM.learn`` does."""
    bank = KnowledgeBank(train_queries[0].shape[1], groups, 4)
    for t, q in enumerate(train_queries):
        generator = torch.Generator().manual_seed(seed + t)
        bank.add_task(generator)
        bank.set_statistics(t, routers.task_statistics(q))
        training.train_keys(bank.keys[t], q, keys, generator)
    return bank


def retrieval_scores(bank: KnowledgeBank, router: str, k: int, queries: list[torch.Tensor], names: list[str],
                     shrinkage: float = 0.1) -> dict:
    out = {}
    owner = bank.entry_task()
    for t, q in enumerate(queries):
        if router == "centroid":
            means = torch.stack([s[0] for s in bank.stats]).float()
            picked = torch.nn.functional.cosine_similarity(q[:, None], means[None], dim=-1).argmax(-1)
            out[names[t]] = float((picked == t).float().mean())
            continue
        entries, _ = bank.route(q, k, router, shrinkage=shrinkage)
        tasks = [[names[int(owner[e])] for e in row] for row in entries]
        out[names[t]] = metrics.retrieval_accuracy(tasks, [names[t]] * len(q))
    out["mean"] = sum(out[n] for n in names) / len(names)
    return out


def plot_keys(bank: KnowledgeBank, names: list[str], out: Path, tag: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    keys = bank.all_keys()  # (E, G, dg)
    E, G, _ = keys.shape
    owner = bank.entry_task()
    flat = torch.nn.functional.normalize(keys.reshape(E * G, -1), dim=-1).numpy()
    xy = TSNE(n_components=2, perplexity=min(30, E * G // 4), random_state=0, init="pca").fit_transform(flat)
    fig, ax = plt.subplots(figsize=(6, 5))
    markers = "ovs^DP*Xhp"
    for t, name in enumerate(names):
        for g in range(G):
            rows = [e * G + g for e in range(E) if int(owner[e]) == t]
            ax.scatter(xy[rows, 0], xy[rows, 1], color=f"C{t}", marker=markers[g % len(markers)], s=30,
                       label=name if g == 0 else None)
    ax.set_title(f"t-SNE of DTKR sub-keys ({tag}): colour = task, marker = group")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"keys_tsne_{tag}.png", dpi=100)
    plt.close(fig)
    with (out / f"keys_tsne_{tag}.csv").open("w") as f:  # the figure's data, beside it
        f.write("method,step,task,group,x,y\n")  # method = the task owning the entry; step = the entry
        for e in range(E):
            for g in range(G):
                f.write(f"{names[int(owner[e])]},{e},{names[int(owner[e])]},{g},{xy[e * G + g, 0]:.5f},"
                        f"{xy[e * G + g, 1]:.5f}\n")
    full = torch.nn.functional.normalize(keys.reshape(E, -1), dim=-1)
    sim = (full @ full.T).numpy()
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(sim, vmin=-1, vmax=1, cmap="coolwarm")
    labels = [f"{names[int(owner[e])]}#{e % bank.entries_per_task}" for e in range(E)]
    ax.set_xticks(range(E), labels, rotation=90, fontsize=6)
    ax.set_yticks(range(E), labels, fontsize=6)
    ax.set_title(f"cosine similarity of DTKR keys ({tag})")
    fig.colorbar(im)
    fig.tight_layout()
    fig.savefig(out / f"key_similarity_{tag}.png", dpi=100)
    plt.close(fig)
    (out / f"key_similarity_{tag}.json").write_text(json.dumps({"entries": labels, "cosine": sim.round(5).tolist()}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="minilm", help="query encoder: minilm (default), mpnet, or minilm-l2 (first 2 layers: lighter)")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent.parent / "shared" / "datasets")
    parser.add_argument("--train-per-task", type=int, default=500)
    parser.add_argument("--test-per-task", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = ROOT / "results" / "retrieval"
    out.mkdir(parents=True, exist_ok=True)
    cfg = {"order": ORDER, "train_per_task": args.train_per_task, "test_per_task": args.test_per_task, "seed": args.seed}
    stream = build_stream(cfg, args.data_dir)  # the same rows as the CL-5 stream runs
    train_cfg = TrainConfig(seed=args.seed)
    start = time.perf_counter()
    encoder = QueryEncoder.from_name(args.encoder)
    cache = encoder.default_cache_path()
    encoder.load_cache(cache)
    splits = {"train": [], "validation": [], "test": []}
    for t, task in enumerate(stream):  # SLM's split: seed = train.seed + task index
        train_rows, val_rows = split_validation(task.train, train_cfg.val_fraction, train_cfg.seed + t)
        for split, rows in (("train", train_rows), ("validation", val_rows), ("test", task.test)):
            splits[split].append(encoder.encode([x for x, _ in rows], progress=sys.stderr.isatty()))
        encoder.save_cache(cache)
    encode_s = time.perf_counter() - start
    names = [t.name for t in stream]
    results, banks = {}, {}
    for name, (groups, k, router, key_over) in VARIANTS.items():
        t0 = time.perf_counter()
        key_over = dict(key_over)
        shrinkage = key_over.pop("shrinkage", 0.1)
        key_cfg = replace(KeyConfig(), **key_over)
        sig = (groups, tuple(sorted(key_over.items())))
        if sig not in banks:
            banks[sig] = build_bank(splits["train"], groups, key_cfg, train_cfg.seed)
        bank = banks[sig]
        results[name] = {"groups": groups, "top_k": k, "router": router, "keys": key_over,
                         "shrinkage": shrinkage if router == "gaussian" else None,
                         "validation": retrieval_scores(bank, router, k, splits["validation"], names, shrinkage),
                         "test": retrieval_scores(bank, router, k, splits["test"], names, shrinkage),
                         "seconds": time.perf_counter() - t0}
        print(f"{args.encoder} {name}: validation {100 * results[name]['validation']['mean']:.1f}, "
              f"test {100 * results[name]['test']['mean']:.1f}")
    candidates = {n: r["validation"]["mean"] for n, r in results.items() if n == "dtkr" or n.startswith("gaussian")}
    chosen = max(candidates, key=candidates.get)
    plot_keys(banks[(6, ())], names, out, args.encoder)
    record = {
        "command": f"python benchmarks/retrieval.py --encoder {args.encoder}",
        "config": {**cfg, "encoder": args.encoder, "key_defaults": KeyConfig().__dict__},
        "sizes": {n: {s: len(splits[s][i]) for s in splits} for i, n in enumerate(names)},
        "encode_s": encode_s, "results": results,
        "default_router_by_validation": {"candidates": candidates, "chosen": chosen},
        "provenance": provenance(),
    }
    (out / f"{args.encoder}.json").write_text(json.dumps(record, indent=2))
    print(f"default router on validation: {chosen} ({candidates}) -> {out / (args.encoder + '.json')}")


if __name__ == "__main__":
    main()
