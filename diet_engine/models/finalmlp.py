"""FinalMLP (Mao et al., AAAI 2023): two MLP streams fused by a multi-head bilinear layer.

Feature selection: each stream sees the flat embedding times a gate
2·sigmoid(MLP(context)). The paper takes the context from chosen fields
(e.g. user or item ids); our schemas have no such split, so — as FuxiCTR does
when the context field lists are empty — the context is a learned vector and
each gate is a learned per-dimension reweighting of the input.

Fusion: the paper's per-head y_h = w1ᵀx1_h + w2ᵀx2_h + x1_hᵀ W3_h x2_h is a
scalar (summed over heads, then sigmoid). Adaptation: the MMoE head needs a
representation, so w1, w2 are [d, out_dim] maps and W3_h is a [d1/h, d2/h,
out_dim] tensor: y ∈ R^out_dim, still summed over heads. out_dim=1 is the
paper's layer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diet_engine.models.base import MLP, Backbone, ModelConfig


class FeatureSelection(nn.Module):
    """gate = 2·sigmoid(MLP(c)) with a learned context c; output = x ⊙ gate."""

    def __init__(self, ctx_dim: int, out_dim: int, hidden: list[int]) -> None:
        super().__init__()
        # Random, not zero, so ReLU units start alive and the context learns (FuxiCTR uses zeros).
        self.context = nn.Parameter(torch.randn(ctx_dim) * 0.1)
        self.gate = MLP(ctx_dim, hidden, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return x * (2.0 * torch.sigmoid(self.gate(self.context)))


class InteractionAggregation(nn.Module):
    """Multi-head bilinear fusion, generalised to a vector output (see module docstring)."""

    def __init__(self, x1_dim: int, x2_dim: int, out_dim: int, num_heads: int) -> None:
        super().__init__()
        if x1_dim % num_heads or x2_dim % num_heads:
            raise ValueError(f"stream widths {x1_dim}, {x2_dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.w1 = nn.Linear(x1_dim, out_dim)
        self.w2 = nn.Linear(x2_dim, out_dim, bias=False)  # one bias is enough
        # W3 for all heads as one [h·(d1/h)·(d2/h), out] matrix: a single matmul also sums the heads.
        self.w3 = nn.Parameter(torch.empty(x1_dim * x2_dim // num_heads, out_dim))
        nn.init.xavier_normal_(self.w3)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        b, h = x1.shape[0], self.num_heads
        h1 = x1.reshape(b, h, -1, 1)
        h2 = x2.reshape(b, h, 1, -1)
        outer = (h1 * h2).reshape(b, -1)  # per head x1_h ⊗ x2_h, flattened
        return self.w1(x1) + self.w2(x2) + outer @ self.w3


class FinalMLP(Backbone):
    def __init__(
        self,
        num_fields: int,
        dim: int,
        cfg: ModelConfig,
        mlp1_hidden: list[int] | None = None,
        mlp2_hidden: list[int] | None = None,
        use_fs: bool = True,
        fs_hidden: list[int] | None = None,
        num_heads: int = 16,  # W3 holds d1·d2/heads·out_dim weights: more heads, fewer weights
        out_dim: int = 64,
    ) -> None:
        super().__init__()
        in_dim = num_fields * dim
        fs_hidden = [64] if fs_hidden is None else list(fs_hidden)
        self.fs1 = FeatureSelection(dim, in_dim, fs_hidden) if use_fs else None
        self.fs2 = FeatureSelection(dim, in_dim, fs_hidden) if use_fs else None
        self.mlp1 = MLP(in_dim, list(cfg.hidden if mlp1_hidden is None else mlp1_hidden), dropout=cfg.dropout)
        self.mlp2 = MLP(in_dim, list(cfg.hidden if mlp2_hidden is None else mlp2_hidden), dropout=cfg.dropout)
        self.fusion = InteractionAggregation(self.mlp1.out_dim, self.mlp2.out_dim, out_dim, num_heads)
        self.out_dim = out_dim

    def forward(self, emb: Tensor) -> Tensor:
        x = emb.flatten(1)
        x1 = x if self.fs1 is None else self.fs1(x)
        x2 = x if self.fs2 is None else self.fs2(x)
        return self.fusion(self.mlp1(x1), self.mlp2(x2))
