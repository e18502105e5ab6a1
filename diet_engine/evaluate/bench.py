"""The paper's evaluation (§5.1-5.2) on one converted stream: methods × a pool of candidate models.

Per seed: the reference model is trained continually over the historical
blocks (one checkpoint per stage); every reduced-data method builds its
history set from those checkpoints; every (method, candidate) cell trains a
candidate by the shared protocol and is tested. Results are means over seeds
with the per-seed values kept.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import resource
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field

from diet_engine.dataset.artifacts import load_reference, save_reference
from diet_engine.train.candidate import train_candidate
from diet_engine.config import CandidateConfig, DistillConfig, ReferenceConfig
from diet_engine.data.convert.ml_100k import ML100K_SCHEMA, convert_ml100k, is_ml100k_dir
from diet_engine.data.convert.ml_1m import ML1M_SCHEMA, convert_ml1m, is_ml1m_dir
from diet_engine.data.convert.splits import load_split_dir
from diet_engine.data.blocks import Block, TensorBlock
from diet_engine.distill.stage import distill_in_memory, module_on
from diet_engine.models import MODELS
from diet_engine.models.base import CTRModel
from diet_engine.train.reference import continue_reference, new_reference
from diet_engine.evaluate.fidelity import fidelity
from diet_engine.evaluate.pool import Candidate, Pool, candidate_pool
from diet_engine.evaluate.pool import candidate as pool_candidate  # not to shadow run_cell's argument
from diet_engine.evaluate.report import bench_report, render
from diet_engine.data.schema import StreamSchema
from diet_engine.evaluate.selection import SELECTION_METHODS, selected_rows
from diet_engine.data.synthetic import SyntheticSet
from diet_engine.train.loops import copy_to, evaluate

DATA_METHODS = ("full", "cold", "warmup")
SCRATCH_METHODS = ("full", "cold")  # the methods whose candidates inherit nothing from the reference
# the paper's Table 4 around this engine's defaults (memory fusion on, target and memory selection off,
# small outer rates): each component switched the other way, all three off, the paper's own settings, and two
# of the issue's leads (the k-means init, the pool of fresh proxies of every architecture)
PAPER_RATES = {"lr_embedding": 1e-2, "lr_logits": 1e-1}
DIET_VARIANTS: dict[str, dict[str, Any]] = {
    "diet": {},
    "diet_no_mf": {"memory_fusion": False},
    "diet_ts": {"target_selection": True},
    "diet_ms": {"memory_selection": True},
    "diet_none": {"memory_fusion": False, "target_selection": False, "memory_selection": False},
    "diet_paper": {**PAPER_RATES, "target_selection": True},
    "diet_kmeans": {"init": "kmeans"},
    "diet_pool": {"proxy_init": "pool", "proxy_models": list(MODELS), "pool_size": len(MODELS)},
}
ALL_METHODS = (*DATA_METHODS, *SELECTION_METHODS, *DIET_VARIANTS)
REDUCED_METHODS = ("warmup", *SELECTION_METHODS, *DIET_VARIANTS)


class BenchConfig(BaseModel):
    data: Path
    out: Path
    methods: list[str] = Field(default_factory=lambda: list(ALL_METHODS))
    models: list[str] = Field(default_factory=lambda: list(MODELS))  # the architectures the pool is made of
    pool: Pool = "p5"  # p5: each architecture at its default size; p15: small, default, large (evaluate/pool.py)
    ratio: float = Field(default=0.02, gt=0, le=1)
    seed: int = 0
    seeds: int = Field(default=1, ge=1)
    # candidates trained per cell (seeds seed, seed+1000, …), their test metrics averaged: one candidate's
    # AUC moves by up to 0.013 when its training set moves by float rounding (ML-100K, benchmarks/README.md)
    candidate_repeats: int = Field(default=3, ge=1)
    reference: ReferenceConfig = Field(default_factory=ReferenceConfig)
    candidate: CandidateConfig = Field(default_factory=CandidateConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    # where every phase runs (reference, selection, distillation, candidates): "cpu", "cuda", "cuda:1" ...
    device: str = "cpu"
    # a folder where each seed's reference checkpoints are kept (safetensors): processes of a sweep that
    # run other methods on the same data, reference settings and seed train it once and load it after
    reference_cache: Path | None = None


class Splits:
    """A converted stream in memory: historical blocks, subsequent, valid, test."""

    def __init__(self, schema: StreamSchema, root: Path, device: str = "cpu") -> None:
        layout = schema.splits
        self.schema = schema

        # every split moves to the device once: batches are then gathered there, with no copy per step
        def load(name: str) -> TensorBlock:
            return TensorBlock.load(root / f"{name}.parquet", schema).to(device)

        self.history = [load(n) for n in layout.history]
        self.subsequent = load(layout.subsequent)
        self.valid = load(layout.valid)
        self.test = load(layout.test)

    @classmethod
    def in_memory(
        cls, schema: StreamSchema, history: list[TensorBlock], subsequent: TensorBlock, valid: TensorBlock, test: TensorBlock,
    ) -> "Splits":
        """Splits of blocks already in memory (a generated stream): nothing read from disk."""
        splits = cls.__new__(cls)
        splits.schema, splits.history, splits.subsequent, splits.valid, splits.test = schema, list(history), subsequent, valid, test
        return splits

    @property
    def history_rows(self) -> int:
        return sum(len(b) for b in self.history)


def prepare_data(data: Path, out: Path) -> tuple[StreamSchema, Path]:
    """A converted directory as it is; a raw ML-100K or ML-1M folder converted once under `out`."""
    if (data / "schema.json").is_file():
        return load_split_dir(data), data
    for is_raw, convert, schema in ((is_ml100k_dir, convert_ml100k, ML100K_SCHEMA), (is_ml1m_dir, convert_ml1m, ML1M_SCHEMA)):
        if is_raw(data):
            converted = out / "data"
            # reused only if it is this data set's conversion (an earlier bench may have left the other one)
            if not (converted / "schema.json").is_file() or load_split_dir(converted) != schema:
                convert(data, converted)
            return load_split_dir(converted), converted
    raise ValueError(f"{data} holds neither schema.json (a converted stream) nor raw MovieLens-100K or -1M files")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def embedding_state(model: CTRModel) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.embedding.state_dict().items()}


def history_sets(
    methods: list[str], splits: Splits, refs: list[CTRModel], ratio: float, distill: DistillConfig, seed: int,
    phases: dict, device: str = "cpu",
) -> dict[str, SyntheticSet]:
    """The history each reduced-data method hands a candidate, built stage by stage.

    On `device`; a checkpoint held elsewhere (a benchmark keeps them in host memory) is copied there for its block.
    """
    sets: dict[str, SyntheticSet] = {}
    for method in methods:
        if method in SELECTION_METHODS:
            t0 = time.perf_counter()
            parts = [selected_rows(method, module_on(refs[t], device), block, t, ratio, seed, device)
                     for t, block in enumerate(splits.history, 1)]
            sets[method] = SyntheticSet.concat(parts)
            phases[method] = {"seconds": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb()}
        elif method in DIET_VARIANTS:
            t0 = time.perf_counter()
            cfg = distill.model_copy(update={"ratio": ratio, "seed": seed, **DIET_VARIANTS[method]})
            syn, seen, stages = None, 0, []
            for t, block in enumerate(splits.history, 1):
                seen += len(block)
                syn, metrics = distill_in_memory(block, t, refs[t - 1], refs[t], syn, seen, cfg, device=device)
                stages.append(metrics)
            sets[method] = syn
            phases[method] = {"seconds": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb(), "stages": stages}
    return sets


def train_references(splits: Splits, cfg: ReferenceConfig, device: str) -> list[CTRModel]:
    """Checkpoints 0..T: the random start, then one epoch on each historical block."""
    refs = [copy_to(new_reference(splits.schema, cfg), device)]
    for t, block in enumerate(splits.history, 1):
        refs.append(continue_reference(refs[-1], block, cfg, t, device))
    return refs


def reference_checkpoints(
    splits: Splits, root: Path, cfg: ReferenceConfig, device: str, cache: Path | None
) -> tuple[list[CTRModel], bool]:
    """The reference's checkpoints, and whether they came from `cache` (trained there first if absent).

    The cache key is the historical blocks' bytes, the reference settings (seed included) and the device
    type; a lock makes a second process of the same key wait for the first instead of training it again.
    Loaded checkpoints hold the trained weights bit for bit, so every method builds the same sets.
    """
    if cache is None:
        return train_references(splits, cfg, device), False
    digest = hashlib.sha256(json.dumps([cfg.model_dump(mode="json"), torch.device(device).type]).encode())
    for name in splits.schema.splits.history:
        digest.update((root / f"{name}.parquet").read_bytes())
    folder = cache / digest.hexdigest()[:20]
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"t{t}.safetensors" for t in range(len(splits.history) + 1)]
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if all(f.is_file() for f in files):
            with torch.random.fork_rng(devices=[]):  # building the empty models draws weights: not the caller's
                refs = [copy_to(load_reference(f)[0], device) for f in files]
            for model in refs[1:]:
                model.eval()  # as continue_reference returns them; checkpoint 0 stays as built
            return refs, True
        refs = train_references(splits, cfg, device)
        rows = 0
        for t, (model, path) in enumerate(zip(refs, files)):
            rows += len(splits.history[t - 1]) if t else 0
            tmp = path.with_suffix(".tmp")
            save_reference(tmp, model, cfg.arch, t, rows)
            tmp.replace(path)  # whole files only: a process killed mid-write leaves no checkpoint behind
        return refs, False


def run_cell(
    method: str, candidate: Candidate | str, splits: Splits, refs: list[CTRModel], sets: dict, cfg: BenchConfig,
    seed: int,
) -> dict:
    """One (method, candidate) cell of one seed; a bare architecture name is that architecture's default size."""
    if isinstance(candidate, str):
        candidate = pool_candidate(candidate, "default", cfg.candidate.arch)
    final_embedding = embedding_state(refs[-1]) if method not in SCRATCH_METHODS else None
    kwargs: dict = {}
    if method == "full":
        finetune, history_rows = [*splits.history, splits.subsequent], splits.history_rows
    elif method == "cold":
        finetune, history_rows = [splits.subsequent], 0
    elif method == "warmup":
        finetune, history_rows = [splits.subsequent], 0
        kwargs["embeddings"] = final_embedding
    else:
        finetune, history_rows = [splits.subsequent], len(sets[method])
        kwargs.update(embeddings=final_embedding, distilled=sets[method], probe=splits.test)
    candidate_cfg = cfg.candidate.model_copy(update={"arch": candidate.arch})
    return train_cell(candidate.model, splits.schema, finetune, splits.valid, splits.test, candidate_cfg,
                      cfg.candidate_repeats, seed, history_rows, device=cfg.device, backbone=candidate.backbone,
                      **kwargs)  # fmt: skip


def train_cell(
    model: str, schema: StreamSchema, finetune: list[Block], valid: TensorBlock, test: TensorBlock,
    candidate: CandidateConfig, repeats: int, seed: int, history_rows: int, device: str = "cpu", **kwargs: Any,
) -> dict:
    """One cell: `repeats` candidates (seeds seed, seed+1000, …) by the shared protocol, each tested.

    `kwargs` go to train_candidate (embeddings, distilled, probe, backbone). The audit of a dataset
    version (diet_engine.evaluate.audit) trains its cells here too, so its numbers are the bench's.
    """
    runs, tests, seconds = [], [], []
    for repeat in range(repeats):
        t0 = time.perf_counter()
        runs.append(train_candidate(model, schema, finetune=finetune, valid=valid, cfg=candidate,
                                    seed=seed + 1000 * repeat, device=device, **kwargs))
        seconds.append(time.perf_counter() - t0)
        tests.append(evaluate(runs[-1].model, test, device))
    return {"auc": statistics.fmean(t.mean_auc for t in tests), "logloss": statistics.fmean(t.mean_logloss for t in tests),
            "train_seconds": statistics.fmean(seconds), "history_rows": history_rows,
            "auc_repeats": [t.mean_auc for t in tests],
            "auc_tasks": {task: statistics.fmean(t.auc[task] for t in tests) for task in tests[0].auc},
            "best_epoch": [r.best_epoch for r in runs], "best_lr": [r.best_lr for r in runs],
            "finetune_lr": [r.finetune_lr for r in runs],
            "finetune_embedding_lr": [r.finetune_embedding_lr for r in runs],
            # how well the set alone trains the candidate's dense part (its best validation AUC before the fine-tune)
            "distilled_valid_auc": [max(r.valid_auc) if r.valid_auc else None for r in runs],
            # and its test AUC then: the paper's "distilled data only" figure
            "set_only_auc": mean_known(r.set_only_auc for r in runs)}


def summarise(cells: dict[str, dict[str, list[dict]]], methods: list[str], candidates: list[str]) -> dict:
    """Means over seeds per cell, the fidelity statistics over the pool (evaluate/fidelity.py) and what each
    method's set alone taught."""
    results = {}
    for m in methods:
        results[m] = {}
        for model in candidates:
            runs = cells[m][model]
            aucs, lls = [r["auc"] for r in runs], [r["logloss"] for r in runs]
            results[m][model] = {
                "auc": statistics.fmean(aucs),
                "logloss": statistics.fmean(lls),
                "auc_std": statistics.pstdev(aucs),
                "logloss_std": statistics.pstdev(lls),
                "train_seconds": statistics.fmean(r["train_seconds"] for r in runs),
                "history_rows": runs[0]["history_rows"],
                "auc_seeds": aucs,
                "logloss_seeds": lls,
                "auc_repeats": [r.get("auc_repeats", [r["auc"]]) for r in runs],  # per seed, each candidate's
                "distilled_valid_auc": mean_known(v for r in runs for v in r.get("distilled_valid_auc", [])),
                "set_only_auc": mean_known(r.get("set_only_auc") for r in runs),
                "set_only_auc_seeds": [r.get("set_only_auc") for r in runs],
            }
    seed_aucs = {m: np.array([[cells[m][k][s]["auc"] for k in candidates] for s in range(len(cells[m][candidates[0]]))])
                 for m in methods}
    stats = fidelity(seed_aucs, candidates)
    set_alone = {m: mean_known(results[m][k]["set_only_auc"] for k in candidates) for m in methods}
    reduced = [m for m in methods if m in REDUCED_METHODS]
    return {
        "results": results,
        "candidates": candidates,
        "best_reduced": max(reduced, key=stats["mean_auc"].__getitem__) if reduced else None,
        **stats,
        # per method with a history set: mean over the pool of the test AUC its candidates had before the fine-tune
        "set_alone": {m: v for m, v in set_alone.items() if v is not None},
    }


def mean_known(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are not None (None when none is)."""
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


def run_bench(cfg: BenchConfig, on_cell: Callable[[str], None] | None = None) -> dict:
    unknown = sorted(set(cfg.methods) - set(ALL_METHODS)) + sorted(set(cfg.models) - set(MODELS))
    if unknown:
        raise ValueError(f"unknown methods/models: {unknown}; methods {ALL_METHODS}, models {tuple(MODELS)}")
    pool = candidate_pool(cfg.pool, cfg.models, cfg.candidate.arch)
    names = [c.name for c in pool]
    cfg.out.mkdir(parents=True, exist_ok=True)
    schema, root = prepare_data(cfg.data, cfg.out)
    splits = Splits(schema, root, cfg.device)
    cells: dict[str, dict[str, list[dict]]] = {m: {k: [] for k in names} for m in cfg.methods}
    phases: list[dict] = []
    for s in range(cfg.seeds):
        seed = cfg.seed + s
        phase: dict = {"seed": seed}
        t0 = time.perf_counter()
        refs: list[CTRModel] = []
        # full data and cold start build their own tables: a run of those alone trains no reference
        if set(cfg.methods) - set(SCRATCH_METHODS):
            ref_cfg = cfg.reference.model_copy(update={"seed": seed})
            refs, cached = reference_checkpoints(splits, root, ref_cfg, cfg.device, cfg.reference_cache)
            phase["reference"] = {"seconds": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb(), "cached": cached}
        sets = history_sets(cfg.methods, splits, refs, cfg.ratio, cfg.distill, seed, phase, cfg.device)
        for method in cfg.methods:
            for candidate in pool:
                cells[method][candidate.name].append(run_cell(method, candidate, splits, refs, sets, cfg, seed))
                if on_cell:
                    on_cell(f"seed {seed} {method}/{candidate.name}")
        phases.append(phase)
    summary = summarise(cells, cfg.methods, names)
    out = {
        "dataset": schema.name,
        "ratio": cfg.ratio,
        "pool": cfg.pool,
        "seeds": [cfg.seed + s for s in range(cfg.seeds)],
        **summary,
        "history_rows": splits.history_rows,
        "phases": phases,
        "config": json.loads(cfg.model_dump_json(exclude={"data", "out"})),
    }
    (cfg.out / "results.json").write_text(json.dumps(out, indent=2))
    # the page beside it; label balance and loss curves are the last seed's (its `sets`)
    (cfg.out / "report.html").write_text(
        render(bench_report(out, schema.labels, sets, [b.labels for b in splits.history])), encoding="utf-8"
    )
    return out
