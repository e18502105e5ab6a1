"""Collecting a stream: apply its retention policy (soft-delete what it lets go) and purge what is past its grace.

`POST /streams/{name}/gc` and the worker's periodic sweep (worker/tasks.py) both run `collect`.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from diet_client.models import GcItem, GcReport, Retention
from service.registry import datasets, lifecycle, retention, streams
from service.registry.tables import RetentionPolicy, Stream
from service.storage import Storage

log = logging.getLogger(__name__)
SWEEPER = "retention sweep"


def retention_out(policy: RetentionPolicy, stream: Stream) -> Retention:
    return Retention(
        stream=stream.name, keep_last=policy.keep_last, keep_days=policy.keep_days, grace_s=policy.grace_s,
        updated_by=policy.updated_by, updated_at=policy.updated_at,
    )  # fmt: skip


def collect(
    session: Session, storage: Storage, stream: Stream, *, default_grace_s: int, actor: str, dry_run: bool
) -> GcReport:
    """What the policy lets go is soft-deleted (each version locked and checked again first); then everything
    deleted longer ago than the grace period is purged. With `dry_run` nothing changes: the report says what would."""
    policy = retention.get(session, stream.id)
    deleted: list[GcItem] = []
    kept: list[GcItem] = []
    if policy is not None:
        plan = retention.plan(session, policy)
        kept = [GcItem(version=v.label, reasons=r) for v, r in plan.keep]
        for version, reason in plan.delete:
            if not dry_run:
                streams.by_name(session, stream.name, lock=True)  # as DELETE /datasets/{version} does
                locked = datasets.get(session, stream.id, version.number, lock=True)
                needs = lifecycle.version_needs(session, locked) if locked is not None else ["gone"]
                if locked is None or locked.deleted_at is not None or needs:
                    session.rollback()
                    if needs and locked is not None:
                        kept.append(GcItem(version=version.label, reasons=needs))
                    continue
                lifecycle.soft_delete(locked, actor)
                session.commit()
                log.info("version deleted by retention", extra={"dataset": version.label})
            deleted.append(GcItem(version=version.label, reasons=[reason]))
    if dry_run:
        versions, blocks = lifecycle.due(session, stream, default_grace_s)
        freed = sum(_stored_bytes(storage, [a["key"] for a in v.artifacts]) for v in versions)
        freed += sum(_stored_bytes(storage, [b.key]) for b in blocks)
        purged = lifecycle.Purged([v.label for v in versions], [b.id for b in blocks], freed)
    else:
        purged = lifecycle.purge(session, storage, stream, default_grace_s)
    return GcReport(
        stream=stream.name, dry_run=dry_run, policy=retention_out(policy, stream) if policy is not None else None,
        deleted=deleted, kept=sorted(kept, key=lambda item: -int(item.version.rsplit("@v", 1)[1])),
        purged_versions=purged.versions, purged_blocks=purged.blocks, freed_bytes=purged.bytes,
    )  # fmt: skip


def _stored_bytes(storage: Storage, keys: list[str]) -> int:
    return sum(storage.size(key) for key in keys if storage.exists(key))
