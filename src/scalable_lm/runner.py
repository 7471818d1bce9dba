"""The continual-learning loop: learn each task of a stream in order, then score every task seen so far
on mixed test batches (all tasks' test rows shuffled together, so a batch never reveals the task)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

from scalable_lm import metrics
from scalable_lm.data.tasks import Task
from scalable_lm.methods.base import ContinualMethod


@dataclass
class RunResult:
    """Everything a stream run produced; ``to_dict`` is JSON-serialisable."""

    method: str
    tasks: list[str]
    task_id: bool
    R: list[list[float | None]]
    task_choice_accuracy: list[list[float | None]]
    retrieval_accuracy: list[list[float | None]]
    learn_reports: list[dict] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    # the label-only score: right label whatever task answered (tasks sharing label names, such as two review
    # tasks rated 1-5, count a right rating given by the other task's head); R stays the strict score
    label_R: list[list[float | None]] = field(default_factory=list)

    @property
    def metrics(self) -> dict:
        last = len(self.R) - 1
        retrieval = [x for x in self.retrieval_accuracy[last] if x is not None]
        every_row = all(self.R[i][i] is not None for i in range(len(self.R)))  # False: scored at the end only
        return {
            "average_accuracy": metrics.average_accuracy(self.R),
            "forgetting": metrics.forgetting(self.R) if every_row else None,
            "forgetting_after": [metrics.forgetting(self.R, k) for k in range(len(self.R))] if every_row else None,
            "bwt": metrics.backward_transfer(self.R) if every_row else None,
            "retrieval_accuracy": sum(retrieval) / len(retrieval) if retrieval else None,
            "task_choice_accuracy": metrics.average_accuracy(self.task_choice_accuracy),
            "label_only_average_accuracy": metrics.average_accuracy(self.label_R) if self.label_R else None,
            "label_only_forgetting": metrics.forgetting(self.label_R) if self.label_R and every_row else None,
        }

    def to_dict(self) -> dict:
        """Every field, and ``metrics`` once the last row of ``R`` is scored (``None`` for a run cut short)."""
        finished = bool(self.R) and all(x is not None for x in self.R[-1])
        return {**asdict(self), "metrics": self.metrics if finished else None}

    @classmethod
    def from_dict(cls, data: dict) -> RunResult:
        """The inverse of ``to_dict`` (derived ``metrics`` and unknown keys are ignored)."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    @property
    def tasks_done(self) -> int:
        """How many tasks of the stream have been learned (and scored, where scored)."""
        return len(self.learn_reports)


def evaluate(method: ContinualMethod, tasks: list[Task], batch_size: int = 32, seed: int = 0,
             progress: bool = False, task_id: bool = False, abstain: float | None = None) -> dict[str, dict[str, float | None]]:
    """Score ``method`` on the test rows of ``tasks`` in mixed, shuffled batches, without task-ID.

    With ``task_id=True`` (SLM-TI, reported separately) each task's rows are predicted with its name given.
    ``abstain=z`` (SLM classifiers): inputs far from every task are answered "unknown" (``SLM.predict``); an
    abstained row counts as wrong, and ``abstained`` gives their share.

    Returns per task: ``accuracy`` (right task and right label), ``label_accuracy`` (right label, whichever
    task answered: the label-only score), ``task_choice`` (the answering head is the input's own task),
    ``retrieval`` (paper Eq. 13; ``None`` for methods that do not retrieve) and, with ``abstain``,
    ``abstained``.
    """
    rows = [(task.name, text, task.label_names[label]) for task in tasks for text, label in task.test]
    random.Random(seed).shuffle(rows)
    preds = _predict_rows(method, rows, tasks, batch_size, progress, task_id,
                          {} if abstain is None else {"abstain": abstain})
    scores = {}
    for task in tasks:
        mine = [(p, gold) for (name, _, gold), p in zip(rows, preds) if name == task.name]
        if not mine:
            raise ValueError(f"task '{task.name}' has no test rows")
        retrieving = all(p.entry_tasks for p, _ in mine)
        scores[task.name] = {
            "accuracy": sum(p.task == task.name and p.label == gold for p, gold in mine) / len(mine),
            "label_accuracy": sum(p.label == gold for p, gold in mine) / len(mine),
            "task_choice": sum(p.task == task.name for p, _ in mine) / len(mine),
            "retrieval": metrics.retrieval_accuracy([p.entry_tasks for p, _ in mine], [task.name] * len(mine))
            if retrieving else None,
        }
        if abstain is not None:
            scores[task.name]["abstained"] = sum(p.abstained for p, _ in mine) / len(mine)
    return scores


def _predict_rows(method, rows: list[tuple[str, str, str]], tasks, batch_size: int, progress: bool, task_id: bool,
                  extra: dict | None = None):
    """Predictions for ``rows`` (``(task, input, gold)``, in their order): one mixed pass without task-ID, or
    each task's inputs with its name given (SLM-TI). ``extra``: more keyword arguments of ``predict``."""
    extra = extra or {}
    if not task_id:
        return method.predict([x for _, x, _ in rows], batch_size=batch_size, progress=progress, **extra)
    by_task = {t.name: iter(method.predict([x for n, x, _ in rows if n == t.name], batch_size, progress, task=t.name,
                                           **extra))
               for t in tasks}
    return [next(by_task[name]) for name, _, _ in rows]


def evaluate_generative(method, tasks, metrics_by_task: dict[str, str] | None = None, batch_size: int = 8,
                        seed: int = 0, progress: bool = False, task_id: bool = False,
                        max_new_tokens: int | None = None) -> dict[str, dict]:
    """Score a generative method on instruction tasks' test rows (``(prompt, answer)``), mixed and shuffled
    in batches without task-ID (or, ``task_id=True``, each task's prompts with its name given).

    ``metrics_by_task`` maps a task to ``label``, ``first-word``, ``exact``, ``rouge-l``, ``bertscore`` or
    ``auto`` (default: ``scoring.choose_metric``). ``max_new_tokens`` defaults to 8 when every task is
    scored as labels, else 64. Returns per task: ``metric``, ``score`` (and ``rouge_l``/``bertscore_f1``
    for free answers), ``rows``, ``retrieval`` (paper Eq. 13: share of rows whose retrieved entries are mostly
    their own task's; a row answered by the base model counts as a miss) and ``fallback`` (share answered by
    the frozen base model); the last two only without task-ID.
    """
    from scalable_lm import scoring
    from scalable_lm.methods.generative import BASE_MODEL

    chosen = {}
    for task in tasks:
        if not task.test:
            raise ValueError(f"task '{task.name}' has no test rows")
        metric = (metrics_by_task or {}).get(task.name, "auto")
        chosen[task.name] = scoring.choose_metric([a for _, a in task.test]) if metric == "auto" else metric
    rows = [(task.name, prompt, answer) for task in tasks for prompt, answer in task.test]
    random.Random(seed).shuffle(rows)
    if max_new_tokens is None:
        max_new_tokens = 8 if all(m in scoring.METRICS for m in chosen.values()) else 64
    kept, method.max_new_tokens = method.max_new_tokens, max_new_tokens
    try:
        preds = _predict_rows(method, rows, tasks, batch_size, progress, task_id)
    finally:
        method.max_new_tokens = kept
    scores = {}
    for task in tasks:
        mine = [(pred, gold) for (name, _, gold), pred in zip(rows, preds) if name == task.name]
        s = {**scoring.score_answers([p.label for p, _ in mine], [g for _, g in mine], chosen[task.name]),
             "rows": len(mine)}
        if not task_id:
            s["retrieval"] = metrics.retrieval_accuracy([p.entry_tasks for p, _ in mine], [task.name] * len(mine))
            s["fallback"] = sum(p.task == BASE_MODEL for p, _ in mine) / len(mine)
        scores[task.name] = s
    return scores


def score_matrix(method, tasks: list, score: Callable[[object, list], dict[str, float]],
                 progress: bool = False, last: dict[str, float] | None = None) -> dict:
    """The accuracy matrix of a model's own stream: ``R[i][j]`` = ``task j``'s score after the model's first
    ``i + 1`` tasks (its tasks in the order learned; ``tasks`` holds test rows for some of them).

    A task's tensors depend on nothing learned after it, so the model after its first ``i + 1`` tasks is this
    model with the later tasks removed (``remove_task``, exactly so with the Gaussian router): the last row
    is scored first, then the last task is removed, and so on. **The model is consumed**: it ends holding
    only its first task. ``score(method, tasks)`` returns ``{task name: score in 0-1}`` for the given tasks;
    ``last``: the full model's scores when the caller has them already (the last row is then not scored again).
    Returns ``{"tasks": [all task names], "R": [[score or None]], "scored": [names with rows]}``.
    """
    from scalable_lm.progress import progress as progress_bar

    names = list(method.task_names)
    by_name = {t.name: t for t in tasks}
    unknown = sorted(set(by_name) - set(names))
    if unknown:
        raise ValueError(f"tasks not in the model: {unknown}; it has {names}")
    R: list[list[float | None]] = [[None] * len(names) for _ in names]
    for i in progress_bar(range(len(names) - 1, -1, -1), "accuracy matrix", progress):
        present = [by_name[n] for n in names[: i + 1] if n in by_name]
        if present:
            scores = last if last is not None and i == len(names) - 1 else score(method, present)
            for name, value in scores.items():
                R[i][names.index(name)] = value
        if i:
            method.remove_task(names[i])
    return {"tasks": names, "R": R, "scored": [n for n in names if n in by_name]}


def evaluate_paper_protocol(method, tasks: list[Task], batch_size: int = 32) -> dict[str, float]:
    """Accuracy under the authors' protocol, which LEAKS the task: single-task test batches, one retrieval
    per batch on the mean query, head chosen by the number of classes. Only for setting numbers beside the
    paper's; ``method`` must offer ``predict_paper_protocol`` (SLM does)."""
    scores = {}
    for task in tasks:
        correct = 0
        for start in range(0, len(task.test), batch_size):
            rows = task.test[start: start + batch_size]
            preds = method.predict_paper_protocol([x for x, _ in rows], len(task.label_names))
            correct += sum(p.task == task.name and p.label == task.label_names[y] for p, (_, y) in zip(preds, rows))
        scores[task.name] = correct / len(task.test)
    return scores


def run_stream(method: ContinualMethod, stream: list[Task], batch_size: int = 32, seed: int = 0,
               progress: bool = True, task_id: bool = False, score_every_task: bool = True,
               resume: RunResult | None = None,
               after_task: Callable[[int, RunResult], None] | None = None) -> RunResult:
    """Learn ``stream`` in order; after each task fill row ``i`` of ``R`` (tasks ``0..i``).

    ``task_id=True`` scores with the task named (SLM-TI / oracle upper bounds); report such runs apart.
    ``score_every_task=False`` scores only after the last task (upper bounds such as joint multitask
    training, whose intermediate rows mean nothing); forgetting is then not defined and reported as ``None``.

    ``after_task(i, result)`` is called once task ``i`` is learned and scored (a checkpoint hook).
    ``resume``: the result of a run of this same stream cut short after ``resume.tasks_done`` tasks, with
    ``method`` already holding exactly those tasks (restored from a checkpoint): the loop goes on from the
    next task. Each task's training is seeded by its place in the stream, so a resumed run learns what an
    uninterrupted one would.
    """
    n = len(stream)
    if resume is None:
        result = RunResult(method.name, [t.name for t in stream], task_id, [[None] * n for _ in range(n)],
                           [[None] * n for _ in range(n)], [[None] * n for _ in range(n)],
                           label_R=[[None] * n for _ in range(n)])
    else:
        result = resume
        _check_resumable(method, stream, task_id, resume)
    for i, task in enumerate(stream):
        if i < result.tasks_done:
            continue
        start = time.perf_counter()
        result.learn_reports.append(method.learn(task, progress=progress))
        learned = time.perf_counter()
        if not score_every_task and i < n - 1:
            result.timings[task.name] = {"learn_s": learned - start, "eval_s": 0.0}
            if after_task is not None:
                after_task(i, result)
            continue
        scores = evaluate(method, stream[: i + 1], batch_size, seed, task_id=task_id)
        for j, seen in enumerate(stream[: i + 1]):
            result.R[i][j] = scores[seen.name]["accuracy"]
            result.label_R[i][j] = scores[seen.name]["label_accuracy"]
            result.task_choice_accuracy[i][j] = scores[seen.name]["task_choice"]
            result.retrieval_accuracy[i][j] = scores[seen.name]["retrieval"]
        result.timings[task.name] = {"learn_s": learned - start, "eval_s": time.perf_counter() - learned,
                                     "eval_rows": sum(len(t.test) for t in stream[: i + 1]),
                                     "state_bytes": state_bytes(method)}
        if after_task is not None:
            after_task(i, result)
    return result


def _check_resumable(method, stream: list[Task], task_id: bool, resume: RunResult) -> None:
    """Refuse to go on from ``resume`` unless it is a cut-short run of this stream and ``method`` holds its tasks."""
    names = [t.name for t in stream]
    if resume.tasks != names or resume.task_id != task_id or len(resume.R) != len(names):
        raise ValueError(f"cannot resume: the earlier run was of the stream {resume.tasks} (task_id={resume.task_id}), "
                         f"this one is {names} (task_id={task_id})")
    done = names[: resume.tasks_done]
    held = getattr(method, "task_names", None)
    if held is not None and list(held) != done:
        raise ValueError(f"cannot resume after {len(done)} tasks: the method holds {list(held)}, expected {done}")


def state_bytes(method) -> int | None:
    """Bytes of everything a growing method keeps per learned task (its ``task_state`` of every task: keys,
    increments, head, router statistics); ``None`` for methods without a per-task state."""
    if not hasattr(method, "task_state") or not getattr(method, "task_names", None):
        return None
    return sum(v.numel() * v.element_size() for t in range(len(method.task_names)) for v in method.task_state(t).values())
