"""Continual-learning metrics as pure functions of the accuracy matrix.

``R[i][j]`` is the score on task ``j``'s test set after learning task ``i`` (``None`` where ``j > i``:
a task not yet learned is not scored).
"""

from __future__ import annotations

Matrix = list[list[float | None]]


def average_accuracy(R: Matrix, after: int | None = None) -> float:
    """Mean of ``R[k][0..k]`` after task ``k`` (default: the last)."""
    k = len(R) - 1 if after is None else after
    row = [R[k][j] for j in range(k + 1)]
    return sum(row) / len(row)


def forgetting(R: Matrix, after: int | None = None) -> float:
    """Paper Eq. 8: mean over ``j < k`` of ``max_{l<k} R[l][j] - R[k][j]``; 0 after the first task."""
    k = len(R) - 1 if after is None else after
    if k == 0:
        return 0.0
    drops = [max(R[l][j] for l in range(j, k)) - R[k][j] for j in range(k)]
    return sum(drops) / len(drops)


def backward_transfer(R: Matrix) -> float:
    """BWT: mean over ``j < T-1`` of ``R[T-1][j] - R[j][j]`` (negative = forgetting)."""
    last = len(R) - 1
    if last == 0:
        return 0.0
    return sum(R[last][j] - R[j][j] for j in range(last)) / last


def retrieval_accuracy(entry_tasks: list[list[str]], gold_tasks: list[str]) -> float:
    """Paper Eq. 13: share of inputs for which more than half of the retrieved entries are of their own task."""
    if not gold_tasks:
        return float("nan")
    hits = sum(sum(t == gold for t in tasks) * 2 > len(tasks) for tasks, gold in zip(entry_tasks, gold_tasks))
    return hits / len(gold_tasks)


def expected_calibration_error(confidences: list[float], correct: list[bool], bins: int = 15) -> float:
    """ECE: the mean over equal-width confidence bins of |accuracy - mean confidence|, weighted by the share
    of rows in each bin (Guo et al., 2017; 15 bins as there). 0 = confidences match accuracy exactly."""
    if len(confidences) != len(correct):
        raise ValueError(f"{len(confidences)} confidences for {len(correct)} outcomes")
    if not confidences:
        raise ValueError("no predictions to measure")
    totals = [[0, 0.0, 0] for _ in range(bins)]  # rows, sum of confidence, rows correct
    for conf, ok in zip(confidences, correct):
        b = min(int(conf * bins), bins - 1)
        totals[b][0] += 1
        totals[b][1] += conf
        totals[b][2] += bool(ok)
    return sum(abs(right / n - conf_sum / n) * n for n, conf_sum, right in totals if n) / len(confidences)
