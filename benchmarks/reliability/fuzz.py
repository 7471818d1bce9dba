"""Run the property-based fuzzers (hypothesis) with many examples: the data readers on arbitrary bytes and
arbitrary JSON rows, `read_manifest` on arbitrary bytes, and `load` with any JSON value in any manifest field.
Each must return a result or raise our one error type (DataError / ModelDirError), never write, never hang.

Usage:
    python benchmarks/reliability/fuzz.py [--examples 10000] [--load-examples 2000]

CI runs the same tests with 100 examples each (SLM_FUZZ_EXAMPLES). Writes
benchmarks/results/reliability/fuzz.json with hypothesis's own example counts and the run time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, REPO  # noqa: E402

TESTS = {"tests/data/test_tasks.py::test_fuzz_arbitrary_bytes_give_rows_or_a_data_error": "examples",
         "tests/data/test_tasks.py::test_fuzz_arbitrary_json_rows_give_a_task_or_a_data_error": "examples",
         "tests/test_store.py::test_fuzz_manifest_bytes_give_a_model_dir_error": "examples",
         "tests/test_store.py::test_fuzz_manifest_fields_load_or_give_a_model_dir_error": "load_examples"}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10000)
    parser.add_argument("--load-examples", type=int, default=2000, help="for the fuzzer that loads a model each time")
    parser.add_argument("--only", help="run only the tests whose name contains this; the others keep their "
                        "earlier results in fuzz.json")
    args = parser.parse_args(argv)
    path = OUT / "fuzz.json"
    results = json.loads(path.read_text())["tests"] if args.only and path.exists() else {}
    for test, which in TESTS.items():
        if args.only and args.only not in test:
            continue
        n = getattr(args, which)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test,
                               "--hypothesis-show-statistics"], capture_output=True, text=True, cwd=REPO,
                              env={**os.environ, "SLM_FUZZ_EXAMPLES": str(n)})
        text = done.stdout + done.stderr
        passing = [int(x) for x in re.findall(r"(\d+) passing", text)]
        invalid = [int(x) for x in re.findall(r"(\d+) invalid", text)]
        results[test] = {"max_examples": n, "passed": done.returncode == 0, "passing_examples": sum(passing),
                         "invalid_examples": sum(invalid), "seconds": round(time.perf_counter() - start, 1),
                         "stopped_because": re.findall(r"Stopped because (.*)", text)}
        print(test, json.dumps(results[test]), flush=True)
        if done.returncode != 0:
            results[test]["output_tail"] = text[-3000:]
        results[test]["command"] = "python benchmarks/reliability/fuzz.py " + " ".join(
            argv if argv is not None else sys.argv[1:])
    OUT.mkdir(parents=True, exist_ok=True)
    summary = {"command": "python benchmarks/reliability/fuzz.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "date": time.strftime("%Y-%m-%d"), "tests": results}
    path.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
