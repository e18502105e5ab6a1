"""The shape every model of the zoo shares.

A model is `embedding` (the sparse part: one table row per hashed feature
value, plus one vector per numeric field) followed by `dense` (an interaction
backbone and an MMoE multi-task head) that maps field embeddings
[B, F, D] to logits [B, T]. Distilled data are embeddings, so `dense` must run
on its own: `model.dense(emb)` — also inside `torch.func.functional_call`.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from diet_engine.data.schema import StreamSchema

# Upper bounds of the architecture's sizes (diet_engine.config's docstring says why there are any).
MAX_EMBEDDING_DIM = 1024
MAX_LAYER_WIDTH = 16_384
MAX_LAYERS = 16
MAX_EXPERTS = 64
LayerWidth = Annotated[int, Field(ge=1, le=MAX_LAYER_WIDTH)]


class ModelConfig(BaseModel):
    """Sizes shared by the zoo; architecture-specific knobs have defaults in each model."""

    model_config = ConfigDict(extra="forbid")

    embedding_dim: int = Field(default=32, ge=1, le=MAX_EMBEDDING_DIM)
    hidden: list[LayerWidth] = Field(default_factory=lambda: [256, 128], max_length=MAX_LAYERS)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    n_experts: int = Field(default=4, ge=1, le=MAX_EXPERTS)
    expert_dim: LayerWidth = 64
    tower_hidden: list[LayerWidth] = Field(default_factory=lambda: [32], max_length=MAX_LAYERS)


class FieldEmbedding(nn.Module):
    """All categorical fields in one table (per-field offsets) plus numeric vectors."""

    def __init__(self, schema: StreamSchema, dim: int) -> None:
        super().__init__()
        sizes = [f.buckets for f in schema.fields]
        offsets = torch.tensor([0, *sizes[:-1]], dtype=torch.long).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        # sparse gradients: a step touches only the rows its batch looked up (lazy Adam in training.py)
        self.table = nn.Embedding(sum(sizes), dim, sparse=True)
        self.numeric = nn.Parameter(torch.empty(len(schema.numeric), dim))
        self.dim = dim
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.table.weight, std=1e-2)
        nn.init.normal_(self.numeric, std=1e-2)

    def forward(self, cat: Tensor, num: Tensor | None = None) -> Tensor:
        """cat: [B, Fc] int64 buckets; num: [B, Fn] float -> [B, Fc + Fn, D]."""
        emb = self.table(cat + self.offsets)
        if self.numeric.shape[0]:
            emb = torch.cat([emb, num.unsqueeze(-1) * self.numeric], dim=1)
        return emb


class MLP(nn.Sequential):
    """Linear-ReLU(-Dropout) stack; `out_dim` None leaves the last hidden layer as output."""

    def __init__(self, in_dim: int, hidden: list[int], out_dim: int | None = None, dropout: float = 0.0) -> None:
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(in_dim, h), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            in_dim = h
        if out_dim is not None:
            layers.append(nn.Linear(in_dim, out_dim))
            in_dim = out_dim
        super().__init__(*layers)
        self.out_dim = in_dim


class MMoEHead(nn.Module):
    """Multi-gate mixture of experts (Ma et al., 2018): shared experts, one gate and tower per task."""

    def __init__(self, in_dim: int, num_tasks: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.experts = nn.ModuleList(
            MLP(in_dim, [cfg.expert_dim], dropout=cfg.dropout) for _ in range(cfg.n_experts)
        )
        self.gates = nn.ModuleList(nn.Linear(in_dim, cfg.n_experts) for _ in range(num_tasks))
        self.towers = nn.ModuleList(MLP(cfg.expert_dim, cfg.tower_hidden, 1) for _ in range(num_tasks))

    def forward(self, h: Tensor) -> Tensor:
        experts = torch.stack([e(h) for e in self.experts], dim=1)  # [B, E, H]
        logits = []
        for gate, tower in zip(self.gates, self.towers):
            w = torch.softmax(gate(h), dim=-1).unsqueeze(-1)  # [B, E, 1]
            logits.append(tower((w * experts).sum(dim=1)))
        return torch.cat(logits, dim=-1)  # [B, T]


class Backbone(nn.Module):
    """Feature-interaction network: [B, F, D] -> [B, out_dim]."""

    out_dim: int


class DenseNet(nn.Module):
    """Everything after the embedding layer: backbone then MMoE head."""

    def __init__(self, backbone: Backbone, num_tasks: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = MMoEHead(backbone.out_dim, num_tasks, cfg)

    def forward(self, emb: Tensor) -> Tensor:
        return self.head(self.backbone(emb))


class CTRModel(nn.Module):
    def __init__(self, name: str, schema: StreamSchema, embedding: FieldEmbedding, dense: DenseNet) -> None:
        super().__init__()
        self.name = name
        self.schema = schema
        self.embedding = embedding
        self.dense = dense
        # the optimiser's moments at the end of the last training stage (training.optimizer_tensors),
        # saved beside the weights so that the next stage continues Adam rather than restarting it
        self.optimizer_state: dict[str, Tensor] = {}

    def forward(self, cat: Tensor, num: Tensor | None = None) -> Tensor:
        return self.dense(self.embedding(cat, num))

    def embedding_parameters(self) -> list[nn.Parameter]:
        return list(self.embedding.parameters())

    def dense_parameters(self) -> list[nn.Parameter]:
        return list(self.dense.parameters())


def flat_dim(schema: StreamSchema, cfg: ModelConfig) -> int:
    return schema.num_fields * cfg.embedding_dim


def xavier_(module: nn.Module) -> None:
    """Glorot init for every Linear (FuxiCTR's default), zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def pairs(n: int) -> tuple[Tensor, Tensor]:
    """Index pairs (i < j) of n fields, for pairwise interactions."""
    i, j = torch.triu_indices(n, n, offset=1)
    return i, j


def glorot_bound(fan_in: int, fan_out: int) -> float:
    return math.sqrt(6.0 / (fan_in + fan_out))
