"""One DIET stage, end to end (DESIGN.md §4).

    reference update  -> boundary initialisation -> memory fusion -> bi-level optimisation

`distill_in_memory` works on models and tensors (the benchmark shares
reference checkpoints between methods); `distill_stage` is the same stage
from files to files, as the service's worker runs it.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from diet_engine.dataset.artifacts import (
    OPTIMIZER,
    REFERENCE,
    SYNTHETIC,
    load_reference,
    load_synthetic,
    save_optimizer,
    save_reference,
    save_synthetic,
)
from diet_engine.distill.bilevel import optimise_memory
from diet_engine.distill.boundary import boundary_select
from diet_engine.distill.checkpoint import StageCheckpoint, fingerprint
from diet_engine.config import DistillConfig, ReferenceConfig
from diet_engine.data.blocks import TensorBlock, same_device
from diet_engine.distill.influence import Influence
from diet_engine.distill.memory import fuse, fusion_weights, reanchor
from diet_engine.models.base import CTRModel
from diet_engine.train.reference import continue_reference, new_reference
from diet_engine.data.schema import StreamSchema
from diet_engine.data.synthetic import SyntheticSet
from diet_engine.distill.kmeans import kmeans_rows
from diet_engine.train.loops import EVAL_BATCH, copy_to, el2n_scores, embed_rows, lookup_rows, predict_logits

STAGE_JSON = "stage.json"


class StageProgress(BaseModel):
    phase: str
    step: int
    total: int
    losses: dict[str, float] = Field(default_factory=dict)


ProgressFn = Callable[[StageProgress], None]


class StageResult(BaseModel):
    stage: int
    rows: int
    new_rows: int
    kept_rows: int
    history_rows: int
    ratio: float
    files: dict[str, str]
    metrics: dict


def memory_budget(history_rows: int, previous_rows: int, cfg: DistillConfig) -> tuple[int, int]:
    """(new rows from this block, rows kept from the previous set); together ratio × history."""
    cap = max(1, round(cfg.ratio * history_rows))
    kept = min(previous_rows, int(cfg.memory_keep * previous_rows), cap) if cfg.memory_fusion else 0
    return cap - kept, kept


def boundary_memory(
    reference: CTRModel, block: TensorBlock, stage: int, budget: int, cfg: DistillConfig, device: str = "cpu"
) -> tuple[SyntheticSet, Tensor]:
    """Boundary initialisation (Alg. 1): the chosen rows as (φ_t(x), f_t(x) logits) and their indices.

    With `init="el2n"` every row is scored from its logits alone, kept where they were computed;
    only the chosen rows are embedded (a [N, F, D] copy of the whole block
    would be the largest tensor of the stage). `init="kmeans"` clusters that copy.
    """
    if cfg.init == "kmeans":
        every = embed_rows(reference, block, device, out_device=None)
        chosen = kmeans_rows(every.emb, budget, cfg.seed * 7919 + stage).cpu()
        new = every.take(chosen.to(every.emb.device))
        new.stage[:] = stage
        return new, chosen
    logits = predict_logits(reference, block, device, max(EVAL_BATCH, cfg.score_batch), out_device=None)
    scores = el2n_scores(logits, block.labels.to(logits.device))
    # selected where the scores are (a GPU sorts 2.5 M scores in a millisecond); indices come back to the host
    chosen = boundary_select(scores, block.labels.to(scores.device), budget, cfg.el2n_percentile).cpu()
    rows = block.take(chosen)
    emb = lookup_rows(reference, rows, device)
    stages = torch.full((len(chosen),), stage, dtype=torch.long, device=emb.device)
    # each row keeps its real feature values: the anchor a later stage re-embeds it by (memory.reanchor)
    new = SyntheticSet(emb, logits[chosen.to(logits.device)], stages, rows.cat.to(emb.device), rows.num.to(emb.device))
    return new, chosen


def target_pool(reference: CTRModel, block: TensorBlock, stage: int, cfg: DistillConfig, device: str = "cpu") -> tuple[Tensor, Tensor]:
    """A random pool of the block's real rows for addressing and the outer loss: (φ_t embeddings, labels)."""
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + stage)
    pool = torch.randperm(len(block), generator=gen)[: cfg.target_pool_rows]
    rows = block.take(pool)
    return lookup_rows(reference, rows, device), rows.labels.to(device)


def module_on(module: nn.Module, device: str) -> nn.Module:
    """`module` itself when its weights are on `device`, else a copy there (shared checkpoints stay put)."""
    first = next(module.parameters(), None)
    if first is None or same_device(first.device, device):
        return module
    return copy_to(module, device)


def distill_in_memory(
    block: TensorBlock,
    stage: int,
    reference_prev: CTRModel,
    reference: CTRModel,
    previous: SyntheticSet | None,
    history_rows: int,
    cfg: DistillConfig,
    progress: ProgressFn | None = None,
    device: str = "cpu",
    checkpoint: StageCheckpoint | None = None,
) -> tuple[SyntheticSet, dict]:
    """S_t from S_{t-1}, block t and checkpoints t-1 and t. Returns S_t (on `device`) and the stage's metrics.

    `checkpoint` (bound to this stage's inputs) saves and resumes the bi-level loop.
    """
    timings: dict[str, float] = {}
    report = progress or (lambda p: None)
    previous = previous if previous is not None and len(previous) else None
    n_new, n_keep = memory_budget(history_rows, len(previous) if previous else 0, cfg)
    reference = module_on(reference, device)

    # 1. boundary initialisation at checkpoint t: the label-conditioned EL2N window (or k-means rows, `init`)
    t0 = time.perf_counter()
    report(StageProgress(phase="boundary", step=0, total=1))
    new, chosen = boundary_memory(reference, block, stage, n_new, cfg, device)
    timings["boundary_s"] = time.perf_counter() - t0

    # 2. memory fusion: keep the previous rows best aligned with the new boundary
    t0 = time.perf_counter()
    if previous is not None and n_keep:
        report(StageProgress(phase="fusion", step=0, total=1))
        previous = previous.to(device)
        if cfg.reanchor:
            previous = reanchor(previous, module_on(reference_prev, device), reference)
        influence = Influence(reference.dense.eval(), cfg.influence_params, cfg.score_batch)
        weights = fusion_weights(influence, previous, new.emb, block.labels[chosen].to(device), cfg.temperature)
        syn = fuse(previous, weights, n_keep, new)
    else:
        syn = new
    timings["fusion_s"] = time.perf_counter() - t0

    # 3. bi-level optimisation against a pool of the block's real rows (embedded with φ_t)
    t0 = time.perf_counter()
    pool_emb, pool_labels = target_pool(reference, block, stage, cfg, device)

    def on_iter(i: int, loss: float) -> None:
        report(StageProgress(phase="optimise", step=i + 1, total=cfg.outer_iters, losses={"outer": loss}))

    dense_prev = module_on(reference_prev.dense, device)
    syn, log = optimise_memory(syn, dense_prev, pool_emb, pool_labels, cfg, on_iter, checkpoint)
    timings["optimise_s"] = time.perf_counter() - t0

    metrics = {
        "timings": timings,
        "new_rows": len(new),
        "kept_rows": len(syn) - len(new),
        "active_rows": log.active_rows,
        "hard_rows": log.hard_rows,
        "skipped_steps": log.skipped_steps,
        "outer_loss": log.outer_loss,
        "hard_loss_start": log.hard_loss_start,
    }
    return syn, metrics


def distill_stage(
    schema: StreamSchema,
    block_path: Path,
    stage: int,
    out_dir: Path,
    *,
    previous: Path | None,
    reference: ReferenceConfig,
    config: DistillConfig,
    progress: ProgressFn | None = None,
    device: str = "cpu",
    checkpoint: StageCheckpoint | None = None,
) -> StageResult:
    """Stage t from files: block t's Parquet and the stage t-1 version's artifacts (None at t = 1).

    `previous` holds synthetic.parquet, reference.safetensors and, unless the version predates it,
    optimizer.safetensors; `out_dir` gets the same three for stage t (and stage.json).

    With `checkpoint`, the reference phase and the bi-level loop save their progress there, and a
    stage run again with the same inputs resumes from it (to the same bytes as an undisturbed run).
    """
    if stage < 1:
        raise ValueError("stages count from 1")
    if (previous is None) != (stage == 1):
        raise ValueError(f"stage {stage} needs {'no' if stage == 1 else 'the previous'} dataset version")
    report = progress or (lambda p: None)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # The global RNG (dropout) starts from the stage's seed, so the result does not depend on what
    # the process ran before: a retry on another worker computes the same stage.
    torch.manual_seed(reference.seed * 1000 + stage)
    previous_optimizer = previous / OPTIMIZER if previous is not None and (previous / OPTIMIZER).exists() else None
    if checkpoint is not None:
        inputs = [block_path] + ([previous / REFERENCE, previous / SYNTHETIC] if previous is not None else [])
        inputs += [previous_optimizer] if previous_optimizer is not None else []
        settings = {
            "stage": stage,
            "schema": schema.model_dump(mode="json"),
            "reference": reference.model_dump(mode="json"),
            "distill": config.model_dump(mode="json"),
        }
        checkpoint.bind(fingerprint(inputs, device=device, **settings), device)

    history = None
    if previous is None:
        ref_prev, seen = new_reference(schema, reference), 0
    else:
        ref_prev, info = load_reference(previous / REFERENCE, previous_optimizer)
        if info.stage != stage - 1:
            raise ValueError(f"previous version is stage {info.stage}, expected {stage - 1}")
        seen = info.history_rows
        history, _ = load_synthetic(previous / SYNTHETIC)

    block = TensorBlock.load(block_path, schema)
    t0 = time.perf_counter()
    total_steps = -(-len(block) // reference.train.batch_size)

    def on_step(step: int, loss: float) -> None:
        # every step: the callback is where a cancelled job stops, and callers throttle their writes
        report(StageProgress(phase="reference", step=step + 1, total=total_steps, losses={"reference": loss}))

    ref = checkpoint.load_reference(copy.deepcopy(ref_prev)) if checkpoint is not None else None
    if ref is not None:
        ref = ref.to(device).eval()  # checkpoint t, saved by an earlier attempt at this stage
    else:
        ref = continue_reference(ref_prev, block, reference, stage, device, on_step)
        if checkpoint is not None:
            checkpoint.save_reference(ref)
    reference_s = time.perf_counter() - t0

    history_rows = seen + len(block)
    syn, metrics = distill_in_memory(block, stage, ref_prev, ref, history, history_rows, config, report, device, checkpoint)
    metrics["timings"] = {"reference_s": reference_s, **metrics["timings"], "total_s": time.perf_counter() - started}
    if checkpoint is not None and checkpoint.resumed:
        metrics["resumed"] = dict(checkpoint.resumed)  # what an earlier attempt had done: {"reference", "loop"}

    save_synthetic(out_dir / SYNTHETIC, syn, schema.labels)
    save_reference(out_dir / REFERENCE, ref, reference.arch, stage, history_rows)
    save_optimizer(out_dir / OPTIMIZER, ref, stage)
    result = StageResult(
        stage=stage,
        rows=len(syn),
        new_rows=metrics["new_rows"],
        kept_rows=metrics["kept_rows"],
        history_rows=history_rows,
        ratio=len(syn) / history_rows,
        files={SYNTHETIC: SYNTHETIC, REFERENCE: REFERENCE, OPTIMIZER: OPTIMIZER, STAGE_JSON: STAGE_JSON},
        metrics=metrics,
    )
    (out_dir / STAGE_JSON).write_text(json.dumps(result.model_dump(), indent=2))
    report(StageProgress(phase="done", step=1, total=1))
    return result
