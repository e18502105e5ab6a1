"""The manifest of a dataset version: what the API returns and what `manifest.json` holds.

`manifest.json` cannot carry its own sha256, so the stored file lists the two
data artifacts, and the API's answer adds `manifest.json` itself (with the
digest of the stored bytes, which is also its ETag).

`artifacts` are what consumers pull and train from. `internal` names, with their
size and sha256, the files the service keeps for its own workers (the
reference's optimiser state, which only the next stage resumes from): part of the
version's lineage, not downloadable.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from diet_engine.dataset.artifacts import OPTIMIZER
from service.registry.tables import DatasetVersion

MANIFEST = "manifest.json"
INTERNAL_ARTIFACTS = frozenset({OPTIMIZER})
MEDIA_TYPES = {
    "synthetic.parquet": "application/vnd.apache.parquet",
    "reference.safetensors": "application/octet-stream",
    MANIFEST: "application/json",
}


class Artifact(BaseModel):
    name: str
    bytes: int
    sha256: str
    url: str  # path on this service


class InternalArtifact(BaseModel):
    name: str
    bytes: int
    sha256: str


class BlockRef(BaseModel):
    id: int
    stage: int
    sha256: str
    rows: int


class Manifest(BaseModel):
    version: str  # STREAM@vN
    stream: str
    number: int
    stage: int
    parent: str | None  # the stage t-1 version it continued from
    blocks: list[BlockRef]  # every block it has seen, oldest first
    rows: int
    new_rows: int
    kept_rows: int
    history_rows: int
    ratio: float  # rows / history_rows
    config: dict[str, Any]  # {"reference": ..., "distill": ...} as run
    metrics: dict[str, Any]
    artifacts: list[Artifact]
    internal: list[InternalArtifact] = []
    job: int
    created_at: datetime


def file_url(label: str, name: str) -> str:
    return f"/datasets/{label}/files/{name}"


def manifest(version: DatasetVersion, *, with_manifest_file: bool = True) -> Manifest:
    label = version.label
    return Manifest(
        version=label,
        stream=version.stream.name,
        number=version.number,
        stage=version.stage,
        parent=version.parent.label if version.parent else None,
        blocks=version.blocks,
        rows=version.rows,
        new_rows=version.new_rows,
        kept_rows=version.kept_rows,
        history_rows=version.history_rows,
        ratio=version.ratio,
        config=version.config,
        metrics=version.metrics,
        artifacts=[
            Artifact(name=a["name"], bytes=a["bytes"], sha256=a["sha256"], url=file_url(label, a["name"]))
            for a in version.artifacts
            if (with_manifest_file or a["name"] != MANIFEST) and a["name"] not in INTERNAL_ARTIFACTS
        ],
        internal=[
            InternalArtifact(name=a["name"], bytes=a["bytes"], sha256=a["sha256"])
            for a in version.artifacts
            if a["name"] in INTERNAL_ARTIFACTS
        ],
        job=version.job_id,
        created_at=version.created_at,
    )
