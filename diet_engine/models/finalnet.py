"""FinalNet (Zhu et al., SIGIR 2023, "FINAL: Factorized Interaction Layer for CTR Prediction").

A FINAL layer replaces nn.Linear: z = W x + b is split into halves (a, c) and
the layer returns [a, a ⊙ c] ("concat", same parameter count as the Linear) or
a + a ⊙ c ("sum", twice the parameters) — a factorised 2nd-order term plus a
linear residual. Stacking L layers into a FinalBlock gives interactions up to
degree 2^L with no activation needed. The two-block model ("2B") runs one block
on the field-gated embedding and one on the raw embedding.

Deviations, for functional inner loops and the MMoE head:
- LayerNorm instead of BatchNorm after each layer (running stats break
  functional_call / higher-order loops); it also bounds the growing degree.
- "2B" returns [h1, h2] instead of averaging two logits; the paper's auxiliary
  per-block losses (each block fitted to the ensemble) have no place in a
  backbone and are dropped.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from diet_engine.models.base import Backbone, ModelConfig


class FieldGate(nn.Module):
    """gates = W·E over the field axis (+ bias); output [E, E ⊙ gates] as 2F fields."""

    def __init__(self, num_fields: int) -> None:
        super().__init__()
        # Raw parameters (not nn.Linear) so xavier_ leaves the identity-gate start alone: W=0, b=1.
        self.weight = nn.Parameter(torch.zeros(num_fields, num_fields))
        self.bias = nn.Parameter(torch.ones(num_fields, 1))

    def forward(self, emb: Tensor) -> Tensor:
        gates = torch.einsum("fg,bgd->bfd", self.weight, emb) + self.bias
        return torch.cat([emb, emb * gates], dim=1)


class FinalLinear(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, residual: Literal["concat", "sum"] = "concat") -> None:
        super().__init__()
        if residual == "concat" and out_dim % 2:
            raise ValueError(f"concat FINAL layers need an even width, got {out_dim}")
        self.linear = nn.Linear(in_dim, out_dim * 2 if residual == "sum" else out_dim)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        a, c = self.linear(x).chunk(2, dim=-1)
        if self.residual == "concat":
            return torch.cat([a, a * c], dim=-1)
        return a + a * c


class FinalBlock(nn.Module):
    """Stack of FINAL layers, each followed by LayerNorm (and dropout if set)."""

    def __init__(self, in_dim: int, hidden: list[int], residual: Literal["concat", "sum"], dropout: float) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("a FinalBlock needs at least one layer")
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [FinalLinear(in_dim, h, residual), nn.LayerNorm(h)]
            if dropout:
                layers.append(nn.Dropout(dropout))
            in_dim = h
        self.net = nn.Sequential(*layers)
        self.out_dim = in_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class FinalNet(Backbone):
    def __init__(
        self,
        num_fields: int,
        dim: int,
        cfg: ModelConfig,
        block_type: Literal["1B", "2B"] = "2B",
        use_field_gate: bool = True,
        block1_hidden: list[int] | None = None,
        block2_hidden: list[int] | None = None,
        residual: Literal["concat", "sum"] = "concat",
    ) -> None:
        super().__init__()
        if block_type not in ("1B", "2B"):
            raise ValueError(f"block_type must be '1B' or '2B', got {block_type!r}")
        if residual not in ("concat", "sum"):
            raise ValueError(f"residual must be 'concat' or 'sum', got {residual!r}")
        in_dim = num_fields * dim
        # The FINAL block stands in for the MLP, so it takes the zoo's hidden sizes by default.
        h1 = list(cfg.hidden if block1_hidden is None else block1_hidden)
        h2 = list(cfg.hidden if block2_hidden is None else block2_hidden)
        self.gate = FieldGate(num_fields) if use_field_gate else None
        self.block1 = FinalBlock(in_dim * (2 if use_field_gate else 1), h1, residual, cfg.dropout)
        self.block2 = FinalBlock(in_dim, h2, residual, cfg.dropout) if block_type == "2B" else None
        self.out_dim = self.block1.out_dim + (self.block2.out_dim if self.block2 is not None else 0)

    def forward(self, emb: Tensor) -> Tensor:
        x1 = emb if self.gate is None else self.gate(emb)
        h1 = self.block1(x1.flatten(1))
        if self.block2 is None:
            return h1
        return torch.cat([h1, self.block2(emb.flatten(1))], dim=-1)
