"""Candidate training: how a new architecture consumes history (paper §4.2.2).

With a distilled (or selected) set, the candidate inherits the reference
embedding tables, trains its dense part on the set's embeddings with soft
labels for up to `distilled_epochs` epochs at each of a few learning rates,
keeping the best (rate, epoch) on validation, then fine-tunes the whole model
for one epoch on each block of `finetune` (the subsequent block), at each rate of `finetune_lrs`
and, for inherited tables, each table rate of `finetune_embedding_lrs`, keeping the pair best on
validation. Without a set it is one of the data baselines: full history, cold start, or warm-up
start (which inherits the tables too, and so the same fine-tune rule).
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from diet_engine.config import CandidateConfig, TrainConfig
from diet_engine.data.blocks import Block, TensorBlock
from diet_engine.models import build_model
from diet_engine.models.base import CTRModel
from diet_engine.data.schema import StreamSchema
from diet_engine.data.synthetic import SyntheticSet
from diet_engine.train.metrics import mean_auc_torch, task_metrics
from diet_engine.train.loops import (
    anchor_offsets, generator, make_optimizer, predict_logits, train_anchored_epoch, train_real_epoch, train_soft_epoch,
)


@dataclass
class CandidateRun:
    model: CTRModel
    valid_auc: list[float] = field(default_factory=list)  # after each distilled epoch at the chosen rate
    best_epoch: int | None = None
    best_lr: float | None = None
    distilled_epochs_run: int = 0  # over every rate tried
    set_only_auc: float | None = None  # on `probe`, after the distilled phase and before the fine-tune
    finetune_lr: float | None = None  # the fine-tune's rate (the best on validation when several were tried)
    finetune_embedding_lr: float | None = None  # and its rate for the embedding tables


def train_candidate(
    model: str | CTRModel,
    schema: StreamSchema,
    *,
    finetune: list[Block],
    valid: TensorBlock,
    cfg: CandidateConfig,
    seed: int,
    embeddings: dict[str, torch.Tensor] | None = None,
    distilled: SyntheticSet | None = None,
    device: str = "cpu",
    probe: TensorBlock | None = None,
    backbone: dict[str, Any] | None = None,
) -> CandidateRun:
    """A candidate trained by the protocol above; with `probe`, it is also scored there between the two
    phases (`set_only_auc`: what the distilled set alone taught it). A model named by `model` is built from
    `cfg.arch` with `backbone` as its backbone's keyword arguments (a pool's sizes, evaluate/pool.py)."""
    if isinstance(model, str):
        torch.manual_seed(seed)
        # on a GPU the weights are drawn there: initialising a 3 M-row table on the host took seconds
        with torch.device(device) if torch.device(device).type != "cpu" else nullcontext():
            model = build_model(model, schema, cfg.arch, **(backbone or {}))
    model = model.to(device)
    if embeddings is not None:
        model.embedding.load_state_dict(embeddings)
    run = CandidateRun(model)
    gen = generator(seed)
    if distilled is not None and len(distilled):
        _fit_on_distilled(run, distilled, valid, cfg, gen, device)
        if probe is not None:
            run.set_only_auc = _valid_auc(model, probe, device)
    trials = finetune_trials(cfg, inherited=embeddings is not None)
    if len(trials) == 1:
        _finetune(model, finetune, trials[0], gen, device)
    else:
        # each trial from the same weights and the same batches; the best on validation is kept
        start, draws, best = copy.deepcopy(model.state_dict()), gen.get_state(), (-1.0, trials[0], None)
        for train in trials:
            model.load_state_dict(start)
            gen.set_state(draws)
            _finetune(model, finetune, train, gen, device)
            auc = _valid_auc(model, valid, device)
            if auc > best[0]:  # a diverged (NaN) trial is never the best
                best = (auc, train, copy.deepcopy(model.state_dict()))
        if best[2] is not None:
            model.load_state_dict(best[2])
        trials = [best[1]]
    run.finetune_lr, run.finetune_embedding_lr = trials[0].lr, trials[0].embedding_lr or trials[0].lr
    return run


def finetune_trials(cfg: CandidateConfig, inherited: bool) -> list[TrainConfig]:
    """The fine-tune settings a candidate that inherited the reference's tables tries: each rate of
    `finetune_lrs` with each table rate of `finetune_embedding_lrs`. A candidate that builds its own
    tables (full data, cold start) trains once, at `train.lr`, as the reference does."""
    if not inherited:
        return [cfg.train]
    lrs = cfg.finetune_lrs or [cfg.train.lr]
    table_lrs: list[float | None] = list(cfg.finetune_embedding_lrs or [])
    return [cfg.train.model_copy(update={"lr": lr, **({"embedding_lr": e} if e is not None else {})})
            for lr in lrs for e in (table_lrs or [cfg.train.embedding_lr])]


def _finetune(model: CTRModel, blocks: list[Block], train: TrainConfig, gen: torch.Generator, device: str) -> None:
    """The whole model, one epoch on each block in order, with a fresh Adam."""
    opt = make_optimizer(model, train)
    for block in blocks:
        train_real_epoch(model, block, opt, train.batch_size, gen, device)


def _fit_on_distilled(
    run: CandidateRun, syn: SyntheticSet, valid: TensorBlock, cfg: CandidateConfig, gen: torch.Generator, device: str
) -> None:
    """The dense part (and with `set_embeddings="tuned"` the tables) on the set for each rate in
    `cfg.distilled_lrs`; keeps the best (rate, epoch) on validation."""
    model = run.model
    tuned = cfg.set_embeddings == "tuned" and syn.anchored
    part = model if tuned else model.dense  # what the phase trains, restored between rates
    offsets = anchor_offsets(model, syn, device) if tuned else None
    initial = copy.deepcopy(part.state_dict())
    draws = gen.get_state()  # every rate sees the same batches
    best_auc, best_state = -1.0, None
    for lr in cfg.distilled_lrs:
        part.load_state_dict(initial)
        gen.set_state(draws)
        opt = make_optimizer(model, TrainConfig(lr=lr), dense_only=not tuned)
        curve = []
        for epoch in range(cfg.distilled_epochs):
            if tuned:
                train_anchored_epoch(model, syn, offsets, opt, cfg.distilled_batch, gen, cfg.temperature, device)
            else:
                train_soft_epoch(model, syn, opt, cfg.distilled_batch, gen, cfg.temperature, device)
            auc = _valid_auc(model, valid, device)
            curve.append(auc)
            run.distilled_epochs_run += 1
            if auc > best_auc:  # a diverged (NaN) epoch is never the best
                best_auc, best_state = auc, copy.deepcopy(part.state_dict())
                run.best_epoch, run.best_lr = epoch, lr
        if run.best_lr == lr:
            run.valid_auc = curve
    part.load_state_dict(best_state if best_state is not None else initial)


def _valid_auc(model: CTRModel, valid: TensorBlock, device: str) -> float:
    if torch.device(device).type != "cpu":  # scored where the logits are: no host copy per epoch
        logits = predict_logits(model, valid, device, batch_size=65_536, out_device=None)
        if not torch.isfinite(logits).all():
            return float("nan")
        return mean_auc_torch(valid.labels.to(logits.device), logits)
    logits = predict_logits(model, valid, device)
    if not torch.isfinite(logits).all():
        return float("nan")
    return task_metrics(valid.labels.numpy(), torch.sigmoid(logits).numpy(), model.schema.labels).mean_auc
