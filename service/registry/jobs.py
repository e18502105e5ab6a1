"""Jobs: the state machine of a stage's distillation, kept in the database.

queued -> running -> succeeded | failed, and queued/running -> cancelled;
running -> queued again when its worker falls silent (`release_silent`).
A worker *claims* a job with one conditional UPDATE, so a message delivered
twice runs the job once; every later write of that worker names the attempt
it claimed, so a job that was cancelled, or taken over after its worker went
silent, is never overwritten by the old attempt. `sent_at` says whether a
message for a queued job is known to be on its way; the API's reconciler
(service/reconcile.py) sends the queued jobs that have none.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.orm import Session, aliased

from service.registry.paging import Page, paginate
from service import webhooks
from service.registry.tables import ACTIVE, DatasetVersion, Job, JobStatus, utcnow


def get(session: Session, job_id: int, *, lock: bool = False) -> Job | None:
    return session.get(Job, job_id, with_for_update={"of": Job} if lock else None)


def active_for_stage(session: Session, stream_id: int, stage: int, *, lock: bool = False) -> Job | None:
    stmt = select(Job).where(Job.stream_id == stream_id, Job.stage == stage, Job.status.in_(ACTIVE))
    if lock:
        stmt = stmt.with_for_update(of=Job)
    return session.scalar(stmt)


def create(
    session: Session,
    *,
    stream_id: int,
    stage: int,
    block_id: int,
    overrides: dict[str, Any],
    config: dict[str, Any],
    after_job_id: int | None,
) -> Job:
    job = Job(
        stream_id=stream_id,
        stage=stage,
        block_id=block_id,
        overrides=overrides,
        config=config,
        after_job_id=after_job_id,
        status=JobStatus.queued.value,
    )
    session.add(job)
    session.flush()
    return job


def page(session: Session, stream_id: int | None, status: str | None, limit: int, offset: int) -> Page[Job]:
    stmt = select(Job).order_by(Job.id.desc())
    if stream_id is not None:
        stmt = stmt.where(Job.stream_id == stream_id)
    if status is not None:
        stmt = stmt.where(Job.status == status)
    return paginate(session, stmt, limit, offset)


def _ready() -> ColumnElement[bool]:
    """Jobs whose prerequisite (the stage t-1 job they wait for, if any) has succeeded."""
    prerequisite = aliased(Job)
    succeeded = select(prerequisite.id).where(prerequisite.status == JobStatus.succeeded.value)
    return or_(Job.after_job_id.is_(None), Job.after_job_id.in_(succeeded))


def claim(session: Session, job_id: int, stale_before: datetime) -> int | None:
    """Mark the job running for this attempt; returns the attempt number, or None if not ours to run.

    Runnable: queued and ready, or running with a heartbeat older than stale_before
    (its worker died and the broker handed the message to us).
    """
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            _ready(),
            or_(
                Job.status == JobStatus.queued.value,
                (Job.status == JobStatus.running.value) & (Job.heartbeat_at < stale_before),
            ),
        )
        .values(
            status=JobStatus.running.value,
            attempts=Job.attempts + 1,
            started_at=now,
            heartbeat_at=now,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return None
    return session.scalar(select(Job.attempts).where(Job.id == job_id))


def _this_attempt(job_id: int, attempt: int) -> ColumnElement[bool]:
    return (Job.id == job_id) & (Job.status == JobStatus.running.value) & (Job.attempts == attempt)


def report(session: Session, job_id: int, attempt: int, progress: dict[str, Any] | None = None) -> bool:
    """Record progress (or only a heartbeat); False when this attempt no longer owns the job."""
    now = utcnow()
    values: dict[str, Any] = {"heartbeat_at": now, "updated_at": now}
    if progress is not None:
        values["progress"] = progress
    result = session.execute(
        update(Job).where(_this_attempt(job_id, attempt)).values(**values).execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def lock_attempt(session: Session, job_id: int, attempt: int) -> Job | None:
    """The job row, locked, if this attempt still owns it."""
    return session.scalar(select(Job).where(_this_attempt(job_id, attempt)).with_for_update(of=Job))


def requeue(session: Session, job_id: int, attempt: int, error: str) -> bool:
    """Back to queued after an infrastructure error; the broker brings the retry (sent right after)."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(_this_attempt(job_id, attempt))
        .values(status=JobStatus.queued.value, error=error, sent_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def mark_sent(session: Session, job_id: int, sent: bool = True) -> None:
    """Record that the broker took a message for this queued job (or, `sent=False`, that it did not)."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.queued.value)
        .values(sent_at=utcnow() if sent else None)
        .execution_options(synchronize_session=False)
    )


def release_silent(session: Session, stale_before: datetime) -> list[int]:
    """Running jobs whose heartbeat is older than stale_before lost their worker: queued again, unsent."""
    result = session.execute(
        update(Job)
        .where(Job.status == JobStatus.running.value, Job.heartbeat_at < stale_before)
        .values(
            status=JobStatus.queued.value,
            sent_at=None,
            error="its worker stopped sending heartbeats; queued again (the next attempt resumes from the checkpoint)",
            updated_at=utcnow(),
        )
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    )
    return sorted(result.scalars())


def forget_sent(session: Session) -> int:
    """The broker lost its messages: no queued job has one on its way any more."""
    result = session.execute(
        update(Job)
        .where(Job.status == JobStatus.queued.value, Job.sent_at.is_not(None))
        .values(sent_at=None)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount


def unsent(session: Session) -> list[int]:
    """Queued jobs that are ready to run and have no message on its way."""
    stmt = select(Job.id).where(Job.status == JobStatus.queued.value, Job.sent_at.is_(None), _ready()).order_by(Job.id)
    return list(session.scalars(stmt))


def fail(session: Session, job_id: int, attempt: int, error: str) -> bool:
    job = lock_attempt(session, job_id, attempt)
    if job is None:
        return False
    finish(session, job, JobStatus.failed, error)
    return True


def finish(session: Session, job: Job, status: JobStatus, error: str | None = None) -> None:
    """End a job; unless it succeeded, the jobs waiting for it can never run, so they fail too."""
    job.status = status.value
    job.error = error
    job.finished_at = utcnow()
    _announce(session, job)
    if status is JobStatus.succeeded:
        return
    for waiting in waiting_on(session, job.id):
        finish(
            session,
            waiting,
            JobStatus.failed,
            f"stage {job.stage} job {job.id} was {status.value}: no stage {job.stage} dataset to continue from",
        )


def _announce(session: Session, job: Job) -> None:
    """job.finished (succeeded) or job.failed (failed, cancelled) to the stream's webhooks."""
    session.flush()
    dataset = session.scalar(select(DatasetVersion).where(DatasetVersion.job_id == job.id))
    event = "job.finished" if job.status == JobStatus.succeeded.value else "job.failed"
    webhooks.emit(session, job.stream_id, event, {
        "kind": "distill", "job": job.id, "stage": job.stage, "status": job.status, "error": job.error,
        "dataset": dataset.label if dataset else None,
    })  # fmt: skip


def waiting_on(session: Session, job_id: int) -> list[Job]:
    """Queued jobs that wait for job_id to succeed."""
    return list(session.scalars(select(Job).where(Job.after_job_id == job_id, Job.status == JobStatus.queued.value)))


def requeue_orphans(session: Session) -> int:
    """Embedded start: no worker runs yet, so every running job lost its worker."""
    result = session.execute(
        update(Job)
        .where(Job.status == JobStatus.running.value)
        .values(
            status=JobStatus.queued.value,
            sent_at=None,
            error="the service stopped while this job ran",
            updated_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    return result.rowcount
