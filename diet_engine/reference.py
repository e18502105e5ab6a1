"""Continual reference training (paper eq. 3): one epoch per block, parameters inherited."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from diet_engine.config import ReferenceConfig
from diet_engine.data import Block
from diet_engine.models import build_model
from diet_engine.models.base import CTRModel
from diet_engine.schema import StreamSchema
from diet_engine.training import generator, make_optimizer, train_real_epoch


def new_reference(schema: StreamSchema, cfg: ReferenceConfig) -> CTRModel:
    """The stage-0 reference: random, from the configured seed."""
    torch.manual_seed(cfg.seed)
    return build_model(cfg.model, schema, cfg.arch)


def continue_reference(
    previous: CTRModel,
    block: Block,
    cfg: ReferenceConfig,
    stage: int,
    device: str = "cpu",
    on_step: Callable[[int, float], None] | None = None,
) -> CTRModel:
    """Checkpoint t from checkpoint t-1: a copy trained one epoch on block t.

    Adam starts afresh each stage: a checkpoint holds weights only, so every
    stage can run on another worker from the stored artifact alone.
    """
    model = copy.deepcopy(previous).to(device)
    opt = make_optimizer(model, cfg.train)
    train_real_epoch(
        model, block, opt, cfg.train.batch_size, generator(cfg.seed * 1000 + stage), device, on_step, cfg.train.precision
    )
    return model.eval()
