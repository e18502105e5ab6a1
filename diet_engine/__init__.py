"""DIET engine: continual dataset distillation for recommender systems (PyTorch, no web/SQL/Celery).

The package reads as the paper's pipeline, each layer importing only the ones before it:

    data/      schema, field hashing, blocks read in record batches, the synthetic set, converters
    models/    the CTR zoo (embedding tables | dense part with an MMoE head)
    train/     training loops, row-wise Adam, the reference model, candidate training, AUC/LogLoss
    dataset/   a distilled version on disk: artifacts (save, load, verify) and the torch loader
    distill/   one DIET stage: boundary init, memory fusion, influence, addressing, bi-level loop
    evaluate/  selection baselines, the candidate pool, the benchmark, its statistics and report

The public API is at the top level and loaded on first use, so `import diet_engine` (and the `diet`
command) stays quick:

    from diet_engine import load_dataset, train_candidate, distill_stage, run_bench
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diet_engine.dataset.loader import DistilledDataset, load_dataset, train_candidate
    from diet_engine.distill.stage import distill_stage
    from diet_engine.evaluate.bench import run_bench

_PUBLIC = {
    "DistilledDataset": "diet_engine.dataset.loader",
    "load_dataset": "diet_engine.dataset.loader",
    "train_candidate": "diet_engine.dataset.loader",
    "distill_stage": "diet_engine.distill.stage",
    "run_bench": "diet_engine.evaluate.bench",
}
__all__ = list(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'diet_engine' has no attribute {name!r}")
