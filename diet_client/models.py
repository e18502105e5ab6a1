"""Typed answers of the DIET API.

They mirror the service's response models (service/routes/*.py, service/manifest.py)
without importing them, so the client installs and runs without the server stack;
tests/service/test_client.py checks that the two stay in step. Unknown fields are
ignored, so an older client keeps working against a newer service.
"""

from __future__ import annotations

import enum
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class Stream(_Answer):
    id: int
    name: str
    stream_schema: dict[str, Any] = Field(alias="schema")
    reference: dict[str, Any]
    distill: dict[str, Any]
    created_at: datetime


class Block(_Answer):
    id: int
    stream: str
    stage: int
    sha256: str
    rows: int
    bytes: int
    time_min: datetime | None
    time_max: datetime | None
    label_rates: dict[str, float]
    created_at: datetime


class Upload(BaseModel):
    """An uploaded block, and whether this upload created it (False: the same bytes were there already)."""

    block: Block
    created: bool


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class Progress(_Answer):
    phase: str
    step: int
    total: int
    losses: dict[str, float] = Field(default_factory=dict)


class Job(_Answer):
    id: int
    stream: str
    stage: int
    status: JobStatus
    overrides: dict[str, Any]
    config: dict[str, Any]
    progress: Progress | None
    error: str | None
    attempts: int
    waits_for: int | None
    dataset: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class Artifact(_Answer):
    name: str
    bytes: int
    sha256: str
    url: str


class InternalArtifact(_Answer):
    """A file the service keeps for its workers (not downloadable): listed for lineage."""

    name: str
    bytes: int
    sha256: str


class BlockRef(_Answer):
    id: int
    stage: int
    sha256: str
    rows: int


class Manifest(_Answer):
    version: str
    stream: str
    number: int
    stage: int
    parent: str | None
    blocks: list[BlockRef]
    rows: int
    new_rows: int
    kept_rows: int
    history_rows: int
    ratio: float
    config: dict[str, Any]
    metrics: dict[str, Any]
    artifacts: list[Artifact]
    internal: list[InternalArtifact] = Field(default_factory=list)
    job: int
    created_at: datetime

    def artifact(self, name: str) -> Artifact:
        for artifact in self.artifacts:
            if artifact.name == name:
                return artifact
        raise KeyError(f"{self.version} has no file {name!r} (it has {', '.join(a.name for a in self.artifacts)})")


class Page(_Answer, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int
    next: str | None


class Readiness(_Answer):
    status: str
    checks: dict[str, str]


class PulledFile(BaseModel):
    name: str
    path: Path
    bytes: int
    sha256: str
    resumed_from: int = Field(description="bytes already on disk from an interrupted download")


class PulledDataset(BaseModel):
    """A dataset version on local disk, every file checked against the manifest's sha256."""

    version: str
    directory: Path
    files: list[PulledFile]
