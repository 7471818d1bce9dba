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


def test_validation_split_is_stratified():
    import collections
    import random

    # dbpedia-like: 14 classes, 300 rows, a 10% split of 30 rows: every class is in it, 2 or 3 rows each
    rng = random.Random(0)
    rows = [(f"text {i}", rng.randrange(14)) for i in range(300)]
    train, val = split_validation(rows, 0.1, seed=3)
    counts = collections.Counter(y for _, y in val)
    assert len(val) == 30 and sorted(train + val) == sorted(rows) and set(counts) == set(range(14))
    whole = collections.Counter(y for _, y in rows)
    assert all(abs(counts[c] - 30 * whole[c] / 300) < 1 for c in whole)  # each class's share, to one row
    # a class with a single row keeps it for training; the split still has its size
    rows = [(f"a{i}", 0) for i in range(19)] + [("only one", 1)]
    train, val = split_validation(rows, 0.5, seed=0)
    assert len(val) == 10 and ("only one", 1) in train
    # free-text answers (generative rows) are drawn at random, as before
    rows = [(f"prompt {i}", f"answer {i}") for i in range(40)]
    train, val = split_validation(rows, 0.25, seed=1)
    assert len(val) == 10 and sorted(train + val) == sorted(rows)


# ---- property-based fuzzing (hypothesis): any bytes, any JSON -> rows or one DataError, never a write ------
import os  # noqa: E402
import tempfile  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from scalable_lm.data.instructions import load_instruction_task  # noqa: E402
from scalable_lm.data.tasks import read_lines, read_rows  # noqa: E402

FUZZ = settings(max_examples=int(os.environ.get("SLM_FUZZ_EXAMPLES", "100")), deadline=5000, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
ROW = st.dictionaries(st.sampled_from(["text", "label", "label_name", "instruction", "input", "output", "x"]), JSON,
                      max_size=5)


def _in_fresh_dir(suffix: str, data: bytes, read):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "f" + suffix)
        with open(path, "wb") as f:
            f.write(data)
        try:
            return read(path)
        except DataError:
            return None
        finally:
            assert os.listdir(d) == ["f" + suffix]  # nothing written beside it
            with open(path, "rb") as f:
                assert f.read() == data  # nor into it


@FUZZ
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".jsonl", ".csv", ".json", ".txt"]))
def test_fuzz_arbitrary_bytes_give_rows_or_a_data_error(data, suffix):
    rows = _in_fresh_dir(suffix, data, read_rows)
    assert rows is None or (rows and all(isinstance(r, dict) for r in rows))
    lines = _in_fresh_dir(suffix, data, read_lines)
    assert lines is None or all(isinstance(x, str) and x.strip() for x in lines)


@FUZZ
@given(rows=st.lists(ROW, max_size=6), suffix=st.sampled_from([".jsonl", ".csv"]))
def test_fuzz_arbitrary_json_rows_give_a_task_or_a_data_error(rows, suffix):
    if suffix == ".jsonl":
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    else:
        import csv
        import io

        out = io.StringIO()
        writer = csv.writer(out)
        for r in rows:
            writer.writerow([json.dumps(v) if not isinstance(v, str) else v for v in r.values()])
        data = out.getvalue().encode()
    task = _in_fresh_dir(suffix, data, lambda p: load_task("t", p))
    assert task is None or (len(task.label_names) >= 2 and task.train)
    task = _in_fresh_dir(suffix, data, lambda p: load_instruction_task("t", p))
    assert task is None or all(isinstance(a, str) and a for _, a in task.train)


def test_a_json_string_may_hold_unicode_line_separators(tmp_path):
    # JSON allows U+2028, U+2029 and U+0085 unescaped inside a string; a JSONL row ends at a line feed only
    path = tmp_path / "train.jsonl"
    text = "great film\u2028really\u0085great\u2029ending"
    path.write_text(json.dumps({"text": text, "label": 1}, ensure_ascii=False) + "\r\n"
                    + json.dumps({"text": "dull", "label": 0}) + "\n", encoding="utf-8")
    assert [r["text"] for r in read_rows(path)] == [text, "dull"]
    lines = tmp_path / "inputs.txt"
    lines.write_text("one\u2028line\r\ntwo\n", encoding="utf-8")
    assert read_lines(lines) == ["one\u2028line", "two"]
