"""The bi-level meta-gradient of unroll.py replayed from CUDA graphs (`DistillConfig.cuda_graph`).

Eagerly, one outer iteration is thousands of small kernels (20 inner steps of a
few hundred rows, each a forward, a backward and, in the window, a double
backward), each launched from Python: the GPU waits on the host. Every shape in
it is fixed once the active memory and the hard targets are, so it is
captured once and replayed:

* graph A: one plain SGD step (no graph kept), reading its batch from the
  synthetic set's own tensors (updated in place, so their addresses hold)
  through a static index buffer, updating static parameters in place;
  replayed `total - window` times for the random truncation (RaT-BPTT);
* graph B: gathers the rows the `window` differentiable steps read (a static
  buffer of at most window x inner_batch row ids) as leaves, runs those steps,
  the outer loss on the hard targets and its gradient w.r.t. those rows'
  embeddings and logits: no buffer of the active memory's size;
* the addressing round (influence scores by JVP over the whole synthetic set
  and the target pool, top-k): the synthetic set is updated in place, so the
  same tensors are read at every round.

The random draws (unroll length, batch order, outer batch) are the eager
loop's own (`unroll.draw_unroll`, `unroll.draw_pick`), so a run sees the
same batches as the eager loop; values agree with it up to float rounding.
A capture that fails (an op that cannot be captured, too little memory) warns
once and the caller falls back to the eager loop.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor, nn
from torch.func import functional_call

from diet_engine.config import DistillConfig
from diet_engine.distill.influence import Params
from diet_engine.data.synthetic import SyntheticSet
from diet_engine.distill.unroll import Unroll
from diet_engine.train.loops import bce, capture_graph, soft_targets



class GraphedMetaGradient:
    """(outer loss, d outer / d emb, d outer / d logits of the window's rows) for fixed window rows and outer batch."""

    def __init__(
        self, dense: nn.Module, start: Params, syn: SyntheticSet, pool_emb: Tensor, pool_labels: Tensor,
        cfg: DistillConfig, n_touched: int, n_pick: int,
    ) -> None:
        device = pool_emb.device
        self.dense, self.start, self.syn, self.cfg = dense, start, syn, cfg
        self.pool_emb, self.pool_labels = pool_emb, pool_labels
        window = min(cfg.window, cfg.inner_steps)
        # static inputs: every replay reads these addresses
        self.params = {k: v.detach().clone() for k, v in start.items()}
        self.step_idx = torch.zeros(cfg.inner_batch, dtype=torch.long, device=device)
        self.touched = torch.zeros(n_touched, dtype=torch.long, device=device)
        self.window_pos = torch.zeros(window, cfg.inner_batch, dtype=torch.long, device=device)
        self.pick = torch.zeros(n_pick, dtype=torch.long, device=device)
        self.plain, _ = capture_graph(self._plain_step)
        self.meta, self.outputs = capture_graph(self._window_and_outer)

    def _plain_step(self) -> None:
        leaves = {k: v.detach().requires_grad_(True) for k, v in self.params.items()}
        e, z = self.syn.emb[self.step_idx], self.syn.logits[self.step_idx]  # no gradient: plain gathers
        loss = bce(functional_call(self.dense, leaves, (e,)), soft_targets(z, self.cfg.temperature))
        grads = torch.autograd.grad(loss, list(leaves.values()))
        with torch.no_grad():
            for v, g in zip(self.params.values(), grads):
                v.sub_(self.cfg.inner_lr * g)

    def _window_and_outer(self) -> tuple[Tensor, Tensor, Tensor]:
        # the window's rows, gathered in the graph as leaves: gradients of their size only
        emb = self.syn.emb.index_select(0, self.touched).requires_grad_(True)
        logits = self.syn.logits.index_select(0, self.touched).requires_grad_(True)
        params = {k: v.detach().requires_grad_(True) for k, v in self.params.items()}
        for pos in self.window_pos:
            # index_select, not [idx]: its backward is an atomic index_add (capturable), not a sort-based index_put
            e, z = emb.index_select(0, pos), logits.index_select(0, pos)
            loss = bce(functional_call(self.dense, params, (e,)), soft_targets(z, self.cfg.temperature))
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            params = {k: v - self.cfg.inner_lr * g for (k, v), g in zip(params.items(), grads)}
        outer = bce(functional_call(self.dense, params, (self.pool_emb[self.pick],)), self.pool_labels[self.pick])
        g_emb, g_logit = torch.autograd.grad(outer, [emb, logits])
        return outer, g_emb, g_logit

    def __call__(self, unroll: Unroll, pick: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The meta-gradient for the draws `unroll` and `pick`: outputs are static, overwritten by the next call."""
        with torch.no_grad():
            for k, v in self.params.items():
                v.copy_(self.start[k])
            self.touched.copy_(unroll.touched)
            self.window_pos.copy_(unroll.window)
            self.pick.copy_(pick)
        for idx in unroll.plain:
            self.step_idx.copy_(idx)
            self.plain.replay()
        self.meta.replay()
        return self.outputs


T = TypeVar("T")


class MetaGradientGraphs:
    """One captured meta-gradient per (window rows, outer batch) and one addressing round; a failed capture
    warns and that part runs eagerly from then on. `syn` is read in place: it must keep its tensors."""

    def __init__(
        self, dense: nn.Module, start: Params, syn: SyntheticSet, pool_emb: Tensor, pool_labels: Tensor, cfg: DistillConfig,
    ) -> None:
        self.args = (dense, start, syn, pool_emb, pool_labels, cfg)
        self.graphs: dict[tuple[int, int], GraphedMetaGradient] = {}
        self.failed = False
        self.address_graph: torch.cuda.CUDAGraph | None = None
        self.address_out = None
        self.address_failed = False

    def address(self, round_: Callable[[], T]) -> T:
        """`round_()`, captured at the first call (every later call replays that capture: same tensors, new values)."""
        if self.address_failed:
            return round_()
        if self.address_graph is None:
            try:
                self.address_graph, self.address_out = capture_graph(round_)
            except Exception as exc:  # noqa: BLE001 - any capture failure means: run eagerly
                warnings.warn(f"CUDA graph capture of addressing failed, running eagerly: {exc}", stacklevel=2)
                self.address_failed = True
                torch.cuda.synchronize()
                return round_()
        self.address_graph.replay()  # a capture records without running: the first answer comes from a replay too
        return self.address_out

    @staticmethod
    def wanted(cfg: DistillConfig, pool_emb: Tensor) -> bool:
        return cfg.cuda_graph and pool_emb.is_cuda

    def get(self, n_touched: int, n_pick: int) -> GraphedMetaGradient | None:
        if self.failed:
            return None
        key = (n_touched, n_pick)
        if key not in self.graphs:
            try:
                self.graphs[key] = GraphedMetaGradient(*self.args, n_touched, n_pick)
            except Exception as exc:  # noqa: BLE001 - any capture failure means: run eagerly
                warnings.warn(f"CUDA graph capture of the meta-gradient failed, running eagerly: {exc}", stacklevel=2)
                self.failed = True
                torch.cuda.synchronize()
                return None
        return self.graphs[key]
