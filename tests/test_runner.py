"""The continual loop's scores: strict (task and label) and label-only."""

import pytest

from scalable_lm.data.tasks import Task
from scalable_lm.methods.base import Prediction
from scalable_lm.runner import evaluate, run_stream


class _AlwaysOtherTask:
    """Answers every input with its right label (the text is the label) under the other task's name."""

    name = "other-task"

    def __init__(self):
        self.tasks: list[str] = []

    def learn(self, task, progress=True):
        self.tasks.append(task.name)
        return {}

    def predict(self, texts, batch_size=32, progress=False):
        return [Prediction(label=t.split()[0], task="nobody", confidence=1.0) for t in texts]


def test_label_only_score_counts_a_right_label_from_another_task():
    stars = ["1", "2", "3", "4", "5"]
    yelp = Task("yelp", stars, test=[(f"{s} yelp review", int(s) - 1) for s in stars])
    amazon = Task("amazon", stars, test=[(f"{s} amazon review", int(s) - 1) for s in stars])
    scores = evaluate(_AlwaysOtherTask(), [yelp, amazon])
    assert scores["yelp"]["accuracy"] == 0.0 and scores["yelp"]["label_accuracy"] == 1.0
    result = run_stream(_AlwaysOtherTask(), [yelp, amazon], progress=False)
    assert result.R == [[0.0, None], [0.0, 0.0]] and result.label_R == [[1.0, None], [1.0, 1.0]]
    assert result.metrics["label_only_average_accuracy"] == 1.0 and result.metrics["average_accuracy"] == 0.0
    assert result.metrics["label_only_forgetting"] == 0.0


class _Cut(Exception):
    """Stands for a run killed after a task (a session's end)."""


def _restore(make_slm, directory, names):
    """A fresh SLM holding ``names`` from the model directory, through the public per-task interface."""
    from scalable_lm import store

    slm = make_slm()
    store.add_tasks(slm, directory, names)
    return slm


def test_a_resumed_stream_learns_and_scores_what_an_uninterrupted_one_does(make_slm, toy_stream, tmp_path):
    import json

    from scalable_lm.runner import RunResult

    full = run_stream(make_slm(), toy_stream, progress=False)
    slm, saved = make_slm(), {}

    def save_then_cut(i, result):
        slm.save_pretrained(tmp_path / "model")
        saved["result"] = json.loads(json.dumps(result.to_dict()))  # as a checkpoint file would hold it
        if i == 1:
            raise _Cut

    with pytest.raises(_Cut):
        run_stream(slm, toy_stream, progress=False, after_task=save_then_cut)
    partial = RunResult.from_dict(saved["result"])
    assert partial.tasks_done == 2 and partial.R[2] == [None, None, None]
    resumed = run_stream(_restore(make_slm, tmp_path / "model", partial.tasks[:2]), toy_stream, progress=False,
                         resume=partial)
    assert resumed.R == full.R and resumed.label_R == full.label_R
    assert resumed.retrieval_accuracy == full.retrieval_accuracy and resumed.tasks_done == 3


def test_resume_refuses_another_stream_or_a_method_without_the_finished_tasks(make_slm, toy_stream):
    from scalable_lm.runner import RunResult

    slm = make_slm()
    partial = {}

    def cut(i, result):
        partial["result"] = RunResult.from_dict(result.to_dict())
        raise _Cut

    with pytest.raises(_Cut):
        run_stream(slm, toy_stream, progress=False, after_task=cut)
    with pytest.raises(ValueError, match="the earlier run was of the stream"):
        run_stream(slm, toy_stream[::-1], progress=False, resume=partial["result"])
    with pytest.raises(ValueError, match="the method holds \\[\\], expected \\['fruit'\\]"):
        run_stream(make_slm(), toy_stream, progress=False, resume=partial["result"])
