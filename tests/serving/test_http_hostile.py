"""``slm serve`` under hostile traffic, as a real process on 127.0.0.1: one request's bad input, size, slowness
or departure never fails, slows or starves another (issue 34). Each test here failed on the server before it.

Bounded: every server is on a free port, every load is a fixed number of requests, every wait has a deadline."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import threading
import time

import httpx
import openai
import pytest

from tests.conftest import tiny_bert, tiny_query_model, toy_task
from tests.serving.test_http import Server, learn, prompts, slm_cli, two_task_dir, workdir  # noqa: F401

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory, tokenizer):
    tmp = tmp_path_factory.mktemp("hostile")
    root = tmp / "models"
    for name, model in (("backbone", tiny_bert(0)), ("encoder", tiny_query_model())):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    texts, model_dir = [], tmp / "clf"
    for i, name in enumerate(["fruit", "vehicle"]):
        task = toy_task(name, seed=i)
        path = tmp / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"text": x, "label": task.label_names[y]}) + "\n" for x, y in task.train))
        texts += [x for x, _ in task.test[:6]]
        slm_cli(tmp, "learn", "--model", model_dir, "--task", name, "--data", path, "--backbone", root / "backbone",
                "--encoder", root / "encoder", "--rank", "4", "--alpha", "8", "--epochs", "2", "--batch-size", "8",
                "--max-length", "24", "--lr", "1e-2", "--key-epochs", "5")
    (tmp / "texts.json").write_text(json.dumps(texts))
    return model_dir


@pytest.fixture(scope="module")
def clf_server(classifier_dir):
    srv = Server(classifier_dir, classifier_dir.parent, "--max-batch", "16", "--max-wait-ms", "20", "--max-inputs",
                 "64", "--max-body-bytes", "200000", "--read-timeout", "2")
    yield srv
    assert srv.stop() == 0, srv.output()


JSON = {"content-type": "application/json"}


def _escaped(body) -> str:
    """JSON with \\uXXXX escapes: how a client sends a lone surrogate (it cannot be encoded as UTF-8)."""
    return json.dumps(body, ensure_ascii=True)


def _texts(classifier_dir) -> list[str]:
    return json.loads((classifier_dir.parent / "texts.json").read_text())


def test_a_lone_surrogate_fails_only_its_own_request(clf_server, classifier_dir):
    texts = _texts(classifier_dir)
    expected = httpx.post(clf_server.url + "/v1/classify", json={"input": texts}, timeout=60).json()["data"]

    async def mixed():
        async with httpx.AsyncClient(base_url=clf_server.url, timeout=60) as client:
            good = [client.post("/v1/classify", json={"input": t}) for t in texts]
            bad = [client.post("/v1/classify", content=_escaped({"input": ["apple sweet", "bad \ud800 input"]}),
                               headers=JSON) for _ in range(len(texts))]
            return await asyncio.gather(*[x for pair in zip(good, bad) for x in pair])

    replies = asyncio.run(mixed())
    good, bad = replies[0::2], replies[1::2]
    assert [r.status_code for r in good] == [200] * len(texts)
    assert [r.json()["data"][0]["label"] for r in good] == [e["label"] for e in expected]
    assert {r.status_code for r in bad} == {400}
    assert bad[0].json()["error"]["message"] == "input 1 is not valid Unicode (a lone surrogate at character 4)"


def test_an_out_of_range_seed_fails_only_its_own_request(two_task_dir, workdir, tmp_path):  # noqa: F811
    srv = Server(two_task_dir, tmp_path, "--max-new-tokens", "8", "--max-wait-ms", "50")
    try:
        fruit = prompts(workdir, "fruit")

        async def mixed():
            async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
                body = {"max_tokens": 3, "temperature": 0.8}
                calls = [client.post("/v1/completions", json={**body, "prompt": p, "seed": 1}) for p in fruit[:6]]
                calls.insert(3, client.post("/v1/completions", json={**body, "prompt": fruit[0], "seed": 2 ** 80}))
                return await asyncio.gather(*calls)

        replies = asyncio.run(mixed())
        assert [r.status_code for r in replies] == [200, 200, 200, 400, 200, 200, 200]
        assert "seed" in replies[3].json()["error"]["message"]
        r = httpx.post(srv.url + "/v1/chat/completions", timeout=10, headers=JSON,
                       content=_escaped({"messages": [{"role": "user", "content": "a \ud800"}]}))
        assert r.status_code == 400 and "not valid Unicode" in r.json()["error"]["message"]
    finally:
        assert srv.stop() == 0


def test_size_limits_are_named_and_a_big_request_runs_in_bounded_memory(clf_server):
    r = httpx.post(clf_server.url + "/v1/classify", json={"input": ["apple"] * 65}, timeout=30)
    assert r.status_code == 413 and "at most 64 (slm serve --max-inputs)" in r.json()["error"]["message"]
    r = httpx.post(clf_server.url + "/v1/classify", json={"input": "apple " * 50000}, timeout=30)
    assert r.status_code == 413 and "limit of 200000 bytes (slm serve --max-body-bytes)" in r.json()["error"]["message"]

    def chunked():  # no Content-Length: refused as soon as the body passes the limit
        yield b'{"input": "'
        for _ in range(300):
            yield b"apple " * 200
        yield b'"}'
    r = httpx.post(clf_server.url + "/v1/classify", content=chunked(), timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == 413
    # a text near the body limit: cut to what the model reads before any tokenizer sees it
    start = time.perf_counter()
    r = httpx.post(clf_server.url + "/v1/classify", json={"input": "apple sweet " * 16000}, timeout=30)
    assert r.status_code == 200 and r.json()["data"][0]["truncated"] and time.perf_counter() - start < 5


def test_a_client_that_leaves_cancels_its_work(two_task_dir, workdir, tmp_path):  # noqa: F811
    srv = Server(two_task_dir, tmp_path, "--max-new-tokens", "256", "--max-batch", "1")
    try:
        body = {"prompt": prompts(workdir, "fruit")[0], "max_tokens": 96, "ignore_eos": True, "temperature": 0}
        start = time.perf_counter()
        r = httpx.post(srv.url + "/v1/completions", json=body, timeout=60)
        whole = time.perf_counter() - start
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 96

        def tokens() -> float:
            text = httpx.get(srv.url + "/metrics", timeout=10).text
            return float(next(line.split()[-1] for line in text.splitlines() if line.startswith("slm_generated_tokens_total")))

        before = tokens()
        for _ in range(3):  # non-streaming clients that give up after a moment
            with pytest.raises(httpx.TimeoutException):
                httpx.post(srv.url + "/v1/completions", json=body, timeout=whole / 5)
        deadline = time.time() + 30
        while "slm_running_requests 0.0" not in httpx.get(srv.url + "/metrics").text and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert tokens() - before < 3 * 96 / 2, (tokens() - before, whole)  # was 288: every answer finished
        assert "slm_requests_total{endpoint=\"/v1/completions\",status=\"499\"}" in httpx.get(srv.url + "/metrics").text
    finally:
        assert srv.stop() == 0


def test_health_stays_fast_while_a_long_prompt_is_tokenised(two_task_dir, workdir, tmp_path):  # noqa: F811
    srv = Server(two_task_dir, tmp_path, "--max-body-bytes", str(8 << 20))
    try:
        latencies, done = [], threading.Event()

        def probe():
            with httpx.Client(base_url=srv.url, timeout=10) as client:
                while not done.is_set():
                    start = time.perf_counter()
                    assert client.get("/health").status_code == 200
                    latencies.append(time.perf_counter() - start)
                    time.sleep(0.01)

        thread = threading.Thread(target=probe)
        thread.start()
        time.sleep(0.3)
        r = httpx.post(srv.url + "/v1/chat/completions", timeout=120,
                       json={"messages": [{"role": "user", "content": "apple banana cherry " * 250000}]})
        done.set()
        thread.join()
        assert r.status_code == 400 and "context is 128 tokens" in r.json()["error"]["message"]
        assert len(latencies) > 10 and max(latencies) < 0.5, max(latencies)
    finally:
        assert srv.stop() == 0


def test_reload_error_clears_when_the_directory_is_put_back(classifier_dir, tmp_path):
    import shutil

    model_dir = tmp_path / "m"
    shutil.copytree(classifier_dir, model_dir)
    srv = Server(model_dir, tmp_path)
    try:
        good = (model_dir / "manifest.json").read_bytes()
        (model_dir / "manifest.json").write_text("{ not a manifest")
        deadline = time.time() + 30
        while not srv.health()["reload_error"] and time.time() < deadline:
            time.sleep(0.1)
        assert srv.health()["reload_error"]
        (model_dir / "manifest.json").write_bytes(good)  # put back exactly as served
        deadline = time.time() + 30
        while srv.health()["reload_error"] and time.time() < deadline:
            time.sleep(0.1)
        assert srv.health()["reload_error"] is False
    finally:
        assert srv.stop() == 0


def test_what_is_public_timeouts_and_small_protocol_details(classifier_dir, tmp_path):
    srv = Server(classifier_dir, tmp_path, "--api-key", "k", "--read-timeout", "1")
    try:
        for path in ("/docs", "/redoc", "/openapi.json", "/v1/models"):
            assert httpx.get(srv.url + path, timeout=10).status_code == 401, path
        health = httpx.get(srv.url + "/health", timeout=10).json()
        assert "tasks" not in health and health["task_count"] == 2  # probes see no task names
        assert httpx.head(srv.url + "/health", timeout=10).status_code == 200
        auth = {"Authorization": "Bearer k"}
        assert httpx.get(srv.url + "/openapi.json", headers=auth, timeout=10).status_code == 200
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="k", max_retries=0, timeout=30)
        assert client.models.retrieve("fruit").id == "fruit"
        with pytest.raises(openai.NotFoundError, match="valid models"):
            client.models.retrieve("nope")
        for value, words in ((True, "not a boolean"), (math.nan, "finite number")):
            r = httpx.post(srv.url + "/v1/classify", headers={**auth, "content-type": "application/json"}, timeout=10,
                           content=json.dumps({"input": "apple", "abstain": value}))
            assert r.status_code == 400 and words in r.json()["error"]["message"], r.text
        # a body that never finishes: 408 after --read-timeout; a socket that never sends a request: closed
        with socket.create_connection(("127.0.0.1", srv.port)) as sock:
            sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"input\": ")
            sock.settimeout(10)
            start = time.perf_counter()
            reply = sock.recv(4096)
            assert reply.startswith(b"HTTP/1.1 408") and time.perf_counter() - start < 5
        with socket.create_connection(("127.0.0.1", srv.port)) as sock:
            sock.settimeout(10)
            start = time.perf_counter()
            sock.sendall(b"GET /hea")  # a trickle of header bytes, then nothing
            assert sock.recv(4096) == b"" and time.perf_counter() - start < 5
    finally:
        assert srv.stop() == 0
