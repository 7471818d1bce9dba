"""Shared set-up of the reliability trials: tiny models saved to folders, toy task files, and checks of a
model directory (loadable, what it holds, files it does not list).

The trials test the file protocol (atomic writes, the lock, recovery), which does not depend on model size,
so they use a 2-layer BERT (48 wide) as backbone and a bag-of-words query encoder, both built here and saved
with the packaged MiniLM tokenizer: one `slm learn` takes seconds, so many trials fit in a session.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUNS = REPO / "runs" / "reliability"
OUT = REPO / "benchmarks" / "results" / "reliability"
DOMAINS = {
    "fruit": (["apple", "banana", "cherry", "mango"], ["sweet", "sour"]),
    "vehicle": (["car", "truck", "bicycle", "train"], ["fast", "slow"]),
    "weather": (["rain", "snow", "sun", "wind"], ["cold", "warm"]),
    "music": (["guitar", "drum", "violin", "piano"], ["loud", "quiet"]),
}
FLAGS = ["--rank", "4", "--alpha", "8", "--epochs", "2", "--batch-size", "8", "--max-length", "24", "--lr", "1e-2",
         "--key-epochs", "5", "--targets", "attention.output.dense"]


def env() -> dict:
    return {**os.environ, "SLM_CACHE_DIR": str(RUNS / "cache"), "PYTHONUNBUFFERED": "1"}


def setup() -> Path:
    """``RUNS/models/{backbone,encoder}`` and ``RUNS/data/<domain>.jsonl`` (built once)."""
    root = RUNS / "models"
    if not (root / "encoder" / "config.json").exists():
        import torch
        from transformers import AutoTokenizer, BertConfig, BertModel

        from scalable_lm.backbones import resolve

        tok = AutoTokenizer.from_pretrained(resolve("minilm"))
        torch.manual_seed(0)
        BertModel(BertConfig(vocab_size=30522, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=64, max_position_embeddings=64)).save_pretrained(root / "backbone")
        torch.manual_seed(100)
        encoder = BertModel(BertConfig(vocab_size=30522, hidden_size=48, num_hidden_layers=0, num_attention_heads=4,
                                       intermediate_size=64, max_position_embeddings=64))
        with torch.no_grad():
            encoder.embeddings.position_embeddings.weight.zero_()
            encoder.embeddings.token_type_embeddings.weight.zero_()
        encoder.save_pretrained(root / "encoder")
        for name in ("backbone", "encoder"):
            tok.save_pretrained(root / name)
    data = RUNS / "data"
    data.mkdir(parents=True, exist_ok=True)
    for i, (name, (nouns, labels)) in enumerate(DOMAINS.items()):
        rng = random.Random(i)
        rows = []
        for _ in range(60):
            y = rng.randrange(2)
            rows.append({"text": f"{rng.choice(nouns)} {labels[y]} {rng.choice(nouns)}", "label": labels[y]})
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def slm_argv(*argv) -> list[str]:
    return [sys.executable, "-m", "scalable_lm.cli", "-q", *map(str, argv)]


def learn_argv(model_dir: Path, task: str, domain: str, *extra) -> list[str]:
    models = RUNS / "models"
    return slm_argv("learn", "--model", model_dir, "--task", task, "--data", RUNS / "data" / f"{domain}.jsonl",
                    "--backbone", models / "backbone", "--encoder", models / "encoder", *FLAGS, *extra)


def run(argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, env=env(), timeout=timeout, cwd=REPO)


def inspect(directory: Path) -> dict:
    """What a directory holds: ``state`` 'absent' / 'no-manifest' / 'ok' / 'unloadable'; task names; files
    the manifest does not list (orphans) and temp files."""
    from scalable_lm import store

    out = {"tasks": None, "orphans": [], "temp": []}
    if not directory.exists():
        return {**out, "state": "absent"}
    out["temp"] = sorted(str(p.relative_to(directory)) for p in directory.rglob("*.tmp"))
    listed = set()
    if (directory / store.MANIFEST).exists():
        try:
            slm = store.load(directory)
            out.update(state="ok", tasks=slm.task_names)
            listed = {t["file"] for t in store.read_manifest(directory)["tasks"]}
        except Exception as err:  # noqa: BLE001 - any failure to load is what this check looks for
            out.update(state="unloadable", error=f"{type(err).__name__}: {err}")
    else:
        out["state"] = "no-manifest"
    tasks_dir = directory / "tasks"
    if tasks_dir.is_dir():
        out["orphans"] = sorted(f"tasks/{p.name}" for p in tasks_dir.iterdir()
                                if p.suffix == ".safetensors" and f"tasks/{p.name}" not in listed)
    return out
