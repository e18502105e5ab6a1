"""The registry's tables (SQLAlchemy 2 typed declarative models).

`migrations/versions/` must create exactly these; a test compares them.
Timestamps are stored and returned as aware UTC datetimes on every backend.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from diet_client.models import JobStatus  # the wire's job states are the table's (one definition)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out; SQLite keeps no zone, so one is attached on the way out."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


ACTIVE = (JobStatus.queued.value, JobStatus.running.value)
FINISHED = (JobStatus.succeeded.value, JobStatus.failed.value, JobStatus.cancelled.value)

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Token(Base):
    """An API token: only its sha256 is kept (tokens are long random strings, so no slow hash is needed)."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]  # null: never

    def state(self, now: datetime) -> str:
        """active, revoked or expired (as of now)."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


class Stream(Base):
    __tablename__ = "streams"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    schema_doc: Mapped[dict[str, Any]] = mapped_column("schema")
    reference: Mapped[dict[str, Any]]
    distill: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    licence: Mapped[str | None] = mapped_column(String(200))  # of its data; exports carry it
    # {"every": k, "threshold": τ, "pool": name, ...}: audit each k-th stage's version, alarm below τ
    audit: Mapped[dict[str, Any] | None]


class Block(Base):
    __tablename__ = "blocks"
    __table_args__ = (UniqueConstraint("stream_id", "stage"), UniqueConstraint("stream_id", "sha256"))

    id: Mapped[int] = mapped_column(primary_key=True)
    stream_id: Mapped[int] = mapped_column(ForeignKey("streams.id"), index=True)
    stage: Mapped[int]
    sha256: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(512))
    rows: Mapped[int] = mapped_column(BigInteger)
    bytes: Mapped[int] = mapped_column(BigInteger)
    time_min: Mapped[datetime | None]
    time_max: Mapped[datetime | None]
    label_rates: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Soft deletion: hidden and restorable until purged; purged (retired): the blob is freed, the row
    # with its sha256 and stats stays, for the lineage of the versions that saw it.
    deleted_at: Mapped[datetime | None]
    deleted_by: Mapped[str | None] = mapped_column(String(200))
    purged_at: Mapped[datetime | None]

    stream: Mapped[Stream] = relationship(lazy="joined", innerjoin=True)


class Job(Base):
    """A distillation of one stage. The row, not the broker, says what is to be done."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(f"status IN {tuple(s.value for s in JobStatus)}", name="status"),
        # At most one queued or running job per stage of a stream.
        Index(
            "uq_jobs_active_stage",
            "stream_id",
            "stage",
            unique=True,
            sqlite_where=text(f"status IN {ACTIVE}"),
            postgresql_where=text(f"status IN {ACTIVE}"),
        ),
        Index("ix_jobs_stream_id_status", "stream_id", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    stream_id: Mapped[int] = mapped_column(ForeignKey("streams.id"))
    stage: Mapped[int]
    block_id: Mapped[int] = mapped_column(ForeignKey("blocks.id"))
    # The job of stage t-1 this one waits for, when its dataset did not exist yet.
    after_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.queued.value)
    overrides: Mapped[dict[str, Any]]
    config: Mapped[dict[str, Any]]
    progress: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    # When its message last went to the broker; None: queued with no message known to be on its way
    # (never sent, sent before the broker lost its state, or taken back from a silent worker).
    sent_at: Mapped[datetime | None]

    stream: Mapped[Stream] = relationship(lazy="joined", innerjoin=True)
    block: Mapped[Block] = relationship()
    after_job: Mapped[Job | None] = relationship(remote_side=[id])
    dataset: Mapped[DatasetVersion | None] = relationship(back_populates="job", lazy="selectin")


class DatasetVersion(Base):
    """An immutable distilled dataset: `<stream>@v<number>`."""

    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("stream_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    stream_id: Mapped[int] = mapped_column(ForeignKey("streams.id"))
    number: Mapped[int]
    stage: Mapped[int]
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("dataset_versions.id"))
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), unique=True)
    # the blocks this version has seen, oldest first: [{"id", "stage", "sha256", "rows"}]
    blocks: Mapped[list[Any]]
    rows: Mapped[int] = mapped_column(BigInteger)
    new_rows: Mapped[int] = mapped_column(BigInteger)
    kept_rows: Mapped[int] = mapped_column(BigInteger)
    history_rows: Mapped[int] = mapped_column(BigInteger)
    ratio: Mapped[float]
    config: Mapped[dict[str, Any]]
    metrics: Mapped[dict[str, Any]]
    # [{"name", "key", "bytes", "sha256"}]: synthetic.parquet, reference.safetensors, manifest.json
    artifacts: Mapped[list[Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Soft deletion: hidden and restorable until purged; purged: the artifacts are freed, the row
    # (digests, stats, parent) stays, so later versions' lineage stays whole.
    deleted_at: Mapped[datetime | None]
    deleted_by: Mapped[str | None] = mapped_column(String(200))
    purged_at: Mapped[datetime | None]

    stream: Mapped[Stream] = relationship(lazy="joined", innerjoin=True)
    parent: Mapped[DatasetVersion | None] = relationship(remote_side=[id], lazy="joined")
    job: Mapped[Job] = relationship(back_populates="dataset")

    @property
    def label(self) -> str:
        return f"{self.stream.name}@v{self.number}"


class Alias(Base):
    """A name a user moves between versions of a stream (`STREAM@prod`); `latest` is not one (it is automatic)."""

    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("stream_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    stream_id: Mapped[int] = mapped_column(ForeignKey("streams.id"))
    name: Mapped[str] = mapped_column(String(64))
    version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id"), index=True)
    moved_by: Mapped[str] = mapped_column(String(200))
    moved_at: Mapped[datetime] = mapped_column(default=utcnow)

    version: Mapped[DatasetVersion] = relationship(lazy="joined", innerjoin=True)


class AliasEvent(Base):
    """One move of an alias: set (from None), moved, or removed (to None). Kept after the alias goes."""

    __tablename__ = "alias_events"
    __table_args__ = (Index("ix_alias_events_stream_id_name", "stream_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    stream_id: Mapped[int] = mapped_column(ForeignKey("streams.id"))
    name: Mapped[str] = mapped_column(String(64))
    from_version_id: Mapped[int | None] = mapped_column(ForeignKey("dataset_versions.id"))
    to_version_id: Mapped[int | None] = mapped_column(ForeignKey("dataset_versions.id"))
    actor: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(default=utcnow)

    from_version: Mapped[DatasetVersion | None] = relationship(foreign_keys=[from_version_id], lazy="joined")
    to_version: Mapped[DatasetVersion | None] = relationship(foreign_keys=[to_version_id], lazy="joined")


class RetentionPolicy(Base):
    """What the sweep keeps of a stream: the newest `keep_last` versions and those younger than `keep_days`
    (either may be null: no limit of that kind). Aliased versions and what jobs need are kept regardless."""

    __tablename__ = "retention_policies"

    stream_id: Mapped[int] = mapped_column(ForeignKey("streams.id"), primary_key=True)
    keep_last: Mapped[int | None]
    keep_days: Mapped[int | None]
    grace_s: Mapped[int]  # how long a soft-deleted version or block stays restorable
    updated_by: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Audit(Base):
    """An audit job: the pool's candidates trained on a version and on full history, scored like `diet bench`."""

    __tablename__ = "audits"
    __table_args__ = (
        CheckConstraint(f"status IN {tuple(s.value for s in JobStatus)}", name="status"),
        Index("ix_audits_version_id_status", "version_id", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    stream_id: Mapped[int] = mapped_column(ForeignKey("streams.id"), index=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id"))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.queued.value)
    # {"pool", "models", "candidate", "repeats", "seed"} as asked, and the evaluation blocks by stage
    request: Mapped[dict[str, Any]]
    blocks: Mapped[dict[str, Any]]  # {"history": [ids], "subsequent": id, "valid": id, "test": id}
    scheduled: Mapped[bool] = mapped_column(default=False)  # by the stream's audit policy, not a request
    progress: Mapped[dict[str, Any] | None]
    result: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]  # when its message last went to the broker (None: unsent)

    stream: Mapped[Stream] = relationship(lazy="joined", innerjoin=True)
    version: Mapped[DatasetVersion] = relationship(lazy="joined", innerjoin=True)


class Webhook(Base):
    """A URL told about a stream's events, each delivery signed with the webhook's secret."""

    __tablename__ = "webhooks"

    id: Mapped[int] = mapped_column(primary_key=True)
    stream_id: Mapped[int] = mapped_column(ForeignKey("streams.id"), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    # kept as given: signing needs it (it is never returned)
    secret: Mapped[str] = mapped_column(String(200))
    events: Mapped[list[Any]]
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    stream: Mapped[Stream] = relationship(lazy="joined", innerjoin=True)


class WebhookDelivery(Base):
    """One event for one webhook: pending until its URL answers 2xx (delivered) or the attempts run out (failed)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="status"),
        Index("ix_webhook_deliveries_webhook_id_id", "webhook_id", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    webhook_id: Mapped[int] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    # one entry per attempt: {"at", "status_code", "error", "seconds"}
    attempt_log: Mapped[list[Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    delivered_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]  # when its message last went to the broker (None: unsent)

    webhook: Mapped[Webhook] = relationship(lazy="joined", innerjoin=True)
