"""Hostile and heavy traffic against `slm serve`: normal load mixed with every bad input of issue 34.

Usage:
    python benchmarks/reliability/hostile.py [--seconds 20] [--out benchmarks/results/reliability/hostile.json]

The served model is a classifier on the packaged MiniLM (backbone and query encoder), learned here once from
the demo's three tasks (`slm demo --write-data`), served with the default limits. Phases, each bounded in time:

1. capacity: 8 closed-loop clients, one text per request, for --seconds: answered requests per second;
2. attack: the same 8 innocent clients while attackers send, in a loop, lone surrogates, 10,000-input
   requests, 5 MB and 50 MB bodies (declared and chunked), a 900 KB text, bodies that stall, sockets that never
   send a request, `abstain: true` and NaN. Counts innocent requests by status (target: all 200) and answers
   that differ from the same texts answered alone (target: 0), and the server's peak RSS (VmHWM);
3. overload: 128 clients with a 2 s timeout, each sending again as soon as it has an answer or gave up, for
   --seconds: goodput (answers that reached a client in time, per second) against the capacity of phase 1
   (target >= 80%);
4. /health latency (every 20 ms) while 900 KB texts and a 5 MB chat-sized body arrive (target < 100 ms).

Writes one JSON with every count and the command line; the README beside it gives the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
RUNS = REPO / "runs" / "hostile"
OUT = REPO / "benchmarks" / "results" / "reliability" / "hostile.json"
TASKS = ["support-intent", "review-sentiment", "headline-topic"]


def slm(*argv) -> list[str]:
    return [sys.executable, "-m", "scalable_lm.cli", "-q", *map(str, argv)]


def env() -> dict:
    return {**os.environ, "SLM_CACHE_DIR": str(RUNS / "cache"), "PYTHONUNBUFFERED": "1"}


def setup() -> tuple[Path, list[str]]:
    """The demo's data and a MiniLM classifier learned on its three tasks (once); the test texts."""
    data, model = RUNS / "data", RUNS / "model"
    if not (data / TASKS[0] / "test.jsonl").exists():
        subprocess.run(slm("demo", "--write-data", data), check=True, env=env())
    if not (model / "manifest.json").exists() or len(json.loads((model / "manifest.json").read_text())["tasks"]) < 3:
        for task in TASKS:
            if (model / "manifest.json").exists() and task in (model / "manifest.json").read_text():
                continue
            subprocess.run(slm("learn", "--model", model, "--task", task, "--data", data / task / "train.jsonl",
                               "--epochs", "2"), check=True, env=env())
    texts = [json.loads(line)["text"] for task in TASKS for line in (data / task / "test.jsonl").open()]
    return model, texts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def innocents(url: str, texts: list[str], expected: dict, seconds: float, n: int = 8) -> dict:
    """``n`` closed-loop clients sending one text each; statuses and answers that differ from ``expected``."""
    counts: dict = {"requests": 0, "status": {}, "wrong_answers": 0, "errors": {}}
    end = time.perf_counter() + seconds

    async def client(i):
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            k = i
            while time.perf_counter() < end:
                text = texts[k % len(texts)]
                k += n
                try:
                    r = await c.post("/v1/classify", json={"input": text})
                except httpx.HTTPError as err:
                    counts["errors"][type(err).__name__] = counts["errors"].get(type(err).__name__, 0) + 1
                    continue
                counts["requests"] += 1
                counts["status"][r.status_code] = counts["status"].get(r.status_code, 0) + 1
                if r.status_code == 200:
                    got = r.json()["data"][0]
                    counts["wrong_answers"] += (got["label"], got["task"]) != expected[text]
    await asyncio.gather(*(client(i) for i in range(n)))
    return counts


async def attackers(url: str, port: int, seconds: float) -> dict:
    """Every bad input of issue 34, in a loop, until ``seconds`` have passed; status counts per kind."""
    end = time.perf_counter() + seconds
    seen: dict = {}

    def note(kind, outcome):
        seen.setdefault(kind, {})
        seen[kind][str(outcome)] = seen[kind].get(str(outcome), 0) + 1

    json_type = {"content-type": "application/json"}

    async def post(c, kind, **kw):
        try:
            r = await c.post("/v1/classify", **kw)
            note(kind, r.status_code)
        except httpx.HTTPError as err:
            note(kind, type(err).__name__)

    async def chunks(total):  # no Content-Length: the server must count
        yield b'{"input": "'
        for _ in range(total // 65536):
            yield b"a " * 32768
        yield b'"}'

    async def loop(kind, make):
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            while time.perf_counter() < end:
                await make(c, kind)

    async def surrogate(c, kind):
        await post(c, kind, content=json.dumps({"input": ["fine text", "bad \ud800"]}), headers=json_type)

    async def many_inputs(c, kind):
        await post(c, kind, json={"input": ["short text"] * 10000})

    async def body_5mb(c, kind):
        await post(c, kind, json={"input": "word " * (1 << 20)})

    async def body_50mb_chunked(c, kind):
        await post(c, kind, content=chunks(50 << 20), headers=json_type)

    async def text_900kb(c, kind):
        await post(c, kind, json={"input": "long " * 180000})

    async def abstain_true(c, kind):
        await post(c, kind, content=json.dumps({"input": "x y", "abstain": True}), headers=json_type)

    async def abstain_nan(c, kind):
        await post(c, kind, content='{"input": "x y", "abstain": NaN}', headers=json_type)

    async def stalled_body(c, kind):  # declares 1,000 bytes, sends 10, then waits
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{\"input\": ")
            await writer.drain()
            start = time.perf_counter()
            line = await asyncio.wait_for(reader.readline(), 90)
            note(kind, line.split(b" ")[1].decode() if line else "closed")
            seen.setdefault("stalled_body_wait_s", []).append(round(time.perf_counter() - start, 2))
            writer.close()
        except (OSError, asyncio.TimeoutError) as err:
            note(kind, type(err).__name__)

    async def idle_socket(c, kind):  # opens, sends nothing, waits for the server to close it
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            start = time.perf_counter()
            data = await asyncio.wait_for(reader.read(1), 90)
            note(kind, "closed" if data == b"" else "data")
            seen.setdefault("idle_socket_closed_after_s", []).append(round(time.perf_counter() - start, 2))
            writer.close()
        except (OSError, asyncio.TimeoutError) as err:
            note(kind, type(err).__name__)

    kinds = {"lone_surrogate": surrogate, "10000_inputs": many_inputs, "5MB_body": body_5mb,
             "50MB_chunked_body": body_50mb_chunked, "900KB_text": text_900kb, "abstain_true": abstain_true,
             "abstain_nan": abstain_nan, "stalled_body": stalled_body, "idle_socket": idle_socket}
    await asyncio.gather(*(loop(kind, make) for kind, make in kinds.items()))
    return seen


async def overload(url: str, texts: list[str], seconds: float, clients: int = 128, timeout: float = 2.0) -> dict:
    counts = {"answered_in_time": 0, "gave_up": 0, "refused": {}, "errors": 0}
    end = time.perf_counter() + seconds

    async def client(i):
        async with httpx.AsyncClient(base_url=url, timeout=timeout) as c:
            k = i
            while time.perf_counter() < end:
                k += clients
                try:
                    r = await c.post("/v1/classify", json={"input": texts[k % len(texts)]})
                except httpx.TimeoutException:
                    counts["gave_up"] += 1
                    continue
                except httpx.HTTPError:
                    counts["errors"] += 1
                    continue
                if r.status_code == 200:
                    counts["answered_in_time"] += 1
                else:
                    counts["refused"][r.status_code] = counts["refused"].get(r.status_code, 0) + 1
                    await asyncio.sleep(float(r.headers.get("retry-after", "0.1")) if r.status_code == 429 else 0.05)
    await asyncio.gather(*(client(i) for i in range(clients)))
    return counts


async def health_latency(url: str, seconds: float) -> dict:
    latencies: list[float] = []
    end = time.perf_counter() + seconds

    async def probe():
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            while time.perf_counter() < end:
                start = time.perf_counter()
                await c.get("/health")
                latencies.append(time.perf_counter() - start)
                await asyncio.sleep(0.02)

    async def big():
        statuses: dict = {}
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            while time.perf_counter() < end:
                for body in ({"input": "long " * 180000}, {"input": "word " * (1 << 20)}):
                    try:
                        r = await c.post("/v1/classify", json=body)
                        outcome = r.status_code
                    except httpx.HTTPError as err:  # the server refused and closed while the body was sent
                        outcome = type(err).__name__
                    statuses[outcome] = statuses.get(outcome, 0) + 1
        return statuses

    _, statuses = await asyncio.gather(probe(), big())
    latencies.sort()
    return {"probes": len(latencies), "max_ms": round(1000 * latencies[-1], 1),
            "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1),
            "median_ms": round(1000 * latencies[len(latencies) // 2], 1), "big_requests": statuses}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--serve-flag", action="append", default=[],
                        help="an extra `slm serve` flag (repeat: --serve-flag=--lifo-after --serve-flag=0)")
    args = parser.parse_args(argv)
    model, texts = setup()
    out = subprocess.run(slm("predict", "--model", model, "--json", *texts), capture_output=True, text=True,
                         check=True, env=env()).stdout
    alone = [json.loads(line) for line in out.splitlines()]
    expected = {t: (p["label"], p["task"]) for t, p in zip(texts, alone)}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(RUNS / "hostile-server.log", "w")
    server = subprocess.Popen(slm("serve", "--model", model, "--port", port, *args.serve_flag), stdout=log,
                              stderr=subprocess.STDOUT, env=env())
    record: dict = {"command": " ".join(["python", "benchmarks/reliability/hostile.py", *(argv or sys.argv[1:])]),
                    "model": "MiniLM classifier, 3 demo tasks", "seconds_per_phase": args.seconds,
                    "serve_flags": args.serve_flag}
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        record["rss_mb_ready"] = round(rss_mb(server.pid), 1)

        async def phases():
            start = time.perf_counter()
            cap = await innocents(url, texts, expected, args.seconds)
            record["capacity"] = {**cap, "per_s": round(cap["status"].get(200, 0) / (time.perf_counter() - start), 2)}
            print("capacity", record["capacity"], flush=True)
            start = time.perf_counter()
            good, bad = await asyncio.gather(innocents(url, texts, expected, args.seconds),
                                             attackers(url, port, args.seconds))
            record["attack"] = {"innocent": {**good, "per_s": round(good["status"].get(200, 0) /
                                                                     (time.perf_counter() - start), 2)},
                                "attackers": bad, "peak_rss_mb": round(peak_rss_mb(server.pid), 1),
                                "rss_mb_after": round(rss_mb(server.pid), 1)}
            print("attack", record["attack"], flush=True)
            await asyncio.sleep(3)  # let the stalled and idle connections of the attack end
            start = time.perf_counter()
            over = await overload(url, texts, args.seconds)
            goodput = over["answered_in_time"] / (time.perf_counter() - start)
            record["overload"] = {**over, "clients": 128, "client_timeout_s": 2.0, "goodput_per_s": round(goodput, 2),
                                  "share_of_capacity": round(goodput / record["capacity"]["per_s"], 3)}
            print("overload", record["overload"], flush=True)
            await asyncio.sleep(3)
            record["health_during_big_requests"] = await health_latency(url, args.seconds / 2)
            print("health", record["health_during_big_requests"], flush=True)

        asyncio.run(phases())
        record["peak_rss_mb"] = round(peak_rss_mb(server.pid), 1)
        record["rss_mb_end"] = round(rss_mb(server.pid), 1)
    finally:
        server.terminate()
        record["server_exit"] = server.wait(timeout=180)
    failed = {k: v for k, v in record["attack"]["innocent"]["status"].items() if k != 200}
    record["targets"] = {
        "innocent_failed": sum(failed.values()) + sum(record["attack"]["innocent"]["errors"].values()),
        "innocent_wrong_answers": record["attack"]["innocent"]["wrong_answers"],
        "goodput_share_of_capacity": record["overload"]["share_of_capacity"],
        "health_max_ms": record["health_during_big_requests"]["max_ms"],
        "peak_rss_mb": record["peak_rss_mb"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(json.dumps(record["targets"], indent=2))
    if math.isnan(record["peak_rss_mb"]):
        print("(peak RSS is read from /proc: Linux only)")


if __name__ == "__main__":
    main()
