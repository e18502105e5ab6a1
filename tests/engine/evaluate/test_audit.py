"""The audit of a version trains the bench's cells and scores them with the bench's statistics."""

from __future__ import annotations

import numpy as np
import pytest

from diet_engine.config import CandidateConfig, DistillConfig, ReferenceConfig
from diet_engine.distill.stage import distill_stage
from diet_engine.evaluate.audit import AuditConfig, audit_version, pool_models, scores
from diet_engine.evaluate.bench import train_cell
from diet_engine.evaluate.fidelity import kendall_tau_b, top1_regret
from diet_engine.data.blocks import TensorBlock
from diet_engine.dataset.loader import load_dataset
from diet_engine.models import ModelConfig

ARCH = ModelConfig(embedding_dim=8, hidden=[16], n_experts=2, expert_dim=8, tower_hidden=[8])


def test_scores_are_the_bench_statistics():
    auc = {"full": {"a": 0.8, "b": 0.7, "c": 0.6}, "version": {"a": 0.7, "b": 0.75, "c": 0.5}}
    got = scores(auc, ["a", "b", "c"])
    full, version = np.array([0.8, 0.7, 0.6]), np.array([0.7, 0.75, 0.5])
    assert got["kendall_tau"] == kendall_tau_b(full[None], version[None])[0] == pytest.approx(1 / 3)
    assert got["top1_regret"] == top1_regret(version, full) == pytest.approx(0.1)
    assert got["mean_auc"] == pytest.approx({"full": 0.7, "version": 0.65})
    flat = scores({"full": {"a": 0.5, "b": 0.5}, "version": {"a": 0.6, "b": 0.7}}, ["a", "b"])
    assert flat["kendall_tau"] is None  # a constant ranking has no τ (and JSON has no NaN)


def test_unknown_pools_and_models_are_refused():
    assert pool_models("p5") == ["dcn", "dcnv2", "finalmlp", "finalnet", "wukong"]
    with pytest.raises(ValueError, match="unknown pool"):
        pool_models("p99")
    with pytest.raises(ValueError, match="unknown models"):
        AuditConfig(models=["dcn", "magic"])


def test_audit_of_a_version_equals_the_bench_cells(tiny_stream, tmp_path):
    schema, root = tiny_stream
    cfg = DistillConfig(ratio=0.05, outer_iters=2, inner_steps=2, window=2, inner_batch=8, target_pool_rows=200)
    distill_stage(schema, root / "h1.parquet", 1, tmp_path / "v1", previous=None,
                  reference=ReferenceConfig(arch=ARCH), config=cfg)  # fmt: skip
    audit = AuditConfig(models=["dcn", "finalnet", "dcnv2"], candidate={"distilled_epochs": 1})
    seen = []
    got = audit_version(tmp_path / "v1", [root / "h1.parquet"], root / "h2.parquet", root / "valid.parquet",
                        root / "test.parquet", audit, on_cell=lambda *a: seen.append(a))  # fmt: skip
    assert [s[0] for s in seen][:2] == ["full/dcn", "version/dcn"] and seen[-1][1:] == (6, 6)
    assert got == {**scores(got["auc"], audit.models), "cells": got["cells"], "seconds": got["seconds"]}

    # the same cells by hand through the bench's code give the same AUCs
    ds = load_dataset(tmp_path / "v1")
    candidate = CandidateConfig(arch=ARCH, temperature=ds.temperature, distilled_epochs=1)
    load = lambda name: TensorBlock.load(root / f"{name}.parquet", schema)  # noqa: E731
    valid, test, sub = load("valid"), load("test"), load("h2")
    full = train_cell("finalnet", schema, [load("h1"), sub], valid, test, candidate, 1, 0, 600)
    version = train_cell("finalnet", schema, [sub], valid, test, candidate, 1, 0, len(ds),
                         embeddings=ds.embeddings, distilled=ds.synthetic, probe=test)  # fmt: skip
    assert got["auc"]["full"]["finalnet"] == full["auc"]
    assert got["auc"]["version"]["finalnet"] == version["auc"]
