"""AUC and LogLoss per task, and their mean over tasks (the paper's reported figures)."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel
from sklearn.metrics import log_loss, roc_auc_score


class TaskMetrics(BaseModel):
    auc: dict[str, float]
    logloss: dict[str, float]

    @property
    def mean_auc(self) -> float:
        return float(np.mean(list(self.auc.values())))

    @property
    def mean_logloss(self) -> float:
        return float(np.mean(list(self.logloss.values())))


def task_metrics(labels: np.ndarray, probs: np.ndarray, tasks: list[str]) -> TaskMetrics:
    """labels, probs: [N, T]. A task with one class only has AUC 0.5 by convention."""
    auc, ll = {}, {}
    for j, name in enumerate(tasks):
        y, p = labels[:, j], np.clip(probs[:, j], 1e-7, 1 - 1e-7)
        auc[name] = float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else 0.5
        ll[name] = float(log_loss(y, p, labels=[0, 1]))
    return TaskMetrics(auc=auc, logloss=ll)
