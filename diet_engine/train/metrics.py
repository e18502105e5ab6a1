"""AUC and LogLoss per task, and their mean over tasks (the paper's reported figures)."""

from __future__ import annotations

import numpy as np
import torch
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


def roc_auc_torch(labels: torch.Tensor, scores: torch.Tensor) -> float:
    """ROC AUC of one task where the tensors are (a GPU: no host copy): Mann-Whitney U with tied scores
    sharing their mean rank, which is what sklearn's roc_auc_score computes. 0.5 with one class only."""
    y = labels.double()
    n_pos = float(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return 0.5
    sorted_scores, order = torch.sort(scores.double())
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    mean_rank = (ends - (counts.double() - 1) / 2)[inverse]  # 1-based, ties averaged
    rank_sum = float((mean_rank * y[order]).sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def mean_auc_torch(labels: torch.Tensor, logits: torch.Tensor) -> float:
    """Mean over tasks of roc_auc_torch; [N, T] each."""
    return float(np.mean([roc_auc_torch(labels[:, j], logits[:, j]) for j in range(labels.shape[1])]))
