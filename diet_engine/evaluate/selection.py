"""Selection baselines (paper §5.1.3): which real rows of a historical block to keep.

Each rule returns row indices; `selected_rows` turns them into the same
embedding–soft-label form DIET produces, under the stage's reference
checkpoint, so every method is trained by one candidate protocol.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diet_engine.distill.boundary import boundary_select
from diet_engine.data.blocks import TensorBlock
from diet_engine.distill.kmeans import kmeans_rows
from diet_engine.models.base import CTRModel
from diet_engine.data.synthetic import SyntheticSet
from diet_engine.train.loops import el2n_scores, embed_rows

SELECTION_METHODS = ("random", "el2n", "kmeans")


def budget_of(rows: int, ratio: float) -> int:
    return max(1, round(ratio * rows)) if rows else 0


def select_random(n: int, k: int, seed: int) -> Tensor:
    return torch.sort(torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k]).values


def select_el2n(rows: SyntheticSet, labels: Tensor, k: int, percentile: float = 0.9) -> Tensor:
    """Label-conditioned EL2N around the percentile (the same rule as DIET's boundary init)."""
    return boundary_select(el2n_scores(rows.logits, labels), labels, k, percentile)


def select_kmeans(rows: SyntheticSet, k: int, seed: int) -> Tensor:
    """k-means (k = budget) on the flattened reference embeddings; the row nearest each centroid
    (`diet_engine.distill.kmeans`, on the rows' device; DIET's `init="kmeans"` uses the same rule)."""
    return kmeans_rows(rows.emb, k, seed)


def selected_rows(
    method: str, reference: CTRModel, block: TensorBlock, stage: int, ratio: float, seed: int, device: str = "cpu"
) -> SyntheticSet:
    """The rows `method` keeps from one historical block, embedded by that stage's checkpoint (on `device`)."""
    rows = embed_rows(reference, block, device, out_device=None)
    k = budget_of(len(block), ratio)
    if method == "random":
        idx = select_random(len(block), k, seed * 7919 + stage)
    elif method == "el2n":
        idx = select_el2n(rows, block.labels, k)
    elif method == "kmeans":
        idx = select_kmeans(rows, k, seed * 7919 + stage)
    else:
        raise ValueError(f"unknown selection method {method!r}; one of {SELECTION_METHODS}")
    out = rows.take(idx.to(rows.emb.device))
    out.stage[:] = stage
    return out
