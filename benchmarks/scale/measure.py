"""Run a Python module (``-m scalable_lm.cli ...``) or load a model directory (``--load DIR``) and print, last on
standard error, ``{"peak_rss_mb": ...}``: this process's peak resident memory (``getrusage``), which a parent
cannot read for one child among several."""

from __future__ import annotations

import json
import resource
import runpy
import sys
import time


def main() -> int:
    code = 0
    try:
        if sys.argv[1] == "--load":
            import scalable_lm

            start = time.perf_counter()
            slm = scalable_lm.load(sys.argv[2])
            print(f"loaded {len(slm.task_names)} tasks in {time.perf_counter() - start:.2f}s")
        elif sys.argv[1] == "-m":
            sys.argv = [sys.argv[2], *sys.argv[3:]]
            runpy.run_module(sys.argv[0], run_name="__main__")
        else:
            raise SystemExit("usage: measure.py -m MODULE ARGS... | --load DIR")
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"peak_rss_mb": round(peak, 1)}), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
