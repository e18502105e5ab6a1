"""Boundary initialisation (paper §4.1.1, Alg. 1): label-conditioned EL2N selection.

Rows are grouped by their label vector; each group gets a share of the budget
that grows with the square root of its size (so rare label combinations are
not swamped) and is capped by what the group holds; within a group the rows
taken are a window of ranks centred on the `percentile` of the EL2N score —
hard, but not the noisy extreme tail.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def label_groups(labels: Tensor) -> list[Tensor]:
    """Row indices per distinct label vector, largest group first."""
    keys = (labels.round().long() * (2 ** torch.arange(labels.shape[1], device=labels.device))).sum(1)
    groups = [torch.nonzero(keys == k).flatten() for k in keys.unique()]
    return sorted(groups, key=len, reverse=True)


def split_budget(sizes: list[int], budget: int) -> list[int]:
    """Integer shares ∝ √size, each at most its size, summing to min(budget, Σ sizes)."""
    budget = min(budget, sum(sizes))
    shares = [0] * len(sizes)
    open_ = [i for i, s in enumerate(sizes) if s > 0]
    left = budget
    while left > 0 and open_:
        weights = [math.sqrt(sizes[i]) for i in open_]
        total = sum(weights)
        exact = {i: left * w / total for i, w in zip(open_, weights)}
        grant = {i: min(math.floor(exact[i]), sizes[i] - shares[i]) for i in open_}
        # hand out the rounding remainder by largest fractional part
        rest = left - sum(grant.values())
        for i in sorted(open_, key=lambda i: exact[i] - math.floor(exact[i]), reverse=True):
            if rest <= 0:
                break
            if grant[i] < sizes[i] - shares[i]:
                grant[i] += 1
                rest -= 1
        for i in open_:
            shares[i] += grant[i]
        left = budget - sum(shares)
        open_ = [i for i in open_ if shares[i] < sizes[i]]
    return shares


def percentile_window(scores: Tensor, k: int, percentile: float) -> Tensor:
    """Indices (into `scores`) of the k rows whose score ranks are centred on `percentile`."""
    n = scores.numel()
    if k >= n:
        return torch.arange(n, device=scores.device)
    order = torch.argsort(scores, stable=True)
    centre = round(percentile * (n - 1))
    start = min(max(centre - k // 2, 0), n - k)
    return order[start : start + k]


def boundary_select(scores: Tensor, labels: Tensor, budget: int, percentile: float = 0.9) -> Tensor:
    """Rows of a block chosen for the boundary memory, as sorted indices."""
    groups = label_groups(labels)
    shares = split_budget([len(g) for g in groups], budget)
    chosen = [g[percentile_window(scores[g], k, percentile)] for g, k in zip(groups, shares) if k > 0]
    return torch.sort(torch.cat(chosen)).values if chosen else torch.empty(0, dtype=torch.long, device=scores.device)
