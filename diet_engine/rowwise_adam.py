"""Lazy (row-wise) Adam for a sparse embedding gradient that never waits for the GPU.

`torch.optim.SparseAdam` coalesces the gradient first, and coalescing asks the
host how many distinct rows there are: every training step then stalls until
the GPU has finished the forward and backward pass, and the host's launches
no longer overlap the GPU's work. This optimiser makes the same update —
moments and weights change only on the rows the batch touched, one step count
for the bias correction — from the uncoalesced gradient with fixed-size
operations: occurrences are sorted by row, summed per row with a segment
index_add, and every occurrence of a row writes the same new values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor


class SyncFreeSparseAdam(torch.optim.Optimizer):
    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None) -> None:  # noqa: ANN001 - the Optimizer signature
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise RuntimeError("SyncFreeSparseAdam takes sparse gradients (nn.Embedding(sparse=True))")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                rows, values = p.grad._indices()[0], p.grad._values()
                if rows.numel() == 0:
                    continue
                rows, order = torch.sort(rows)
                starts = torch.ones_like(rows, dtype=torch.bool)
                starts[1:] = rows[1:] != rows[:-1]
                segment = starts.cumsum(0) - 1  # each occurrence's row, numbered 0..distinct-1
                grad = torch.zeros_like(values).index_add_(0, segment, values[order])[segment]  # its row's summed gradient
                m = state["exp_avg"][rows].mul_(beta1).add_(grad, alpha=1 - beta1)
                v = state["exp_avg_sq"][rows].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step_size = group["lr"] * math.sqrt(1 - beta2 ** state["step"]) / (1 - beta1 ** state["step"])
                new = p[rows].addcdiv_(m, v.sqrt().add_(group["eps"]), value=-step_size)
                # duplicate rows write identical values, so the order of the writes does not matter
                state["exp_avg"].index_put_((rows,), m)
                state["exp_avg_sq"].index_put_((rows,), v)
                p.index_put_((rows,), new)
