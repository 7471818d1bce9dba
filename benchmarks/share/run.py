"""Sharing benchmark: exported adapters against SLM-TI, and what merging costs, on real data.

Usage:
    python benchmarks/share/run.py --data-dir ../shared/datasets [--part export-classifier|export-generative|merge ...]

Parts (each writes its own key into benchmarks/results/share/share.json as soon as it ends; `--part` may be
repeated):

- export-classifier: the 5 CL-5 tasks (the serving benchmark's directory, runs/serve/classifier: MiniLM,
  defaults, 300 training rows per task). Each task is exported twice with `slm export` (entry weights of the
  task's mean training query; and averaged over 200 of its training inputs, --data) and loaded with PEFT alone
  (`PeftModel.from_pretrained` on a fresh MiniLM + mean pooling + the exported head). On 100 test rows per task:
  how often the exported adapter's label equals SLM's with the task's ID (SLM-TI), and both accuracies.
- export-generative: the 3 Instruct-3 tasks (runs/serve/generative: SmolLM2-135M-Instruct, 60 rows, 1 epoch).
  Each task exported (mean-query weights), loaded with PEFT alone, greedy answers on 20 test prompts per task
  (max new tokens as in benchmarks/instruct) against SLM-TI: identical answers, identical first word, and the
  task's metric for both.
- merge: CL-5 learned as two directories, (agnews, yelp, amazon) and (yahoo, dbpedia, with --seed 3 so each
  task has the seed it has as a later task in one stream), merged with `slm merge`, against one directory that
  learned all five in sequence, all from the same 200 training rows per task; for the gaussian router (default; predictions should be identical) and for
  dtkr (the generalised setting: later tasks trained beside earlier tasks' entries, which the merged parts never
  saw). `slm eval` on 100 test rows per task, mixed, without task-ID.
- import-seqcls: a classifier LoRA trained with PEFT's own sequence-classification recipe
  (AutoModelForSequenceClassification on the packaged MiniLM + LoraConfig(task_type="SEQ_CLS"), r=8 on the bank's
  layers, --seqcls-train sst2 rows, 2 epochs), saved with save_pretrained (+ config.json for id2label), imported
  with `slm import` into a directory created with today's defaults (the query read after MiniLM's block 4,
  increments above it) that learned agnews and yahoo (--merge-train rows each). The adapter changes every block,
  the query's own included: the rows routed to it are answered in a second pass. On --test-per-task sst2 test
  rows, no task named: the share routed to sst2, label agreement with the PEFT model and the largest confidence
  difference on those rows; on the old tasks' test rows, predictions before and after the import; and the
  predict time per row of the old tasks' rows (one pass) and of the sst2 rows (two passes), in-process.

Model directories live under runs/ (git-ignored) and are reused when present, as in benchmarks/serve.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
OUT = REPO / "benchmarks" / "results" / "share"
RUNS = REPO / "runs" / "share"
sys.path.insert(0, str(REPO / "benchmarks"))


def _module(name: str, path: Path):
    """Import a benchmark script by path under its own name (several are called run.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


serve = _module("serve_run", REPO / "benchmarks" / "serve" / "run.py")  # the model directories and test rows

CL5 = serve.CL5


def slm(*argv) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "scalable_lm.cli", "-q", *map(str, argv)]
    print("$", " ".join(cmd[2:]), flush=True)
    return subprocess.run(cmd, check=True, env=serve._env(), cwd=REPO, capture_output=True, text=True)


def export(model_dir: Path, task: str, out: Path, *flags) -> Path:
    if not (out / "adapter_model.safetensors").exists():
        slm("export", "--model", model_dir, "--task", task, "--out", out, *flags)
    return out


# ---- export: classifier --------------------------------------------------------------------------------
def part_export_classifier(args) -> dict:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    from scalable_lm import store
    from scalable_lm.backbones import resolve
    from scalable_lm.encoder import mean_pool

    model_dir = serve.classifier_dir(args.data_dir, args.max_train)
    rows = serve.classifier_rows(args.data_dir, args.test_per_task)
    model = store.load(model_dir)
    tok = AutoTokenizer.from_pretrained(resolve("minilm"))
    out = {"model_dir": str(model_dir.relative_to(REPO)), "test_rows_per_task": args.test_per_task, "tasks": {}}
    for task in CL5:
        texts = [x for t, x, _ in rows if t == task]
        golds = [g for t, _, g in rows if t == task]
        ti = [p.label for p in model.predict(texts, task=task)]
        train = [json.loads(line)["text"] for line in (args.data_dir / task / "train.jsonl").open()]
        sample = random.Random(0).sample(train, 200)
        (RUNS / "inputs").mkdir(parents=True, exist_ok=True)
        (RUNS / "inputs" / f"{task}.txt").write_text("".join(x.replace("\n", " ") + "\n" for x in sample))
        result = {"rows": len(texts), "slm_ti_accuracy": sum(a == g for a, g in zip(ti, golds)) / len(golds)}
        for mode, flags in (("mean_query", []), ("data_200", ["--data", RUNS / "inputs" / f"{task}.txt"])):
            adapter = export(model_dir, task, RUNS / "adapters" / f"{task}-{mode}", *flags)
            peft_model = PeftModel.from_pretrained(AutoModel.from_pretrained(resolve("minilm")), str(adapter)).eval()
            head = load_file(str(adapter / "head.safetensors"))
            meta = json.loads((adapter / "slm_task.json").read_text())
            labels = []
            with torch.no_grad():
                for i in range(0, len(texts), 32):
                    batch = tok(texts[i: i + 32], padding=True, truncation=True, max_length=meta["max_length"],
                                return_tensors="pt")
                    hidden = peft_model(**batch).last_hidden_state
                    logits = mean_pool(hidden, batch["attention_mask"]) @ head["weight"].T + head["bias"]
                    labels += [meta["label_names"][j] for j in logits.argmax(-1).tolist()]
            result[mode] = {"agreement_with_slm_ti": sum(a == b for a, b in zip(labels, ti)) / len(ti),
                            "accuracy": sum(a == g for a, g in zip(labels, golds)) / len(golds),
                            "rank": int(json.loads((adapter / "adapter_config.json").read_text())["r"]),
                            "weights": meta["weights"]}
        print(task, json.dumps(result), flush=True)
        out["tasks"][task] = result
    for mode in ("mean_query", "data_200"):
        out[f"mean_agreement_{mode}"] = sum(r[mode]["agreement_with_slm_ti"] for r in out["tasks"].values()) / len(CL5)
    return out


# ---- export: generative --------------------------------------------------------------------------------
def part_export_generative(args) -> dict:
    from peft import PeftModel

    instruct = _module("instruct_run", REPO / "benchmarks" / "instruct" / "run.py")
    MAX_NEW, score = instruct.MAX_NEW, instruct.score
    from scalable_lm import store
    from scalable_lm.adapters.causal import CausalLM
    from scalable_lm.backbones import load_generator
    from scalable_lm.scoring import first_word

    model_dir, tests = serve.generative_dir(args.data_dir, args.gen_max_train)
    model = store.load(model_dir)
    out = {"model_dir": str(model_dir.relative_to(REPO)), "tasks": {}}
    for task in serve.INSTRUCT3:
        prompts = [p for p, _ in tests[task][: args.gen_test]]
        golds = [a for _, a in tests[task][: args.gen_test]]
        model.max_new_tokens = MAX_NEW[task]
        ti = [p.label for p in model.predict(prompts, task=task)]
        adapter = export(model_dir, task, RUNS / "adapters" / f"{task}-mean_query")
        base, tok = load_generator("smollm2")
        peft_model = PeftModel.from_pretrained(base, str(adapter)).eval()
        exported = [a for a, _ in CausalLM(peft_model, tok, model.config.train.max_length).generate(prompts, MAX_NEW[task])]
        result = {"rows": len(prompts), "max_new_tokens": MAX_NEW[task],
                  "identical": sum(a == b for a, b in zip(exported, ti)) / len(ti),
                  "same_first_word": sum(first_word(a) == first_word(b) for a, b in zip(exported, ti)) / len(ti),
                  "slm_ti": score(task, ti, golds), "exported": score(task, exported, golds),
                  "weights": json.loads((adapter / "slm_task.json").read_text())["weights"],
                  "examples": [{"slm_ti": b, "exported": a} for a, b in list(zip(exported, ti))[:3]]}
        print(task, json.dumps({k: v for k, v in result.items() if k != "examples"}), flush=True)
        out["tasks"][task] = result
    return out


# ---- merge ----------------------------------------------------------------------------------------------
def train_file(task: str) -> Path:
    """The task's training rows for the merge part: a seeded sample of --merge-train rows, written once, so the
    split directories (whose --seed differs) and the sequential one learn from the same rows (--max-train would
    draw its sample with each directory's --seed)."""
    path = RUNS / "train" / f"{task}.jsonl"
    if not path.exists():
        lines = (args_global.data_dir / task / "train.jsonl").read_text().splitlines()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(random.Random(0).sample(lines, args_global.merge_train)) + "\n")
    return path


def learn(model_dir: Path, task: str, *flags) -> None:
    serve.learn(model_dir, task, train_file(task), *flags)


def evaluate(model_dir: Path, rows_path: dict[str, Path]) -> dict:
    report = RUNS / f"eval-{model_dir.name}.json"
    slm("eval", "--model", model_dir, "--json", report, *[x for t in CL5 for x in ("--data", f"{t}={rows_path[t]}")])
    return json.loads(report.read_text())


def predictions(model_dir: Path) -> list[dict]:
    done = slm("predict", "--model", model_dir, "--json", "--file", RUNS / "merge-texts.txt")
    return [json.loads(line) for line in done.stdout.splitlines()]


def part_merge(args) -> dict:
    rows = serve.classifier_rows(args.data_dir, args.test_per_task)
    RUNS.mkdir(parents=True, exist_ok=True)
    rows_path = {}
    for task in CL5:
        rows_path[task] = RUNS / f"test-{task}.jsonl"
        rows_path[task].write_text("".join(json.dumps({"text": x, "label": g}) + "\n" for t, x, g in rows if t == task))
    texts = [x.replace("\n", " ") for _, x, _ in rows]
    (RUNS / "merge-texts.txt").write_text("".join(x + "\n" for x in texts))
    out = {"split": [CL5[:3], CL5[3:]], "test_rows_per_task": args.test_per_task}
    for router in ("gaussian", "dtkr"):
        seq, a, b, merged = (RUNS / f"{router}-{n}" for n in ("sequential", "a", "b", "merged"))
        for task in CL5:
            learn(seq, task, "--router", router)
        for task in CL5[:3]:
            learn(a, task, "--router", router)
        for task in CL5[3:]:
            learn(b, task, "--router", router, "--seed", 3)
        if not (merged / "manifest.json").exists():
            slm("merge", a, b, "--out", merged)
        seq_eval, merged_eval = evaluate(seq, rows_path), evaluate(merged, rows_path)
        seq_pred, merged_pred = predictions(seq), predictions(merged)
        same = sum(p == q for p, q in zip(seq_pred, merged_pred)) / len(texts)
        same_label = sum((p["label"], p["task"]) == (q["label"], q["task"]) for p, q in zip(seq_pred, merged_pred)) / len(texts)
        diffs = file_diffs(seq, merged)
        out[router] = {"tensor_diffs": diffs,
                       "sequential": {t: seq_eval["scores"][t] for t in CL5} | {"average": seq_eval["average_accuracy"]},
                       "merged": {t: merged_eval["scores"][t] for t in CL5} | {"average": merged_eval["average_accuracy"]},
                       "identical_predictions": same, "same_label_and_task": same_label,
                       "train_rows_per_task": args.merge_train}
        print(router, json.dumps({k: out[router][k] for k in ("identical_predictions", "same_label_and_task")}),
              "sequential", seq_eval["average_accuracy"], "merged", merged_eval["average_accuracy"], flush=True)
    return out


def file_diffs(seq: Path, merged: Path) -> dict:
    """Per task, the largest absolute difference between the merged directory's tensors and the sequential
    one's (0 = bit-identical). The first task of both halves was learned under identical conditions
    (position, seed, rows) in both layouts, so its difference is what training twice costs on this machine."""
    import torch
    from safetensors.torch import load_file

    from scalable_lm import store

    ms, mm = store.read_manifest(seq), store.read_manifest(merged)
    out = {}
    for a, b in zip(ms["tasks"], mm["tasks"]):
        ta, tb = load_file(str(seq / a["file"])), load_file(str(merged / b["file"]))
        out[a["name"]] = {"max_abs_diff": max(float((ta[k].double() - tb[k].double()).abs().max()) for k in ta),
                          "keys_equal": torch.equal(ta["keys"], tb["keys"])}
    return out


def part_merge_diffs(args) -> dict:
    """Add ``file_diffs`` to the merge part's record (reads the directories the merge part built)."""
    path = OUT / "share.json"
    results = json.loads(path.read_text())
    for router in ("gaussian", "dtkr"):
        if router in results.get("merge", {}):
            results["merge"][router]["tensor_diffs"] = file_diffs(RUNS / f"{router}-sequential", RUNS / f"{router}-merged")
    path.write_text(json.dumps(results, indent=2))
    return {}


# ---- import: a PEFT sequence classifier ----------------------------------------------------------------
def _peft_seqcls(args, out: Path) -> None:
    """Train and save the adapter as PEFT's docs do (only our data loading around it)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from scalable_lm.backbones import resolve
    from scalable_lm.data.tasks import load_task

    if (out / "adapter_model.safetensors").exists():
        return
    task = load_task("sst2", args.data_dir / "sst2" / "train.jsonl", None, args.seqcls_train, 0)
    tok = AutoTokenizer.from_pretrained(resolve("minilm"))
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve("minilm"), num_labels=len(task.label_names), id2label=dict(enumerate(task.label_names)),
        label2id={n: i for i, n in enumerate(task.label_names)})
    model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, lora_dropout=0.0,
                                             target_modules=["attention.output.dense"]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    rows = list(task.train)
    for epoch in range(2):
        random.Random(epoch).shuffle(rows)
        for i in range(0, len(rows), 16):
            chunk = rows[i:i + 16]
            batch = tok([x for x, _ in chunk], padding=True, truncation=True, max_length=128, return_tensors="pt")
            loss = model(**batch, labels=torch.tensor([y for _, y in chunk])).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"peft seq-cls epoch {epoch + 1}: last batch loss {float(loss):.3f}", flush=True)
    model.eval()
    model.save_pretrained(str(out))
    model.config.save_pretrained(str(out))


def _predict_seconds_per_row(model_dir: Path, texts: list[str]) -> dict:
    """In-process predict time per row (batches of 32, best of 3) of the same texts: told to use a task learned
    here (one pass), and routed to the imported task (its second pass below the query included)."""
    import scalable_lm

    model = scalable_lm.load(model_dir)
    out = {"timed_rows": len(texts)}
    for key, task in (("predict_ms_per_row_one_pass", "yahoo"), ("predict_ms_per_row_second_pass", None)):
        model.predict(texts[:32], task=task)  # warm-up
        best = min(_timed(model.predict, texts, task) for _ in range(3))
        out[key] = round(1000 * best / len(texts), 2)
    out["second_pass_cost"] = round(out["predict_ms_per_row_second_pass"] / out["predict_ms_per_row_one_pass"], 2)
    return out


def _timed(fn, texts, task) -> float:
    start = time.perf_counter()
    fn(texts, task=task)
    return time.perf_counter() - start


def part_import_seqcls(args) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from scalable_lm.backbones import resolve
    from scalable_lm.data.tasks import load_task

    model_dir, adapter = RUNS / "seqcls-default", RUNS / "sst2-seqcls-lora"
    for task in ("agnews", "yahoo"):
        learn(model_dir, task, "--max-train", args.merge_train)
    start = time.time()
    _peft_seqcls(args, adapter)
    train_s = time.time() - start
    sst2 = load_task("sst2", args.data_dir / "sst2" / "train.jsonl", args.data_dir / "sst2" / "test.jsonl",
                     args.seqcls_train, 0)
    examples = RUNS / "sst2-examples.txt"
    examples.write_text("".join(x.replace("\n", " ") + "\n" for x, _ in sst2.train[:200]))
    old_rows = [(t, x) for t, x, _ in serve.classifier_rows(args.data_dir, args.test_per_task) if t in ("agnews", "yahoo")]
    (RUNS / "seqcls-old.txt").write_text("".join(x.replace("\n", " ") + "\n" for _, x in old_rows))
    test = random.Random(7).sample(sst2.test, min(args.test_per_task, len(sst2.test)))
    (RUNS / "seqcls-test.txt").write_text("".join(x.replace("\n", " ") + "\n" for x, _ in test))

    def predict(name: str) -> list[dict]:
        done = slm("predict", "--model", model_dir, "--json", "--file", RUNS / name)
        return [json.loads(line) for line in done.stdout.splitlines()]

    manifest = json.loads((model_dir / "manifest.json").read_text())
    if "sst2" in [t["name"] for t in manifest["tasks"]]:
        slm("remove", "--model", model_dir, "--task", "sst2")  # a rerun measures the import again
    before = predict("seqcls-old.txt")
    done = slm("import", "--model", model_dir, "--task", "sst2", "--adapter", adapter, "--data", examples)
    after, ours = predict("seqcls-old.txt"), predict("seqcls-test.txt")
    tok = AutoTokenizer.from_pretrained(resolve("minilm"))
    base = AutoModelForSequenceClassification.from_pretrained(resolve("minilm"), num_labels=2)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    probs = []
    with torch.no_grad():
        for i in range(0, len(test), 32):
            batch = tok([x for x, _ in test[i:i + 32]], padding=True, truncation=True, max_length=128,
                        return_tensors="pt")
            probs.append(torch.softmax(model(**batch).logits, dim=-1))
    probs = torch.cat(probs)
    peft_labels = [sst2.label_names[i] for i in probs.argmax(-1).tolist()]
    routed = [i for i, p in enumerate(ours) if p["task"] == "sst2"]
    gold = [sst2.label_names[y] for _, y in test]
    timing = _predict_seconds_per_row(model_dir, [x for x, _ in test])
    return {
        "directory": {k: manifest["config"]["model"][k] for k in ("backbone", "encoder")}
        | {"targets": manifest["config"]["bank"]["targets"]}, **timing,
        "import_stdout": done.stdout.strip(), "peft_train_rows": len(sst2.train), "peft_train_s": round(train_s, 1),
        "test_rows": len(test), "routed_to_sst2": len(routed),
        "label_agreement_on_routed": sum(ours[i]["label"] == peft_labels[i] for i in routed),
        "max_confidence_diff_on_routed": max((abs(ours[i]["confidence"] - float(probs[i].max())) for i in routed),
                                             default=None),
        "peft_accuracy": sum(a == g for a, g in zip(peft_labels, gold)) / len(test),
        "slm_accuracy_no_task_id": sum(p["label"] == g for p, g in zip(ours, gold)) / len(test),
        "old_rows": len(old_rows),
        "old_same_label_and_task": sum((p["label"], p["task"]) == (q["label"], q["task"]) for p, q in zip(before, after)),
        "old_identical": sum(p == q for p, q in zip(before, after)),
    }


args_global: argparse.Namespace


def main(argv=None) -> None:
    global args_global
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--part", action="append", choices=["export-classifier", "export-generative", "merge",
                                                            "merge-diffs", "import-seqcls"],
                        help="which parts to run (repeatable; default: all but merge-diffs)")
    parser.add_argument("--seqcls-train", type=int, default=400, help="sst2 training rows of the PEFT classifier")
    parser.add_argument("--max-train", type=int, default=300, help="training rows per CL-5 task")
    parser.add_argument("--test-per-task", type=int, default=100, help="CL-5 test rows per task")
    parser.add_argument("--gen-max-train", type=int, default=60, help="training rows per Instruct-3 task")
    parser.add_argument("--gen-test", type=int, default=20, help="Instruct-3 test prompts per task")
    parser.add_argument("--merge-train", type=int, default=200, help="training rows per CL-5 task in the merge part")
    args_global = args = parser.parse_args(argv)
    if not args.data_dir.is_dir():
        parser.error(f"{args.data_dir} not found (the shared datasets folder)")
    OUT.mkdir(parents=True, exist_ok=True)
    RUNS.mkdir(parents=True, exist_ok=True)
    path = OUT / "share.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "src"], capture_output=True, text=True, cwd=REPO).stdout)
    parts = {"export-classifier": part_export_classifier, "export-generative": part_export_generative, "merge": part_merge,
             "import-seqcls": part_import_seqcls}
    if args.part == ["merge-diffs"]:
        part_merge_diffs(args)
        return
    for part in args.part or list(parts):
        start = time.time()
        record = parts[part](args)
        record.update(command="python benchmarks/share/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                      commit=commit, src_dirty=dirty, cpu_threads=os.cpu_count(),
                      minutes=round((time.time() - start) / 60, 1), date=time.strftime("%Y-%m-%d"))
        results[part] = record
        path.write_text(json.dumps(results, indent=2))
        print(f"wrote {part} to {path}", flush=True)


if __name__ == "__main__":
    main()
