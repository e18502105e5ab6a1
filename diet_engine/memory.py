"""Continual memory fusion (paper §4.1.2, eq. 10-11).

Each synthetic row s of the previous stage is scored by its alignment with
the new boundary rows, w(s) = g(s) · Σ_{x ∈ new} g(x), at the current
reference checkpoint; the `keep` highest form the aligned memory that joins
the new rows. New rows enter with their real hard labels in Σ g(x): their
soft labels are the checkpoint's own predictions, whose loss gradient there
is zero by construction.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diet_engine.influence import Influence
from diet_engine.synthetic import SyntheticSet
from diet_engine.training import soft_targets


def fusion_weights(influence: Influence, history: SyntheticSet, new_emb: Tensor, new_labels: Tensor, temperature: float = 1.0) -> Tensor:
    direction = influence.direction(new_emb, new_labels)
    return influence.scores(history.emb, soft_targets(history.logits, temperature), direction)


def fuse(history: SyntheticSet, weights: Tensor, keep: int, new: SyntheticSet) -> SyntheticSet:
    """S_t = new ∪ (the `keep` historical rows of largest weight), history first, in original order."""
    keep = max(0, min(keep, len(history)))
    kept = torch.sort(torch.topk(weights, keep).indices).values if keep else torch.empty(0, dtype=torch.long)
    return SyntheticSet.concat([history.take(kept), new])
