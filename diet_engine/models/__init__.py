"""The CTR model zoo: an interaction backbone per paper, all behind the same `CTRModel`."""

from __future__ import annotations

from typing import Any

from diet_engine.models.base import Backbone, CTRModel, DenseNet, FieldEmbedding, ModelConfig, xavier_
from diet_engine.models.dcn import DCN
from diet_engine.models.dcnv2 import DCNv2
from diet_engine.models.finalmlp import FinalMLP
from diet_engine.models.finalnet import FinalNet
from diet_engine.models.wukong import Wukong
from diet_engine.data.schema import StreamSchema

MODELS: dict[str, type[Backbone]] = {
    "dcn": DCN,
    "dcnv2": DCNv2,
    "finalmlp": FinalMLP,
    "finalnet": FinalNet,
    "wukong": Wukong,
}


def build_model(name: str, schema: StreamSchema, cfg: ModelConfig | None = None, **arch_kwargs: Any) -> CTRModel:
    """Embedding + backbone `name` + MMoE head; `arch_kwargs` go to the backbone."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}")
    cfg = cfg or ModelConfig()
    embedding = FieldEmbedding(schema, cfg.embedding_dim)
    backbone = MODELS[name](schema.num_fields, cfg.embedding_dim, cfg, **arch_kwargs)
    dense = DenseNet(backbone, schema.num_tasks, cfg)
    xavier_(dense)
    return CTRModel(name, schema, embedding, dense)


__all__ = ["CTRModel", "ModelConfig", "FieldEmbedding", "DenseNet", "MODELS", "build_model"]
