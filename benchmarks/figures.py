"""Figures from result files, each written with its data beside it (same stem, ``.csv``).

Usage:
    python benchmarks/figures.py readme       # the README's figures, into benchmarks/results/readme/
    (the per-benchmark line figures are drawn by ``python benchmarks/report.py <benchmark>``, through ``lines``)

Every method has one colour, marker and line style in every figure (``STYLES``); a line is the mean over the
seeds run for that method on that order, its band the min-max over those seeds, and the legend gives the
seed count. A figure's CSV has one row per method and step (``method, step, mean, min, max, seeds``, plus
``panel`` where a figure has several), so a reader can re-plot it and a test can check it.
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

from scalable_lm.figures import pyplot  # matplotlib on the Agg backend, or a clear error

ROOT = Path(__file__).resolve().parent / "results"

# canonical method label (``method_label``) -> (colour, marker, line style); the label is what the legend says
DEFAULT = "SLM, default (query from its own block 4)"
STYLES: dict[str, tuple[str, str, str]] = {
    DEFAULT: ("#1f77b4", "o", "-"),
    "SLM, 0.2.0's default (separate MiniLM-L4 encoder)": ("#6b9ac4", "o", "--"),
    "SLM, full MiniLM queries": ("#aec7e8", "o", "--"),
    "SLM, DTKR keys (the paper's router)": ("#17becf", "v", "-"),
    "SLM, K=1": ("#9edae5", "<", ":"),
    "SLM, K=2": ("#6baed6", ">", ":"),
    "oracle: one LoRA per task, task given (rank 48 = SLM's capacity)": ("#000000", "*", "--"),
    "oracle: one LoRA per task, task given (rank 12)": ("#7f7f7f", "*", ":"),
    "multitask LoRA (all tasks at once)": ("#393b79", "P", "--"),
    "replay": ("#ff7f0e", "s", "-"),
    "Arrow": ("#2ca02c", "D", "-"),
    "OSF": ("#d62728", "^", "-"),
    "GainLoRA": ("#9467bd", "X", "-"),
    "O-LoRA": ("#8c564b", "p", "-"),
    "EWC": ("#e377c2", "h", "-"),
    "sequential LoRA": ("#bcbd22", "d", "-"),
    "sequential fine-tuning": ("#c49c94", "8", "-"),
}
_NAMES = {"replay": "replay", "arrow": "Arrow", "osf": "OSF", "gainlora": "GainLoRA", "o-lora": "O-LoRA",
          "ewc": "EWC", "sequential-lora": "sequential LoRA", "sequential-finetune": "sequential fine-tuning",
          "multitask-lora": "multitask LoRA (all tasks at once)"}
_FALLBACK = ["#ad494a", "#8ca252", "#bd9e39", "#a55194", "#637939", "#843c39", "#7b4173", "#5254a3"]


def method_label(record: dict, stem: str = "") -> str:
    """The readable, canonical name of a result's method (one per method across every figure)."""
    method = record["method"]
    cfg = record.get("method_config", {})
    bank, encoder = cfg.get("bank", {}), cfg.get("model", {}).get("encoder", "minilm")
    if stem.startswith("ablation_"):
        return f"SLM ablation: {stem.removeprefix('ablation_').rsplit('_', 1)[0]}"
    if method != "slm":
        return _NAMES.get(method, method)
    if record.get("task_id"):
        rank = bank.get("rank", 12) * bank.get("entries_per_task", 1)
        return ("oracle: one LoRA per task, task given (rank 48 = SLM's capacity)" if rank == 48
                else f"oracle: one LoRA per task, task given (rank {rank})")
    if bank.get("router") == "dtkr":
        return "SLM, DTKR keys (the paper's router)"
    if bank.get("top_k", 4) != 4:
        return f"SLM, K={bank['top_k']}"
    if encoder == "shared-l4" and len(bank.get("targets") or []) > 1:  # every linear layer above block 4
        return DEFAULT
    return ("SLM, 0.2.0's default (separate MiniLM-L4 encoder)" if encoder == "minilm-l4"
            else "SLM, full MiniLM queries" if encoder == "minilm" else f"SLM, {encoder} queries")


def style(label: str) -> tuple[str, str, str]:
    """``(colour, marker, line style)`` of a method: fixed for known ones, stable (by name) for others."""
    if label in STYLES:
        return STYLES[label]
    return _FALLBACK[sum(map(ord, label)) % len(_FALLBACK)], "o", "-."


def _seed(record: dict) -> int:
    return int(record.get("benchmark_config", {}).get("seed", 0) or 0)


def curves(records: list[tuple[str, dict]], measure: str) -> list[dict]:
    """Rows ``{method, step, mean, min, max, seeds}`` over ``records`` (``(stem, result)``, one order).

    ``measure``: ``average_accuracy`` (percent, after 1..T tasks) or ``forgetting`` (points, after 2..T).
    Runs of one method with the same seed count once (the newest file name wins in sorted order).
    """
    from scalable_lm import metrics

    by_method: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    seen = {}
    for stem, r in records:
        seen[(method_label(r, stem), _seed(r))] = (stem, r)
    for (label, _), (stem, r) in sorted(seen.items()):
        if r["R"][0][0] is None:
            continue
        if measure == "average_accuracy":
            values = {k + 1: 100 * metrics.average_accuracy(r["R"], k) for k in range(len(r["R"]))}
        else:
            after = r["metrics"].get("forgetting_after") or []
            values = {k + 1: 100 * x for k, x in enumerate(after) if k >= 1 and x is not None}
        for step, v in values.items():
            by_method[label][step].append(v)
    rows = []
    for label, steps in by_method.items():
        for step, vs in sorted(steps.items()):
            rows.append({"method": label, "step": step, "mean": round(statistics.fmean(vs), 3),
                         "min": round(min(vs), 3), "max": round(max(vs), 3), "seeds": len(vs)})
    return rows


def write_csv(rows: list[dict], path: Path) -> Path:
    """The figure's data, beside it: ``path`` with the ``.csv`` suffix."""
    out = path.with_suffix(".csv")
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return out


def finish(fig, path: Path, rows: list[dict]) -> Path:
    """Lay out, write ``fig`` to ``path`` (PNG) and its data ``rows`` beside it (``write_csv``); returns ``path``.
    Saved with a tight bounding box, so no title, label or legend is cut off."""
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    pyplot().close(fig)
    write_csv(rows, path)
    return path


def _order_methods(labels) -> list[str]:
    known = [m for m in STYLES if m in labels]
    return known + sorted(set(labels) - set(known))


def lines(rows: list[dict], path: Path, ylabel: str, title: str, xlabel: str = "tasks learned") -> Path:
    """A line figure of ``curves`` rows (mean line, min-max band), legend outside; writes the PNG and CSV."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 5.5))
    methods = _order_methods({r["method"] for r in rows})
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        colour, marker, dash = style(method)
        x = [r["step"] for r in mine]
        seeds = max(r["seeds"] for r in mine)
        ax.plot(x, [r["mean"] for r in mine], color=colour, marker=marker, linestyle=dash,
                label=f"{method} ({seeds} seed{'s' if seeds > 1 else ''})", zorder=3 if method.startswith("SLM") else 2)
        if seeds > 1:
            ax.fill_between(x, [r["min"] for r in mine], [r["max"] for r in mine], color=colour, alpha=0.15, lw=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("\n".join(textwrap.wrap(title, 90)), fontsize=9)
    ax.grid(alpha=0.3)
    # below the axes, in two columns: the legend takes no room from the data
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    return finish(fig, path, rows)


def stream_figures(records: list[tuple[str, dict]], out: Path, backbone: str = "MiniLM") -> list[Path]:
    """``average_accuracy.png`` and ``forgetting.png`` (+ CSV) of the results on the reference order (the
    first record's task order), one line per method."""
    if not records:
        return []
    order = records[0][1]["tasks"]
    same = [(s, r) for s, r in records if r["tasks"] == order]
    where = f"{out.name}, order {' → '.join(order)}, {backbone} backbone; no task-ID unless 'task given'"
    return [lines(curves(same, "average_accuracy"), out / "average_accuracy.png",
                  "average accuracy on the tasks so far (%)", f"Average accuracy as tasks are added ({where})"),
            lines(curves(same, "forgetting"), out / "forgetting.png", "forgetting (points, paper Eq. 8)",
                  f"Forgetting as tasks are added ({where})")]


# ---- the README's figures ----------------------------------------------------------------------------------
def _records(directory: Path) -> list[tuple[str, dict]]:
    out = []
    for p in sorted(directory.glob("*.json")):
        r = json.loads(p.read_text())
        if isinstance(r, dict) and "R" in r:
            out.append((p.stem, r))
    return out


def final_bars(out: Path) -> Path:
    """Final average accuracy on CL-5 order 4 per method, mean and min-max over seeds: cl5_seeds (three seeds
    for the main methods) and, for methods run only there, cl5 (seed 0)."""
    plt = pyplot()

    order4 = ("order4", "order4_seed1", "order4_seed2")
    default = [(s, r) for s, r in _records(ROOT / "route_free") if s.startswith("shared_l4_linear_") and s.endswith(order4)]
    records = [(s, r) for s, r in _records(ROOT / "cl5_seeds") if s.endswith(order4) and not s.startswith("ablation_")]
    have = {method_label(r, s) for s, r in default + records}
    extra = [(s, r) for s, r in _records(ROOT / "cl5") if s.endswith("order4") and not s.startswith("ablation_")
             and method_label(r, s) not in have]
    rows = []
    for source, recs in (("route_free", default), ("cl5_seeds", records), ("cl5", extra)):
        finals = [r for r in curves(recs, "average_accuracy") if r["step"] == 5]
        rows += [{**r, "source": f"benchmarks/results/{source}"} for r in finals]
    rows.sort(key=lambda r: -r["mean"])
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for i, r in enumerate(rows):
        colour, _, _ = style(r["method"])
        ax.barh(i, r["mean"], color=colour, edgecolor="black", lw=0.5)
        if r["seeds"] > 1:
            ax.errorbar(r["mean"], i, xerr=[[r["mean"] - r["min"]], [r["max"] - r["mean"]]], color="black", capsize=3)
        ax.text(r["max"] + 0.8, i, f"{r['mean']:.1f} ({r['seeds']} seed{'s' if r['seeds'] > 1 else ''})",
                va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [r["method"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("average accuracy after the 5 tasks (%)")
    ax.set_title("CL-5 order 4 (agnews, yelp, amazon, yahoo, dbpedia; 500 rows per task), MiniLM, 2 CPU cores\n"
                 "right task and right label, no task-ID unless 'task given'; bar: mean over seeds, whisker: min-max",
                 fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    return finish(fig, out / "cl5_final_accuracy.png", [{**r, "step": 5} for r in rows])


def serve_figure(out: Path) -> Path:
    """Served throughput against concurrency: the classifier (slm serve vs the plain backbone), the generative
    model (slm serve vs one merged LoRA) and the vLLM front (benchmarks/results/serve)."""
    plt = pyplot()

    serve = json.loads((ROOT / "serve" / "serve.json").read_text())
    classifier = serve.get("classifier-shared-l4", serve["classifier"])  # today's default when measured
    panels = [(f"classifier (MiniLM, 5 tasks, {'query from block 4' if 'classifier-shared-l4' in serve else 'separate encoder'}):"
               " requests/s", "requests_per_s", classifier["runs"],
               {"routed": "slm serve (routed)", "plain": "plain backbone, no routing",
                "max_batch_1": "slm serve, batching off"}),
              ("generative (SmolLM2-135M, 3 tasks): tokens/s", "tokens_per_s", serve["generative"]["runs"],
               {"routed": "slm serve (routed)", "merged_lora": "one LoRA merged, no routing",
                "max_batch_1": "slm serve, batching off"})]
    vllm = ROOT / "serve" / "vllm_front.json"
    if vllm.exists():
        v = json.loads(vllm.read_text())
        panels.append(("generative on vLLM (SmolLM2-135M, 2 tasks): tokens/s", "tokens_per_s", v["runs"],
                       {"front_vllm": "routing front + vLLM", "vllm_client_named": "vLLM, client names the adapter",
                        "slm_serve": "slm serve (in-process)"}))
    colours = {"slm serve (routed)": "#1f77b4", "slm serve (in-process)": "#1f77b4", "slm serve, batching off": "#aec7e8",
               "plain backbone, no routing": "#000000", "one LoRA merged, no routing": "#000000",
               "routing front + vLLM": "#ff7f0e", "vLLM, client names the adapter": "#2ca02c"}
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    rows = []
    for ax, (title, key, runs, names) in zip(axes, panels):
        for run, label in names.items():
            if run not in runs:
                continue
            points = sorted((int(c), m[key]) for c, m in runs[run].items())
            ax.plot([c for c, _ in points], [y for _, y in points], marker="o", label=label,
                    color=colours.get(label), linestyle="--" if "no routing" in label else "-")
            rows += [{"panel": title, "method": label, "step": c, "mean": y, "min": y, "max": y, "seeds": 1}
                     for c, y in points]
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 8, 32], ["1", "8", "32"])
        ax.set_xlabel("concurrent clients")
        ax.set_title(title, fontsize=9)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Served throughput on this 2-core CPU (benchmarks/results/serve)", fontsize=10)
    return finish(fig, out / "serve_throughput.png", rows)


def scale_figure(out: Path) -> Path | None:
    """Peak memory and served latency against the number of tasks (benchmarks/results/scale), when measured."""
    path = ROOT / "scale" / "scale.json"
    if not path.exists():
        return None
    plt = pyplot()

    sizes = json.loads(path.read_text())["sizes"]
    ts = sorted(int(t) for t in sizes)
    series = [("memory", "peak memory (MB)", {
        "slm predict, 15 texts": [sizes[str(t)]["predict_15"]["peak_rss_mb"] for t in ts],
        "slm learn, one more task": [sizes[str(t)]["learn_one_more"]["peak_rss_mb"] for t in ts],
        "slm serve, after the load test": [sizes[str(t)]["serve_rss_mb_after"] for t in ts]}),
        ("latency", "served p50 latency (ms)", {
            "1 client": [1000 * sizes[str(t)]["serve"]["1"]["p50_s"] for t in ts],
            "8 clients": [1000 * sizes[str(t)]["serve"]["8"]["p50_s"] for t in ts]})]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    rows = []
    for ax, (panel, ylabel, lines_) in zip(axes, series):
        for i, (label, ys) in enumerate(lines_.items()):
            ax.plot(ts, ys, marker="osD"[i % 3], label=label, color=f"C{i}")
            rows += [{"panel": panel, "method": label, "step": t, "mean": round(y, 2), "min": round(y, 2),
                      "max": round(y, 2), "seeds": 1} for t, y in zip(ts, ys)]
        ax.set_xscale("log", base=2)
        ax.set_xticks(ts, [f"{t:,}" for t in ts])
        ax.set_xlabel("tasks in the model directory")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Thousands of tasks: memory and latency (MiniLM classifier with 0.2.0's default, a separate MiniLM-L4\n"
                 "encoder; scalable-lm 0.2.0, 2 CPU cores; benchmarks/results/scale)", fontsize=10)
    return finish(fig, out / "scale.png", rows)


def readme(out: Path = ROOT / "readme") -> list[Path]:
    """The figures the top-level README embeds."""
    out.mkdir(parents=True, exist_ok=True)
    seeds = _records(ROOT / "cl5_seeds")
    order4 = [(s, r) for s, r in seeds if "order4" in s and not s.startswith("ablation_")]
    order4 += [(s, r) for s, r in _records(ROOT / "route_free") if s.startswith("shared_l4_linear_order4")]
    where = "CL-5 order 4 (agnews → yelp → amazon → yahoo → dbpedia), MiniLM"
    learned = [(s, r) for s, r in order4 if not r.get("task_id")]  # an oracle told the task forgets nothing
    return [final_bars(out),
            lines(curves(order4, "average_accuracy"), out / "cl5_average_accuracy.png",
                  "average accuracy on the tasks so far (%)",
                  f"Accuracy as tasks are added: {where}; no task-ID unless 'task given'"),
            lines(curves(learned, "forgetting"), out / "cl5_forgetting.png", "forgetting (points, paper Eq. 8)",
                  f"Forgetting as tasks are added: {where}; methods without task-ID (an oracle told the task "
                  "forgets nothing)"),
            serve_figure(out), *([f] if (f := scale_figure(out)) else [])]


def main(argv: list[str] | None = None) -> None:
    which = (argv if argv is not None else sys.argv[1:]) or ["readme"]
    if which != ["readme"]:
        raise SystemExit("usage: python benchmarks/figures.py readme")
    for path in readme():
        print(f"wrote {path} and {path.with_suffix('.csv').name}")


if __name__ == "__main__":
    main()
