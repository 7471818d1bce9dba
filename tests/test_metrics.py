import math

import pytest

from scalable_lm import metrics

R = [
    [0.9, None, None],
    [0.8, 0.7, None],
    [0.6, 0.75, 0.5],
]


def test_average_accuracy():
    assert metrics.average_accuracy(R) == pytest.approx((0.6 + 0.75 + 0.5) / 3)
    assert metrics.average_accuracy(R, after=1) == pytest.approx(0.75)


def test_forgetting_eq8():
    assert metrics.forgetting(R, after=0) == 0.0
    assert metrics.forgetting(R, after=1) == pytest.approx(0.1)
    # task 0: max(0.9, 0.8) - 0.6 = 0.3; task 1: max(0.7) - 0.75 = -0.05
    assert metrics.forgetting(R) == pytest.approx((0.3 - 0.05) / 2)


def test_bwt():
    assert metrics.backward_transfer(R) == pytest.approx(((0.6 - 0.9) + (0.75 - 0.7)) / 2)
    assert metrics.backward_transfer([[0.5]]) == 0.0


def test_retrieval_accuracy_needs_strict_majority():
    entries = [["a", "a", "b", "b"], ["a", "a", "a", "b"], ["b"]]
    assert metrics.retrieval_accuracy(entries, ["a", "a", "b"]) == pytest.approx(2 / 3)
    assert math.isnan(metrics.retrieval_accuracy([], []))


def test_expected_calibration_error():
    # confidences that match accuracy bin by bin: 0; always sure, half right: 0.5
    assert metrics.expected_calibration_error([0.75] * 4, [True, True, True, False]) == pytest.approx(0.0)
    assert metrics.expected_calibration_error([1.0] * 4, [True, False, True, False]) == pytest.approx(0.5)
    # two bins, each weighted by its share of rows: (3 * |1/3 - 0.3| + 1 * |1 - 0.9|) / 4
    ece = metrics.expected_calibration_error([0.3, 0.3, 0.3, 0.9], [True, False, False, True])
    assert ece == pytest.approx((3 * abs(1 / 3 - 0.3) + abs(1 - 0.9)) / 4)
    with pytest.raises(ValueError, match="2 confidences for 1 outcomes"):
        metrics.expected_calibration_error([0.5, 0.5], [True])
    with pytest.raises(ValueError, match="no predictions"):
        metrics.expected_calibration_error([], [])
