"""Server faults: `slm learn` killed (-9) at random moments while `slm serve` hot-reloads the same directory
under continuous load; a burst beyond the queue; clients that leave before their answer.

Usage:
    python benchmarks/reliability/server_faults.py [--kills 12] [--seed 0]

Counts every request by status. The claim checked: no request fails except documented refusals (429 in the
burst), every answer names a task the directory held, the server never serves a bank that does not load
(reloads by result from /metrics), and it keeps answering after each fault. Bounded: a fixed number of kills,
the load stops with them, the server is stopped by SIGTERM. Writes benchmarks/results/reliability/server_faults.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DOMAINS, OUT, RUNS, env, learn_argv, run, setup, slm_argv  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def texts() -> list[str]:
    rows = [json.loads(line)["text"] for name in ("fruit", "vehicle") for line in (RUNS / "data" / f"{name}.jsonl").open()]
    return rows


async def load(url: str, stop: asyncio.Event, statuses: dict, tasks_seen: set, concurrency: int = 4) -> None:
    pool = texts()
    rng = random.Random(1)

    async def worker(client):
        while not stop.is_set():
            r = await client.post(f"{url}/v1/classify", json={"input": [rng.choice(pool)]})
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code == 200:
                tasks_seen.update(d["task"] for d in r.json()["data"])
    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(*[worker(client) for _ in range(concurrency)])


def metrics(url: str) -> dict:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {m[0]: float(m[1]) for m in re.findall(r'slm_reloads_total\{result="(\w+)"\} ([0-9.e+]+)', text)}


async def burst(url: str, n: int) -> dict:
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=n)) as client:
        rs = await asyncio.gather(*[client.post(f"{url}/v1/classify", json={"input": ["apple sweet mango"]})
                                    for _ in range(n)], return_exceptions=True)
    out: dict = {}
    for r in rs:
        key = type(r).__name__ if isinstance(r, Exception) else r.status_code
        out[key] = out.get(key, 0) + 1
    return out


async def leavers(url: str, n: int) -> int:
    """Clients that give up after 5 ms (their connection closes before the answer)."""
    left = 0
    async with httpx.AsyncClient(timeout=0.005) as client:
        for _ in range(n):
            try:
                await client.post(f"{url}/v1/classify", json={"input": ["car fast truck"] * 8})
            except httpx.TimeoutException:
                left += 1
    return left


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    setup()
    from kill9 import base_dirs

    base_dirs()
    d = RUNS / "trials" / "served"
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(RUNS / "bases" / "two", d)
    timed = time.perf_counter()
    probe = RUNS / "trials" / "served-timing"
    shutil.rmtree(probe, ignore_errors=True)
    shutil.copytree(RUNS / "bases" / "two", probe)
    assert run(learn_argv(probe, "weather", "weather")).returncode == 0
    duration = time.perf_counter() - timed
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(slm_argv("serve", "--model", d, "--port", port, "--reload-interval", "0.2",
                                       "--max-queue", "32"), stdout=subprocess.DEVNULL,
                              stderr=open(RUNS / "server_faults.log", "w"), env=env())
    rng = random.Random(args.seed)
    record: dict = {"learn_s": round(duration, 2), "kills": []}
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)

        async def faults():
            stop, statuses, seen = asyncio.Event(), {}, set()
            traffic = asyncio.create_task(load(url, stop, statuses, seen))
            held = ["fruit", "vehicle"]
            for i in range(args.kills):
                name = f"t{i}"
                domain = list(DOMAINS)[2 + i % 2]
                proc = subprocess.Popen(learn_argv(d, name, domain), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, env=env())
                delay = rng.uniform(0, 1.2 * duration)
                await asyncio.sleep(delay)
                finished = proc.poll() is not None
                proc.kill()
                proc.wait()
                manifest = json.loads((d / "manifest.json").read_text())
                held = [t["name"] for t in manifest["tasks"]]
                record["kills"].append({"task": name, "delay_s": round(delay, 2), "finished": finished,
                                        "committed": name in held})
                await asyncio.sleep(1.0)  # let the server pick up whatever was committed
            final = await asyncio.to_thread(run, learn_argv(d, "final", "music"))
            assert final.returncode == 0, final.stderr
            for _ in range(100):
                health = httpx.get(f"{url}/health", timeout=5).json()
                if len(health.get("tasks", [])) == len(held) + 1:
                    break
                await asyncio.sleep(0.2)
            stop.set()
            await traffic
            held = [t["name"] for t in json.loads((d / "manifest.json").read_text())["tasks"]]
            return statuses, seen, held, health

        statuses, seen, held, health = asyncio.run(faults())
        record.update(requests_by_status={str(k): v for k, v in statuses.items()}, tasks_answered=sorted(seen),
                      tasks_held_at_end=held, answers_naming_a_task_not_held=sorted(seen - set(held)),
                      health_at_end=health, reloads=metrics(url))
        record["burst_600_max_queue_32"] = asyncio.run(burst(url, 600))
        record["after_burst_20_requests"] = asyncio.run(burst(url, 20))
        record["clients_that_left"] = asyncio.run(leavers(url, 20))
        record["after_leavers_20_requests"] = asyncio.run(burst(url, 20))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            record["server_exit"] = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            record["server_exit"] = "killed after 60 s"
    non_200 = sum(v for k, v in record["requests_by_status"].items() if k != "200")
    record.update(failed_requests_under_load=non_200,
                  ok=non_200 == 0 and not record["answers_naming_a_task_not_held"]
                  and record["reloads"].get("failed", 0) == 0
                  and set(record["burst_600_max_queue_32"]) <= {200, 429}
                  and record["after_burst_20_requests"] == {200: 20} and record["after_leavers_20_requests"] == {200: 20},
                  command="python benchmarks/reliability/server_faults.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                  date=time.strftime("%Y-%m-%d"))
    record["burst_600_max_queue_32"] = {str(k): v for k, v in record["burst_600_max_queue_32"].items()}
    record["after_burst_20_requests"] = {str(k): v for k, v in record["after_burst_20_requests"].items()}
    record["after_leavers_20_requests"] = {str(k): v for k, v in record["after_leavers_20_requests"].items()}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "server_faults.json").write_text(json.dumps(record, indent=2))
    print(json.dumps({k: v for k, v in record.items() if k != "kills"}, indent=2))


if __name__ == "__main__":
    main()
