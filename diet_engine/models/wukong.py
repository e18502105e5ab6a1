"""Wukong (Zhang et al., ICML 2024, "Towards a Scaling Law for Large-Scale Recommendation").

Each Wukong layer maps n_i embeddings X_i ∈ R^{n_i×d} to n_F + n_L embeddings:
  FMB(X) = reshape(MLP(LN(flatten(X Xᵀ Y))), n_F × d)  optimised FM: the low-rank projection
           Y ∈ R^{n_i×k} keeps the MLP input at n·k instead of n²
  LCB(X) = W_L X,  W_L ∈ R^{n_L×n_i}               linear recombination over the field axis
  X_{i+1} = LN(concat(FMB(X), LCB(X)) + res(X))     res = identity, or a linear map over
                                                     the field axis when n_i ≠ n_F + n_L
The paper's final MLP is replaced by the MMoE head: the representation is flatten(X_L).
LN in the residual is taken per embedding (over d).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from diet_engine.models.base import MLP, Backbone, ModelConfig


def _field_map(linear: nn.Linear, x: Tensor) -> Tensor:
    """Apply a Linear over the field axis: [B, n, d] -> [B, m, d]."""
    return linear(x.transpose(1, 2)).transpose(1, 2)


class WukongLayer(nn.Module):
    def __init__(
        self, n_in: int, dim: int, n_fm: int, n_lcb: int, rank: int, fmb_hidden: list[int], dropout: float
    ) -> None:
        super().__init__()
        self.proj = nn.Parameter(torch.randn(n_in, rank) * math.sqrt(2.0 / (n_in + rank)))  # Y
        self.fm_norm = nn.LayerNorm(n_in * rank)
        self.fm_mlp = MLP(n_in * rank, fmb_hidden, n_fm * dim, dropout=dropout)
        self.lcb = nn.Linear(n_in, n_lcb, bias=False)
        n_out = n_fm + n_lcb
        self.res = nn.Linear(n_in, n_out, bias=False) if n_in != n_out else None
        self.norm = nn.LayerNorm(dim)
        self.n_fm, self.n_out, self.dim = n_fm, n_out, dim

    def fmb(self, x: Tensor) -> Tensor:
        # (X Xᵀ) Y, not X (Xᵀ Y): same n×k result; at recsys field counts the n×n Gram is small
        # and its backward is several times faster on CPU than the batched d×k route.
        fm = (x @ x.transpose(1, 2)) @ self.proj  # [B, n_in, k]
        out = self.fm_mlp(self.fm_norm(fm.flatten(1)))
        return out.reshape(x.shape[0], self.n_fm, self.dim)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.cat([self.fmb(x), _field_map(self.lcb, x)], dim=1)
        res = x if self.res is None else _field_map(self.res, x)
        return self.norm(y + res)


class Wukong(Backbone):
    def __init__(
        self,
        num_fields: int,
        dim: int,
        cfg: ModelConfig,
        num_layers: int = 3,
        n_fm: int = 8,
        n_lcb: int = 8,
        rank: int = 8,
        fmb_hidden: list[int] | None = None,
    ) -> None:
        super().__init__()
        fmb_hidden = [128] if fmb_hidden is None else list(fmb_hidden)
        layers = []
        n = num_fields
        for _ in range(num_layers):
            layers.append(WukongLayer(n, dim, n_fm, n_lcb, rank, fmb_hidden, cfg.dropout))
            n = n_fm + n_lcb
        self.layers = nn.Sequential(*layers)
        self.out_dim = n * dim

    def forward(self, emb: Tensor) -> Tensor:
        return self.layers(emb).flatten(1)
