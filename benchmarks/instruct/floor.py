"""The floor of a text-label benchmark: what answering without learning scores on the same test rows.

Usage:
    python benchmarks/instruct/floor.py --data-dir ../shared/datasets [--bench long_sequence] [--seeds 0 1 2]

For each seed of the benchmark's configs, the test rows a run draws (the builders of benchmarks/instruct/tasks.py,
with the configs' row counts) and, per task: the number of options its instruction names, the uniform guess
(1 / options) and the share of the most common gold answer (always answering it: the majority floor), and the
median length in words of its drawn training and test inputs. Exact-match scores of the runs sit above the floor
only as far as the model learned something. Writes
benchmarks/results/<bench>/floor.json with the command.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from tasks import LONG_BUILDERS  # noqa: E402

ROOT = HERE.parents[1]
BUILDERS = {"long_sequence": LONG_BUILDERS}


def floor(task) -> dict:
    """Options, uniform guess and majority share of one built task's test rows."""
    options = task.train[0][0].split("Option: ", 1)[1].split(".\n", 1)[0].split(", ")
    (answer, count), = Counter(answer for _, answer in task.test).most_common(1)
    return {"options": len(options), "uniform": 1 / len(options),
            "majority": count / len(task.test), "majority_answer": answer,
            "test_rows": len(task.test),
            # the input's length in words (the prompt after the instruction), train and test rows as drawn
            "median_words_train": statistics.median(_words(prompt) for prompt, _ in task.train),
            "median_words_test": statistics.median(_words(prompt) for prompt, _ in task.test)}


def _words(prompt: str) -> int:
    return len(prompt.split("\n\n", 1)[-1].split())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--bench", default="long_sequence", choices=sorted(BUILDERS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    config = json.loads((ROOT / "benchmarks" / "configs" / args.bench / "slm_order4.json").read_text())
    builders = BUILDERS[args.bench]
    seeds = {}
    for seed in args.seeds:
        tasks = {name: floor(build(args.data_dir, config["train_per_task"], config["test_per_task"], seed))
                 for name, build in builders.items()}
        seeds[str(seed)] = {"tasks": tasks, "uniform": statistics.fmean(t["uniform"] for t in tasks.values()),
                            "majority": statistics.fmean(t["majority"] for t in tasks.values())}
        print(f"seed {seed}: uniform {100 * seeds[str(seed)]['uniform']:.1f}%, "
              f"majority {100 * seeds[str(seed)]['majority']:.1f}%")
    command = shlex.join(["python", "benchmarks/instruct/floor.py", *(argv if argv is not None else sys.argv[1:])])
    out = ROOT / "benchmarks" / "results" / args.bench / "floor.json"
    out.write_text(json.dumps({"command": command, "train_per_task": config["train_per_task"],
                               "test_per_task": config["test_per_task"], "seeds": seeds}, indent=1) + "\n")


if __name__ == "__main__":
    main()
