"""POST /jobs/distill, GET /jobs, GET /jobs/{id}, DELETE /jobs/{id} (cancel)."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from celery import Celery
from fastapi import APIRouter, Depends, Query, Request, Response
from kombu.exceptions import OperationalError as BrokerError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from diet_client import models as wire
from diet_engine.config import DistillConfig
from service.answers import from_row
from service.auth import require
from service.deps import CeleryDep, MetricsDep, SessionDep
from service.pages import MAX_STAGE, Id, PagingDep, page_out
from service.problems import Problem
from service.queue import enqueue
from service.registry import blocks, datasets, jobs
from service.registry.tables import Job, JobStatus
from service.routes.streams import find_stream, stream_filter

router = APIRouter(tags=["jobs"])
log = logging.getLogger(__name__)


class DistillRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stream: str
    stage: int = Field(ge=1, le=MAX_STAGE)
    overrides: dict[str, Any] = Field(default_factory=dict, description="DistillConfig fields over the stream's")


def job_out(job: Job) -> wire.Job:
    return from_row(
        wire.Job,
        job,
        stream=job.stream.name,
        progress=job.progress or None,
        waits_for=job.after_job_id,
        dataset=job.dataset.label if job.dataset else None,
    )


def _find_job(session: Session, job_id: int, *, lock: bool = False) -> Job:
    job = jobs.get(session, job_id, lock=lock)
    if job is None:
        raise Problem(404, f"no job with id {job_id}")
    return job


def _effective_config(stream_defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    try:
        return DistillConfig.model_validate({**stream_defaults, **overrides}).model_dump(mode="json")
    except ValidationError as exc:
        errors = [{"loc": ["overrides", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        raise Problem(422, detail, title="Invalid distill overrides", errors=errors) from exc


def _prerequisite(session: Session, stream_id: int, stream: str, stage: int) -> Job | None:
    """The stage t-1 job to wait for, None when its dataset exists; 409 when neither does."""
    if stage == 1 or datasets.latest(session, stream_id, stage - 1) is not None:
        return None
    # Locked, so that job cannot finish between this check and our commit unseen by its worker.
    previous = jobs.active_for_stage(session, stream_id, stage - 1, lock=True)
    if previous is not None:
        return previous
    if datasets.latest(session, stream_id, stage - 1) is not None:  # it finished just now
        return None
    raise Problem(
        409,
        f"stage {stage} continues from a stage {stage - 1} dataset of {stream!r}, and there is none "
        f"(nor a queued job for one): distill stage {stage - 1} first",
        title="Stage out of order",
    )


def _send(session: Session, celery: Celery, job: Job) -> None:
    """Queue a committed job (a worker must be able to see the row when the message arrives)."""
    try:
        enqueue(celery, job.id)
        jobs.mark_sent(session, job.id)
        session.commit()
    except BrokerError as exc:
        log.error("broker unavailable: %s", exc)
        jobs.finish(session, job, JobStatus.failed, f"the job queue was unavailable: {exc}")
        session.commit()
        raise Problem(
            503, f"the job queue (broker) is unavailable; job {job.id} was marked failed, try again shortly"
        ) from exc


@router.post(
    "/jobs/distill",
    status_code=202,
    response_model=wire.Job,
    responses={200: {"model": wire.Job, "description": "the stage's queued or running job, asked for again"}},
    dependencies=[Depends(require("distill"))],
)
def create_distill_job(
    body: DistillRequest, session: SessionDep, celery: CeleryDep, metrics: MetricsDep, response: Response
) -> wire.Job:
    stream = find_stream(session, body.stream)
    # Locked: a deletion of the block waits for this job to be recorded, and then sees it.
    block = blocks.by_stage(session, stream.id, body.stage, lock=True)
    if block is None:
        raise Problem(
            409,
            f"stage {body.stage} of {stream.name!r} has no block: upload it with POST /blocks?stream={stream.name}",
            title="Block missing",
        )
    if block.deleted_at is not None:
        state = "retired (its bytes were freed)" if block.purged_at is not None else "deleted"
        raise Problem(409, f"block {block.id} of stage {body.stage} is {state}", title="Block deleted")
    existing = jobs.active_for_stage(session, stream.id, body.stage)
    if existing is not None:
        return _same_request(existing, body, response)

    config = _effective_config(stream.distill, body.overrides)
    after = _prerequisite(session, stream.id, stream.name, body.stage)
    try:
        job = jobs.create(
            session,
            stream_id=stream.id,
            stage=body.stage,
            block_id=block.id,
            overrides=body.overrides,
            config=config,
            after_job_id=after.id if after else None,
        )
    except IntegrityError:
        session.rollback()  # an identical request won the race
        existing = jobs.active_for_stage(session, stream.id, body.stage)
        if existing is None:
            raise
        return _same_request(existing, body, response)
    session.commit()
    if after is None:
        _send(session, celery, job)
    metrics.jobs_created.inc()
    log.info("job queued", extra={"job": job.id, "stream": stream.name, "stage": body.stage, "after": job.after_job_id})
    return job_out(job)


def _same_request(existing: Job, body: DistillRequest, response: Response) -> wire.Job:
    if existing.overrides != body.overrides:
        raise Problem(
            409,
            f"job {existing.id} for stage {body.stage} is already {existing.status} with other overrides; "
            f"cancel it (DELETE /jobs/{existing.id}) first",
            job=existing.id,
        )
    response.status_code = 200
    return job_out(existing)


@router.get("/jobs", response_model=wire.Page[wire.Job], dependencies=[Depends(require("read"))])
def list_jobs(
    request: Request,
    session: SessionDep,
    paging: PagingDep,
    stream: Annotated[str | None, Query()] = None,
    status: Annotated[JobStatus | None, Query()] = None,
) -> wire.Page[wire.Job]:
    stream_id = stream_filter(session, stream)
    page = jobs.page(session, stream_id, status.value if status else None, paging.limit, paging.offset)
    return page_out(page, [job_out(j) for j in page.items], request)


@router.get("/jobs/{job_id}", response_model=wire.Job, dependencies=[Depends(require("read"))])
def get_job(job_id: Id, session: SessionDep) -> wire.Job:
    return job_out(_find_job(session, job_id))


@router.delete("/jobs/{job_id}", response_model=wire.Job, dependencies=[Depends(require("distill"))])
def cancel_job(job_id: Id, session: SessionDep) -> wire.Job:
    """Cancel a queued or running job (a running one stops at its next progress report)."""
    job = _find_job(session, job_id, lock=True)
    if job.status in (JobStatus.succeeded, JobStatus.failed):
        raise Problem(409, f"job {job_id} already {job.status}; only queued or running jobs can be cancelled")
    if job.status != JobStatus.cancelled:
        jobs.finish(session, job, JobStatus.cancelled, "cancelled by request")
        session.commit()
        log.info("job cancelled", extra={"job": job_id})
    return job_out(job)
