"""Instruct-3 (paper's "LLaMA benchmark") and few-shot text-label streams on SmolLM2: one config, one
stream, one results JSON.

Usage:
    python benchmarks/instruct/run.py benchmarks/configs/instruct3/slm_order8.json [--data-dir ../shared/datasets]

Config: {"benchmark": "instruct3", "order": ["medical", "mmlu", "finance"],
         "method": "slm" | "oracle" | "base" | "sequential-lora" | "replay" | "o-lora" | "arrow" | "gainlora" | "osf",
         "train_per_task": 200, "test_per_task": 60, "seed": 0, "batch_size": 8, "config": {...SLMConfig overrides}}
- slm: GenerativeSLM, no task-ID; test prompts of all tasks learned so far are shuffled into mixed batches.
- oracle: one LoRA per task (P=1, K=1) used WITH the task named: the per-task upper bound.
- base: the model untrained (each task scored once, at the end).
- sequential-lora / replay: one LoRA trained on the tasks in turn (replay keeps 1% of each task's rows).
- o-lora: one orthogonal LoRA per task, all applied at inference.
- arrow: per-task PEFT LoRAs routed per token by PEFT's Arrow.
"zeroshot": {"sets": ["arc_easy", "arc_challenge", "piqa", "winogrande"], "rows": 200} adds, after the
stream, log-likelihood multiple-choice accuracy on a seeded sample of each set (retention; base = untrained).
"fallback_sweep": [0.0, ...] (slm only) re-scores the final bank with bank.fallback set to each value
(0 = every input gets its nearest task's increments), test tasks and zero-shot sets alike.
"told_task": true (slm only) answers each task's test rows once more with the final bank told the task (its own
entries only, no base-model fallback) and records, per task, both scores on all rows and on the rows the router
sent elsewhere (``told_task`` in the result): what the routing errors cost.
Few-shot with text labels: "benchmark": "fewshot_smollm2", "order": ["dbpedia", "amazon", "yahoo", "agnews"],
"train_per_class": 16 (tasks.classification; answers scored by scoring.label_match).
Standard CL benchmark (O-LoRA's protocol, issue 37): "benchmark": "standard_cl", the same four text-label tasks in
O-LoRA's orders 1-3, "scoring": "exact" (exact match of the whole answer is the primary score, label match
beside it), and "method": "multitask" (one LoRA learned once on every task's training rows, shuffled together,
then scored like the others: the reference the published records divide by). Choosing a rival's setting
without the test rows: "score_on": "validation" scores each task's validation split (carved from its training
rows as learn carves it) instead of its test rows, and "stop_after": k learns only the first k tasks of the order.
Scores: finance and mmlu by first-word exact match, medical by BERTScore-F1 (packaged MiniLM) with ROUGE-L
beside it. The result holds the score matrix, five example answers per task from the final mixed batches,
retrieval accuracy, and retrieval vs generation time per task.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # first: `run` is benchmarks/run.py, `tasks` is found in HERE
from run import provenance, shown_path  # noqa: E402
from tasks import BUILDERS, LABEL_TASKS, LONG_BUILDERS, SKIPPED, read_jsonl  # noqa: E402

from scalable_lm import metrics  # noqa: E402
from scalable_lm.config import SLMConfig  # noqa: E402
from scalable_lm.data.instructions import InstructionTask  # noqa: E402
from scalable_lm.methods.generative import BASE_MODEL  # noqa: E402
from scalable_lm.scoring import bert_score_f1, exact_match, first_word_match, label_match, rouge_l  # noqa: E402

LABEL_TASKS = LABEL_TASKS | set(LONG_BUILDERS)
MAX_NEW = {"medical": 64, "mmlu": 4, "finance": 4, **{n: 8 for n in LABEL_TASKS}}
RESUME = HERE.parents[1] / "runs" / "resume"  # an SLM run's bank and partial record after each task


def score(task: str, answers: list[str], golds: list[str], exact: bool = False) -> dict:
    """Scores of one task's answers; ``exact`` (the Standard CL protocol) makes exact match of the whole
    answer (case and final punctuation aside) the primary score of a text-label task, label match beside it."""
    if task == "medical":
        f1 = bert_score_f1(answers, golds)
        return {"primary": f1, "bertscore_f1": f1, "rouge_l": rouge_l(answers, golds)}
    if task in LABEL_TASKS:
        match, em = label_match(answers, golds), exact_match(answers, golds)
        return {"primary": em if exact else match, "label_match": match, "exact_match": em}
    match = first_word_match(answers, golds)
    return {"primary": match, "first_word_match": match}


def zeroshot(method, zs: dict, data_dir: Path, seed: int) -> dict:
    """Log-likelihood multiple-choice accuracy on a seeded sample of each set; for SLM also the share of
    questions answered by the frozen base model (``bank.fallback``)."""
    out = {}
    for name in zs["sets"]:
        path = next((data_dir / name / f for f in ("test.jsonl", "validation.jsonl") if (data_dir / name / f).exists()))
        rows = read_jsonl(path)
        rows = random.Random(seed).sample(rows, min(zs["rows"], len(rows)))
        answers = method.multiple_choice(name, rows, progress=sys.stderr.isatty())  # base: nothing learned
        out[name] = {"accuracy": sum(a == r["answer"] for a, r in zip(answers, rows)) / len(rows),
                     "rows": len(rows), "file": str(path.name)}
        if getattr(method, "task_names", None) and hasattr(method, "bank"):
            with torch.no_grad():
                _, weights = method._route(method.encoder.encode([r["question"] for r in rows]))
            out[name]["fallback"] = float((weights.sum(-1) == 0).float().mean())
        print(f"zero-shot {name}: {100 * out[name]['accuracy']:.1f}", flush=True)
    return out


def evaluate(method, tasks, cfg, task_id: bool, sink: list | None = None) -> tuple[dict, list]:
    """Every task's test rows, shuffled into mixed batches; ``sink`` (a list) receives each
    ``((task, prompt, gold), prediction)``."""
    rows = [(t.name, p, a) for t in tasks for p, a in t.test]
    random.Random(cfg.get("seed", 0)).shuffle(rows)
    method.max_new_tokens = max(MAX_NEW[t.name] for t in tasks)
    if task_id:
        preds = {}
        for t in tasks:
            mine = [p for n, p, _ in rows if n == t.name]
            preds[t.name] = iter(method.predict(mine, batch_size=cfg.get("batch_size", 8), task=t.name))
        out = [next(preds[n]) for n, _, _ in rows]
        timings = {}
    else:
        out = method.predict([p for _, p, _ in rows], batch_size=cfg.get("batch_size", 8))
        timings = dict(method.timings)
    if sink is not None:
        sink.extend(zip(rows, out))
    scores, examples = {}, []
    for t in tasks:
        mine = [(p, gold, pred) for (n, p, gold), pred in zip(rows, out) if n == t.name]
        s = score(t.name, [pred.label for _, _, pred in mine], [g for _, g, _ in mine], cfg.get("scoring") == "exact")
        if not task_id and any(pred.entry_tasks for *_, pred in mine):  # SLM; a base-model fallback is a miss
            s["retrieval"] = metrics.retrieval_accuracy([pred.entry_tasks for *_, pred in mine], [t.name] * len(mine))
            s["fallback"] = sum(pred.task == BASE_MODEL for *_, pred in mine) / len(mine)
            s["routed_to"] = dict(collections.Counter(pred.task for *_, pred in mine).most_common())
        scores[t.name] = s
        examples += [{"task": t.name, "prompt": p[-300:], "gold": g, "answer": pred.label, "retrieved": pred.task,
                      "weights": pred.weights} for p, g, pred in mine[:5]]
    return {"scores": scores, "timings": timings}, examples


def told_task(method, tasks, cfg, routed: list) -> dict:
    """What SLM's routing costs, per task: its final bank answering the task's test rows as routed (``routed``:
    ``evaluate``'s sink of the final evaluation) and again told the task (``evaluate`` with ``task_id``: its own
    entries only, SLM-TI), with both counted apart on the rows the router sent to another task or to the base
    model. Told, no row falls back to the base model (``bank.fallback`` is off for the pass): the fallback is part
    of the routing whose cost this is."""
    exact = cfg.get("scoring") == "exact"
    told: list = []
    fallback, method.config.bank.fallback = method.config.bank.fallback, 0.0
    try:
        evaluate(method, tasks, cfg, task_id=True, sink=told)
    finally:
        method.config.bank.fallback = fallback
    assert [row for row, _ in told] == [row for row, _ in routed], "told_task needs the final evaluation's rows"

    def acc(task: str, preds, golds: list[str], rows) -> float | None:
        if not rows:
            return None
        return score(task, [preds[i].label for i in rows], [golds[i] for i in rows], exact)["primary"]

    out = {}
    for t in tasks:
        mine = [(gold, as_routed, as_told) for ((n, _, gold), as_routed), (_, as_told) in zip(routed, told)
                if n == t.name]
        golds, as_routed, as_told = [g for g, _, _ in mine], [r for _, r, _ in mine], [k for _, _, k in mine]
        away = [i for i, pred in enumerate(as_routed) if pred.task != t.name]
        every = range(len(mine))
        out[t.name] = {"rows": len(mine), "routed": acc(t.name, as_routed, golds, every),
                       "told": acc(t.name, as_told, golds, every), "away": len(away),
                       "away_routed": acc(t.name, as_routed, golds, away),
                       "away_told": acc(t.name, as_told, golds, away)}
    return out


def backbone_parameters(method) -> int | None:
    """The frozen backbone's parameter count (every results JSON records it)."""
    module = getattr(method, "backbone_module", None) or getattr(getattr(method, "lm", None), "model", None)
    return sum(p.numel() for p in module.parameters()) if module is not None else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--data-dir", type=Path, default=HERE.parents[2] / "shared" / "datasets")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--keep-model", type=Path, help="also save the final model (SLM only) to this new directory")
    args = parser.parse_args(argv)
    cfg = json.loads(args.config.read_text())
    out = args.out or HERE.parent / "results" / cfg["benchmark"] / f"{args.config.stem}.json"
    seed = cfg.get("seed", 0)
    few = {"per_class": cfg["train_per_class"]} if cfg.get("train_per_class") else {}  # few-shot: rows per class
    builders = LONG_BUILDERS if cfg["benchmark"] == "long_sequence" else BUILDERS
    tasks = [builders[n](args.data_dir, cfg.get("train_per_task"), cfg["test_per_task"], seed, **few) for n in cfg["order"]]
    base = SLMConfig().to_dict()
    for section, values in cfg.get("config", {}).items():
        base[section].update(values)
    config = SLMConfig.from_dict(base)
    if cfg.get("score_on") == "validation":  # choosing a rival's setting (standard_cl_select): never the test rows
        from scalable_lm.data.tasks import split_validation

        # each task's validation split as learn carves it (seed: train seed + position), scored in place of test
        tasks = [InstructionTask(t.name, t.train, split_validation(t.train, config.train.val_fraction,
                                                                   config.train.seed + i)[1])
                 for i, t in enumerate(tasks)]
    tasks = tasks[: cfg.get("stop_after", len(tasks))]  # the first tasks only (OSF still plans for the whole order)
    from scalable_lm.methods.generative import GenerativeSLM

    method = cfg["method"]
    if method == "oracle":
        config.bank.entries_per_task, config.bank.top_k, config.bank.router = 1, 1, "gaussian"
    if method in ("sequential-lora", "replay", "o-lora", "arrow", "multitask"):
        from scalable_lm.baselines.generative import ArrowGenerator, OLoRAGenerator, SequentialLoRAGenerator

        if method == "arrow":
            slm = ArrowGenerator(config, top_k=cfg.get("arrow_top_k", 3))
        elif method == "o-lora":
            slm = OLoRAGenerator(config, orth_lambda=cfg.get("orth_lambda", 0.5))
        else:  # multitask: the same one LoRA, learned once on every task's rows together (below)
            slm = SequentialLoRAGenerator(config, replay_fraction=cfg.get("replay_fraction", 0.01 if method == "replay" else 0.0))
    elif method == "gainlora":
        from scalable_lm.baselines.gainlora import GainLoRAGenerator

        slm = GainLoRAGenerator(config, orth_lambda=cfg.get("orth_lambda", 0.5), gate_hidden=cfg.get("gate_hidden", 128),
                                threshold=cfg.get("gate_threshold", 0.97))
    elif method == "osf":
        from scalable_lm.baselines.osf import OSFGenerator

        slm = OSFGenerator(config, lr=cfg.get("osf_lr", 5e-6), targets=cfg.get("osf_targets"),
                           expected_tasks=len(cfg["order"]))
    else:  # "dtype" (e.g. bfloat16 on a GPU) is the frozen backbone's compute dtype; the device is "auto"
        slm = GenerativeSLM(config, dtype=cfg.get("dtype", "float32"))
    n = len(tasks)
    R: list[list[float | None]] = [[None] * n for _ in range(n)]
    command = f"python benchmarks/instruct/run.py {shown_path(args.config)}" + (
        f" --out {shown_path(args.out)}" if args.out else "")
    record = {"command": command, "benchmark_config": cfg,
              "method_config": slm.config.to_dict(), "tasks": [t.name for t in tasks],
              "sizes": {t.name: {"train": len(t.train), "test": len(t.test)} for t in tasks},
              "rows": [], "learn_reports": [], "provenance": provenance(),
              "backbone_parameters": backbone_parameters(slm)}
    start = time.perf_counter()
    examples = []
    if method == "base":
        from scalable_lm.adapters.causal import CausalLM

        lm = CausalLM(slm.lm.model, slm.lm.tokenizer, config.train.max_length, prompt_format=slm.lm.prompt_format)
        rows = []
        for t in tasks:
            answers = []
            for i in range(0, len(t.test), cfg.get("batch_size", 8)):
                chunk = t.test[i: i + cfg.get("batch_size", 8)]
                answers += [a for a, _ in lm.generate([p for p, _ in chunk], MAX_NEW[t.name])]
            s = score(t.name, answers, [g for _, g in t.test], cfg.get("scoring") == "exact")
            rows.append(s)
            R[n - 1][tasks.index(t)] = s["primary"]
            examples += [{"task": t.name, "prompt": p[-300:], "gold": g, "answer": a} for (p, g), a in list(zip(t.test, answers))[:5]]
        record["rows"] = [{"scores": dict(zip(record["tasks"], rows))}]
    elif method == "multitask":  # the reference of the Standard CL records: all tasks' training rows at once
        union = [pair for t in tasks for pair in t.train]
        random.Random(seed).shuffle(union)
        t0 = time.perf_counter()
        record["learn_reports"].append(slm.learn(InstructionTask("multitask", union), progress=sys.stderr.isatty()))
        t1 = time.perf_counter()
        result, examples = evaluate(slm, tasks, cfg, task_id=False)
        R[n - 1] = [result["scores"][t.name]["primary"] for t in tasks]
        record["rows"].append({**result, "learn_s": t1 - t0, "eval_s": time.perf_counter() - t1})
        print("multitask: " + ", ".join(f"{t.name} {100 * x:.1f}" for t, x in zip(tasks, R[n - 1])), flush=True)
    else:
        resume = RESUME / cfg["benchmark"] / out.stem if method == "slm" else None
        first, final = 0, None
        if resume is not None and (resume / "record.json").exists():
            first, slm = _resume(resume, record, R, cfg, slm)
        for i, task in enumerate(tasks):
            if i < first:
                continue
            t0 = time.perf_counter()
            record["learn_reports"].append(slm.learn(task, progress=sys.stderr.isatty()))
            t1 = time.perf_counter()
            final = [] if i == n - 1 else None
            result, examples = evaluate(slm, tasks[: i + 1], cfg, task_id=method == "oracle", sink=final)
            for j, t in enumerate(tasks[: i + 1]):
                R[i][j] = result["scores"][t.name]["primary"]
            record["rows"].append({**result, "learn_s": t1 - t0, "eval_s": time.perf_counter() - t1})
            print(f"after {task.name}: " + ", ".join(f"{t.name} {100 * R[i][j]:.1f}" for j, t in enumerate(tasks[: i + 1])), flush=True)
            if resume is not None:
                _checkpoint(resume, record, R, slm, time.perf_counter() - start)
    if method == "slm":
        record["routing"] = dict(slm.routing)  # the overlap records learn wrote (routes_to, captures), per task
    if method == "slm" and cfg.get("told_task"):  # the final bank again, told each row's task: what routing costs
        if not final:  # resumed after the last task: the final evaluation ran in the session before
            final = []
            evaluate(slm, tasks, cfg, task_id=False, sink=final)
        record["told_task"] = told_task(slm, tasks, cfg, final)
    if method == "slm":  # paper Tab. 17: retrieval (query encoding + routing) vs generation time, per task
        record["timing_per_task"] = {}
        for t in tasks:
            slm.max_new_tokens = MAX_NEW[t.name]
            with slm.encoder.cold():  # retrieval includes encoding the prompts, as for a new user input
                slm.predict([p for p, _ in t.test[:16]], batch_size=cfg.get("batch_size", 8))
            r, g = slm.timings["retrieval_s"], slm.timings["generation_s"]
            record["timing_per_task"][t.name] = {"prompts": min(16, len(t.test)), "retrieval_ms": 1000 * r,
                                                 "generation_ms": 1000 * g, "retrieval_share_of_generation": r / g}
    zs = cfg.get("zeroshot")  # {"sets": [...], "rows": N}: retention of general abilities after the stream
    if zs:
        record["zeroshot"] = zeroshot(slm, zs, args.data_dir, seed)
    if method == "slm" and cfg.get("fallback_sweep"):  # the same final bank at other fallback settings
        default, record["fallback_sweep"] = slm.config.bank.fallback, {}
        for z in cfg["fallback_sweep"]:
            slm.config.bank.fallback = float(z)
            result, _ = evaluate(slm, tasks, cfg, task_id=False)
            record["fallback_sweep"][str(z)] = {"scores": result["scores"],
                                                "zeroshot": zeroshot(slm, zs, args.data_dir, seed) if zs else None}
        slm.config.bank.fallback = default
    record.update(R=R, examples=examples, seconds=time.perf_counter() - start, skipped_broken_lines=dict(SKIPPED),
                  metrics={"average": sum(x for x in R[-1] if x is not None) / n,
                           "forgetting": metrics.forgetting(R) if method not in ("base", "multitask") else None})
    if record.get("resumed"):  # the seconds of the sessions before this one
        record["seconds"] += record["resumed"]["seconds_before"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    if method not in ("base", "multitask") and (RESUME / cfg["benchmark"] / out.stem).exists():
        import shutil

        shutil.rmtree(RESUME / cfg["benchmark"] / out.stem)
    if args.keep_model is not None and isinstance(slm, GenerativeSLM):
        from scalable_lm import store

        store.save(slm, args.keep_model)
    print(f"{method} {cfg['order']}: average {100 * record['metrics']['average']:.1f} -> {out}")


def _checkpoint(folder: Path, record: dict, R: list, slm, seconds: float) -> None:
    """After a task: the bank (``store.save``, atomic per file) and the record so far, so that a run cut short
    goes on from the next task (``_resume``)."""
    from scalable_lm import store

    store.save(slm, folder / "model")
    partial = {"config": record["benchmark_config"], "rows": record["rows"], "learn_reports": record["learn_reports"],
               "R": R, "seconds": seconds + record.get("resumed", {}).get("seconds_before", 0.0)}
    tmp = folder / "record.json.tmp"
    tmp.write_text(json.dumps(partial))
    tmp.replace(folder / "record.json")


def _resume(folder: Path, record: dict, R: list, cfg: dict, slm):
    """The first task still to learn and the bank learned so far, from ``_checkpoint``'s folder (a run of the same
    config); another config's checkpoint is an error, not a silent restart."""
    from scalable_lm import store

    partial = json.loads((folder / "record.json").read_text())
    if partial["config"] != cfg:
        raise SystemExit(f"{folder} holds a run of another config: remove it to start this one afresh")
    done = len(partial["rows"])
    record["rows"], record["learn_reports"] = partial["rows"], partial["learn_reports"]
    for i, row in enumerate(partial["R"]):
        R[i] = row
    record["resumed"] = {"after_tasks": done, "seconds_before": partial["seconds"]}
    print(f"resuming after {done} task(s) from {folder}", flush=True)
    return done, store.load(folder / "model", dtype=cfg.get("dtype", "float32"))


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
