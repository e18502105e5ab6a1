"""The inner loop of the bi-level problem and its truncated meta-gradient (paper eq. 18-19, RaT-BPTT).

One draw of the unroll (its length and batches over the active memory A), the plain SGD steps that
keep no graph, the last `window` differentiable steps, and the outer loss's gradient w.r.t. the rows
those steps read. `bilevel.py` runs the outer loop over these; `meta_graph.py` replays the same maths
from CUDA graphs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from diet_engine.config import DistillConfig
from diet_engine.data.synthetic import SyntheticSet
from diet_engine.distill.influence import Params
from diet_engine.train.loops import bce, soft_targets


@dataclass
class Unroll:
    """One draw of the inner loop's batches, as row ids of the synthetic set."""

    plain: Tensor  # [total - w, B]: the batches of the steps that keep no graph
    touched: Tensor  # [m]: the distinct rows the w differentiable steps read, m = min(w x B, |A|)
    window: Tensor  # [w, B]: each differentiable step's batch, as positions in `touched`


def draw_unroll(active: Tensor, cfg: DistillConfig, gen: torch.Generator, device: torch.device) -> Unroll:
    """The unroll length, then a batch order over `active` (the generator's draws, in this order); row ids on `device`.

    Step s reads positions s*B .. s*B+B-1 (mod |A|) of the order, so the window's w x B positions are
    consecutive: the first min(w x B, |A|) of them are distinct rows and cover the rest.
    """
    n, b = len(active), cfg.inner_batch
    w = min(cfg.window, cfg.inner_steps)
    total = int(torch.randint(w, cfg.inner_steps + 1, (1,), generator=gen))
    order = torch.randperm(n, generator=gen)
    prefix, m = total - w, min(w * b, n)
    # the positions read, picked on the host: only those rows' ids cross to the device, not all |A|
    pos = torch.cat([torch.arange(prefix * b), torch.arange(m) + prefix * b]) % n
    rows = active[order[pos].to(active.device)].to(device)
    return Unroll(
        plain=rows[: prefix * b].view(prefix, b),
        touched=rows[prefix * b :],
        window=(torch.arange(w * b, device=device) % m).view(w, b),
    )


def draw_pick(hard: Tensor, cfg: DistillConfig, gen: torch.Generator) -> Tensor:
    """The outer batch: up to `outer_batch` hard targets (drawn after the unroll)."""
    return hard[torch.randperm(len(hard), generator=gen)[: cfg.outer_batch].to(hard.device)]


def sgd_step(dense: nn.Module, params: Params, e: Tensor, z: Tensor, cfg: DistillConfig, keep_graph: bool) -> Params:
    """One inner SGD step on the batch (e, z); with `keep_graph`, differentiable w.r.t. params, e and z."""
    # parameters without a graph (every plain step, the window's first) become leaves to differentiate
    params = {k: v if v.requires_grad else v.detach().requires_grad_(True) for k, v in params.items()}
    loss = bce(functional_call(dense, params, (e,)), soft_targets(z, cfg.temperature))
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=keep_graph)
    params = {k: v - cfg.inner_lr * g for (k, v), g in zip(params.items(), grads)}
    return params if keep_graph else {k: v.detach() for k, v in params.items()}


def inner_unroll(
    dense: nn.Module, start: Params, emb: Tensor, logits: Tensor, unroll: Unroll,
    touched: tuple[Tensor, Tensor], cfg: DistillConfig,
) -> Params:
    """θ_T after SGD on `unroll`'s batches: the plain steps read rows of (emb, logits) without a graph, the
    window reads `touched` (the embeddings and logits of `unroll.touched`), the only inputs θ_T depends on."""
    params = {k: v.detach() for k, v in start.items()}
    for idx in unroll.plain:
        params = sgd_step(dense, params, emb[idx].detach(), logits[idx].detach(), cfg, keep_graph=False)
    emb_t, logit_t = touched
    for pos in unroll.window:
        # index_select: its backward sums a row read twice (a window longer than |A|) into that row
        params = sgd_step(dense, params, emb_t.index_select(0, pos), logit_t.index_select(0, pos), cfg, keep_graph=True)
    return params


def meta_gradient(
    dense: nn.Module, start: Params, syn: SyntheticSet, unroll: Unroll, target_emb: Tensor, target_labels: Tensor,
    cfg: DistillConfig,
) -> tuple[Tensor, Tensor, Tensor]:
    """(outer loss, its gradient w.r.t. the embeddings and logits of `unroll.touched`), eagerly."""
    emb_t = syn.emb[unroll.touched].requires_grad_(True)  # a gather copies: leaves of the touched rows only
    logit_t = syn.logits[unroll.touched].requires_grad_(True)
    final = inner_unroll(dense, start, syn.emb, syn.logits, unroll, (emb_t, logit_t), cfg)
    outer = bce(functional_call(dense, final, (target_emb,)), target_labels)
    g_emb, g_logit = torch.autograd.grad(outer, [emb_t, logit_t])
    return outer, g_emb, g_logit
