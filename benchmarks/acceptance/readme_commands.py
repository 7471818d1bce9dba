"""Run every command of the README's quickstarts, as a new user would, in a new empty folder.

Usage:
    python benchmarks/acceptance/readme_commands.py [--keep DIR]

The code blocks of the sections "Quickstart: command line", "Quickstart: Python", "Generative models",
"Serving" and "Sharing skills" are taken from README.md as they are written and run in order in one
empty folder (bash blocks with `bash -euo pipefail`, Python blocks with this interpreter), with `slm` from
this environment on the PATH and a fresh query cache. The server block's `slm serve` runs in the background
until the next block (the client) is done, then gets SIGTERM and must exit 0. Each block's exit code, time
and last output lines go to benchmarks/results/readme/readme_commands.json; any failure stops the run.
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
SECTIONS = ["Quickstart: command line", "Quickstart: Python", "Generative models", "Serving", "Sharing skills"]


def blocks(readme: str) -> list[tuple[str, str, str]]:
    """``(section, language, code)`` of every fenced block in SECTIONS, in README order."""
    out, section = [], None
    for part in re.split(r"^(## .*)$", readme, flags=re.M):
        if part.startswith("## "):
            section = part[3:].strip()
            continue
        if section in SECTIONS:
            for lang, code in re.findall(r"^```(bash|python)\n(.*?)^```", part, flags=re.M | re.S):
                out.append((section, lang, code))
    return out


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="run in this (new) folder and keep it")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="readme-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "SLM_CACHE_DIR": str(work / ".cache")}
    results, server = [], None
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    try:
        for section, lang, code in blocks((ROOT / "README.md").read_text()):
            serve = lang == "bash" and re.match(r"\s*slm serve\b", code)
            start = time.perf_counter()
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
            if server is not None:  # the client block after `slm serve` has run: stop the server
                os.killpg(server.pid, signal.SIGTERM)
                code_ = server.wait(timeout=60)
                results.append({"section": section, "lang": "bash", "code": "(SIGTERM to slm serve)", "exit": code_,
                                "seconds": 0.0, "tail": server.stdout.read()[-1500:]})
                print(f"[{section}] slm serve after SIGTERM: exit {code_}", flush=True)
                server = None
            if proc.returncode != 0:
                break
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGKILL)
        out = ROOT / "benchmarks" / "results" / "readme" / "readme_commands.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        ok = bool(results) and all(r["exit"] in (0, None) for r in results)
        out.write_text(json.dumps({"command": "python benchmarks/acceptance/readme_commands.py", "commit": commit,
                                   "date": time.strftime("%Y-%m-%d"), "all_ok": ok, "blocks": results}, indent=2) + "\n")
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
        print(f"{'all blocks ran' if ok else 'FAILED'}; {out}")


if __name__ == "__main__":
    main()
