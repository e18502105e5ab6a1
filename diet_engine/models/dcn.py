"""DCN: Deep & Cross Network (Wang et al., ADKDD 2017).

A cross network, x_{l+1} = x0 * (x_l . w_l) + b_l + x_l with one weight
*vector* per layer, runs in parallel with a DNN on the flat embedding; the two
outputs are concatenated. The paper feeds that concatenation to a logit layer;
here it is the representation handed to the MMoE head.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diet_engine.models.base import MLP, Backbone, ModelConfig


class CrossNet(nn.Module):
    """The DCN cross network: each layer adds one order of interaction with O(d) parameters."""

    def __init__(self, in_dim: int, num_layers: int) -> None:
        super().__init__()
        # Linear(d, 1) is the weight vector w_l as a dot product; the bias b_l is a d-vector.
        self.w = nn.ModuleList(nn.Linear(in_dim, 1, bias=False) for _ in range(num_layers))
        self.b = nn.ParameterList(nn.Parameter(torch.zeros(in_dim)) for _ in range(num_layers))

    def forward(self, x0: Tensor) -> Tensor:
        x = x0
        for w, b in zip(self.w, self.b):
            x = x0 * w(x) + b + x  # w(x): [B, 1], the scalar x_l . w_l per row
        return x


class DCN(Backbone):
    def __init__(
        self,
        num_fields: int,
        dim: int,
        cfg: ModelConfig,
        num_cross_layers: int = 3,
        dnn_hidden: list[int] | None = None,
    ) -> None:
        super().__init__()
        in_dim = num_fields * dim
        self.cross = CrossNet(in_dim, num_cross_layers)
        self.dnn = MLP(in_dim, list(cfg.hidden if dnn_hidden is None else dnn_hidden), dropout=cfg.dropout)
        self.out_dim = in_dim + self.dnn.out_dim

    def forward(self, emb: Tensor) -> Tensor:
        x0 = emb.flatten(1)
        return torch.cat([self.cross(x0), self.dnn(x0)], dim=-1)
