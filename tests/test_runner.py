"""The continual loop's scores: strict (task and label) and label-only."""

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
