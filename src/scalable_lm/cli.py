"""``slm``: learn tasks into a model directory, predict, evaluate, inspect, and run the demo.

Flags for the model's options are generated from the config dataclasses (``config.py``), so the
dataclass field help is the ``--help`` text. Every user error ends in one line ``slm: error: ...`` and
exit code 2; nothing in a model directory is changed unless the command succeeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from scalable_lm.config import SLMConfig

EXIT_ERROR, EXIT_REFUSED, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 3, 130, 143
ABSTAIN_HELP = ("answer '(unknown)' for an input farther from the task it was routed to than --abstain-z standard "
                "deviations of that task's held-out training inputs (default: always answer)")
ABSTAIN_Z_HELP = "how far is too far for --abstain, in standard deviations; larger abstains less (default: 3; implies --abstain)"
DEFAULT_ABSTAIN_Z = 3.0
DEVICE_HELP = "where to run: auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:N or mps (default: auto)"
DTYPE_HELP = ("compute dtype of the frozen backbone and query encoder: float32, bfloat16 or float16; keys, "
              "values, heads and optimiser state stay float32 (default: float32)")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field (``--rank``, ``--key-epochs`` ...); unset flags stay absent."""
    for section in dataclasses.fields(SLMConfig):
        group = parser.add_argument_group(f"{section.name} options (used when the model directory is created)")
        for f in dataclasses.fields(section.default_factory()):  # type: ignore[misc]
            flag = "--" + f.name.replace("_", "-")
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            shown = " ".join(default) if isinstance(default, list) else default
            kwargs = {"dest": f"cfg.{section.name}.{f.name}", "default": argparse.SUPPRESS,
                      "metavar": f.name.upper(), "help": f"{f.metadata['help']} (default: {shown})"}
            if f.type in ("list[str]",):
                kwargs.update(nargs="+", action="extend")  # --targets a --targets b = --targets a b
            elif f.type == "bool":
                kwargs.update(action=argparse.BooleanOptionalAction)  # --calibrate / --no-calibrate
                kwargs.pop("metavar")
            else:
                kwargs.update(type={"int": int, "float": float, "str": str}[str(f.type)])
            group.add_argument(flag, **kwargs)


def _config_overrides(args: argparse.Namespace) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for key, value in vars(args).items():
        if key.startswith("cfg."):
            _, section, name = key.split(".")
            out.setdefault(section, {})[name] = value
    return out


def _progress(args) -> bool:
    """Show progress (a bar on a terminal, a log line a minute otherwise: ``scalable_lm.progress``) unless -q."""
    return not getattr(args, "quiet", False)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (``main`` may run in-process, e.g. under pytest)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _setup_logging(args) -> None:
    """INFO by default (stage and epoch lines, progress lines when stderr is not a terminal); -q: warnings
    and errors only; -v: debug."""
    logger = logging.getLogger("scalable_lm")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.propagate = False
    quiet, verbose = getattr(args, "quiet", False), getattr(args, "verbose", False)
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    if quiet or not sys.stderr.isatty():
        # transformers 5 draws a "Loading weights" bar for every model it loads, terminal or not; our own
        # progress (bars on a terminal, log lines elsewhere) covers the long steps
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _query_cache(slm, args) -> Path | None:
    """Load the on-disk query cache of this encoder (the encoder is frozen, so queries never change)."""
    if args.no_cache:
        return None
    path = slm.encoder.default_cache_path()
    try:
        slm.encoder.load_cache(path)
    except Exception as err:  # noqa: BLE001 - a broken cache is only a cache: rebuild it
        print(f"slm: warning: ignoring unreadable query cache {path} ({err})", file=sys.stderr)
    return path


def _save_query_cache(slm, path: Path | None) -> None:
    if path is not None:
        slm.encoder.save_cache(path)


def _learn_config(directory: Path, manifest: dict | None, overrides: dict[str, dict]) -> SLMConfig:
    """The options for a new task: a new directory takes every flag; an existing one keeps its model and
    bank options (a differing flag is an error) and takes key/train flags for this task only."""
    from scalable_lm import store
    from scalable_lm.data.tasks import DataError

    base = SLMConfig().to_dict() if manifest is None else SLMConfig.from_dict(manifest["config"]).to_dict()
    for section, values in overrides.items():
        for name, value in values.items():
            if manifest is not None and section in store.FIXED_SECTIONS and base[section][name] != value:
                raise DataError(f"--{name.replace('_', '-')} differs from the value stored in {directory} "
                                f"({base[section][name]!r}); model and bank options are fixed when the "
                                "directory is created (key and train options may change per task)")
            base[section][name] = value
    return SLMConfig.from_dict(base).validate()


def _generative_layout(config: SLMConfig, overrides: dict[str, dict]) -> SLMConfig:
    """A new generative directory's bank in ``config.GENERATIVE_LAYOUT`` (one entry of rank 48 per task), unless
    one of its flags was given: then the others keep their usual defaults, as for a classifier."""
    from scalable_lm.config import GENERATIVE_LAYOUT

    if set(overrides.get("bank", {})) & set(GENERATIVE_LAYOUT):
        return config
    return SLMConfig.generative(config).validate()


def _share(text: str) -> float:
    """A share of inputs from the command line: ``0.02`` or ``2%``."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share such as 0.02 or 2%, got '{text}'") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"a share of inputs is between 0 and 1 (0% and 100%), got '{text}'")
    return value


def overlap_line(task: str, pairs: list[dict], threshold: float, merged: bool = False) -> str:
    """One line naming the older tasks ``task`` overlaps (``GrowsByTask.overlaps``) and what the user can do;
    ``merged``: both shares were estimated by ``slm merge`` (no held-out rows to measure ``routes_to`` on)."""
    parts = [f"'{p['other']}' ({'an estimated ' if merged else ''}{100 * p['routes_to']:.1f}% of its inputs route "
             f"there, it takes an estimated {100 * p['captures']:.1f}% of that task's)" for p in pairs]
    return (f"overlap above {100 * threshold:g}%: '{task}' and {', '.join(parts)}: the router cannot always tell "
            "their inputs apart; learn them as one task (their data in one file), remove one (slm remove), or keep "
            "both if either task's answer is fine for such inputs")


class OverlapRefused(Exception):
    """``slm learn --on-overlap refuse`` found an overlap: nothing was saved (exit status 3)."""


def cmd_learn(args) -> None:
    from scalable_lm import store
    from scalable_lm.data.tasks import DataError

    directory = Path(args.model)
    store.check_task_name(args.task)
    if args.max_train is not None and args.max_train < 1:
        raise DataError("--max-train must be at least 1")
    existing = (directory / store.MANIFEST).exists()
    manifest = store.read_manifest(directory) if existing else None
    if not existing:
        store.check_new_directory(directory)
    config = _learn_config(directory, manifest, _config_overrides(args))  # every option checked before any work
    # --device/--dtype need torch (~2.5 s to import). A new directory has them checked before anything is
    # created; an existing one takes the lock first, so a second writer is refused before torch loads.
    placement = None if existing else _placement(args)
    with store.DirectoryLock(directory, args.wait, command=" ".join(["slm", *sys.argv[1:]])):
        _learn_locked(args, directory, config, placement or _placement(args))


def _learn_locked(args, directory: Path, config: SLMConfig, placement: dict) -> None:
    from scalable_lm import store
    from scalable_lm.data.tasks import DataError, load_task
    from scalable_lm.methods.slm import SLM

    existing = (directory / store.MANIFEST).exists()  # read again under the lock: another writer may have ended
    manifest = store.read_manifest(directory) if existing else None
    if existing and args.task in [t["name"] for t in manifest["tasks"]]:
        raise DataError(f"task '{args.task}' is already in {directory}")
    generative = _is_instruction_data(args.data)
    kind = "generative" if generative else "classifier"
    if existing and manifest.get("kind", "classifier") != kind:
        raise DataError(f"{directory} is a {manifest.get('kind', 'classifier')} model; {args.data} holds "
                        f"{'instruction' if generative else 'labelled'} rows")
    if generative and not existing:
        config = _generative_layout(config, _config_overrides(args))
    if generative:
        from scalable_lm.data.instructions import load_instruction_task
        from scalable_lm.methods.generative import GenerativeSLM

        task = load_instruction_task(args.task, args.data, args.test, args.max_train, config.train.seed)
        slm = store.load(directory, **placement) if existing else GenerativeSLM(config, **placement)
    else:
        task = load_task(args.task, args.data, args.test, args.max_train, config.train.seed, args.text_column,
                         args.label_column)
        slm = store.load(directory, **placement) if existing else SLM(config, **placement)
    slm.config.keys, slm.config.train = config.keys, config.train  # this task's own key and train options
    cache = _query_cache(slm, args)
    report = slm.learn(task, progress=_progress(args))
    pairs = slm.overlaps(args.overlap_threshold, task=task.name)
    if pairs and args.on_overlap == "refuse":
        raise OverlapRefused(overlap_line(task.name, pairs, args.overlap_threshold)
                             + f"; --on-overlap refuse: '{task.name}' was not saved and {directory} is unchanged")
    store.save(slm, directory, {task.name: _task_info(args, report)})
    if pairs:
        print("slm: warning: " + overlap_line(task.name, pairs, args.overlap_threshold), file=sys.stderr)
    if generative:
        val = report["epochs"][-1]["val_loss"] if report["epochs"] else None
        print(f"learned '{task.name}' ({report['train_rows']} train rows) into {directory} in "
              f"{report['total_s']:.1f}s" + (f"; validation loss {val:.3f}" if val is not None else ""))
        if task.test:  # scored as `slm eval` scores it: label match for short answers, else ROUGE-L (+ BERTScore)
            from scalable_lm.runner import evaluate_generative

            s = evaluate_generative(slm, [task], progress=_progress(args))[task.name]
            extra = f", BERTScore-F1 {s['bertscore_f1']:.3f}" if s.get("bertscore_f1") is not None else ""
            print(f"test {s['metric']} on '{task.name}' (no task-ID): {s['score']:.3f}{extra}")
        _save_query_cache(slm, cache)
        return
    best = report["best_val_accuracy"]
    print(f"learned '{task.name}' ({len(task.label_names)} labels, {report['train_rows']} train rows) into "
          f"{directory} in {report['total_s']:.1f}s" + (f"; validation accuracy {best:.3f}" if best is not None else ""))
    if task.test:
        from scalable_lm.runner import evaluate

        score = evaluate(slm, [task], progress=_progress(args))[task.name]
        print(f"test accuracy on '{task.name}' (no task-ID): {score['accuracy']:.3f}")
    _save_query_cache(slm, cache)  # after the test rows too, so a later `slm eval` finds them


def _example_inputs(path: str, text_column: str) -> list[str]:
    """Example inputs of a task from a file: instruction rows (their prompts), rows with a text column, or
    plain text, one input per line."""
    from scalable_lm.data.tasks import DataError, read_lines, read_rows

    p = Path(path)
    if p.suffix.lower() in (".jsonl", ".json", ".csv"):
        rows = read_rows(p)
        from scalable_lm.data.instructions import is_instruction_row, parse_instructions

        if rows and is_instruction_row(rows[0]):
            return [prompt for prompt, _ in parse_instructions(rows, str(p))]
        texts = [r.get(text_column) for r in rows]
        bad = next((i for i, x in enumerate(texts) if not isinstance(x, str) or not x.strip()), None)
        if bad is not None:
            raise DataError(f"{p}: row {bad + 1} has no text in column '{text_column}'")
        return texts
    return read_lines(p)


def cmd_remove(args) -> None:
    from scalable_lm import store

    result = store.remove(args.model, args.task, force=args.force, wait=args.wait)
    print(f"removed '{result['removed']}' from {args.model} ({result['file']} deleted)")
    if not result["exact"]:
        print("slm: warning: dtkr router: the tasks learned after it were trained beside its entries, so the "
              "directory is not the one that never learned it", file=sys.stderr)
    print("note: the query cache ($SLM_CACHE_DIR) may still hold embeddings of its inputs; delete it, or use "
          "--no-cache, if they must go too", file=sys.stderr)


def cmd_merge(args) -> None:
    from scalable_lm import store

    rename = {}
    for spec in args.rename:
        old, sep, new = spec.partition(":")
        if not sep or not old or not new:
            raise ValueError(f"--rename expects OLD:NEW, got '{spec}'")
        if old in rename:
            raise ValueError(f"--rename {old} given twice")
        rename[old] = new
    merged = store.merge(args.models, args.out, rename, wait=args.wait)
    print(f"merged {len(args.models)} directories into {args.out}: {len(merged.names)} tasks "
          f"({', '.join(merged.names)})")
    by_task: dict[str, list[dict]] = {}
    for pair in merged.overlaps(args.overlap_threshold):
        by_task.setdefault(pair["task"], []).append(pair)
    for task, pairs in by_task.items():
        print("slm: warning: " + overlap_line(task, pairs, args.overlap_threshold, merged=True), file=sys.stderr)


def cmd_export(args) -> None:
    from scalable_lm import sharing

    inputs = _example_inputs(args.data, args.text_column) if args.data else None
    out = sharing.export_task(args.model, args.task, args.out, inputs, loader=_loader(args))
    print(f"exported '{out['task']}' to {out['out']}: LoRA rank {out['rank']} on {len(out['targets'])} layers, "
          f"entry weights {out['weights']} (from {'--data' if inputs else 'the task mean query'})")


def cmd_import(args) -> None:
    from scalable_lm import sharing

    inputs = _example_inputs(args.data, args.text_column)
    out = sharing.import_adapter(args.model, args.task, args.adapter, inputs, trust_base=args.trust_base,
                                 wait=args.wait, progress=_progress(args), loader=_loader(args),
                                 label_names=args.label or None)
    head = f"; head: {out['head']}, labels {out['label_names']}" if out.get("head") else ""
    print(f"imported {args.adapter} into {args.model} as '{out['task']}': rank {out['rank']} on "
          f"{len(out['modules'])} modules, keys from {out['inputs']} example inputs{head}")
    if out.get("labels_from") == "default":
        print(f"slm: note: {args.adapter} names no labels (no slm_task.json, no config.json with id2label): the "
              "classes are called LABEL_0 ...; remove the task and import again with --label NAME per class "
              "(in index order) to name them", file=sys.stderr)


def _task_info(args, report: dict) -> dict:
    """What the manifest records of a task learned by ``slm learn`` (shown by ``slm info``)."""
    import datetime

    from scalable_lm import store

    info = {"learned_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "data": str(args.data), "train_rows": report.get("train_rows"), "val_rows": report.get("val_rows")}
    if Path(args.data).is_file():
        info["data_sha256"] = store.sha256(Path(args.data))
    last = (report.get("epochs") or [{}])[-1]
    if report.get("best_val_accuracy") is not None:
        info["val_accuracy"] = round(report["best_val_accuracy"], 4)
    elif last.get("val_loss") is not None:
        info["val_loss"] = round(min(e["val_loss"] for e in report["epochs"]), 4)
    if report.get("temperature") is not None:  # classifiers: the head's calibration
        info["temperature"] = round(report["temperature"], 4)
    return info


def _is_instruction_data(path: str) -> bool:
    """Instruction rows (``instruction`` + ``output``, or Dolly's ``response``) train a generative model."""
    from scalable_lm.data.tasks import read_rows

    if str(path).startswith("hf:"):
        return False
    from scalable_lm.data.instructions import is_instruction_row

    return is_instruction_row(read_rows(path)[0])


def cmd_predict(args) -> None:
    from scalable_lm.data.tasks import DataError, read_lines, read_rows

    texts = list(args.texts)
    if args.file:
        path = Path(args.file)
        if path.suffix.lower() in (".jsonl", ".json", ".csv"):
            texts += [str(r.get(args.text_column, "")) for r in read_rows(path)]
        else:
            texts += read_lines(path)
    if not texts and not args.file and not sys.stdin.isatty():  # `echo "..." | slm predict --model m`
        texts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise DataError("nothing to predict: give texts, --file, or lines on standard input")
    abstain = _abstain(args)
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise DataError("--max-new-tokens must be at least 1")
    _refuse_other_kind_flags(args, _model_kind(args))
    slm = _loader(args)(args.model)
    if args.max_new_tokens is not None:
        slm.max_new_tokens = args.max_new_tokens
    preds = slm.predict(texts, progress=_progress(args), task=args.task,
                        **({} if abstain is None else {"abstain": abstain}))
    for text, p in zip(texts, preds):
        if args.json:
            print(json.dumps({"text": text, **dataclasses.asdict(p)}))
        else:
            mix = ", ".join(f"{e} {w:.2f}" for e, w in zip(p.entries, p.weights))
            what = f"far from every task, nearest {p.entry_tasks[0]}" if p.abstained else f"{p.task}, p={p.confidence:.2f}"
            print(f"{p.label}\t[{what}; entries: {mix}]\t{text}")


def _abstain(args) -> float | None:
    """The ``z`` of ``--abstain`` / ``--abstain-z Z`` (``None``: always answer), checked before the model loads."""
    import math

    z = args.abstain_z
    if z is None:
        return DEFAULT_ABSTAIN_Z if args.abstain else None
    if not (math.isfinite(z) and z >= 0):
        raise ValueError(f"--abstain-z must be a finite number >= 0 (standard deviations), got {z}")
    return z


def _model_kind(args) -> str:
    """``classifier`` or ``generative``, from ``args.model``'s manifest (nothing is loaded)."""
    from scalable_lm import store

    return store.read_manifest(args.model).get("kind", "classifier")


def _refuse_other_kind_flags(args, kind: str) -> None:
    """Flags that do not apply to a model of ``kind``: refused before the model loads."""
    from scalable_lm.data.tasks import DataError

    if kind == "generative" and _abstain(args) is not None:
        raise DataError("--abstain applies to classifiers; a generative model answers inputs far from every task "
                        "with the frozen base model instead (the --fallback option when its directory is created)")
    if kind == "classifier" and getattr(args, "max_new_tokens", None) is not None:
        raise DataError("--max-new-tokens applies to generative models; a classifier answers with a label")


def cmd_eval(args) -> None:
    from scalable_lm.data.tasks import DataError, Task, encode_labels, read_rows
    from scalable_lm.runner import evaluate

    specs = []
    for spec in args.data:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise DataError(f"--data expects TASK=FILE, got '{spec}'")
        specs.append((name, path))
    kind = _model_kind(args)
    if kind == "classifier" and (args.metric or args.max_new_tokens is not None):
        raise DataError("--metric and --max-new-tokens apply to generative models; classifiers are scored by accuracy")
    _refuse_other_kind_flags(args, kind)
    if kind == "generative":
        return _eval_generative(args, specs)
    abstain = _abstain(args)
    slm = _loader(args)(args.model)
    tasks = []
    for name, path in specs:
        labels = slm.label_names[slm.task_index(name)]
        tasks.append(Task(name, labels, test=encode_labels(read_rows(path), path, labels, args.text_column,
                                                           args.label_column)))
    cache = _query_cache(slm, args)
    scores = evaluate(slm, tasks, progress=_progress(args), task_id=args.task_id, abstain=abstain)
    _save_query_cache(slm, cache)
    mode = "with task-ID (SLM-TI)" if args.task_id else "without task-ID"
    if abstain is not None:
        mode += f", abstaining at z={abstain:g}: an abstained row counts as wrong"
    column = f" {'abstained':>9s}" if abstain is not None else ""
    table = [f"{'task':24s} {'rows':>6s} {'accuracy':>9s} {'label ok':>8s} {'head ok':>8s} {'retrieval':>9s}{column}"
             f"   ({mode})"]
    for task in tasks:
        s = scores[task.name]
        extra = f" {s['abstained']:9.3f}" if abstain is not None else ""
        table.append(f"{task.name:24s} {len(task.test):6d} {s['accuracy']:9.3f} {s['label_accuracy']:8.3f} "
                     f"{s['task_choice']:8.3f} {s['retrieval']:9.3f}{extra}")
    mean = sum(s["accuracy"] for s in scores.values()) / len(scores)
    table.append(f"{'average':24s} {'':6s} {mean:9.3f}")
    table.append("accuracy: right task and right label; label ok: right label, whichever task answered")
    _report(args, table, {"model": str(args.model), "task_id": args.task_id, "abstain": abstain, "scores": scores,
                          "average_accuracy": mean, "rows": {t.name: len(t.test) for t in tasks}})
    if args.plot:
        _plot_matrix(args, slm, tasks, lambda m, ts: {n: s["accuracy"] for n, s in evaluate(
            m, ts, task_id=args.task_id, abstain=abstain).items()}, {n: s["accuracy"] for n, s in scores.items()},
            "accuracy")


def _plot_matrix(args, slm, tasks, score, last: dict[str, float], what: str) -> None:
    """``slm eval --plot FILE``: the directory's accuracy matrix (``runner.score_matrix``) as the benchmarks'
    heatmap, and its data in FILE with the suffix .csv."""
    from scalable_lm import figures
    from scalable_lm.runner import score_matrix

    figures.pyplot()  # matplotlib missing: said before any scoring
    if len(slm.task_names) > 1:
        print(f"scoring the {len(slm.task_names) - 1} earlier states of {args.model} for the {what} matrix "
              "(the model with its later tasks removed)", file=sys.stderr)
    result = score_matrix(slm, tasks, score, progress=_progress(args), last=last)
    mode = "with task-ID" if args.task_id else "no task-ID"
    path = Path(args.plot)
    figures.heatmap(result["R"], result["tasks"], f"{Path(args.model).name}: {what} (%) after each task, {mode}",
                    path)
    data = figures.write_matrix_csv(result["R"], result["tasks"], path.with_suffix(".csv"))
    print(f"wrote {path} and {data}")


def _report(args, table: list[str], result: dict) -> None:
    """``slm eval``'s output: the table; with ``--json`` alone the JSON on standard output instead; with
    ``--json FILE`` the table, and the JSON written to FILE."""
    if args.json == "-":
        print(json.dumps(result, indent=2))
        return
    print("\n".join(table))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


def _eval_generative(args, specs: list[tuple[str, str]]) -> None:
    from scalable_lm import scoring
    from scalable_lm.data.instructions import InstructionTask, parse_instructions
    from scalable_lm.data.tasks import DataError, read_rows
    from scalable_lm.runner import evaluate_generative

    choices = sorted(scoring.METRICS) + list(scoring.FREE_TEXT) + ["auto"]
    metrics: dict[str, str] = {}
    for spec in args.metric or []:
        name, sep, metric = spec.rpartition("=")
        if metric not in choices:
            raise DataError(f"--metric {spec}: unknown metric '{metric}'; choose from {', '.join(choices)}")
        for task, _ in specs if not sep else [(name, None)]:
            metrics[task] = metric
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise DataError("--max-new-tokens must be at least 1")
    slm = _loader(args)(args.model)
    tasks = []
    for name, path in specs:
        slm.task_index(name)  # a clear error for a task the model does not have
        tasks.append(InstructionTask(name, [], parse_instructions(read_rows(path), path)))
    unknown = set(metrics) - {t.name for t in tasks}
    if unknown:
        raise DataError(f"--metric names tasks without --data: {sorted(unknown)}")
    cache = _query_cache(slm, args)
    scores = evaluate_generative(slm, tasks, metrics, progress=_progress(args), task_id=args.task_id,
                                 max_new_tokens=args.max_new_tokens)
    _save_query_cache(slm, cache)
    mode = "with task-ID (SLM-TI)" if args.task_id else "without task-ID"
    table = [f"{'task':24s} {'rows':>6s} {'metric':>10s} {'score':>7s} {'retrieval':>9s} {'fallback':>8s}   ({mode})"]
    for task in tasks:
        s = scores[task.name]
        extra = "" if task.name not in scores or s.get("retrieval") is None else \
            f" {s['retrieval']:9.3f} {s['fallback']:8.3f}"
        table.append(f"{task.name:24s} {s['rows']:6d} {s['metric']:>10s} {s['score']:7.3f}{extra}")
    mean = sum(s["score"] for s in scores.values()) / len(scores)
    table.append(f"{'average':24s} {'':6s} {'':10s} {mean:7.3f}")
    _report(args, table, {"model": str(args.model), "kind": "generative", "task_id": args.task_id, "scores": scores,
                          "average_score": mean, "rows": {t.name: len(t.test) for t in tasks}})
    if args.plot:
        _plot_matrix(args, slm, tasks, lambda m, ts: {n: s["score"] for n, s in evaluate_generative(
            m, ts, metrics, task_id=args.task_id, max_new_tokens=args.max_new_tokens).items()},
            {n: s["score"] for n, s in scores.items()}, "score")


INFO_FACTS = ("learned_at", "data", "data_sha256", "train_rows", "val_rows", "val_accuracy", "val_loss", "temperature",
              "seed", "merged_from")


def directory_info(directory: Path) -> dict:
    """What ``slm info --json`` prints: the directory's model and bank, and per task its facts, file check and
    routing record (``GrowsByTask.routing``; null for a task learned before 0.4.0 or imported)."""
    from scalable_lm import store

    manifest = store.read_manifest(directory)
    bank = SLMConfig.from_dict(manifest["config"]).to_dict()["bank"]  # options a manifest omits take defaults
    tasks = []
    for t in manifest["tasks"]:
        path = store.safe_task_path(directory, t["file"])
        status = "missing" if not path.is_file() else "ok" if store.sha256(path) == t["sha256"] else "checksum mismatch"
        tasks.append({"name": t["name"], "labels": t["label_names"], "entries": t["entries"], "file": t["file"],
                      "bytes": path.stat().st_size if path.is_file() else None, "file_status": status,
                      **{k: t[k] for k in INFO_FACTS if t.get(k) is not None},
                      "routing": store.routing_record(t)})
    return {"directory": str(directory), "kind": manifest.get("kind", "classifier"), "format": manifest["format"],
            "backbone": manifest["backbone"], "encoder": manifest["encoder"], "bank": bank,
            "targets": manifest.get("targets", []), "indexed": bool(manifest.get("index")), "tasks": tasks}


def _routing_table(tasks: list[dict], width: int = 3) -> list[str]:
    """``slm info``'s overlap table: per task, its own share and its largest shares with older tasks."""
    def top(shares: dict) -> str:
        best = sorted(shares.items(), key=lambda kv: -kv[1])[:width]
        more = len(shares) - len(best)
        return ", ".join(f"{n} {100 * v:.1f}%" for n, v in best) + (f" (+{more} more)" if more > 0 else "") or "-"
    rows = [(t["name"], f"{100 * t['routing']['self']:.1f}%", top(t["routing"]["routes_to"]),
             top(t["routing"]["captures"])) if t["routing"] else (t["name"], "-", "(not recorded)", "")
            for t in tasks]
    head = ("task", "self", "its inputs routed to", "older tasks' inputs it takes (estimated)")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in [head, *rows]]


def cmd_info(args) -> None:
    from scalable_lm import store

    directory = Path(args.model)
    info = directory_info(directory)
    bad = [t["name"] for t in info["tasks"] if t["file_status"] != "ok"]
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        bank = info["bank"]
        print(f"model directory {directory} ({info['kind']})")
        print(f"  backbone {info['backbone']['name']} ({info['backbone']['fingerprint']}), "
              f"encoder {info['encoder']['name']} ({info['encoder']['fingerprint']})")
        print(f"  bank: router {bank['router']}, G={bank['groups']} P={bank['entries_per_task']} "
              f"r={bank['rank']} K={bank['top_k']}, "
              f"targets {len(info['targets'])} layers ({', '.join(bank['targets'])})")
        print(f"  {len(info['tasks'])} tasks, {len(info['tasks']) * bank['entries_per_task']} entries; format "
              f"{info['format']}" + (", with an index (task files read when first used)" if info["indexed"]
                                     else ", no index (every task file read at load; the next write adds one)"))
        for t in info["tasks"]:
            if t["file_status"] != "ok":
                path = store.safe_task_path(directory, t["file"])
                print(f"  - {t['name']}: {path} {'is missing' if t['file_status'] == 'missing' else 'FAILS ITS CHECKSUM'}")
                continue
            what = "free-text answers" if info["kind"] == "generative" else f"{len(t['labels'])} labels {t['labels']}"
            facts = [f"learned {t['learned_at']}" if t.get("learned_at") else "",
                     f"{t['train_rows']} train / {t['val_rows']} validation rows" if t.get("train_rows") is not None else "",
                     f"validation accuracy {t['val_accuracy']:.3f}" if t.get("val_accuracy") is not None else "",
                     f"validation loss {t['val_loss']:.3f}" if t.get("val_loss") is not None else "",
                     f"head temperature {t['temperature']:.3g}" if t.get("temperature") is not None else "",
                     f"data sha256 {t['data_sha256'][:12]}" if t.get("data_sha256") else ""]
            facts = "; ".join(f for f in facts if f)
            print(f"  - {t['name']}: {what}, {t['entries']} entries, {t['bytes'] / 1024:.0f} KiB"
                  + (f" ({facts})" if facts else ""))
        if info["tasks"]:
            print("routing when each task was learned (shares of held-out inputs; see docs/overlap.md):")
            print("\n".join(_routing_table(info["tasks"])))
    if bad:
        raise store.ModelDirError(f"{len(bad)} task file(s) missing or corrupted: {bad}; a model loaded from this "
                                  "directory refuses them (at load, or when an input is first routed to them)")


def cmd_serve(args) -> None:
    import ipaddress

    from scalable_lm import server, store
    from scalable_lm.serving.engines import check_engine, engine_options

    manifest = store.read_manifest(args.model)  # a clear error now rather than a server that never gets ready
    check_engine(args, manifest.get("kind", "classifier"), args.model)
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback and not args.api_key:
        raise ValueError(f"--host {args.host} is reachable from other machines: give --api-key (clients send "
                         "'Authorization: Bearer KEY')")
    for flag in ("max_batch", "max_queue", "max_new_tokens", "max_body_bytes", "max_inputs", "max_connections",
                 "keep_alive"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.max_wait_ms < 0 or args.request_timeout <= 0 or args.query_cache < 0 or args.read_timeout <= 0:
        raise ValueError("--max-wait-ms and --query-cache must be >= 0, --request-timeout and --read-timeout > 0")
    server.run(args.model, host=args.host, port=args.port, log_level="warning" if args.quiet else "info",
               api_key=args.api_key, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
               max_new_tokens=args.max_new_tokens, request_timeout=args.request_timeout,
               reload_interval=args.reload_interval, query_cache=args.query_cache, loader=_loader(args),
               max_body_bytes=args.max_body_bytes, max_inputs=args.max_inputs, read_timeout=args.read_timeout,
               max_connections=args.max_connections, keep_alive=args.keep_alive,
               lifo_after=args.lifo_after if args.lifo_after > 0 else None, engine=args.engine,
               **engine_options(args))


def cmd_demo(args) -> None:
    if args.write_data:
        from scalable_lm.data.demo import write_demo_data

        files = write_demo_data(args.write_data, n_train=args.train, n_test=args.test, instructions=args.instructions)
        tasks = sorted({f.parent.name for f in files})
        print(f"wrote {len(files)} files for {len(tasks)} tasks ({', '.join(tasks)}) under {args.write_data}")
        return
    from scalable_lm.demo import run_demo

    run_demo(out=args.out, n_train=args.train, n_test=args.test, progress=_progress(args), **_placement(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slm", description="Teach one model a stream of tasks; use it on any "
                                     "input without saying which task it belongs to (SLM, ICLR 2024).")
    from scalable_lm import __version__

    parser.add_argument("--version", action="version", version=f"scalable-lm {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or progress lines; warnings and errors only")
    parser.add_argument("-v", "--verbose", action="store_true", help="also debug messages")
    parser.add_argument("--no-cache", action="store_true",
                        help="do not read or write the query-embedding cache ($SLM_CACHE_DIR, default ~/.cache/scalable_lm)")
    # the same two flags after the command (`slm learn ... -q`); absent there, the value before it stands
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars or progress lines; warnings and errors only")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="also debug messages")
    common.add_argument("--no-cache", action="store_true", default=argparse.SUPPRESS,
                        help="do not read or write the query-embedding cache")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_parser = sub.add_parser
    sub.add_parser = lambda *a, **k: _add_parser(*a, parents=[common], **k)  # type: ignore[method-assign]

    learn = sub.add_parser("learn", help="learn one new task into a model directory (created if absent)",
                           description="Learn one task: train its keys, then its low-rank values and head. Earlier "
                           "tasks' files are not touched; the directory is updated atomically at the end.")
    learn.add_argument("--model", required=True, help="model directory")
    learn.add_argument("--task", required=True, help="name of the new task (unique in the directory)")
    learn.add_argument("--data", required=True, help="training data: JSONL/CSV file with text + label (classifier), or instruction + input + output rows (generative model, SmolLM2 by default); or hf:DATASET when online")
    learn.add_argument("--test", help="optional test file, scored after learning")
    learn.add_argument("--max-train", type=int, help="use a seeded random subset of this many training rows")
    learn.add_argument("--overlap-threshold", type=_share, default=0.02, metavar="SHARE",
                       help="warn when the new task and an older one share more than this of their inputs (the new "
                       "task's inputs routed to the old one, or the old one's inputs it takes): 0.02 or 2%% "
                       "(default 2%%)")
    learn.add_argument("--on-overlap", choices=["warn", "refuse"], default="warn",
                       help="warn: save the task and print the overlap; refuse: do not save it, leave the directory "
                       "as it was, exit with status 3")
    _add_wait(learn)
    _add_data_columns(learn)
    _add_config_flags(learn)
    _add_placement(learn)
    learn.set_defaults(func=cmd_learn)

    predict = sub.add_parser("predict", help="predict labels for texts, without task-ID")
    predict.add_argument("--model", required=True, help="model directory")
    predict.add_argument("texts", nargs="*", help="texts to classify (none: one per line from standard input)")
    predict.add_argument("--file", help="a file of texts: one per line, or JSONL/CSV with a text column")
    predict.add_argument("--task", help="restrict retrieval to this task's entries (SLM-TI)")
    predict.add_argument("--json", action="store_true", help="one JSON object per input")
    predict.add_argument("--max-new-tokens", type=int, metavar="N",
                         help="generative models: longest answer, in tokens (default: 64)")
    predict.add_argument("--abstain", action="store_true", help=ABSTAIN_HELP)
    predict.add_argument("--abstain-z", type=float, metavar="Z", help=ABSTAIN_Z_HELP)
    _add_data_columns(predict, label=False)
    _add_placement(predict)
    predict.set_defaults(func=cmd_predict)

    ev = sub.add_parser("eval", help="score per task and retrieval accuracy, on mixed batches without task-ID",
                        description="Score test files per task on mixed, shuffled batches without task-ID. "
                        "Classifiers: accuracy (right task and label), head choice, retrieval. Generative models "
                        "(instruction rows): a metric per task (--metric), retrieval accuracy and the share of "
                        "inputs answered by the frozen base model (fallback).")
    ev.add_argument("--model", required=True, help="model directory")
    ev.add_argument("--data", required=True, nargs="+", action="extend", metavar="TASK=FILE",
                    help="labelled test files per task (repeat the flag or list several; all are scored)")
    ev.add_argument("--task-id", action="store_true", help="give each input its task (SLM-TI, an upper bound)")
    ev.add_argument("--json", nargs="?", const="-", metavar="OUT",
                    help="the scores as JSON: on standard output instead of the table (as `slm predict --json`), "
                    "or, given a file, written there beside the table")
    ev.add_argument("--plot", metavar="FILE", help="also draw the accuracy matrix (score on each task after each "
                    "task was learned, the directory's own history) as a heatmap in FILE (.png, .pdf, .svg), with its "
                    "data in FILE.csv; scores the model once per task, each time with its later tasks removed")
    ev.add_argument("--abstain", action="store_true",
                    help="classifiers: " + ABSTAIN_HELP + "; an abstained row counts as wrong")
    ev.add_argument("--abstain-z", type=float, metavar="Z", help=ABSTAIN_Z_HELP)
    ev.add_argument("--metric", action="append", metavar="[TASK=]METRIC",
                    help="generative models: label, first-word, exact, rouge-l, bertscore or auto (default: label "
                    "for short answers, else rouge-l with BERTScore-F1 beside it); repeatable, TASK= for one task")
    ev.add_argument("--max-new-tokens", type=int, help="generative models: longest answer generated (default: 8 "
                    "when every task is scored as labels, else 64)")
    _add_data_columns(ev)
    _add_placement(ev)
    ev.set_defaults(func=cmd_eval)

    info = sub.add_parser("info", help="tasks, entries and sizes of a model directory")
    info.add_argument("model", help="model directory")
    info.add_argument("--json", action="store_true", help="the directory as JSON: model, bank and per task its facts, "
                      "file check and routing record (\"routing\": {\"self\", \"routes_to\", \"captures\"}, shares 0-1)")
    info.set_defaults(func=cmd_info)

    serve = sub.add_parser("serve", help="serve a model directory over an OpenAI-compatible HTTP API",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                           description="Serve a model directory (FastAPI + uvicorn). Each request is routed by its "
                           "own input: requests of different tasks share one batch. Generative models: "
                           "/v1/chat/completions, /v1/completions (streaming too); classifiers: /v1/classify; "
                           "both: /v1/models, /health, /metrics. A task that `slm learn` adds to the directory is "
                           "loaded and served without a restart. SIGTERM or Ctrl-C finishes in-flight requests, "
                           "then exits.")
    serve.add_argument("--model", required=True, help="model directory (read only; never written)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind; other than loopback needs --api-key")
    serve.add_argument("--port", type=int, default=8000, help="port to bind")
    serve.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1/* (as vLLM's --api-key)")
    serve.add_argument("--max-batch", type=int, default=16, help="most requests gathered into one batch")
    serve.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits to fill")
    serve.add_argument("--max-queue", type=int, default=256, help="most waiting requests; more get HTTP 429")
    serve.add_argument("--max-new-tokens", type=int, default=256, help="largest max_tokens a request may ask for")
    serve.add_argument("--request-timeout", type=float, default=120.0, help="seconds before a request gets HTTP 408")
    serve.add_argument("--max-body-bytes", type=int, default=1 << 20,
                       help="largest request body; larger gets HTTP 413 (default 1 MiB)")
    serve.add_argument("--max-inputs", type=int, default=256,
                       help="most inputs in one /v1/classify request; more gets HTTP 413")
    serve.add_argument("--read-timeout", type=float, default=30.0,
                       help="seconds a client has to send a request's headers and body (HTTP 408 or closed after)")
    serve.add_argument("--max-connections", type=int, default=1024,
                       help="most open connections and requests in progress; more get HTTP 503")
    serve.add_argument("--keep-alive", type=int, default=5, help="seconds an idle keep-alive connection stays open")
    from scalable_lm.serving import ENGINES  # noqa: PLC0415 - the registry the choices come from

    serve.add_argument("--engine", choices=list(ENGINES), default="local",
                       help="who generates: " + "; ".join(f"'{name}' {spec.help}" for name, spec in ENGINES.items()))
    for spec in ENGINES.values():  # each engine's own flags
        for flag, kwargs in spec.flags:
            serve.add_argument(flag, **kwargs)
    serve.add_argument("--lifo-after", type=float, default=1.0,
                       help="under overload (the oldest waiting request has waited this many seconds) serve the "
                       "newest requests first, whose clients are still waiting; 0: always oldest first")
    serve.add_argument("--reload-interval", type=float, default=1.0,
                       help="seconds between checks of the directory's manifest for new tasks (0: never)")
    serve.add_argument("--query-cache", type=int, default=0,
                       help="query embeddings kept in memory for repeated inputs (0: none; bounded either way)")
    _add_placement(serve)
    serve.set_defaults(func=cmd_serve)

    remove = sub.add_parser("remove", help="forget one task (exact unlearning with the default router)",
                            description="Remove a task: the manifest without it replaces the old one atomically, "
                            "then its file is deleted. With the gaussian router (default) the directory then "
                            "predicts exactly as one that never learned the task. With dtkr, tasks learned after "
                            "it were trained beside its entries: refused unless --force (exact for the last task).")
    remove.add_argument("--model", required=True, help="model directory")
    remove.add_argument("--task", required=True, help="task to remove")
    remove.add_argument("--force", action="store_true", help="dtkr router: remove even though it is not exact")
    _add_wait(remove)
    remove.set_defaults(func=cmd_remove)

    merge = sub.add_parser("merge", help="combine model directories learned separately into a new one",
                           description="Merge directories with the same backbone, encoder, model and bank options "
                           "into a new directory holding all their tasks, in the order given. With the gaussian "
                           "router each task's state depends on that task alone, so the result predicts exactly "
                           "as a directory that learned the tasks in that order (with the same seeds).")
    merge.add_argument("models", nargs="+", metavar="DIR", help="model directories to merge (two or more)")
    merge.add_argument("--out", required=True, help="new (or empty) directory to write")
    merge.add_argument("--rename", action="append", default=[], metavar="OLD:NEW",
                       help="rename the later copy of a task found in two directories (repeatable)")
    merge.add_argument("--overlap-threshold", type=_share, default=0.02, metavar="SHARE",
                       help="warn when a task and an earlier one from another directory share more than this of "
                       "their inputs, as estimated from the directories' statistics (no data is read): 0.02 or 2%% "
                       "(default 2%%)")
    _add_wait(merge)
    merge.set_defaults(func=cmd_merge)

    export = sub.add_parser("export", help="write one task as a PEFT LoRA adapter directory",
                            description="Export a task as a standard PEFT LoRA adapter (adapter_config.json + "
                            "adapter_model.safetensors) that PeftModel.from_pretrained loads on the same base "
                            "model. The task's entries are concatenated into one LoRA of rank entries x rank, "
                            "mixed at fixed weights: their average over --data inputs, or those of the task's "
                            "mean training query. Classifiers: head.safetensors and slm_task.json go beside it.")
    export.add_argument("--model", required=True, help="model directory")
    export.add_argument("--task", required=True, help="task to export")
    export.add_argument("--out", required=True, help="adapter directory to write (new or empty)")
    export.add_argument("--data", help="example inputs of the task, to average the entry weights over")
    _add_data_columns(export, label=False)
    _add_placement(export)
    export.set_defaults(func=cmd_export)

    imp = sub.add_parser("import", help="add a PEFT LoRA adapter as a new task",
                         description="Add a LoRA adapter trained elsewhere (same base model) as a new task. Its "
                         "factors become the task's values unchanged; its keys and router statistics are built "
                         "from example inputs. Inputs routed to it are answered as PeftModel with the adapter "
                         "answers them. A classifier adapter brings its head: PEFT's own (task_type SEQ_CLS on "
                         "a BERT-like or MPNet *ForSequenceClassification, head in modules_to_save) or the "
                         "head.safetensors + slm_task.json that `slm export` writes (docs/sharing.md).")
    imp.add_argument("--model", required=True, help="model directory (must exist)")
    imp.add_argument("--task", required=True, help="name of the new task")
    imp.add_argument("--adapter", required=True, help="PEFT adapter directory (adapter_config.json + "
                     "adapter_model.safetensors)")
    imp.add_argument("--data", required=True, help="example inputs of the task: instruction rows, rows with a text "
                     "column, or one text per line")
    imp.add_argument("--label", action="append", default=[], metavar="NAME",
                     help="classifier: the name of class 0, then 1, ... (repeat the flag once per class); default: "
                     "the adapter's slm_task.json, else the id2label of a config.json beside it, else LABEL_i")
    imp.add_argument("--trust-base", action="store_true", help="accept an adapter whose base model name differs "
                     "from this directory's backbone name (same model under another name)")
    _add_wait(imp)
    _add_data_columns(imp, label=False)
    _add_placement(imp)
    imp.set_defaults(func=cmd_import)

    demo = sub.add_parser("demo", help="the built-in demo: sequential fine-tuning vs SLM on 3 generated tasks")
    demo.add_argument("--out", default="demo-results.json", help="where to write the results JSON")
    demo.add_argument("--train", type=int, default=200, help="training rows per task")
    demo.add_argument("--test", type=int, default=80, help="test rows per task")
    demo.add_argument("--write-data", metavar="DIR", help="only write the demo's three tasks as DIR/<task>/train.jsonl "
                      "and test.jsonl (text, label), to try `slm learn` on, and exit")
    demo.add_argument("--instructions", action="store_true", help="with --write-data: instruction rows (instruction, "
                      "input, output) that make a generative model, instead of labelled rows")
    _add_placement(demo)
    demo.set_defaults(func=cmd_demo)
    return parser


def _add_wait(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                        help="if another command is writing the directory, wait this long for it (default: fail at once)")


def _add_placement(parser: argparse.ArgumentParser) -> None:
    """``--device`` / ``--dtype`` (resolved by ``scalable_lm.device``; the help lives here so that building the
    parser does not load torch)."""
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--dtype", default="float32", help=DTYPE_HELP)


def _placement(args) -> dict:
    """``{"device", "dtype"}`` from the flags, checked now (an unknown or absent device is a clear error)."""
    from scalable_lm.device import resolve_device, resolve_dtype

    return {"device": resolve_device(args.device), "dtype": resolve_dtype(args.dtype)}


def _loader(args):
    """``store.load`` on the device and dtype of the flags."""
    import functools

    from scalable_lm import store

    return functools.partial(store.load, **_placement(args))


def _add_data_columns(parser: argparse.ArgumentParser, label: bool = True) -> None:
    parser.add_argument("--text-column", default="text", help="name of the text column (default: text)")
    if label:
        parser.add_argument("--label-column", default="label", help="name of the label column (default: label)")


class _Stopped(BaseException):
    """Raised in the main thread by SIGTERM or SIGINT; a BaseException so no ``except Exception`` swallows it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def main(argv: list[str] | None = None) -> int:
    from scalable_lm.data.tasks import DataError
    from scalable_lm.store import ModelDirError

    args = build_parser().parse_args(argv)
    _setup_logging(args)
    previous = {}
    if args.command != "serve" and threading.current_thread() is threading.main_thread():
        # docker stop, systemd and Kubernetes send SIGTERM: end as Ctrl-C does (the directory is left as it was).
        # Both signals raise our own exception, not KeyboardInterrupt: CPython remembers a KeyboardInterrupt that
        # passed through some C-level evaluations and then ends the process by SIGINT even after main() caught it
        # and returned (seen as exit -2 instead of 143 in about 1 run in 6).
        def on_signal(signum, frame):
            raise _Stopped(signum)

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        args.func(args)
    except (DataError, ModelDirError, KeyError, ValueError, RuntimeError, OSError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"slm: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except OverlapRefused as refused:
        print(f"slm: refused: {refused}", file=sys.stderr)
        return EXIT_REFUSED
    except (_Stopped, KeyboardInterrupt) as stop:
        terminated = isinstance(stop, _Stopped) and stop.signum == signal.SIGTERM
        what = "terminated (SIGTERM)" if terminated else "interrupted"
        print(f"slm: {what}; the model directory was left as it was", file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    finally:
        for sig, handler in previous.items():  # main() is also called in-process (tests, notebooks)
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
