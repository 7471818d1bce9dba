"""The accuracy matrix of a stream as the heatmap the benchmarks draw, with its data beside it.

``R[i][j]`` is the score on task ``j`` after the first ``i + 1`` tasks were learned (``None``: not scored).
``slm eval --plot FILE`` draws a user's own directory this way (``runner.score_matrix``), and
``benchmarks/report.py`` draws every benchmark run with the same function. matplotlib is needed only here
(``pip install 'scalable-lm[plot]'``).
"""

from __future__ import annotations

import csv
from pathlib import Path


class PlotError(RuntimeError):
    """A figure that cannot be drawn (matplotlib missing, a path that cannot be written)."""


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (files, no display); ``PlotError`` when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError as err:
        raise PlotError("drawing figures needs matplotlib: pip install 'scalable-lm[plot]' (or matplotlib)") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def heatmap(R: list[list[float | None]], tasks: list[str], title: str, path: str | Path,
            rows: list[str] | None = None) -> Path:
    """Draw ``R`` (scores in 0-1) as a heatmap in percent at ``path`` (PNG, or any format matplotlib
    writes from the suffix). ``rows`` names the rows (default ``after <task>``). Returns ``path``."""
    import numpy as np

    plt = pyplot()
    path = Path(path)
    M = np.array([[np.nan if x is None else 100 * x for x in row] for row in R])
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(tasks) + 2), max(4.0, 0.45 * len(R) + 1.5)))
    im = ax.imshow(M, vmin=0, vmax=100, cmap="viridis")
    ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right")
    ax.set_yticks(range(len(R)), rows or [f"after {t}" for t in tasks[: len(R)]])
    for i in range(len(M)):
        for j in range(min(i + 1, M.shape[1])):
            if not np.isnan(M[i, j]):
                ax.text(j, i, f"{M[i, j]:.0f}", ha="center", va="center", color="w", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except (OSError, ValueError) as err:
        raise PlotError(f"cannot write {path}: {err}") from err
    finally:
        plt.close(fig)
    return path


def write_matrix_csv(R: list[list[float | None]], tasks: list[str], path: str | Path) -> Path:
    """``R`` as rows ``after, after_index, task, score`` (one per scored cell) in ``path``."""
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["after", "after_index", "task", "score"])
        for i, row in enumerate(R):
            for j, x in enumerate(row):
                if x is not None:
                    writer.writerow([tasks[i], i + 1, tasks[j], f"{x:.6f}"])
    return path
