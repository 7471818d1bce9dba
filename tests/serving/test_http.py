"""``slm serve`` as a real process on 127.0.0.1, talked to with the official ``openai`` client and ``httpx``:
the OpenAI endpoints, mixed concurrent batches (= each request alone), hot add of a task learned by another
process, a corrupt directory never served, limits (429, 400, 404, 401), and SIGTERM draining.

Every server is on a free port, bounded in time, and stopped by the fixture."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import tiny_bert, tiny_query_model, toy_task

pytestmark = pytest.mark.integration

GEN_FLAGS = ["--router", "gaussian", "--targets", "o_proj", "--rank", "4", "--alpha", "8", "--epochs", "8",
             "--lr", "2e-2", "--batch-size", "8", "--max-length", "24", "--key-epochs", "10"]
ANSWERS = {"fruit": "sweet", "vehicle": "fast", "weather": "cold"}
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp: Path) -> dict:
    return {**os.environ, "SLM_CACHE_DIR": str(tmp / "cache"), "PYTHONUNBUFFERED": "1"}


def slm_cli(tmp: Path, *argv, check=True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "scalable_lm.cli", "-q", *map(str, argv)], capture_output=True,
                          text=True, env=_env(tmp), timeout=300)
    if check:
        assert done.returncode == 0, done.stderr
    return done


class Server:
    """``slm serve`` in a subprocess; ``url``, ``stop()`` (SIGTERM, then kill after a timeout)."""

    def __init__(self, model_dir: Path, tmp: Path, *flags):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(tmp / f"server-{self.port}.log", "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "scalable_lm.cli", "serve", "--model", str(model_dir),
                                      "--port", str(self.port), "--reload-interval", "0.2", *map(str, flags)],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=_env(tmp))
        deadline = time.time() + 120
        while time.time() < deadline:
            assert self.proc.poll() is None, self.output()
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError("server did not become ready:\n" + self.output())

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=5).json()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tokenizer):
    """Tiny LLaMA (with a chat template) and query encoder saved to folders, instruction files per task."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.methods.test_generative import instruction_task

    root = tmp_path_factory.mktemp("serve")
    tok = copy.deepcopy(tokenizer)
    tok.eos_token = "[SEP]"
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)  # initializer_range 0.5: logits wide enough that o_proj increments can teach answers
    config = LlamaConfig(vocab_size=30522, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         initializer_range=0.5)
    LlamaForCausalLM(config).save_pretrained(root / "llama")
    tok.save_pretrained(root / "llama")
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
                   "--backbone", root / "llama", "--encoder", root / "encoder", *GEN_FLAGS)


def prompts(root: Path, name: str) -> list[str]:
    return json.loads((root / f"{name}-prompts.json").read_text())


@pytest.fixture(scope="module")
def two_task_dir(workdir):
    model_dir = workdir / "two"
    learn(workdir, model_dir, "fruit")
    learn(workdir, model_dir, "vehicle")
    return model_dir


@pytest.fixture(scope="module")
def server(two_task_dir, workdir):
    srv = Server(two_task_dir, workdir, "--max-new-tokens", "32", "--max-batch", "16", "--max-wait-ms", "50")
    yield srv
    assert srv.stop() == 0, srv.output()


def test_openai_client_chat_completion_streaming_models_and_errors(server, workdir):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    assert {m.id for m in client.models.list()} == {"auto", "base", "fruit", "vehicle"}
    # each task's routing record as `slm learn` measured it; auto: the pairs that overlap (none here)
    cards = {m.id: m.model_extra["slm"] for m in client.models.list()}
    assert cards["fruit"]["routing"] == {"self": 1.0, "routes_to": {}, "captures": {}, "rows": 0}
    assert set(cards["vehicle"]["routing"]) == {"self", "routes_to", "captures", "rows"}
    assert cards["vehicle"]["routing"]["self"] > 0.9 and cards["auto"] == {"overlaps": []} and cards["base"] == {}
    assert client.models.retrieve("vehicle").model_extra["slm"] == cards["vehicle"]
    fruit = prompts(workdir, "fruit")[0]
    chat = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": fruit}],
                                          max_tokens=3, temperature=0)
    choice = chat.choices[0]
    assert choice.message.content.split()[0] == "sweet", choice.message.content
    assert choice.model_extra["slm"]["task"] == "fruit" and len(choice.model_extra["slm"]["entries"]) == 4
    assert chat.usage.prompt_tokens > 0 and 1 <= chat.usage.completion_tokens <= 3
    vehicle = prompts(workdir, "vehicle")[0]
    comp = client.completions.create(model="auto", prompt=vehicle, max_tokens=3, temperature=0)
    assert comp.choices[0].text.split()[0] == "fast" and comp.choices[0].model_extra["slm"]["task"] == "vehicle"
    pieces = list(client.chat.completions.create(model="auto", messages=[{"role": "user", "content": fruit}],
                                                 max_tokens=3, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in pieces if c.choices)
    assert text == choice.message.content and pieces[-1].usage.completion_tokens == chat.usage.completion_tokens
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="auto", prompt=vehicle, max_tokens=3, temperature=0, stream=True))
    assert streamed == comp.choices[0].text
    # SLM-TI and the frozen model
    forced = client.completions.create(model="fruit", prompt=vehicle, max_tokens=3, temperature=0)
    assert forced.choices[0].model_extra["slm"]["task"] == "fruit"
    base = client.completions.create(model="base", prompt=vehicle, max_tokens=3, temperature=0)
    assert base.choices[0].model_extra["slm"]["entries"] == []
    with pytest.raises(openai.NotFoundError, match="valid models"):
        client.completions.create(model="nope", prompt=vehicle, max_tokens=3)
    with pytest.raises(openai.BadRequestError, match="limit of 32"):
        client.completions.create(model="auto", prompt=vehicle, max_tokens=33)
    with pytest.raises(openai.BadRequestError, match="context is 128 tokens"):  # checked in the batch thread
        client.completions.create(model="auto", prompt="apple " * 200, max_tokens=3)
    with pytest.raises(openai.BadRequestError, match="context is 128 tokens"):  # refused before the stream starts
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "apple " * 200}],
                                       max_tokens=3, stream=True)


def test_stop_strings_seeded_sampling_and_bad_bodies(server, workdir):
    fruit = prompts(workdir, "fruit")[1]
    body = {"model": "auto", "prompt": fruit, "max_tokens": 12, "temperature": 1.2, "seed": 7}
    first = httpx.post(server.url + "/v1/completions", json=body, timeout=60).json()
    again = httpx.post(server.url + "/v1/completions", json=body, timeout=60).json()
    assert first["choices"][0]["text"] == again["choices"][0]["text"]  # the seed fixes the sample
    greedy = httpx.post(server.url + "/v1/completions", json={**body, "temperature": 0}, timeout=60).json()
    word = greedy["choices"][0]["text"].split()[0]
    stopped = httpx.post(server.url + "/v1/completions", json={**body, "temperature": 0, "stop": [word]}, timeout=60)
    assert stopped.json()["choices"][0]["text"] == "" and stopped.json()["choices"][0]["finish_reason"] == "stop"
    bad = httpx.post(server.url + "/v1/completions", content=b"{not json", timeout=10,
                     headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["message"] == "the body is not valid JSON"
    missing = httpx.post(server.url + "/v1/chat/completions", json={"model": "auto"}, timeout=10)
    assert missing.status_code == 400 and "messages" in missing.json()["error"]["message"]
    assert httpx.post(server.url + "/v1/classify", json={"input": "x"}, timeout=10).status_code == 400
    metrics = httpx.get(server.url + "/metrics", timeout=10).text
    assert "slm_tasks_loaded 2.0" in metrics and "slm_batch_size_bucket" in metrics and "slm_queue_length" in metrics


def test_sixteen_concurrent_mixed_requests_answer_as_alone(server, workdir):
    rows = []
    for i in range(16):
        task = ["fruit", "vehicle"][i % 2]
        sampled = i % 4 == 3
        rows.append({"model": "auto", "prompt": prompts(workdir, task)[i // 2 % 8], "max_tokens": 4 + i % 3,
                     "temperature": 1.0 if sampled else 0, "seed": i})

    async def send(client, body):
        r = await client.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        c = r.json()["choices"][0]
        return c["text"], c["slm"]["entries"], c["slm"]["weights"]

    async def main():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            alone = [await send(client, body) for body in rows]
            together = await asyncio.gather(*(send(client, body) for body in rows))
            return alone, list(together)

    before = _batches(server)
    alone, together = asyncio.run(main())
    assert together == alone
    assert _batches(server) - before < 16 + 16  # the concurrent ones shared batches


def _batches(server) -> float:
    for line in httpx.get(server.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("slm_batch_size_count"):
            return float(line.split()[-1])
    return 0.0


def test_hot_add_while_serving_and_a_corrupt_directory_is_never_served(workdir, tmp_path):
    model_dir = tmp_path / "grow"
    learn(workdir, model_dir, "fruit")
    learn(workdir, model_dir, "vehicle")
    srv = Server(model_dir, tmp_path, "--max-new-tokens", "8")
    try:
        stop, results = threading.Event(), []

        def traffic():
            with httpx.Client(base_url=srv.url, timeout=60) as client:
                i = 0
                while not stop.is_set():
                    task = ["fruit", "vehicle"][i % 2]
                    r = client.post("/v1/completions", json={"prompt": prompts(workdir, task)[i % 8], "max_tokens": 3,
                                                             "temperature": 0})
                    results.append((task, r.status_code, r.json()["choices"][0]["slm"]["task"] if r.status_code == 200
                                    else r.text))
                    i += 1

        thread = threading.Thread(target=traffic)
        thread.start()
        learn(workdir, model_dir, "weather")  # another process writes the directory the server watches
        deadline = time.time() + 60
        while "weather" not in srv.health()["tasks"] and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
        stop.set()
        thread.join()
        assert srv.health()["tasks"] == ["fruit", "vehicle", "weather"]
        assert results and all(code == 200 and got == task for task, code, got in results), results
        r = httpx.post(srv.url + "/v1/completions", json={"prompt": prompts(workdir, "weather")[0], "max_tokens": 3,
                                                           "temperature": 0}, timeout=60).json()
        assert r["choices"][0]["slm"]["task"] == "weather" and r["choices"][0]["text"].split()[0] == "cold"

        # a half-written task file named by a new manifest: refused, the last good bank keeps answering
        manifest = json.loads((model_dir / "manifest.json").read_text())
        good = (model_dir / manifest["tasks"][-1]["file"]).read_bytes()
        (model_dir / "tasks" / "003-extra.safetensors").write_bytes(good[: len(good) // 2])
        manifest["tasks"].append({**manifest["tasks"][-1], "name": "extra", "file": "tasks/003-extra.safetensors"})
        (model_dir / "manifest.tmp").write_text(json.dumps(manifest))
        os.replace(model_dir / "manifest.tmp", model_dir / "manifest.json")
        deadline = time.time() + 30
        while not srv.health()["reload_error"] and time.time() < deadline:
            time.sleep(0.2)
        health = srv.health()
        assert health["reload_error"] and health["tasks"] == ["fruit", "vehicle", "weather"]
        assert "checksum mismatch" in srv.output() and str(tmp_path) not in json.dumps(health)
        r = httpx.post(srv.url + "/v1/completions", json={"prompt": prompts(workdir, "fruit")[0], "max_tokens": 3,
                                                           "temperature": 0}, timeout=60)
        assert r.status_code == 200 and r.json()["choices"][0]["slm"]["task"] == "fruit"
        assert "slm_reloads_total{result=\"failed\"} 1.0" in httpx.get(srv.url + "/metrics").text
    finally:
        assert srv.stop() == 0


def test_queue_overflow_gets_429_and_sigterm_drains(two_task_dir, workdir, tmp_path):
    srv = Server(two_task_dir, tmp_path, "--max-queue", "2", "--max-batch", "2", "--max-new-tokens", "64")
    body = {"prompt": prompts(workdir, "fruit")[0], "max_tokens": 64, "temperature": 1.0, "seed": 1}

    async def burst(n, max_tokens=64):
        async with httpx.AsyncClient(base_url=srv.url, timeout=120) as client:
            return await asyncio.gather(*(client.post("/v1/completions", json={**body, "max_tokens": max_tokens})
                                          for _ in range(n)))

    try:
        replies = asyncio.run(burst(24, max_tokens=16))
        codes = [r.status_code for r in replies]
        assert set(codes) == {200, 429} and codes.count(429) >= 1, codes
        refused = next(r for r in replies if r.status_code == 429)
        assert refused.headers["retry-after"] == "1" and "queue is full" in refused.json()["error"]["message"]
        assert httpx.post(srv.url + "/v1/completions", json=body, timeout=60).status_code == 200  # recovered

        # a client that leaves mid-stream frees its row: the batch ends long before 64 tokens would
        with httpx.stream("POST", srv.url + "/v1/completions", json={**body, "stream": True}, timeout=60) as r:
            first = next(r.iter_lines())
            assert first.startswith("data: ")
        deadline = time.time() + 20
        while "slm_running_requests 0.0" not in httpx.get(srv.url + "/metrics").text and time.time() < deadline:
            time.sleep(0.05)
        assert "slm_running_requests 0.0" in httpx.get(srv.url + "/metrics").text

        # SIGTERM with requests in flight: every accepted request is answered, then the process exits 0
        out: list = []
        thread = threading.Thread(target=lambda: out.extend(asyncio.run(burst(2))))
        thread.start()
        deadline = time.time() + 30
        while "slm_running_requests 0.0" in httpx.get(srv.url + "/metrics").text and time.time() < deadline:
            time.sleep(0.01)
        srv.proc.send_signal(signal.SIGTERM)
        thread.join(timeout=120)
        assert [r.status_code for r in out] == [200, 200]
        assert srv.proc.wait(timeout=60) == 0
    finally:
        srv.stop()


def test_api_key_and_classifier_endpoint(workdir, tmp_path, tokenizer):
    root = tmp_path / "models"
    for name, model in (("backbone", tiny_bert(0)), ("encoder", tiny_query_model())):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    texts, model_dir = [], tmp_path / "clf"
    for i, name in enumerate(["fruit", "vehicle"]):
        task = toy_task(name, seed=i)
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"text": x, "label": task.label_names[y]}) + "\n" for x, y in task.train))
        texts += [x for x, _ in task.test[:4]]
        slm_cli(tmp_path, "learn", "--model", model_dir, "--task", name, "--data", path, "--backbone", root / "backbone",
                "--encoder", root / "encoder", "--rank", "4", "--alpha", "8", "--epochs", "3", "--batch-size", "8",
                "--max-length", "24", "--lr", "1e-2", "--key-epochs", "10")
    expected = [json.loads(line) for line in slm_cli(tmp_path, "predict", "--model", model_dir, "--json",
                                                     *texts).stdout.splitlines()]
    srv = Server(model_dir, tmp_path, "--api-key", "s3cret")
    try:
        assert httpx.post(srv.url + "/v1/classify", json={"input": texts}, timeout=10).status_code == 401
        assert httpx.get(srv.url + "/health", timeout=10).status_code == 200  # probes need no key
        auth = {"Authorization": "Bearer s3cret"}
        r = httpx.post(srv.url + "/v1/classify", json={"input": texts}, headers=auth, timeout=60)
        assert r.status_code == 200, r.text
        got = r.json()["data"]
        assert [(g["label"], g["task"], g["entries"]) for g in got] == [(e["label"], e["task"], e["entries"])
                                                                         for e in expected]
        assert not any(g["truncated"] for g in got)

        async def each():  # concurrent single-text requests share batches; answers as in one call
            async with httpx.AsyncClient(base_url=srv.url, headers=auth, timeout=60) as client:
                replies = await asyncio.gather(*(client.post("/v1/classify", json={"input": t}) for t in texts * 2))
                return [r.json()["data"][0] for r in replies]
        assert [(g["label"], g["task"]) for g in asyncio.run(each())] == [(g["label"], g["task"]) for g in got] * 2
        long = httpx.post(srv.url + "/v1/classify", json={"input": "apple sweet " * 20}, headers=auth, timeout=60)
        assert long.status_code == 200 and long.json()["data"][0]["truncated"]  # as slm predict: cut, not refused
        one = httpx.post(srv.url + "/v1/classify", json={"input": texts[0], "model": "vehicle"}, headers=auth,
                         timeout=60).json()["data"]
        assert len(one) == 1 and one[0]["task"] == "vehicle"
        # abstain, per request, as `slm predict --abstain-z`: the same answers, "(unknown)" far from every task
        far = ["rain cold snow", "What is the capital of France?"]
        cli_far = [json.loads(line) for line in slm_cli(tmp_path, "predict", "--model", model_dir, "--json",
                                                        "--abstain-z", "3", *texts, *far).stdout.splitlines()]
        r = httpx.post(srv.url + "/v1/classify", json={"input": texts + far, "abstain": 3}, headers=auth, timeout=60)
        assert [(g["label"], g["abstained"]) for g in r.json()["data"]] == [(e["label"], e["abstained"]) for e in cli_far]
        assert any(e["abstained"] for e in cli_far[len(texts):]) and not all(e["abstained"] for e in cli_far)
        bad = httpx.post(srv.url + "/v1/classify", json={"input": texts, "abstain": -1}, headers=auth, timeout=10)
        assert bad.status_code == 400 and "abstain" in bad.text
        chat = httpx.post(srv.url + "/v1/completions", json={"prompt": "x"}, headers=auth, timeout=10)
        assert chat.status_code == 400 and "classifier" in chat.json()["error"]["message"]
    finally:
        assert srv.stop() == 0


def test_serve_refuses_bad_options_before_starting(two_task_dir, tmp_path, capsys):
    from scalable_lm import cli

    assert cli.main(["serve", "--model", str(tmp_path)]) == 2
    assert "not a model directory" in capsys.readouterr().err
    assert cli.main(["serve", "--model", str(two_task_dir), "--host", "0.0.0.0"]) == 2
    assert "give --api-key" in capsys.readouterr().err
    assert cli.main(["serve", "--model", str(two_task_dir), "--max-batch", "0"]) == 2
    assert "--max-batch must be at least 1" in capsys.readouterr().err
