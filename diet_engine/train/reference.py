"""Continual reference training (paper eq. 3): one epoch per block, parameters inherited."""

from __future__ import annotations

from collections.abc import Callable

import torch

from diet_engine.config import ReferenceConfig
from diet_engine.data.blocks import Block
from diet_engine.models import build_model
from diet_engine.models.base import CTRModel
from diet_engine.data.schema import StreamSchema
from diet_engine.train.loops import copy_to, generator, load_optimizer_tensors, make_optimizer, optimizer_tensors, train_real_epoch


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

    Adam continues from the moments checkpoint t-1 carries (`optimizer_state`,
    stored in its artifact), so a stage can run on another worker from the
    stored artifact alone and still train as one uninterrupted run would.
    """
    model = copy_to(previous, device)  # the saved moments stay behind: loaded into the optimiser below
    opt = make_optimizer(model, cfg.train)
    if cfg.keep_optimizer and previous.optimizer_state:
        # a copy: the checkpoint's own moments must not move when a second model continues from it
        load_optimizer_tensors(opt, {k: v.to(device, copy=True) for k, v in previous.optimizer_state.items()})
    train_real_epoch(
        model, block, opt, cfg.train.batch_size, generator(cfg.seed * 1000 + stage), device, on_step, cfg.train.precision
    )
    model.optimizer_state = optimizer_tensors(opt) if cfg.keep_optimizer else {}
    return model.eval()
