"""Influence-guided bidirectional memory addressing (paper §4.2.1, eq. 16-17).

Deficiency D(x) = g(x) · Σ_{s ∈ S} g(s) of real rows: small D means the
synthetic memory pulls the model away from x, so x is a hard target.
Responsibility R(s) = g(s) · Σ_{x ∈ H} g(x) of synthetic rows: large R means a
step on s lowers the loss on the hard targets, so s joins the active memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from diet_engine.distill.influence import Influence
from diet_engine.data.synthetic import SyntheticSet
from diet_engine.train.loops import soft_targets


@dataclass
class Addressing:
    hard: Tensor  # indices into the real target pool
    active: Tensor  # indices into the synthetic set
    deficiency: Tensor  # over the pool


def address(
    influence: Influence,
    syn: SyntheticSet,
    pool_emb: Tensor,
    pool_labels: Tensor,
    hard_ratio: float,
    active_rows: int,
    *,
    temperature: float = 1.0,
    select_targets: bool = True,
    select_memory: bool = True,
) -> Addressing:
    syn_targets = soft_targets(syn.logits, temperature)
    n_pool = pool_emb.shape[0]
    if select_targets:
        deficiency = influence.scores(pool_emb, pool_labels, influence.direction(syn.emb, syn_targets))
        n_hard = max(1, round(hard_ratio * n_pool))
        hard = torch.topk(deficiency, n_hard, largest=False).indices
    else:
        deficiency = torch.zeros(n_pool)
        hard = torch.arange(n_pool)
    if select_memory and active_rows < len(syn):
        responsibility = influence.scores(syn.emb, syn_targets, influence.direction(pool_emb[hard], pool_labels[hard]))
        active = torch.topk(responsibility, active_rows).indices
    else:
        active = torch.arange(len(syn))
    return Addressing(hard=hard, active=active, deficiency=deficiency)
