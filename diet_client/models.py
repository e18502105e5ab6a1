"""The DIET API's answers on the wire: the one definition of each, pydantic only.

The service returns these classes as its response models (service/routes/*.py,
service/manifest.py) and the client parses its answers with them, so the two cannot
drift apart; importing nothing of the server keeps the client installable without it
(tests/test_import_graph.py checks both directions). Unknown fields are ignored, so an
older client keeps working against a newer service.
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
    """A log stream's fixed definition, as POST /streams stored it."""

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
    """A job's state; the registry's job table holds these values (service/registry/tables.py)."""

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
    waits_for: int | None = Field(description="the stage t-1 job whose dataset this one needs")
    dataset: str | None = Field(description="the version it made, once succeeded")
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class Artifact(_Answer):
    name: str
    bytes: int
    sha256: str
    url: str  # path on the service


class BlockRef(_Answer):
    id: int
    stage: int
    sha256: str
    rows: int


class Manifest(_Answer):
    """A dataset version: what GET /datasets/{version} returns and what its `manifest.json` holds."""

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
    next: str | None  # path and query of the next page, or null on the last one


class Liveness(_Answer):
    """GET /healthz: the process answers."""

    status: str


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
