"""SLM on tiny in-code BERTs: (a) old tensors bit-identical, (b) batch independence, learning works."""

import pytest
import torch

from scalable_lm.data.tasks import DataError
from scalable_lm.runner import evaluate, run_stream


def test_learning_a_task_leaves_earlier_tensors_bit_identical(make_slm, toy_stream):
    slm = make_slm()
    slm.learn(toy_stream[0], progress=False)
    before = {k: v.clone() for k, v in slm.task_state(0).items()}
    base = {k: v.clone() for k, v in slm.classifier.backbone.state_dict().items() if "lora_" not in k}
    slm.learn(toy_stream[1], progress=False)
    after = slm.task_state(0)
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(before[name], after[name]), name
    for name, value in slm.classifier.backbone.state_dict().items():
        if name in base:
            assert torch.equal(base[name], value), name
    # the new task really trained: its values moved away from their zero init
    assert any(t.abs().sum() > 0 for k, t in slm.task_state(1).items() if k.endswith(".B"))


def test_prediction_does_not_depend_on_the_batch(make_slm, toy_stream):
    slm = make_slm()
    for task in toy_stream[:2]:
        slm.learn(task, progress=False)
    texts = [x for task in toy_stream for x, _ in task.test[:4]]
    together = slm.predict(texts, batch_size=len(texts))
    for text, pred in zip(texts, together):
        alone = slm.predict([text])[0]
        assert (alone.label, alone.task, alone.entries) == (pred.label, pred.task, pred.entries)
        assert alone.weights == pytest.approx(pred.weights, abs=1e-5)
        assert alone.confidence == pytest.approx(pred.confidence, abs=1e-5)
    reordered = slm.predict(texts[::-1], batch_size=5)[::-1]
    assert [p.label for p in reordered] == [p.label for p in together]


def test_stream_learns_without_forgetting(make_slm, toy_stream):
    result = run_stream(make_slm(), toy_stream, progress=False)
    m = result.metrics
    assert m["forgetting"] <= 0.1
    assert m["average_accuracy"] >= 0.7, result.R
    assert result.R[1][0] is not None and result.R[0][1] is None
    assert len(result.learn_reports) == 3 and all("key_s" in r for r in result.learn_reports)
    sizes = [result.timings[t.name]["state_bytes"] for t in toy_stream]  # the bank grows by one task's state
    assert sizes[0] > 0 and sizes[1] - sizes[0] == sizes[2] - sizes[1] == sizes[0]
    assert [result.timings[t.name]["eval_rows"] for t in toy_stream] == [12, 24, 36]


def test_duplicate_task_and_empty_inputs_refused(make_slm, toy_stream):
    slm = make_slm()
    with pytest.raises(RuntimeError, match="no task"):
        slm.predict(["x"])
    slm.learn(toy_stream[0], progress=False)
    with pytest.raises(DataError, match="already in the bank"):
        slm.learn(toy_stream[0], progress=False)
    with pytest.raises(DataError, match="empty text"):
        slm.predict(["fine", "  "])


def test_failed_learn_rolls_back(make_slm, toy_stream, monkeypatch):
    slm = make_slm()
    slm.learn(toy_stream[0], progress=False)
    before = {k: v.clone() for k, v in slm.task_state(0).items()}

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(slm, "_fine_tune", boom)
    with pytest.raises(KeyboardInterrupt):
        slm.learn(toy_stream[1], progress=False)
    assert slm.task_names == [toy_stream[0].name] and slm.bank.num_tasks == 1
    assert all(len(layer.lora_A) == 1 for layer in slm.layers.values()) and len(slm.classifier.heads) == 1
    assert all(torch.equal(before[k], v) for k, v in slm.task_state(0).items())


def test_task_id_mode_restricts_retrieval(make_slm, toy_stream):
    slm = make_slm()
    for task in toy_stream[:2]:
        slm.learn(task, progress=False)
    preds = slm.predict([x for x, _ in toy_stream[0].test], task=toy_stream[1].name)
    assert all(set(p.entry_tasks) == {toy_stream[1].name} and p.task == toy_stream[1].name for p in preds)
    scores = evaluate(slm, toy_stream[:2], task_id=True)
    assert all(s["task_choice"] == 1.0 and s["retrieval"] == 1.0 for s in scores.values())
    with pytest.raises(KeyError):
        slm.predict(["x"], task="nope")


def test_gaussian_router_mixes_the_chosen_task_only(make_slm, toy_stream):
    from tests.conftest import tiny_config

    slm = make_slm(tiny_config(router="gaussian"))
    result = run_stream(slm, toy_stream, progress=False)
    assert result.metrics["average_accuracy"] >= 0.7 and result.metrics["forgetting"] <= 0.1
    preds = slm.predict([x for t in toy_stream for x, _ in t.test])
    assert all(len(set(p.entry_tasks)) == 1 and p.entry_tasks[0] == p.task for p in preds)
    assert result.metrics["retrieval_accuracy"] == result.metrics["task_choice_accuracy"]


def test_unknown_router_refused(make_slm):
    from tests.conftest import tiny_config

    with pytest.raises(ValueError, match="unknown router"):
        make_slm(tiny_config(router="magic"))


def test_learning_is_reproducible(make_slm, toy_stream):
    tensors = []
    for _ in range(2):
        slm = make_slm()
        torch.manual_seed(123 + len(tensors))  # the global RNG state (dropout) must not matter
        slm.learn(toy_stream[0], progress=False)
        tensors.append(slm.task_state(0))
    assert all(torch.equal(tensors[0][k], tensors[1][k]) for k in tensors[0])


def test_paper_protocol_is_available_but_separate(make_slm, toy_stream):
    from scalable_lm.runner import evaluate_paper_protocol

    slm = make_slm()
    for task in toy_stream[:2]:
        slm.learn(task, progress=False)
    scores = evaluate_paper_protocol(slm, toy_stream[:2], batch_size=8)
    assert set(scores) == {t.name for t in toy_stream[:2]}
    assert all(0.0 <= s <= 1.0 for s in scores.values())
    preds = slm.predict_paper_protocol([x for x, _ in toy_stream[0].test[:5]], len(toy_stream[0].label_names))
    assert len({p.task for p in preds}) == 1  # one head for the whole batch: that is the leak
    with pytest.raises(ValueError, match="no learned task has 99 classes"):
        slm.predict_paper_protocol(["a text"], 99)


def test_each_head_is_calibrated_on_its_validation_rows_when_asked(make_slm):
    from tests.conftest import tiny_config, toy_task

    task = toy_task("fruit", n_train=300)  # 30 validation rows (>= training.MIN_CALIBRATION_ROWS)
    assert make_slm().learn(task, progress=False)["temperature"] == 1.0  # off by default
    config = tiny_config()
    config.train.calibrate = True
    slm = make_slm(config)
    report = slm.learn(task, progress=False)
    t = report["temperature"]
    assert t == slm.temperatures[0] != 1.0
    assert report["val_nll_calibrated"] <= report["val_nll"]
    assert float(slm.task_state("fruit")["head.temperature"]) == pytest.approx(t)
    texts = [x for x, _ in task.test]
    calibrated = slm.predict(texts)
    slm.temperatures[0] = 1.0
    raw = slm.predict(texts)
    assert [p.label for p in calibrated] == [p.label for p in raw]  # a temperature never changes the answer
    assert [p.confidence for p in calibrated] != [p.confidence for p in raw]


def test_too_few_validation_rows_leave_the_head_uncalibrated(make_slm, toy_stream):
    from tests.conftest import tiny_config

    config = tiny_config()
    config.train.calibrate = True
    slm = make_slm(config)
    report = slm.learn(toy_stream[0], progress=False)  # 40 rows: 4 validation rows
    assert report["val_rows"] < 20 and report["temperature"] == 1.0 == slm.temperatures[0]


def test_temperature_round_trips_through_task_state_and_may_be_absent(make_slm, toy_stream):
    from scalable_lm.methods.base import TaskStateError

    slm = make_slm()
    slm.learn(toy_stream[0], progress=False)
    slm.temperatures[0] = 0.5
    state = slm.task_state(0)
    other = make_slm()
    other.add_task_state("fruit", slm.label_names[0], state)
    assert other.temperatures == [0.5]
    other.add_task_state("old", slm.label_names[0], {k: v for k, v in state.items() if k != "head.temperature"})
    assert other.temperatures == [0.5, 1.0]  # a task saved before calibration: its raw softmax
    for bad, message in ((torch.tensor([0.5]), "shape"), (torch.tensor(0.0), "> 0"), (torch.tensor(float("nan")), "> 0")):
        with pytest.raises(TaskStateError, match=message):
            other.add_task_state("bad", slm.label_names[0], {**state, "head.temperature": bad})
        assert other.task_names == ["fruit", "old"] and other.temperatures == [0.5, 1.0]


def test_abstain_answers_unknown_far_from_every_task(make_slm, toy_stream):
    from scalable_lm.methods.base import UNKNOWN

    slm = make_slm()
    for task in toy_stream[:2]:  # fruit, vehicle
        slm.learn(task, progress=False)
    in_task = [x for task in toy_stream[:2] for x, _ in task.test]
    out_of_task = [x for x, _ in toy_stream[2].test] + ["What is the capital of France?"]
    assert not any(p.abstained for p in slm.predict(in_task + out_of_task))  # off unless asked for
    inside, outside = slm.predict(in_task, abstain=3.0), slm.predict(out_of_task, abstain=3.0)
    assert sum(p.abstained for p in inside) <= 0.1 * len(inside)
    assert sum(p.abstained for p in outside) >= 0.9 * len(outside)
    far = next(p for p in outside if p.abstained)
    assert (far.label, far.task, far.confidence) == (UNKNOWN, UNKNOWN, 0.0) and far.entries
    # a smaller z abstains at least as often
    assert sum(p.abstained for p in slm.predict(in_task, abstain=0.5)) >= sum(p.abstained for p in inside)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="abstain"):
            slm.predict(in_task[:1], abstain=bad)


def test_shared_prefix_routes_in_one_pass_as_two_passes_would_and_keeps_old_tasks(make_shared_slm, toy_stream):
    """``--encoder shared-l1``: increments only above block 1; one forward pass routes at block 1 and answers
    exactly as routing first (a stopped pass) and answering second would; old tasks stay bit-identical."""
    slm = make_shared_slm()
    assert sorted({name.split(".")[2] for name in slm.layers}) == ["1", "2"]  # blocks 1 and 2 of 0..2
    slm.learn(toy_stream[0], progress=False)
    before = {k: v.clone() for k, v in slm.task_state(0).items()}
    base = {k: v.clone() for k, v in slm.classifier.backbone.state_dict().items() if "lora_" not in k}
    for task in toy_stream[1:]:
        slm.learn(task, progress=False)
    assert all(torch.equal(before[k], v) for k, v in slm.task_state(0).items())
    assert all(torch.equal(base[k], v) for k, v in slm.classifier.backbone.state_dict().items() if k in base)
    texts = [x for task in toy_stream for x, _ in task.test]
    one_pass = slm._features(texts)
    two_pass = slm._features(texts, queries=slm.encoder.encode(texts))
    assert torch.equal(one_pass[1], two_pass[1])  # the same entries
    for a, b in zip(one_pass, two_pass):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)
    preds = slm.predict(texts, batch_size=7)
    assert [p.task for p in preds] == [t.name for t in toy_stream for _ in t.test]  # routed to its own task
    alone = [slm.predict([x])[0] for x in texts[:6]]
    assert [(p.label, p.entries) for p in alone] == [(p.label, p.entries) for p in preds[:6]]
    scores = evaluate(slm, toy_stream)
    assert sum(s["accuracy"] for s in scores.values()) / len(scores) >= 0.7, scores
    # a later task trained with another --max-length: the queries stay cut where they were, so does routing
    slm.config.train.max_length = 12
    assert not slm._one_pass()
    assert [p.entries for p in slm.predict(texts[:6])] == [p.entries for p in preds[:6]]
