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
    licence: str | None = None
    audit: dict[str, Any] | None = None
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
    retired_at: datetime | None = None  # its bytes were freed; its digest and stats stay


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


# --------------------------------------------------------------------------- aliases


class AliasIn(BaseModel):
    """PUT /datasets/{stream}/aliases/{name}: the version number the alias is to point at."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, le=2**31 - 1, description="N of STREAM@vN")


class AliasMove(_Answer):
    """One move of an alias: set (`from_version` null), moved, or removed (`to_version` null)."""

    alias: str
    from_version: str | None
    to_version: str | None
    actor: str  # the token's name
    at: datetime


class Alias(_Answer):
    stream: str
    name: str
    version: str  # STREAM@vN it resolves to now
    number: int
    moved_by: str
    moved_at: datetime
    history: list[AliasMove]  # its moves, oldest first


class Aliases(_Answer):
    stream: str
    aliases: list[Alias]
    removed: list[AliasMove]  # the history of aliases that no longer exist, oldest first


# --------------------------------------------------------------------------- retention and deletion

SEVEN_DAYS_S = 7 * 86400


class RetentionIn(BaseModel):
    """PUT /streams/{name}/retention. Null limits do not limit; with both null every version is kept."""

    model_config = ConfigDict(extra="forbid")

    keep_last: int | None = Field(default=None, ge=0, le=2**31 - 1, description="keep the newest N versions")
    keep_days: int | None = Field(default=None, ge=0, le=36500, description="keep versions younger than D days")
    grace_s: int = Field(
        default=SEVEN_DAYS_S, ge=0, le=10 * 365 * 86400,
        description="seconds a deleted version or block stays restorable before its blobs are freed",
    )  # fmt: skip


class Retention(_Answer):
    stream: str
    keep_last: int | None
    keep_days: int | None
    grace_s: int
    updated_by: str
    updated_at: datetime


class GcItem(_Answer):
    version: str
    reasons: list[str]


class GcReport(_Answer):
    """What a collection did (or, with `dry_run`, would do)."""

    stream: str
    dry_run: bool
    policy: Retention | None
    deleted: list[GcItem]  # versions the policy lets go, soft-deleted now (restorable for the grace period)
    kept: list[GcItem]  # live versions kept, and why
    purged_versions: list[str]  # deleted versions past their grace period: blobs freed
    purged_blocks: list[int]  # deleted blocks past their grace period: retired (digest and stats kept)
    freed_bytes: int


class Deletion(_Answer):
    """A soft deletion: hidden now, restorable until `purge_after`, then its blobs are freed."""

    deleted: str  # STREAM@vN, or block N
    deleted_at: datetime
    deleted_by: str
    purge_after: datetime
    restore: str  # path to POST to undo it


# --------------------------------------------------------------------------- diff


class StageRows(_Answer):
    stage: int
    rows_a: int
    rows_b: int
    kept: int
    added: int
    dropped: int


class TaskBalance(_Answer):
    task: str
    a: float | None
    b: float | None
    change: float | None


class Drift(_Answer):
    rows: int
    mean: float | None
    p95: float | None
    max: float | None


class ConfigChange(_Answer):
    key: str
    a: Any = None
    b: Any = None


class LineageDiff(_Answer):
    common_ancestor: str | None
    a_is_ancestor_of_b: bool
    b_is_ancestor_of_a: bool
    only_a: list[str]
    only_b: list[str]
    blocks_only_a: list[int]
    blocks_only_b: list[int]
    blocks_shared: list[int]


class DatasetDiff(_Answer):
    """GET /datasets/{a}/diff/{b}: what changed from version a to version b (both named as resolved)."""

    a: str
    b: str
    anchored: bool  # rows carry the real row they started from, so kept rows can be matched
    rows_a: int
    rows_b: int
    kept: int
    added: int
    dropped: int
    by_stage: list[StageRows]  # by stage of origin
    label_balance: list[TaskBalance]  # mean soft label per task
    comparable_embeddings: bool
    drift: Drift  # L2 shift of the kept rows' embeddings
    config: list[ConfigChange]
    lineage: LineageDiff


# ---------------------------------------------------------------- webhooks


class WebhookEvent(enum.StrEnum):
    version_created = "version.created"
    alias_moved = "alias.moved"
    job_finished = "job.finished"
    job_failed = "job.failed"
    audit_alarm = "audit.alarm"


class WebhookIn(BaseModel):
    """POST /webhooks: where to send which events of a stream, and the secret that signs each delivery."""

    model_config = ConfigDict(extra="forbid")

    stream: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    url: str = Field(
        pattern=r"^https?://[!-~]+$", max_length=2000, description="http(s) URL the events are POSTed to"
    )
    events: list[WebhookEvent] = Field(min_length=1, max_length=len(WebhookEvent))
    secret: str = Field(
        pattern=r"^[!-~]+$", min_length=16, max_length=200,
        description="printable ASCII; signs every delivery (X-DIET-Signature) and is never returned",
    )  # fmt: skip


class Webhook(_Answer):
    id: int
    stream: str
    url: str
    events: list[WebhookEvent]
    created_by: str
    created_at: datetime


class DeliveryStatus(enum.StrEnum):
    pending = "pending"
    delivered = "delivered"
    failed = "failed"


class DeliveryAttempt(_Answer):
    at: datetime
    status_code: int | None = Field(description="the receiver's answer; None when it could not be reached")
    error: str | None
    seconds: float


class Delivery(_Answer):
    id: int
    webhook: int
    event: WebhookEvent
    payload: dict[str, Any]
    status: DeliveryStatus
    attempts: int
    attempt_log: list[DeliveryAttempt]
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None


# ---------------------------------------------------------------- audits


class EvaluationBlocks(BaseModel):
    """The stream's blocks an audit evaluates on, by stage; each defaults to the next after the version's
    stage t: subsequent t+1 (fine-tuned on), valid t+2 (model selection), test t+3 (scored)."""

    model_config = ConfigDict(extra="forbid")

    subsequent: int | None = Field(default=None, ge=1, le=1_000_000)
    valid: int | None = Field(default=None, ge=1, le=1_000_000)
    test: int | None = Field(default=None, ge=1, le=1_000_000)


class AuditIn(BaseModel):
    """POST /jobs/audit: train a candidate pool on a version and on full history, and compare the rankings."""

    model_config = ConfigDict(extra="forbid")

    version: str = Field(max_length=200, description="STREAM@vN (or any name that resolves to one)")
    pool: str = Field(default="p5", max_length=32, description="a named pool of architectures (p5: the paper's five)")
    models: list[str] | None = Field(default=None, min_length=2, max_length=16, description="instead of the pool")
    blocks: EvaluationBlocks = Field(default_factory=EvaluationBlocks)
    candidate: dict[str, Any] = Field(default_factory=dict, description="CandidateConfig fields over the version's")
    repeats: int = Field(default=1, ge=1, le=10, description="candidates per cell, as the bench's candidate_repeats")
    seed: int = Field(default=0, ge=0, le=2**31 - 1)


class AuditPolicy(BaseModel):
    """A stream's standing audit: every `every`-th stage's version is audited once its blocks are there,
    and an `audit.alarm` event fires when its τ falls below `threshold`."""

    model_config = ConfigDict(extra="forbid")

    every: int = Field(ge=1, le=1_000_000)
    threshold: float = Field(default=0.6, ge=-1, le=1)
    pool: str = Field(default="p5", max_length=32)
    models: list[str] | None = Field(default=None, min_length=2, max_length=16)
    candidate: dict[str, Any] = Field(default_factory=dict)
    repeats: int = Field(default=1, ge=1, le=10)


class AuditResult(_Answer):
    models: list[str]
    auc: dict[str, dict[str, float]] = Field(description='test AUC per model, of "full" and of "version"')
    kendall_tau: float | None = Field(description="τ-b of the version's model ranking against full data's")
    top1_regret: float = Field(description="full data's AUC lost by taking the version's best model")
    mean_auc: dict[str, float]
    seconds: float
    alarm: bool = Field(description="τ below the stream's threshold")
    threshold: float | None


class Audit(_Answer):
    id: int
    stream: str
    version: str
    status: JobStatus
    scheduled: bool = Field(description="made by the stream's audit policy rather than a request")
    request: dict[str, Any]
    blocks: dict[str, Any] = Field(description="evaluation blocks by stage: history, subsequent, valid, test")
    progress: Progress | None
    result: AuditResult | None
    error: str | None
    attempts: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
