"""Dataset versions: immutable, numbered per stream, `latest` = the highest number."""

from __future__ import annotations

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from service.registry.paging import Page, paginate
from service.manifest import MANIFEST
from service.registry.tables import DatasetVersion


def artifact_prefix(stream: str, job_id: int) -> str:
    """Where a job writes its artifacts (the version number is only known when it registers)."""
    return f"datasets/{stream}/job-{job_id}"


def checkpoint_prefix(stream: str, job_id: int) -> str:
    """Where a job's stage keeps its checkpoints while it runs, for the next attempt to resume from."""
    return f"checkpoints/{stream}/job-{job_id}"


def get(session: Session, stream_id: int, number: int, *, lock: bool = False) -> DatasetVersion | None:
    """The version of this number, deleted or not (see `DatasetVersion.deleted_at`)."""
    stmt = select(DatasetVersion).where(DatasetVersion.stream_id == stream_id, DatasetVersion.number == number)
    if lock:  # and read afresh: the row may have changed since this session last saw it
        stmt = stmt.with_for_update(of=DatasetVersion).execution_options(populate_existing=True)
    return session.scalar(stmt)


def by_manifest_digest(session: Session, stream_id: int, sha256: str) -> DatasetVersion | None:
    """The live version whose manifest.json has this sha256 (`STREAM@sha256:...`)."""
    # The digest sits in the artifacts JSON, which no backend indexes alike; a stream has few versions.
    for version in session.scalars(live(stream_id).order_by(DatasetVersion.number.desc())):
        if any(a["name"] == MANIFEST and a["sha256"] == sha256 for a in version.artifacts):
            return version
    return None


def live(stream_id: int) -> Select[tuple[DatasetVersion]]:
    """The versions of a stream that are not deleted."""
    return select(DatasetVersion).where(DatasetVersion.stream_id == stream_id, DatasetVersion.deleted_at.is_(None))


def latest(session: Session, stream_id: int, stage: int | None = None) -> DatasetVersion | None:
    """The newest live version (of a stage): `latest`, and what the next stage continues from."""
    stmt = live(stream_id)
    if stage is not None:
        stmt = stmt.where(DatasetVersion.stage == stage)
    return session.scalar(stmt.order_by(DatasetVersion.number.desc()).limit(1))


def next_number(session: Session, stream_id: int) -> int:
    return (
        session.scalar(select(func.max(DatasetVersion.number)).where(DatasetVersion.stream_id == stream_id)) or 0
    ) + 1


def page(session: Session, stream_id: int | None, limit: int, offset: int) -> Page[DatasetVersion]:
    stmt = select(DatasetVersion).where(DatasetVersion.deleted_at.is_(None))
    stmt = stmt.order_by(DatasetVersion.created_at.desc(), DatasetVersion.id.desc())
    if stream_id is not None:
        stmt = stmt.where(DatasetVersion.stream_id == stream_id)
    return paginate(session, stmt, limit, offset)
