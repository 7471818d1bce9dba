"""The engine protocol: both engines implement all of it, and the vLLM engine keeps its engines in step with the
directory only through ``load_task`` / ``unload_task`` (adapters loaded once per version, the old bank served until
every healthy engine holds the new one's adapters, adapters of removed tasks unloaded after the swap)."""

import asyncio

import httpx
import pytest

from scalable_lm.serving.local import Engine
from scalable_lm.serving.protocol import EngineProtocol, ServeError
from scalable_lm.serving.vllm.client import VLLMEngine, _Upstream
from scalable_lm.serving.watcher import Loaded

PROTOCOL = ["start", "stop", "loaded", "check", "submit", "load_task", "unload_task", "queue_length", "status",
            "holds_model", "startup_error"]


class Watcher:
    directory = "unused"
    last_error = None

    def __init__(self, current):
        self.current, self.pending = current, None

    def take(self):
        self.current, self.pending = self.pending, None
        return self.current


def bank(tasks, generation):
    return Loaded(object(), "generative", tasks, f"sha{generation}", generation)


def test_both_engines_implement_the_protocol(tmp_path):
    engines = [Engine(Watcher(None)), VLLMEngine(Watcher(None), ["http://127.0.0.1:9"], state_dir=tmp_path,
                                                 python="python")]
    for engine in engines:
        assert isinstance(engine, EngineProtocol)
        assert all(hasattr(engine, name) for name in PROTOCOL)
    assert [e.holds_model for e in engines] == [True, False]


def test_the_local_engine_loads_a_task_by_checking_its_name():
    engine, loaded = Engine(Watcher(None)), bank(["a", "b"], 1)
    assert asyncio.run(engine.load_task(loaded, "b")) == "b"
    asyncio.run(engine.unload_task("b"))
    with pytest.raises(ServeError) as err:
        asyncio.run(engine.load_task(loaded, "c"))
    assert err.value.status == 404


def test_vllm_engine_follows_the_bank_through_load_and_unload(tmp_path):
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append((request.url.host, request.url.path.rsplit("/", 1)[-1], request.read().decode()))
        return httpx.Response(200, json={})

    async def main():
        first = bank(["a", "b"], 1)
        watcher = Watcher(first)
        engine = VLLMEngine(watcher, ["http://one", "http://two"], state_dir=tmp_path, python="python")
        exported = []

        def export(loaded, task):  # stands in for the PEFT export (tests/test_sharing.py covers it)
            exported.append((loaded.generation, task))
            return f"{task}@{'old' if task == 'a' or loaded.generation == 1 else 'new'}"

        engine._export = export
        engine._client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        engine.upstreams[0].healthy = True  # "two" does not answer: it gets nothing
        await engine._sync()
        assert engine.loaded is first and engine.adapters == {"a": "a@old", "b": "b@old"}
        assert {(h, a) for h, a, _ in calls} == {("one", "load_lora_adapter")} and len(calls) == 2
        await engine._sync()  # nothing new: no export, no call
        assert len(exported) == 2 and len(calls) == 2

        watcher.pending = bank(["a", "c"], 2)  # b removed, c added; a unchanged (same adapter name)
        await engine._sync()
        assert engine.loaded is watcher.current and watcher.current.generation == 2
        assert engine.adapters == {"a": "a@old", "c": "c@new"}
        assert [(a, '"c@new"' in b or '"b@old"' in b) for _, a, b in calls[2:]] == [
            ("load_lora_adapter", True), ("unload_lora_adapter", True)]
        assert engine.upstreams[0].adapters == {"a@old", "c@new"}
        engine.upstreams[1] = _Upstream("http://two")
        engine.upstreams[1].healthy = True  # a (re)started engine gets every adapter before it is used
        await engine._sync()
        assert engine.upstreams[1].adapters == {"a@old", "c@new"}
        await engine._client.aclose()
        engine._pool.shutdown()

    asyncio.run(main())
