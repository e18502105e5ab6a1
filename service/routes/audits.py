"""POST /jobs/audit, GET /jobs/audit, GET /jobs/audit/{id}: audits of a version's fidelity, run by the workers.

An audit evaluates on three blocks of the stream, named by stage in `blocks` (each defaults to the
next after the version's stage t: subsequent t+1, valid t+2, test t+3), and on full history: the
blocks the version has seen. They must have been uploaded (POST /blocks) and not be retired.
"""

from __future__ import annotations

import logging
from typing import Annotated

from celery import Celery
from fastapi import APIRouter, Depends, Query, Request, Response
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.orm import Session

from diet_client.models import Audit, AuditIn, AuditResult, JobStatus, Page, Progress
from service.auth import require
from service.deps import CeleryDep, SessionDep
from service.pages import Id, PagingDep, page_out
from service.problems import Problem
from service.queue import enqueue_audit
from service.registry import audits
from service.registry.tables import Audit as AuditRow
from service.routes.datasets import find_version
from service.routes.streams import find_stream

router = APIRouter(tags=["audits"])
log = logging.getLogger(__name__)


def audit_out(audit: AuditRow) -> Audit:
    return Audit(
        id=audit.id, stream=audit.stream.name, version=audit.version.label, status=JobStatus(audit.status),
        scheduled=audit.scheduled, request=audit.request, blocks=audit.blocks,
        progress=Progress.model_validate(audit.progress) if audit.progress else None,
        result=AuditResult.model_validate(audit.result) if audit.result else None,
        error=audit.error, attempts=audit.attempts, created_at=audit.created_at, updated_at=audit.updated_at,
        started_at=audit.started_at, finished_at=audit.finished_at,
    )  # fmt: skip


def send(session: Session, celery: Celery, audit_id: int) -> None:
    """Queue a committed audit; a broker that is down leaves it unsent, for the reconciler to send."""
    try:
        enqueue_audit(celery, audit_id)
    except BrokerError as exc:
        log.warning("broker unavailable, audit %s stays queued unsent: %s", audit_id, exc)
        return
    audits.mark_sent(session, audit_id)
    session.commit()


@router.post(
    "/jobs/audit",
    status_code=202,
    response_model=Audit,
    responses={200: {"model": Audit, "description": "the same audit of the version, queued or running, asked for again"}},
    dependencies=[Depends(require("distill"))],
)
def create_audit(body: AuditIn, session: SessionDep, celery: CeleryDep, response: Response) -> Audit:
    """Train the pool's candidates on the version and on full history (the bench's protocol) and record Kendall τ,
    top-1 regret and mean AUC against full data in the version's metrics (`metrics.audit`). The same request
    for a version while one is queued or running answers that one (200)."""
    version = find_version(session, body.version)
    if "arch" in body.candidate:
        raise Problem(422, "candidate.arch is the version's reference architecture (its embedding tables must fit)")
    stages = audits.evaluation_stages(version.stage, body.blocks.subsequent, body.blocks.valid, body.blocks.test)
    wanted = body.model_dump(mode="json", include={"pool", "models", "candidate", "repeats", "seed"})
    try:
        request, blocks = audits.resolve(session, version, wanted, stages)
    except audits.Unresolved as exc:
        raise Problem(exc.status, str(exc), title="Audit refused") from None
    existing = audits.active_like(session, version.id, request, blocks)
    if existing is not None:
        response.status_code = 200
        return audit_out(existing)
    audit = audits.create(session, version, request, blocks, scheduled=False)
    session.commit()
    send(session, celery, audit.id)
    log.info("audit queued", extra={"audit": audit.id, "version": version.label})
    return audit_out(audit)


@router.get("/jobs/audit", response_model=Page[Audit], dependencies=[Depends(require("read"))])
def list_audits(
    request: Request,
    session: SessionDep,
    paging: PagingDep,
    stream: Annotated[str | None, Query()] = None,
    version: Annotated[str | None, Query(max_length=200)] = None,
    status: Annotated[JobStatus | None, Query()] = None,
) -> Page[Audit]:
    """Audits, newest first."""
    stream_id = find_stream(session, stream).id if stream is not None else None
    version_id = find_version(session, version).id if version is not None else None
    page = audits.page(session, stream_id, version_id, status.value if status else None, paging.limit, paging.offset)
    return page_out(page, [audit_out(a) for a in page.items], request)


@router.get("/jobs/audit/{audit_id}", response_model=Audit, dependencies=[Depends(require("read"))])
def get_audit(audit_id: Id, session: SessionDep) -> Audit:
    audit = audits.get(session, audit_id)
    if audit is None:
        raise Problem(404, f"no audit with id {audit_id}")
    return audit_out(audit)
