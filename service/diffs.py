"""The registry's side of a version diff: what the engine's diff (diet_engine.dataset.diff) needs of each version.

Read in two steps, so no registry session stays open while files are read and compared:
`side_of` in a session, `load_side` after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from diet_client.models import DatasetDiff
from diet_engine.dataset.artifacts import SYNTHETIC
from diet_engine.dataset.diff import DiffSide, VersionDiff, diff_versions
from service.manifest import manifest
from service.problems import Problem
from service.registry.tables import DatasetVersion
from service.storage import Storage


@dataclass(frozen=True)
class SideInputs:
    label: str
    synthetic_key: str
    manifest: dict[str, Any]
    lineage: list[str]  # ancestors' labels and its own, oldest first


def side_of(version: DatasetVersion) -> SideInputs:
    if version.purged_at is not None:
        raise Problem(410, f"{version.label} was purged: its files are gone, so it cannot be compared")
    lineage = []
    current: DatasetVersion | None = version
    while current is not None:
        lineage.append(current.label)
        current = current.parent
    key = next(a["key"] for a in version.artifacts if a["name"] == SYNTHETIC)
    return SideInputs(version.label, key, manifest(version).model_dump(mode="json"), lineage[::-1])


def load_side(storage: Storage, inputs: SideInputs) -> DiffSide:
    with storage.open(inputs.synthetic_key) as fh:
        return DiffSide.load(inputs.label, fh, inputs.manifest, inputs.lineage)


def compare(storage: Storage, a: SideInputs, b: SideInputs) -> VersionDiff:
    return diff_versions(load_side(storage, a), load_side(storage, b))


def diff_out(diff: VersionDiff) -> DatasetDiff:
    return DatasetDiff.model_validate(diff.model_dump(mode="json"))
