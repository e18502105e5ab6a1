"""Continual memory fusion (paper §4.1.2, eq. 10-11).

Each synthetic row s of the previous stage is scored by its alignment with
the new boundary rows, w(s) = g(s) · Σ_{x ∈ new} g(x), at the current
reference checkpoint; the `keep` highest form the aligned memory that joins
the new rows. New rows enter with their real hard labels in Σ g(x): their
soft labels are the checkpoint's own predictions, whose loss gradient there
is zero by construction.

Before fusion the previous rows are re-anchored: they live in the embedding
space of checkpoint t−1, while stage t optimises (and candidates finally
train) in the space of checkpoint t. Each row moves by how its source row's
field embeddings and teacher logits moved between the two checkpoints, so
what the optimiser learnt for the row (its offset from the source) is kept.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diet_engine.distill.influence import Influence
from diet_engine.models.base import CTRModel
from diet_engine.data.synthetic import SyntheticSet
from diet_engine.train.loops import EVAL_BATCH, soft_targets


def fusion_weights(influence: Influence, history: SyntheticSet, new_emb: Tensor, new_labels: Tensor, temperature: float = 1.0) -> Tensor:
    direction = influence.direction(new_emb, new_labels)
    return influence.scores(history.emb, soft_targets(history.logits, temperature), direction)


def fuse(history: SyntheticSet, weights: Tensor, keep: int, new: SyntheticSet) -> SyntheticSet:
    """S_t = new ∪ (the `keep` historical rows of largest weight), history first, in original order."""
    keep = max(0, min(keep, len(history)))
    kept = torch.sort(torch.topk(weights, keep).indices).values if keep else torch.empty(0, dtype=torch.long)
    return SyntheticSet.concat([history.take(kept), new])


@torch.no_grad()
def reanchor(history: SyntheticSet, before: CTRModel, after: CTRModel) -> SyntheticSet:
    """`history` moved from checkpoint `before`'s space into `after`'s (rows without an anchor stay put)."""
    if not history.anchored or not len(history):
        return history
    before, after = before.eval(), after.eval()
    device = history.emb.device
    d_emb, d_logit = [], []
    for start in range(0, len(history), EVAL_BATCH):
        cat = history.src_cat[start : start + EVAL_BATCH].to(device)
        num = history.src_num[start : start + EVAL_BATCH].to(device)
        e0, e1 = before.embedding(cat, num), after.embedding(cat, num)
        d_emb.append(e1 - e0)
        d_logit.append(after.dense(e1) - before.dense(e0))
    moved = history.detach()
    moved.emb += torch.cat(d_emb)
    moved.logits += torch.cat(d_logit)
    return moved
