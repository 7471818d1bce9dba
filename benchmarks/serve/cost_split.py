"""Where a served classifier request's time goes, in-process (no HTTP): the query encoding, the backbone
alone, and the whole routed `predict`, per text, at batch 1 and batch 16, on the serving benchmark's
classifier directory and test texts.

    python benchmarks/serve/cost_split.py [--data-dir ../shared/datasets]

Writes benchmarks/results/serve/cost_split.json. Run it after benchmarks/serve/run.py --part classifier
(which builds runs/serve/classifier) and with nothing else running.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import OUT, REPO, RUNS, classifier_rows  # noqa: E402

from scalable_lm import store  # noqa: E402


def per_text_ms(fn, texts: list[str], batch: int, repeats: int = 3) -> float:
    fn(texts[:batch])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(texts), batch):
            fn(texts[i: i + batch])
        best = min(best, (time.perf_counter() - start) / len(texts) * 1000)
    return round(best, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--texts", type=int, default=96)
    parser.add_argument("--encoder", help="measure runs/serve/classifier-ENCODER (built by run.py --encoder) and "
                        "write cost_split-ENCODER.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    slm = store.load(RUNS / ("classifier" if args.encoder is None else f"classifier-{args.encoder}"))
    slm.encoder.cache_limit = 0  # as served: every input encoded afresh
    texts = [text for _, text, _ in classifier_rows(args.data_dir, 100)][: args.texts]

    @torch.no_grad()
    def backbone(chunk):
        slm.classifier.features(slm.classifier.tokenize(chunk, slm.config.train.max_length))

    # with a shared prefix, "query encoding" is a pass stopped at block N, which predict does not make: there
    # the query is read inside predict's own forward pass
    parts = {"query encoding": lambda chunk: slm.encoder.encode(chunk), "backbone alone (no routing)": backbone,
             "routed predict (encode + route + mixed backbone + head)": lambda chunk: slm.predict(chunk, batch_size=len(chunk))}
    result = {name: {str(b): per_text_ms(fn, texts, b) for b in (1, 16)} for name, fn in parts.items()}
    for name, row in result.items():
        print(f"{name:60s} ms/text  batch 1: {row['1']:7.2f}   batch 16: {row['16']:7.2f}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    name = "cost_split.json" if args.encoder is None else f"cost_split-{args.encoder}.json"
    (OUT / name).write_text(json.dumps({
        "ms_per_text": result, "texts": len(texts), "max_length": slm.config.train.max_length,
        "encoder": slm.encoder.name, "threads": torch.get_num_threads(), "commit": commit,
        "command": "python benchmarks/serve/cost_split.py " + " ".join(sys.argv[1:])}, indent=2))


if __name__ == "__main__":
    main()
