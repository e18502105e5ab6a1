"""Audit jobs in the registry: queued -> running -> succeeded | failed (or cancelled), claimed once.

An audit names its evaluation blocks by id when it is created (its request gives stages; see
service/routes/audits.py), so a block uploaded later cannot change what an audit measures.
A stream's audit policy (`streams.audit`: every k stages) is carried out by `schedule_due`, which
the worker calls after each new version and the API's reconciler each round (so a version whose
evaluation blocks arrive after it is audited once they are all there).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from diet_engine.config import CandidateConfig
from diet_engine.evaluate.audit import AuditConfig, pool_models

from service.registry.paging import Page, paginate
from service.registry.tables import ACTIVE, Audit, Block, DatasetVersion, JobStatus, Stream, utcnow


def get(session: Session, audit_id: int, *, lock: bool = False) -> Audit | None:
    return session.get(Audit, audit_id, with_for_update={"of": Audit} if lock else None)


def page(
    session: Session, stream_id: int | None, version_id: int | None, status: str | None, limit: int, offset: int
) -> Page[Audit]:
    stmt = select(Audit).order_by(Audit.id.desc())
    if stream_id is not None:
        stmt = stmt.where(Audit.stream_id == stream_id)
    if version_id is not None:
        stmt = stmt.where(Audit.version_id == version_id)
    if status is not None:
        stmt = stmt.where(Audit.status == status)
    return paginate(session, stmt, limit, offset)


def active_like(session: Session, version_id: int, request: dict[str, Any], blocks: dict[str, Any]) -> Audit | None:
    """A queued or running audit of the version with the same request (asking again returns it)."""
    candidates = session.scalars(select(Audit).where(Audit.version_id == version_id, Audit.status.in_(ACTIVE)))
    return next((a for a in candidates if a.request == request and a.blocks == blocks), None)


def evaluation_stages(version_stage: int, subsequent: int | None, valid: int | None, test: int | None) -> dict[str, int]:
    """The stages an audit evaluates on: as asked, else t+1, t+2, t+3 after the version's stage t."""
    return {
        "subsequent": subsequent or version_stage + 1,
        "valid": valid or version_stage + 2,
        "test": test or version_stage + 3,
    }


def block_at(session: Session, stream_id: int, stage: int) -> Block | None:
    return session.scalar(select(Block).where(Block.stream_id == stream_id, Block.stage == stage))


def create(
    session: Session, version: DatasetVersion, request: dict[str, Any], blocks: dict[str, Any], *, scheduled: bool
) -> Audit:
    audit = Audit(
        stream_id=version.stream_id, version_id=version.id, request=request, blocks=blocks,
        scheduled=scheduled, status=JobStatus.queued.value,
    )  # fmt: skip
    session.add(audit)
    session.flush()
    return audit


def claim(session: Session, audit_id: int) -> int | None:
    """Mark a queued audit running; returns its attempt number, or None when it is not ours to run."""
    now = utcnow()
    result = session.execute(
        update(Audit)
        .where(Audit.id == audit_id, Audit.status == JobStatus.queued.value)
        .values(status=JobStatus.running.value, attempts=Audit.attempts + 1, started_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return None
    return session.scalar(select(Audit.attempts).where(Audit.id == audit_id))


def report(session: Session, audit_id: int, progress: dict[str, Any]) -> bool:
    """Record progress; False when the audit is no longer running (cancelled)."""
    result = session.execute(
        update(Audit)
        .where(Audit.id == audit_id, Audit.status == JobStatus.running.value)
        .values(progress=progress, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def finish(session: Session, audit: Audit, status: JobStatus, *, result: dict[str, Any] | None = None,
           error: str | None = None) -> None:  # fmt: skip
    audit.status, audit.result, audit.error, audit.finished_at = status.value, result, error, utcnow()


def mark_sent(session: Session, audit_id: int, sent: bool = True) -> None:
    session.execute(
        update(Audit)
        .where(Audit.id == audit_id, Audit.status == JobStatus.queued.value)
        .values(sent_at=utcnow() if sent else None)
        .execution_options(synchronize_session=False)
    )


def unsent(session: Session) -> list[int]:
    stmt = select(Audit.id).where(Audit.status == JobStatus.queued.value, Audit.sent_at.is_(None)).order_by(Audit.id)
    return list(session.scalars(stmt))


def forget_sent(session: Session) -> int:
    result = session.execute(
        update(Audit)
        .where(Audit.status == JobStatus.queued.value, Audit.sent_at.is_not(None))
        .values(sent_at=None)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount


def history(session: Session, stream_id: int) -> list[Audit]:
    """The stream's succeeded audits, oldest version first (the report's τ over time)."""
    stmt = (
        select(Audit)
        .join(DatasetVersion, Audit.version_id == DatasetVersion.id)
        .where(Audit.stream_id == stream_id, Audit.status == JobStatus.succeeded.value)
        .order_by(DatasetVersion.number, Audit.id)
    )
    return list(session.scalars(stmt))


def policy_request(policy: dict[str, Any]) -> dict[str, Any]:
    """What a scheduled audit asks for, from the stream's policy."""
    return {k: policy[k] for k in ("pool", "models", "candidate", "repeats") if k in policy} | {"seed": 0}


class Unresolved(ValueError):
    """An audit that cannot be made as asked; `status` is the HTTP status a route answers with."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


def resolve(
    session: Session, version: DatasetVersion, request: dict[str, Any], stages: dict[str, int]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The normalised request (models named, configs checked) and the evaluation blocks by id."""
    try:
        models = request.get("models") or pool_models(request.get("pool", "p5"))
        config = AuditConfig(models=models, candidate=request.get("candidate", {}),
                             repeats=request.get("repeats", 1), seed=request.get("seed", 0))  # fmt: skip
        CandidateConfig.model_validate(config.candidate)
    except (ValueError, ValidationError) as exc:
        raise Unresolved(422, f"audit request: {exc}") from None
    seen = {ref["stage"] for ref in version.blocks}
    if len(set(stages.values())) != 3:
        raise Unresolved(422, f"the subsequent, valid and test blocks must be three different stages, not {stages}")
    leaked = sorted(name for name, stage in stages.items() if stage in seen)
    if leaked:
        raise Unresolved(422, f"{version.label} has seen the {', '.join(leaked)} block(s) {stages}: audit it on later stages")
    blocks: dict[str, Any] = {}
    for name, stage in stages.items():
        block = block_at(session, version.stream_id, stage)
        if block is None:
            raise Unresolved(409, f"stage {stage} of {version.stream.name!r} ({name}) has no block: upload it first")
        blocks[name] = {"id": block.id, "stage": stage}
    blocks["history"] = [{"id": ref["id"], "stage": ref["stage"]} for ref in version.blocks]
    for ref in [*blocks["history"], *(blocks[n] for n in stages)]:
        block = session.get(Block, ref["id"])
        if block is None or block.purged_at is not None:
            raise Unresolved(409, f"block {ref['id']} (stage {ref['stage']}) has been retired: its rows are gone")
    normalised = {"pool": request.get("pool") if not request.get("models") else None, **config.model_dump(mode="json")}
    return normalised, blocks


def schedule_due(session: Session, stream: Stream) -> list[Audit]:
    """Queue the scheduled audits the stream's policy asks for and whose evaluation blocks are all there."""
    policy = stream.audit
    if not policy:
        return []
    # One scheduler at a time per stream (the worker after a version, the API's reconciler each round).
    session.execute(select(Stream.id).where(Stream.id == stream.id).with_for_update())
    audited = select(Audit.version_id).where(Audit.stream_id == stream.id, Audit.scheduled.is_(True))
    stmt = select(DatasetVersion).where(
        DatasetVersion.stream_id == stream.id,
        DatasetVersion.stage % int(policy["every"]) == 0,
        DatasetVersion.id.not_in(audited),
        DatasetVersion.deleted_at.is_(None),
    )
    made = []
    for version in session.scalars(stmt.order_by(DatasetVersion.number)):
        stages = evaluation_stages(version.stage, None, None, None)
        try:
            request, blocks = resolve(session, version, policy_request(policy), stages)
        except Unresolved:
            continue  # not all its evaluation blocks are there yet (or they are retired)
        made.append(create(session, version, request, blocks, scheduled=True))
    return made
