"""DIET engine: continual dataset distillation for recommender systems (PyTorch, no web/SQL/Celery).

The training side of a pulled dataset version is at the top level:

    from diet_engine import load_dataset, train_candidate

They are loaded on first use, so `import diet_engine` (and the `diet` command) stays quick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diet_engine.loader import DistilledDataset, load_dataset, train_candidate

__all__ = ["DistilledDataset", "load_dataset", "train_candidate"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from diet_engine import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'diet_engine' has no attribute {name!r}")
