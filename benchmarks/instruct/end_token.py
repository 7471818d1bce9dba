"""Which token should end a SmolLM2 training answer? One Instruct-3 task learned alone twice by SLM, the only
difference being the token appended to every answer: <|im_end|> (the end of a chat turn; scalable-lm since
issue 35) or <|im_start|> (what scalable-lm 0.1.0 appended, its converted folder's eos). Generation stops at
either in both runs, so only training differs.

Usage:
    python benchmarks/instruct/end_token.py [--task finance] [--seed 0] [--data-dir ../shared/datasets]

Same rows, options and scoring as benchmarks/configs/instruct3/slm_order8_t120.json (120 train rows, 108 after
the validation split, 120 test rows, 2 epochs, 192 tokens, first-word match). Writes
benchmarks/results/transformers5/end_token_<task>_seed<seed>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _instruct_run():
    """benchmarks/instruct/run.py as a module of its own name (it imports benchmarks/run.py as ``run``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("instruct_run", HERE / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="finance")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=HERE.parents[2] / "shared" / "datasets")
    args = parser.parse_args(argv)
    instruct = _instruct_run()
    MAX_NEW, score = instruct.MAX_NEW, instruct.score
    from tasks import BUILDERS  # benchmarks/instruct/tasks.py, on the path once run.py is loaded

    from scalable_lm.adapters.causal import CausalLM
    from scalable_lm.config import SLMConfig
    from scalable_lm.methods.generative import GenerativeSLM

    task = BUILDERS[args.task](args.data_dir, 120, 120, args.seed)
    record = {"command": " ".join(["python", "benchmarks/instruct/end_token.py", *(argv or sys.argv[1:])]),
              "task": args.task, "seed": args.seed, "runs": {}}
    original = CausalLM.end_id
    for label, token in (("im_end", "<|im_end|>"), ("im_start", "<|im_start|>")):
        config = SLMConfig()
        config.train.epochs, config.train.batch_size, config.train.max_length = 2, 8, 192
        config.train.seed = args.seed
        slm = GenerativeSLM(config, max_new_tokens=MAX_NEW[args.task])
        end = slm.lm.tokenizer.convert_tokens_to_ids(token)
        CausalLM.end_id = property(lambda self, end=end: end)
        try:
            start = time.perf_counter()
            report = slm.learn(task, progress=False)
            answers = [p.label for p in slm.predict([p for p, _ in task.test])]
        finally:
            CausalLM.end_id = original
        record["runs"][label] = {"end_token": token, "end_id": end, "stop_ids": slm.lm.stop_ids,
                                 "scores": score(args.task, answers, [a for _, a in task.test]),
                                 "epochs": report.get("epochs"), "seconds": round(time.perf_counter() - start, 1),
                                 "answers": answers[:20]}
        print(label, record["runs"][label]["scores"], flush=True)
    out = HERE.parents[1] / "benchmarks" / "results" / "transformers5" / f"end_token_{args.task}_seed{args.seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
