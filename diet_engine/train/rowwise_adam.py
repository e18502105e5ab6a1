"""Lazy (row-wise) Adam for a sparse embedding gradient that never waits for the GPU.

`torch.optim.SparseAdam` coalesces the gradient first, and coalescing asks the
host how many distinct rows there are: every training step then stalls until
the GPU has finished the forward and backward pass, and the host's launches
no longer overlap the GPU's work. This optimiser makes the same update —
moments and weights change only on the rows the batch touched, one step count
for the bias correction, SparseAdam's arithmetic — from the uncoalesced
gradient with fixed-size operations, in one of two ways:

* fused (a GPU with Triton): each touched row elects one of its occurrences
  (`owner[row] = occurrence`, any one wins), every occurrence adds its
  gradient into the elected one's slot, and one kernel updates each touched
  row once, from its elected occurrence — weight, moments and summed gradient
  read and written once per distinct row, no sort;
* sorted (the CPU, or no Triton): occurrences sorted by row, summed per row
  with a segment index_add, and every occurrence of a row writes the same new
  values over gathered copies of the row.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable

import torch
from torch import Tensor

# the fused kernel where it can run; benchmarks switch it off to time the sorted path on the same GPU
USE_TRITON = True


class SyncFreeSparseAdam(torch.optim.Optimizer):
    def __init__(
        self, params: Iterable[Tensor], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
        fused: bool | None = None,
    ) -> None:
        """`fused`: None takes the Triton kernel on a GPU where Triton imports; True asks for it anywhere
        (the CPU too, under TRITON_INTERPRET=1, for tests); False keeps the sorted path."""
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})
        self.fused = fused
        self._owner: dict[int, Tensor] = {}  # scratch per table, not state: never saved with the moments

    def _use_fused(self, p: Tensor) -> bool:
        if self.fused is False or (self.fused is None and not (USE_TRITON and p.is_cuda)):
            return False
        return _update_kernel() is not None

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
                step_size = group["lr"] * math.sqrt(1 - beta2 ** state["step"]) / (1 - beta1 ** state["step"])
                args = (p, state["exp_avg"], state["exp_avg_sq"], rows, values.reshape(rows.numel(), -1), beta1, beta2,
                        group["eps"], step_size)
                if self._use_fused(p) and all(t.is_contiguous() for t in (p, state["exp_avg"], state["exp_avg_sq"])):
                    self._fused_update(*args)
                else:
                    _sorted_update(*args)

    def _fused_update(self, p: Tensor, m: Tensor, v: Tensor, rows: Tensor, values: Tensor, beta1: float, beta2: float,
                      eps: float, step_size: float) -> None:
        owner = self._owner.get(id(p))
        if owner is None or owner.shape[0] != p.shape[0] or owner.device != p.device:
            owner = self._owner[id(p)] = torch.empty(p.shape[0], dtype=torch.int32, device=p.device)
        n, dim = values.shape
        occurrence = torch.arange(n, dtype=torch.int32, device=p.device)
        owner.index_put_((rows,), occurrence)  # duplicates: one of them wins, whichever
        elected = owner[rows]
        summed = values.new_zeros((n, dim)).index_add_(0, elected, values)  # row sums, in the elected slots (contiguous)
        block_n = 64
        _update_kernel()[(_cdiv(n, block_n),)](
            rows, elected, summed, p, m, v, n, 1 - beta1, 1 - beta2, eps, -step_size,
            DIM=dim, BLOCK_N=block_n, BLOCK_D=max(16, 1 << (dim - 1).bit_length()),
        )


def _sorted_update(p: Tensor, m_all: Tensor, v_all: Tensor, rows: Tensor, values: Tensor, beta1: float, beta2: float,
                   eps: float, step_size: float) -> None:
    rows, order = torch.sort(rows)
    starts = torch.ones_like(rows, dtype=torch.bool)
    starts[1:] = rows[1:] != rows[:-1]
    segment = starts.cumsum(0) - 1  # each occurrence's row, numbered 0..distinct-1
    grad = torch.zeros_like(values).index_add_(0, segment, values[order])[segment]  # its row's summed gradient
    m = m_all[rows].mul_(beta1).add_(grad, alpha=1 - beta1)
    v = v_all[rows].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    new = p[rows].addcdiv_(m, v.sqrt().add_(eps), value=-step_size)
    # duplicate rows write identical values, so the order of the writes does not matter
    m_all.index_put_((rows,), m)
    v_all.index_put_((rows,), v)
    p.index_put_((rows,), new)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.cache
def _update_kernel():
    """The Triton kernel (compiled on first use), or None where Triton does not import."""
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def rowwise_adam_update(rows_ptr, elected_ptr, summed_ptr, w_ptr, m_ptr, v_ptr, n, one_minus_b1, one_minus_b2, eps,
                            neg_step, DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        j = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        live = j < n
        row = tl.load(rows_ptr + j, mask=live, other=0).to(tl.int64)
        mine = live & (tl.load(elected_ptr + j, mask=live, other=-1) == j)  # the row's elected occurrence
        cols = tl.arange(0, BLOCK_D)
        mask = mine[:, None] & (cols < DIM)[None, :]
        at = row[:, None] * DIM + cols[None, :]
        g = tl.load(summed_ptr + j.to(tl.int64)[:, None] * DIM + cols[None, :], mask=mask, other=0.0)
        m = tl.load(m_ptr + at, mask=mask, other=0.0)
        v = tl.load(v_ptr + at, mask=mask, other=0.0)
        w = tl.load(w_ptr + at, mask=mask, other=0.0)
        # SparseAdam's order of operations: moment updates as deltas, then w += -step * m / (sqrt(v) + eps)
        m = m + (g - m) * one_minus_b1
        v = v + (g * g - v) * one_minus_b2
        w = w + neg_step * tl.div_rn(m, tl.sqrt_rn(v) + eps)
        tl.store(m_ptr + at, m, mask=mask)
        tl.store(v_ptr + at, v, mask=mask)
        tl.store(w_ptr + at, w, mask=mask)

    return rowwise_adam_update
