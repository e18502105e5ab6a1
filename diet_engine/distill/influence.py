"""Gradient-alignment influence (paper eq. 15): I(a, b) = g(a) · g(b).

Every score DIET needs has the form g(x) · v where v = Σ_b g(b) is ONE summed
gradient: memory fusion (eq. 10), deficiency (eq. 16) and responsibility
(eq. 17). So v costs one backward pass of a summed loss, and the scores of a
whole batch cost one forward-mode pass: g(x) · v is the directional
derivative of the row's loss along v, i.e. a JVP of the per-row loss vector.
Per-row gradients of the network are never materialised.

g is the gradient of the loss w.r.t. the dense parameters (`influence_params
= "dense"`) or only the MMoE head's (`"head"`, cheaper, a documented subset).
Real rows use hard labels; synthetic rows use their soft labels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jvp

Params = dict[str, Tensor]
SCORE_BATCH = 4096


def influence_params(dense: nn.Module, which: str = "dense") -> tuple[Params, Params]:
    """(the parameters g differentiates, the rest held fixed), both detached."""
    all_params = {k: v.detach() for k, v in dense.named_parameters()}
    if which == "dense":
        return all_params, {}
    if which == "head":
        chosen = {k: v for k, v in all_params.items() if k.startswith("head.")}
        return chosen, {k: v for k, v in all_params.items() if k not in chosen}
    raise ValueError(f"influence_params must be 'dense' or 'head', got {which!r}")


def row_losses(dense: nn.Module, params: Params, emb: Tensor, targets: Tensor) -> Tensor:
    """Per-row BCE summed over tasks, as a function of the parameters."""
    logits = functional_call(dense, params, (emb,))
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(-1)


def summed_gradient(
    dense: nn.Module, params: Params, fixed: Params, emb: Tensor, targets: Tensor, batch: int = SCORE_BATCH
) -> Params:
    """v = Σ_rows g(row): one backward pass of the summed loss (in chunks of `batch` rows, added up)."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    for start in range(0, emb.shape[0], batch):
        e, t = emb[start : start + batch], targets[start : start + batch]
        loss = row_losses(dense, {**fixed, **leaves}, e, t).sum()
        grads = torch.autograd.grad(loss, list(leaves.values()))
        for k, g in zip(leaves, grads):
            total[k] += g
    return total


def alignment_scores(
    dense: nn.Module, params: Params, fixed: Params, emb: Tensor, targets: Tensor, direction: Params,
    batch: int = SCORE_BATCH,
) -> Tensor:
    """g(row) · direction for every row, by forward-mode JVP in batches of `batch` rows."""
    names = list(params)
    primals = tuple(params[k] for k in names)
    tangents = tuple(direction[k] for k in names)
    out = []
    for start in range(0, emb.shape[0], batch):
        e, t = emb[start : start + batch], targets[start : start + batch]

        def loss_of(*p: Tensor, e: Tensor = e, t: Tensor = t) -> Tensor:
            return row_losses(dense, {**fixed, **dict(zip(names, p))}, e, t)

        _, tangent_out = jvp(loss_of, primals, tangents)
        out.append(tangent_out.detach())
    return torch.cat(out) if out else torch.empty(0, device=emb.device)


class Influence:
    """Scores against one model state: `scores(rows, against=other_rows)` = g(row) · Σ g(other)."""

    def __init__(self, dense: nn.Module, which: str = "dense", batch: int = SCORE_BATCH) -> None:
        self.dense = dense
        self.params, self.fixed = influence_params(dense, which)
        self.batch = batch  # rows per chunk: larger on a GPU, fewer kernel launches

    def direction(self, emb: Tensor, targets: Tensor) -> Params:
        return summed_gradient(self.dense, self.params, self.fixed, emb, targets, self.batch)

    def scores(self, emb: Tensor, targets: Tensor, direction: Params) -> Tensor:
        return alignment_scores(self.dense, self.params, self.fixed, emb, targets, direction, self.batch)
