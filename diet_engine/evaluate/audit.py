"""The audit of one dataset version: does it still rank models like full history?

For each model of a candidate pool, two cells are trained by the benchmark's own cell code
(`bench.train_cell`, the shared candidate protocol): `full` on every historical block the version
has seen, then the subsequent block, from scratch (the bench's `full`); `version` from the
version's reference embedding tables and distilled rows, fine-tuned on the subsequent block (the
bench's reduced-data cells). Both are tested on the same test block, and the version is scored
with the bench's statistics (diet_engine.evaluate.fidelity): Kendall τ-b of its model ranking
against full data's, top-1 regret and the mean test AUC over the pool.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from diet_engine.config import CandidateConfig
from diet_engine.data.blocks import TensorBlock
from diet_engine.dataset.loader import load_dataset
from diet_engine.evaluate.bench import train_cell
from diet_engine.evaluate.fidelity import kendall_tau_b, top1_regret
from diet_engine.models import MODELS

# Named candidate pools; `p5` is the paper's five architectures.
POOLS: dict[str, list[str]] = {"p5": list(MODELS)}
FULL, VERSION = "full", "version"


class AuditConfig(BaseModel):
    """Which candidates, trained how. `candidate` holds CandidateConfig fields over the version's own
    (its reference architecture, so the inherited tables fit, and its distillation temperature)."""

    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(default_factory=lambda: list(POOLS["p5"]), min_length=2)
    candidate: dict[str, Any] = Field(default_factory=dict)
    repeats: int = Field(default=1, ge=1, le=10, description="candidates per cell (seeds seed, seed+1000, …)")
    seed: int = Field(default=0, ge=0)

    @field_validator("models")
    @classmethod
    def _known(cls, models: list[str]) -> list[str]:
        unknown = sorted(set(models) - set(MODELS))
        if unknown:
            raise ValueError(f"unknown models {unknown}; valid names: {', '.join(sorted(MODELS))}")
        if len(set(models)) != len(models):
            raise ValueError("each model may appear once")
        return models


def pool_models(pool: str) -> list[str]:
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; valid pools: {', '.join(sorted(POOLS))}")
    return list(POOLS[pool])


def audit_version(
    version_dir: str | Path,
    history: list[str | Path],
    subsequent: str | Path,
    valid: str | Path,
    test: str | Path,
    cfg: AuditConfig,
    *,
    device: str = "cpu",
    on_cell: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Train and score the pool on a pulled version and the stream's blocks (Parquet paths); see the module.

    `history` are the blocks the version has seen. Blocks are loaded whole, as the bench loads them, so
    a candidate sees the same batches in an audit as in `diet bench`.
    Returns {"models", "auc": {"full"|"version": {model: test AUC}}, "kendall_tau", "top1_regret",
    "mean_auc": {"full"|"version": …}, "cells", "seconds"}.
    """
    ds = load_dataset(version_dir)
    schema = ds.schema
    candidate = CandidateConfig.model_validate(
        {"arch": ds.reference.arch.model_dump(), "temperature": ds.temperature, **cfg.candidate}
    )
    history_blocks = [TensorBlock.load(p, schema) for p in history]
    sub = TensorBlock.load(subsequent, schema)
    valid_block, test_block = TensorBlock.load(valid, schema), TensorBlock.load(test, schema)
    history_rows = sum(len(b) for b in history_blocks)
    started = time.perf_counter()
    cells: dict[str, dict[str, dict[str, Any]]] = {FULL: {}, VERSION: {}}
    total, done = 2 * len(cfg.models), 0
    for model in cfg.models:
        cells[FULL][model] = train_cell(
            model, schema, [*history_blocks, sub], valid_block, test_block, candidate, cfg.repeats, cfg.seed, history_rows
        )
        done += 1
        if on_cell:
            on_cell(f"{FULL}/{model}", done, total)
        cells[VERSION][model] = train_cell(
            model, schema, [sub], valid_block, test_block, candidate, cfg.repeats, cfg.seed, len(ds),
            embeddings=ds.embeddings, distilled=ds.synthetic, probe=test_block,
        )  # fmt: skip
        done += 1
        if on_cell:
            on_cell(f"{VERSION}/{model}", done, total)
    return {**scores({m: {k: c["auc"] for k, c in cells[m].items()} for m in cells}, cfg.models),
            "cells": cells, "seconds": time.perf_counter() - started}  # fmt: skip


def scores(auc: dict[str, dict[str, float]], models: list[str]) -> dict[str, Any]:
    """The bench's statistics (evaluate/fidelity.py) of the version's cells against full data's (τ None where a
    ranking is constant)."""
    full, version = (np.array([auc[m][k] for k in models]) for m in (FULL, VERSION))
    tau = float(kendall_tau_b(full[None], version[None])[0])
    return {
        "models": list(models),
        "auc": auc,
        "kendall_tau": tau if math.isfinite(tau) else None,
        "top1_regret": top1_regret(version, full),
        "mean_auc": {m: statistics.fmean(auc[m][k] for k in models) for m in (FULL, VERSION)},
    }
