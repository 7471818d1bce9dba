"""Assemble the accuracy matrix of the CLI acceptance run from its `slm eval` outputs.

Usage: python benchmarks/acceptance/issue2_matrix.py [OUT_NAME]   (after benchmarks/acceptance/issue2_cli.sh)
Reads benchmarks/results/OUT_NAME/after_<task>.json (default issue2_cli); writes matrix.json beside them.
"""

import json
import sys
from pathlib import Path

from scalable_lm import metrics

OUT = Path(__file__).resolve().parents[1] / "results" / (sys.argv[1] if len(sys.argv) > 1 else "issue2_cli")
TASKS = ["agnews", "yelp", "dbpedia"]


def main() -> None:
    rows = [json.loads((OUT / f"after_{t}.json").read_text())["scores"] for t in TASKS]
    n = len(TASKS)
    R = [[rows[i][TASKS[j]]["accuracy"] if j <= i else None for j in range(n)] for i in range(n)]
    retrieval = {t: rows[-1][t]["retrieval"] for t in TASKS}
    head = {t: rows[-1][t]["task_choice"] for t in TASKS}
    result = {
        "command": f"benchmarks/acceptance/issue2_cli.sh ../shared/datasets {OUT.name} [options in log.txt] && "
                   f"python benchmarks/acceptance/issue2_matrix.py {OUT.name}",
        "tasks": TASKS, "R": R,
        "average_accuracy": metrics.average_accuracy(R), "forgetting": metrics.forgetting(R),
        "bwt": metrics.backward_transfer(R), "retrieval_accuracy_per_task": retrieval,
        "retrieval_accuracy": sum(retrieval.values()) / n, "head_choice_accuracy_per_task": head,
    }
    (OUT / "matrix.json").write_text(json.dumps(result, indent=2))
    print(f"{'after':>10s} " + " ".join(f"{t:>8s}" for t in TASKS))
    for t, row in zip(TASKS, R):
        print(f"{t:>10s} " + " ".join(f"{'':>8s}" if x is None else f"{100 * x:8.1f}" for x in row))
    print(f"average {100 * result['average_accuracy']:.1f}, forgetting {100 * result['forgetting']:.1f}, "
          f"retrieval {', '.join(f'{t} {100 * v:.1f}' for t, v in retrieval.items())}")


if __name__ == "__main__":
    main()
