"""Metrics with the seed's keys, against values worked out by hand."""
import math

import numpy as np
import pytest

from stilts.metrics import compute_metrics, majority_baseline
from stilts.tasks import get_task


def test_accuracy_tasks():
    assert compute_metrics(get_task("rte"), [0, 1, 1, 0], [0, 1, 0, 0]) == {"acc": 0.75}


def test_acc_and_f1():
    # tp=2, fp=1, fn=1 -> precision 2/3, recall 2/3, f1 2/3; acc 3/5
    m = compute_metrics(get_task("mrpc"), [1, 1, 1, 0, 0], [1, 1, 0, 1, 0])
    assert m["acc"] == pytest.approx(0.6)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["acc_and_f1"] == pytest.approx((0.6 + 2 / 3) / 2)


def test_matthews_correlation():
    # tp=2 tn=1 fp=1 fn=0: (2*1 - 1*0) / sqrt(3*2*1*2) = 2/sqrt(12)
    assert compute_metrics(get_task("cola"), [1, 1, 1, 0], [1, 1, 0, 0])["mcc"] == pytest.approx(2 / math.sqrt(12))


def test_correlations():
    m = compute_metrics(get_task("stsb"), [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 9.0])
    assert m["spearmanr"] == pytest.approx(1.0)
    x, y = np.array([1.0, 2, 3, 4]), np.array([2.0, 4, 6, 9])
    r = ((x - x.mean()) * (y - y.mean())).sum() / math.sqrt(((x - x.mean()) ** 2).sum() * ((y - y.mean()) ** 2).sum())
    assert m["pearson"] == pytest.approx(r)
    assert m["corr"] == pytest.approx((r + 1.0) / 2)
    assert compute_metrics(get_task("stsb"), [2.5, 2.5, 2.5], [1.0, 2.0, 3.0])["corr"] == 0.0  # constant: no NaN


def test_majority_baseline_and_predictions():
    assert majority_baseline(get_task("rte"), [0, 0, 1], [0, 1, 1, 1]) == {"acc": 0.25}
    assert majority_baseline(get_task("cola"), [1, 1, 0], [0, 1, 1])["mcc"] == 0.0
    assert list(get_task("rte").predictions([[0.1, 0.9], [2.0, -1.0]])) == [1, 0]
    assert list(get_task("stsb").predictions([[3.5], [1.25]])) == [3.5, 1.25]
