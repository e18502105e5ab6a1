"""Influence-guided bi-level optimisation (paper §4.2.2, Alg. 2).

Inner loop: a proxy copy of the dense network, started from the previous
reference checkpoint θ_{t-1}, takes `inner_steps` SGD steps on batches of the
active memory A with soft-label BCE (eq. 18) — functionally, with torch.func,
so the steps stay differentiable w.r.t. the synthetic rows.
Outer loop: BCE of the final proxy on the hard targets H (eq. 19), embedded
with the stage's tables φ_t; its gradient reaches A's embeddings and logits
through a random truncated window of the unroll (RaT-BPTT, Feng et al. 2023):
the unroll length is drawn from [window, inner_steps] and only its last
`window` steps keep a graph. Adam updates only the rows of A (row-wise state),
so rows outside A do not drift on stale momentum. After each step a row's
field vectors are pulled back inside the largest norm that field reaches among
the stage's real embeddings: candidates never meet inputs the embedding tables
could not produce (unbounded rows made candidate training diverge), and a
step whose meta-loss is not finite is skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.func import functional_call

from diet_engine.addressing import Addressing, address
from diet_engine.config import DistillConfig
from diet_engine.influence import Influence, Params
from diet_engine.meta_graph import MetaGradientGraphs
from diet_engine.synthetic import SyntheticSet
from diet_engine.training import bce, soft_targets

if TYPE_CHECKING:
    from diet_engine.checkpoint import StageCheckpoint


class RowAdam:
    """Adam whose state and step count are per row of a [N, ...] tensor; updates only given rows.

    `step(rows, grad)` takes distinct row ids in any order (a repeated id would be stepped twice from the same
    old state, its gradients not summed): callers sum a row's gradients first.
    """

    def __init__(self, value: Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.value = value
        self.lr, self.betas, self.eps = lr, betas, eps
        self.m = torch.zeros_like(value)
        self.v = torch.zeros_like(value)
        self.steps = torch.zeros(value.shape[0], dtype=value.dtype, device=value.device)

    @torch.no_grad()
    def step(self, rows: Tensor, grad: Tensor) -> None:
        b1, b2 = self.betas
        shape = (-1,) + (1,) * (self.value.dim() - 1)
        t = self.steps[rows] + 1
        self.steps[rows] = t
        m = self.m[rows].mul_(b1).add_(grad, alpha=1 - b1)
        v = self.v[rows].mul_(b2).addcmul_(grad, grad, value=1 - b2)
        self.m[rows], self.v[rows] = m, v
        m_hat = m / (1 - b1 ** t).view(shape)
        v_hat = v / (1 - b2 ** t).view(shape)
        self.value[rows] -= self.lr * m_hat / (v_hat.sqrt() + self.eps)


@dataclass
class OptimiseLog:
    outer_loss: list[float] = field(default_factory=list)
    hard_loss_start: list[float] = field(default_factory=list)  # H's loss at θ_{t-1}, per addressing round
    active_rows: int = 0
    hard_rows: int = 0
    skipped_steps: int = 0
    cuda_graph: bool = False  # the meta-gradient ran from captured CUDA graphs


def project_norms(emb: Tensor, rows: Tensor, cap: Tensor) -> None:
    """Rescale each field vector of `rows` to norm at most cap[field] (in place)."""
    with torch.no_grad():
        part = emb[rows]
        norms = part.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        emb[rows] = part * (cap.view(1, -1, 1) / norms).clamp(max=1.0)


def inner_unroll(
    dense: nn.Module, start: Params, emb: Tensor, logits: Tensor, cfg: DistillConfig, gen: torch.Generator
) -> Params:
    """θ_T after SGD on (emb, logits); differentiable through the last `window` steps only."""
    n = emb.shape[0]
    total = int(torch.randint(min(cfg.window, cfg.inner_steps), cfg.inner_steps + 1, (1,), generator=gen))
    order = torch.randperm(n, generator=gen).to(emb.device)
    params = {k: v.detach() for k, v in start.items()}
    for step in range(total):
        pos = (torch.arange(cfg.inner_batch, device=emb.device) + step * cfg.inner_batch) % n
        idx = order[pos]
        keep_graph = step >= total - cfg.window
        # leaves for the no-graph steps and for the first step of the window
        params = {k: v if v.requires_grad else v.detach().requires_grad_(True) for k, v in params.items()}
        e, z = (emb[idx], logits[idx]) if keep_graph else (emb[idx].detach(), logits[idx].detach())
        loss = bce(functional_call(dense, params, (e,)), soft_targets(z, cfg.temperature))
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=keep_graph)
        params = {k: v - cfg.inner_lr * g for (k, v), g in zip(params.items(), grads)}
        if not keep_graph:
            params = {k: v.detach() for k, v in params.items()}
    return params


def optimise_memory(
    syn: SyntheticSet,
    dense_prev: nn.Module,
    pool_emb: Tensor,
    pool_labels: Tensor,
    cfg: DistillConfig,
    on_iter: Callable[[int, float], None] | None = None,
    checkpoint: StageCheckpoint | None = None,
) -> tuple[SyntheticSet, OptimiseLog]:
    """K outer iterations of DIET on `syn` against a pool of real rows of the current block.

    With `checkpoint`, the loop's state is saved every few iterations and a saved state is resumed.
    """
    syn = syn.detach()
    dense_prev = dense_prev.eval()
    # every forward below goes through functional_call with these detached tensors:
    # the module's own parameters are never differentiated or changed
    start = {k: v.detach() for k, v in dense_prev.named_parameters()}
    influence = Influence(dense_prev, cfg.influence_params, cfg.score_batch)
    graphs = MetaGradientGraphs(dense_prev, start, pool_emb, pool_labels, cfg) if MetaGradientGraphs.wanted(cfg, pool_emb) else None
    gen = torch.Generator().manual_seed(cfg.seed)
    emb_opt = RowAdam(syn.emb, cfg.lr_embedding)
    logit_opt = RowAdam(syn.logits, cfg.lr_logits)
    log = OptimiseLog()
    field_cap = pool_emb.norm(dim=-1).amax(0)  # [F]
    plan = None
    first = 0
    if checkpoint is not None:
        first, plan = checkpoint.resume_loop(syn, (emb_opt, logit_opt), gen, log)
    for it in range(first, cfg.outer_iters):
        if checkpoint is not None:
            checkpoint.reached(it, syn, (emb_opt, logit_opt), gen, log, plan)
        if plan is None or it % cfg.address_every == 0:
            def round_() -> Addressing:
                return address(
                    influence, syn, pool_emb, pool_labels, cfg.hard_ratio, cfg.active_rows,
                    temperature=cfg.temperature, select_targets=cfg.target_selection, select_memory=cfg.memory_selection,
                )

            plan = graphs.address(round_) if graphs else round_()  # syn changes in place: a capture stays valid
            with torch.no_grad():
                h_loss = bce(functional_call(dense_prev, start, (pool_emb[plan.hard],)), pool_labels[plan.hard])
            log.hard_loss_start.append(float(h_loss))
        active = plan.active
        graphed = graphs.get(len(active), min(cfg.outer_batch, len(plan.hard)), tuple(syn.emb.shape[1:]), syn.logits.shape[1]) if graphs else None
        if graphed is not None:  # same draws and maths, replayed from CUDA graphs (meta_graph.py)
            outer, g_emb, g_logit = graphed(syn.emb[active], syn.logits[active], plan.hard, gen)
            log.cuda_graph = True
        else:
            emb_a = syn.emb[active].clone().requires_grad_(True)
            logit_a = syn.logits[active].clone().requires_grad_(True)
            final = inner_unroll(dense_prev, start, emb_a, logit_a, cfg, gen)
            pick = plan.hard[torch.randperm(len(plan.hard), generator=gen)[: cfg.outer_batch]]
            outer = bce(functional_call(dense_prev, final, (pool_emb[pick],)), pool_labels[pick])
            g_emb, g_logit = torch.autograd.grad(outer, [emb_a, logit_a], allow_unused=True)
        if not torch.isfinite(outer) or any(g is not None and not torch.isfinite(g).all() for g in (g_emb, g_logit)):
            log.skipped_steps += 1
            continue
        if g_emb is not None:
            emb_opt.step(active, g_emb)
            project_norms(syn.emb, active, field_cap)
        if g_logit is not None:
            logit_opt.step(active, g_logit)
        log.outer_loss.append(outer.item())
        if on_iter:
            on_iter(it, log.outer_loss[-1])
    log.active_rows = len(plan.active) if plan else 0
    log.hard_rows = len(plan.hard) if plan else 0
    return syn, log
