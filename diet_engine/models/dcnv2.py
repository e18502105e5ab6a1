"""DCN-V2 (Wang et al., WWW 2021): cross layers with a full weight matrix.

Full-rank layer:   x_{l+1} = x0 ⊙ (W_l x_l + b_l) + x_l
Mixture (DCN-Mix): x_{l+1} = Σ_i G_i(x_l) · x0 ⊙ (U_i g(C_i g(V_iᵀ x_l)) + b_l) + x_l,
with K low-rank experts (U_i, V_i ∈ R^{d×r}, C_i ∈ R^{r×r}), g = tanh and a
softmax gate over experts. Pass `low_rank=r` to select it (`num_experts=1`
gives the plain low-rank layer x0 ⊙ (U g(C g(Vᵀ x)) + b) + x).
The cross network and a DNN run in parallel (outputs concatenated) or stacked
(DNN on top of the cross output).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from diet_engine.models.base import MLP, Backbone, ModelConfig


class CrossNetV2(nn.Module):
    def __init__(self, in_dim: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(in_dim, in_dim) for _ in range(num_layers))

    def forward(self, x0: Tensor) -> Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x


class CrossNetMix(nn.Module):
    def __init__(self, in_dim: int, num_layers: int, low_rank: int, num_experts: int) -> None:
        super().__init__()
        shape_uv, shape_c = (num_layers, num_experts, in_dim, low_rank), (num_layers, num_experts, low_rank, low_rank)
        self.U = nn.Parameter(torch.empty(shape_uv))
        self.V = nn.Parameter(torch.empty(shape_uv))
        self.C = nn.Parameter(torch.empty(shape_c))
        self.bias = nn.Parameter(torch.zeros(num_layers, in_dim))
        # One expert needs no gate (softmax over one logit is constant, its weights would never learn).
        self.gates = (
            nn.ModuleList(nn.Linear(in_dim, num_experts, bias=False) for _ in range(num_layers))
            if num_experts > 1
            else None
        )
        self.num_layers = num_layers
        self.reset_parameters()

    def reset_parameters(self) -> None:
        d, r = self.U.shape[-2:]
        for p, fan in ((self.U, d + r), (self.V, d + r), (self.C, 2 * r)):
            nn.init.normal_(p, std=math.sqrt(2.0 / fan))  # Glorot-normal per expert matrix
        nn.init.zeros_(self.bias)

    def forward(self, x0: Tensor) -> Tensor:
        x = x0
        for l in range(self.num_layers):
            v = torch.tanh(torch.einsum("bd,edr->ber", x, self.V[l]))
            v = torch.tanh(torch.einsum("ber,ers->bes", v, self.C[l]))
            u = torch.einsum("bes,eds->bed", v, self.U[l])
            experts = x0.unsqueeze(1) * (u + self.bias[l])  # [B, E, d]
            if self.gates is None:
                mixed = experts.squeeze(1)
            else:
                g = torch.softmax(self.gates[l](x), dim=-1).unsqueeze(-1)  # [B, E, 1]
                mixed = (g * experts).sum(dim=1)
            x = mixed + x
        return x


class DCNv2(Backbone):
    def __init__(
        self,
        num_fields: int,
        dim: int,
        cfg: ModelConfig,
        num_cross_layers: int = 2,  # each full-rank layer costs (F·D)² weights, as much as the DNN
        structure: Literal["parallel", "stacked"] = "parallel",
        low_rank: int | None = None,
        num_experts: int = 4,
        dnn_hidden: list[int] | None = None,
    ) -> None:
        super().__init__()
        if structure not in ("parallel", "stacked"):
            raise ValueError(f"structure must be 'parallel' or 'stacked', got {structure!r}")
        in_dim = num_fields * dim
        self.cross: nn.Module = (
            CrossNetV2(in_dim, num_cross_layers)
            if low_rank is None
            else CrossNetMix(in_dim, num_cross_layers, low_rank, num_experts)
        )
        self.dnn = MLP(in_dim, list(cfg.hidden if dnn_hidden is None else dnn_hidden), dropout=cfg.dropout)
        self.structure = structure
        self.out_dim = self.dnn.out_dim + (in_dim if structure == "parallel" else 0)

    def forward(self, emb: Tensor) -> Tensor:
        x0 = emb.flatten(1)
        if self.structure == "stacked":
            return self.dnn(self.cross(x0))
        return torch.cat([self.cross(x0), self.dnn(x0)], dim=-1)
