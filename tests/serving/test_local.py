"""The serving engine's building blocks: our decoding loop (greedy = ``generate``; a sampled row does not
depend on its batch-mates), mixed per-row routes, and the text stream (stop strings, streamed pieces)."""

import torch

from scalable_lm.adapters.causal import CausalLM
from scalable_lm.adapters.inject import routed
from scalable_lm.serving import Job, _TextStream
from tests.methods.test_generative import instruction_task, lm_tokenizer, make_generative, tiny_llama  # noqa: F401

PROMPTS = ["apple banana", "a much longer prompt about a car and a truck and the rain", "sun"]


def test_greedy_decode_matches_generate(lm_tokenizer):
    lm = CausalLM(tiny_llama(), lm_tokenizer, max_length=32)
    expected = [text for text, _ in lm.generate(PROMPTS, max_new_tokens=6)]
    tokens = lm.decode([lm.prompt_ids(p) for p in PROMPTS], [6] * 3, [0.0] * 3)
    assert [lm_tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens] == expected


def test_sampled_row_does_not_depend_on_its_batch_mates(lm_tokenizer):
    lm = CausalLM(tiny_llama(), lm_tokenizer, max_length=32)
    ids = [lm.prompt_ids(p) for p in PROMPTS]

    def sample(rows, seed_of):
        gens = [torch.Generator().manual_seed(seed_of[i]) for i in rows]
        return lm.decode([ids[i] for i in rows], [8] * len(rows), [1.0] * len(rows), [0.9] * len(rows), gens)

    together = sample([0, 1, 2], {0: 1, 1: 2, 2: 3})
    assert sample([1], {1: 2})[0] == together[1] and sample([2, 0], {0: 1, 2: 3}) == [together[2], together[0]]
    assert sample([1], {1: 5})[0] != together[1] or sample([1], {1: 6})[0] != together[1]  # the seed matters


def test_per_row_limits_and_early_stop(lm_tokenizer):
    lm = CausalLM(tiny_llama(), lm_tokenizer, max_length=32)
    ids = [lm.prompt_ids(p) for p in PROMPTS]
    full = lm.decode(ids, [6, 6, 6], [0.0] * 3)
    short = lm.decode(ids, [2, 6, 0], [0.0] * 3, on_token=lambda row, tok: row != 1)
    assert short[0] == full[0][:2] and short[1] == full[1][:1] and short[2] == []


def test_mixed_routes_are_per_row(lm_tokenizer):
    from scalable_lm.methods.generative import BASE_MODEL

    slm = make_generative(lm_tokenizer)
    slm.config.train.epochs = 4
    fruit, vehicle = instruction_task("fruit", "sweet"), instruction_task("vehicle", "fast", seed=1)
    slm.learn(fruit, progress=False)
    slm.learn(vehicle, progress=False)
    prompts = [fruit.test[0][0], vehicle.test[0][0], fruit.test[1][0], vehicle.test[1][0]]
    entries, weights, infos = slm.route_rows(prompts, ["auto", "auto", "vehicle", "base"])
    assert [i["task"] for i in infos] == ["fruit", "vehicle", "vehicle", BASE_MODEL]
    assert float(weights[3].abs().sum()) == 0.0 and not infos[3]["fallback"]
    alone = slm.route_rows(prompts[2:3], ["vehicle"])
    assert torch.equal(alone[0][0], entries[2]) and torch.equal(alone[1][0], weights[2])
    ids = [slm.lm.prompt_ids(p) for p in prompts]
    with routed(slm.layers, entries, weights):
        mixed = slm.lm.decode(ids, [3] * 4, [0.0] * 4)
    preds = slm.predict(prompts[:2])
    assert [lm_tokenizer.decode(t, skip_special_tokens=True).strip() for t in mixed[:2]] == [p.label for p in preds]


class _Tok:
    eos_token_id = -1

    def decode(self, tokens, skip_special_tokens=True):
        return "".join(chr(t) for t in tokens)


def test_text_stream_stops_and_streams_whole_pieces():
    pushed = []
    job = Job("generate", "auto", ["q"], stop=["END"], stream=True)
    job.push = pushed.append
    stream = _TextStream(_Tok(), job)
    assert all(stream.add(ord(c)) for c in " hello E")
    assert stream.add(ord("N")) and not stream.add(ord("D"))
    assert stream.final([], 99) == ("hello", "stop") and "".join(pushed) == "hello"
    assert all("E" not in piece for piece in pushed)  # a possible stop string is held back, never sent


def test_query_cache_bound_keeps_the_newest(tokenizer):
    from scalable_lm.encoder import QueryEncoder, text_key
    from tests.conftest import tiny_query_model

    encoder = QueryEncoder(tiny_query_model(), tokenizer, max_length=24)
    unbounded = encoder.encode(["apple", "car", "rain"])
    encoder._cache.clear()
    encoder.cache_limit = 2
    assert torch.equal(encoder.encode(["apple", "car", "rain"]), unbounded)  # more texts than the bound: still right
    assert len(encoder._cache) == 2 and text_key("apple") not in encoder._cache
    encoder.cache_limit = 0
    encoder.encode(["sun"])
    assert not encoder._cache


def test_engine_times_out_a_queued_request_and_refuses_a_full_queue():
    import asyncio
    import time as _time

    from scalable_lm.methods.base import Prediction
    from scalable_lm.serving import Engine, Loaded, QueueFull, ServeError

    class SlowClassifier:  # stands in for SLM: 0.3 s per batch
        class classifier:
            @staticmethod
            def tokenizer(texts):
                return {"input_ids": [[0] * 3 for _ in texts]}

        class config:
            class train:
                max_length = 8

        task_names = ["t"]

        def predict(self, texts, batch_size=32, task=None):
            _time.sleep(0.3)
            return [Prediction(label="x", task="t", confidence=1.0) for _ in texts]

    class Watcher:
        pending = None
        current = Loaded(SlowClassifier(), "classifier", ["t"], "sha", 1)

        def take(self):
            return self.current

    async def main():
        engine = Engine(Watcher(), max_batch=1, max_wait_ms=0, max_queue=2)
        engine.start()
        first = engine.submit(Job("classify", "auto", ["a"]))
        late = engine.submit(Job("classify", "auto", ["b"], deadline=_time.perf_counter() + 0.1))
        try:
            engine.submit(Job("classify", "auto", ["c"]))
            raise AssertionError("a third request fit a queue of 2")
        except QueueFull as err:
            assert err.status == 429 and err.headers == {"Retry-After": "1"}
        assert (await first.future)["predictions"][0].label == "x"
        try:
            await late.future
            raise AssertionError("the late request was answered")
        except ServeError as err:
            assert err.status == 408
        await engine.stop()

    asyncio.run(main())


def test_classifier_predict_encodes_each_text_once_without_a_cache(make_slm, toy_stream):
    slm = make_slm()
    slm.learn(toy_stream[0], progress=False)
    texts = [x for x, _ in toy_stream[0].test[:5]]
    expected = slm.predict(texts)
    slm.encoder._cache.clear()
    slm.encoder.cache_limit = 0  # as in a server: every input is encoded afresh, exactly once
    seen = []
    original = slm.encoder._encode_batch
    slm.encoder._encode_batch = lambda batch: (seen.extend(batch), original(batch))[1]
    assert [p.label for p in slm.predict(texts, batch_size=2)] == [p.label for p in expected]
    assert sorted(seen) == sorted(set(texts))


def test_ignore_eos_gives_fixed_length_answers(lm_tokenizer):
    lm = CausalLM(tiny_llama(), lm_tokenizer, max_length=32)
    ids = [lm.prompt_ids(p) for p in PROMPTS]
    assert [len(t) for t in lm.decode(ids, [7, 3, 5], [0.0] * 3, ignore_eos=[True] * 3)] == [7, 3, 5]


class _FakeClassifier:
    """Stands in for SLM in the engine: records every predict call; an input "poison" raises, as a tokenizer
    does on input it cannot take."""

    class classifier:
        @staticmethod
        def tokenizer(texts):
            return {"input_ids": [[0] * 3 for _ in texts]}

    class config:
        class train:
            max_length = 8

    task_names = ["t"]

    def __init__(self):
        self.calls = []

    def predict(self, texts, batch_size=32, task=None):
        from scalable_lm.methods.base import Prediction

        self.calls.append(list(texts))
        if "poison" in texts:
            raise ValueError("the tokenizer cannot take this input")
        return [Prediction(label=t.upper(), task="t", confidence=1.0) for t in texts]


def _run_engine(jobs, chunk_rows=64, before=None):
    """Submit ``jobs`` at once to an Engine over ``_FakeClassifier``; returns (fake, results or errors)."""
    import asyncio

    from scalable_lm.serving import Engine, Loaded

    fake = _FakeClassifier()

    class Watcher:
        pending = None
        current = Loaded(fake, "classifier", ["t"], "sha", 1)

        def take(self):
            return self.current

    async def main():
        engine = Engine(Watcher(), max_batch=16, max_wait_ms=50, max_queue=64, chunk_rows=chunk_rows)
        engine.start()
        for job in jobs:
            engine.submit(job)
        if before is not None:
            before(jobs)
        out = []
        for job in jobs:
            try:
                out.append(await job.future)
            except Exception as err:  # noqa: BLE001
                out.append(err)
        await engine.stop()
        return out

    return fake, asyncio.run(main())


def test_one_bad_request_in_a_batch_fails_alone_and_its_batch_mates_are_answered():
    from scalable_lm.serving import ServeError

    jobs = [Job("classify", "auto", [f"text{i}"] if i != 3 else ["ok", "poison"]) for i in range(6)]
    fake, out = _run_engine(jobs)
    assert isinstance(out[3], ServeError) and out[3].status == 500
    assert [o["predictions"][0].label for i, o in enumerate(out) if i != 3] == [f"TEXT{i}" for i in range(6) if i != 3]
    assert len(fake.calls[0]) == 7 and len(fake.calls) == 1 + 6  # the batch, then each request alone


def test_a_long_request_runs_in_chunks_and_a_cancelled_one_stops_between_them():
    from scalable_lm.serving import ServeError

    big = Job("classify", "auto", [f"t{i}" for i in range(200)])
    fake, out = _run_engine([big], chunk_rows=32)
    assert [len(c) for c in fake.calls] == [32] * 6 + [8]  # peak memory: one chunk, whatever the request
    assert [p.label for p in out[0]["predictions"]] == [f"T{i}" for i in range(200)]
    gone = Job("classify", "auto", [f"t{i}" for i in range(200)])
    fake, out = _run_engine([gone], chunk_rows=32, before=lambda jobs: jobs[0].cancelled.set())
    assert fake.calls == [] and isinstance(out[0], ServeError) and out[0].status == 499
