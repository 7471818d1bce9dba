import json

import pytest

from scalable_lm.data.tasks import DataError, Task, load_task, split_validation


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_integer_labels_with_names_and_test_by_name(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": 1, "label_name": "pos"},
                                              {"text": "b", "label": 0, "label_name": "neg"}])
    test = _jsonl(tmp_path / "test.jsonl", [{"text": "c", "label": "pos"}, {"text": "d", "label": 0,
                                                                             "label_name": "neg"}])
    task = load_task("t", train, test)
    assert task.label_names == ["neg", "pos"] and task.test == [("c", 1), ("d", 0)]


def test_name_labels_and_csv(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("body,intent\nhello,greet\nbye,leave\nhi,greet\n")
    task = load_task("t", path, text_column="body", label_column="intent")
    assert task.label_names == ["greet", "leave"] and sorted(task.train) == [("bye", 1), ("hello", 0), ("hi", 0)]


@pytest.mark.parametrize("rows, message", [
    ([{"text": "", "label": "a"}, {"text": "b", "label": "b"}], "empty or missing text"),
    ([{"text": "x", "label": "a"}, {"label": "b"}], "empty or missing text"),
    ([{"text": "x"}, {"text": "y"}], "column 'label' missing"),
    ([{"text": "x", "label": "a"}, {"text": "y", "label": ""}], "empty or missing label"),
    ([{"text": "x", "label": "a"}, {"text": "y", "label": "a"}], "at least 2 labels"),
])
def test_bad_training_rows(tmp_path, rows, message):
    with pytest.raises(DataError, match=message):
        load_task("t", _jsonl(tmp_path / "d.jsonl", rows))


def test_unknown_test_label_missing_file_and_bad_json(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])
    test = _jsonl(tmp_path / "test.jsonl", [{"text": "c", "label": "z"}])
    with pytest.raises(DataError, match="unknown label 'z'"):
        load_task("t", train, test)
    with pytest.raises(DataError, match="not found"):
        load_task("t", tmp_path / "nope.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": 1}\n{oops\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        load_task("t", tmp_path / "bad.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no rows"):
        load_task("t", tmp_path / "empty.jsonl")


def test_task_validation_and_split():
    with pytest.raises(DataError, match="name is empty"):
        Task(" ", ["a", "b"])
    with pytest.raises(DataError, match="out of range"):
        Task("t", ["a", "b"], train=[("x", 2)])
    rows = [(str(i), i % 2) for i in range(50)]
    train, val = split_validation(rows, 0.1, seed=0)
    assert len(val) == 5 and sorted(train + val) == sorted(rows)
    assert split_validation(rows, 0.1, seed=0) == (train, val)
    assert split_validation(rows[:5], 0.5, seed=0)[1] == []
