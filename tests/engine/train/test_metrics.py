import numpy as np
import pytest

from diet_engine.train.metrics import task_metrics


def test_auc_and_logloss_against_hand_computed_values():
    # positives score 0.8, 0.4; negatives 0.3, 0.5: pairs (0.8>0.3, 0.8>0.5, 0.4>0.3, 0.4<0.5) -> AUC 3/4
    y = np.array([[1], [1], [0], [0]], dtype=np.float32)
    p = np.array([[0.8], [0.4], [0.3], [0.5]])
    m = task_metrics(y, p, ["t"])
    assert m.auc["t"] == pytest.approx(0.75)
    expected = -np.mean([np.log(0.8), np.log(0.4), np.log(0.7), np.log(0.5)])
    assert m.logloss["t"] == pytest.approx(expected)


def test_means_over_tasks():
    y = np.array([[1, 0], [0, 1]], dtype=np.float32)
    p = np.array([[0.9, 0.9], [0.1, 0.1]])
    m = task_metrics(y, p, ["a", "b"])
    assert m.auc == {"a": 1.0, "b": 0.0}
    assert m.mean_auc == pytest.approx(0.5)
