"""Deleting versions and blocks without breaking lineage: what still needs them, soft deletion, restore, purge.

A version or block is *deleted* first (hidden from reads, restorable) and *purged* once its grace
period is over: its blobs are freed, its row stays with its digests and stats, so the manifests of
the versions after it still name their parents and blocks. Nothing is deleted while something
needs it (`version_needs`, `block_needs`): an alias, a queued or running job, or the next stage.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.registry import aliases, datasets
from service.registry.tables import ACTIVE, Block, DatasetVersion, Job, RetentionPolicy, Stream, utcnow
from service.storage import Storage

log = logging.getLogger(__name__)


def version_needs(session: Session, version: DatasetVersion) -> list[str]:
    """What needs this version kept, one sentence each (empty: it may go)."""
    needs = [f"alias '{a.name}' points at it" for a in aliases.pointing_at(session, version.id)]
    newest_of_stage = datasets.latest(session, version.stream_id, version.stage)
    next_stage = select(Job).where(
        Job.stream_id == version.stream_id, Job.stage == version.stage + 1, Job.status.in_(ACTIVE)
    )
    for job in session.scalars(next_stage.order_by(Job.id)):
        # A job continues from its prerequisite's version, else from the newest one of the stage before.
        parent = job.after_job.dataset if job.after_job is not None else newest_of_stage
        if parent is not None and parent.id == version.id:
            needs.append(f"job {job.id} ({job.status}) continues from it")
    later = datasets.latest(session, version.stream_id, version.stage + 1)
    if newest_of_stage is not None and newest_of_stage.id == version.id and later is None:
        needs.append(
            f"it is the newest stage {version.stage} version and stage {version.stage + 1} is not distilled yet: "
            "the next stage continues from it"
        )
    return needs


def block_needs(session: Session, block: Block) -> list[str]:
    """What needs this block's bytes kept (empty: it may be retired)."""
    active = select(Job).where(Job.block_id == block.id, Job.status.in_(ACTIVE)).order_by(Job.id)
    needs = [f"job {job.id} ({job.status}) distills it" for job in session.scalars(active)]
    # Distilled: a live version of its stage or a later one has seen it (its rows carry the block on).
    seen = datasets.live(block.stream_id).where(DatasetVersion.stage >= block.stage).limit(1)
    if session.scalar(seen) is None:
        needs.append(f"stage {block.stage} is not distilled yet: the job that distills it reads this block")
    return needs


def grace(session: Session, stream_id: int, default_s: int) -> timedelta:
    """How long a deleted version or block of the stream stays restorable."""
    policy = session.get(RetentionPolicy, stream_id)
    return timedelta(seconds=policy.grace_s if policy is not None else default_s)


def soft_delete(item: DatasetVersion | Block, actor: str) -> None:
    item.deleted_at, item.deleted_by = utcnow(), actor


def restore(item: DatasetVersion | Block) -> None:
    item.deleted_at, item.deleted_by = None, None


@dataclass(frozen=True)
class Purged:
    """What a purge freed: labels of versions, ids of blocks, and the bytes their blobs held."""

    versions: list[str]
    blocks: list[int]
    bytes: int


def due(session: Session, stream: Stream, default_grace_s: int, now: datetime | None = None) -> tuple[list[DatasetVersion], list[Block]]:
    """Deleted versions and blocks of the stream whose grace period is over, not yet purged."""
    cutoff = (now or utcnow()) - grace(session, stream.id, default_grace_s)
    versions = select(DatasetVersion).where(
        DatasetVersion.stream_id == stream.id, DatasetVersion.purged_at.is_(None), DatasetVersion.deleted_at <= cutoff
    )
    block_rows = select(Block).where(Block.stream_id == stream.id, Block.purged_at.is_(None), Block.deleted_at <= cutoff)
    return (
        list(session.scalars(versions.order_by(DatasetVersion.number))),
        list(session.scalars(block_rows.order_by(Block.stage))),
    )


def purge(session: Session, storage: Storage, stream: Stream, default_grace_s: int) -> Purged:
    """Free the blobs of what is due, one row at a time, each locked and checked again (a restore may have won).

    Commits after each row: a blob is gone once its row says so.
    """
    versions, block_rows = due(session, stream, default_grace_s)
    freed_versions, freed_blocks, freed = [], [], 0
    for version in versions:
        locked = datasets.get(session, stream.id, version.number, lock=True)
        if locked is None or locked.deleted_at is None or locked.purged_at is not None:
            session.rollback()
            continue
        freed += _delete_blobs(storage, (a["key"] for a in locked.artifacts))
        locked.purged_at = utcnow()
        session.commit()
        freed_versions.append(locked.label)
        log.info("version purged", extra={"dataset": locked.label})
    for block in block_rows:
        locked_block = session.get(Block, block.id, with_for_update={"of": Block}, populate_existing=True)
        if locked_block is None or locked_block.deleted_at is None or locked_block.purged_at is not None:
            session.rollback()
            continue
        freed += _delete_blobs(storage, [locked_block.key])
        locked_block.purged_at = utcnow()
        session.commit()
        freed_blocks.append(locked_block.id)
        log.info("block retired", extra={"stream": stream.name, "block": locked_block.id})
    return Purged(freed_versions, freed_blocks, freed)


def _delete_blobs(storage: Storage, keys: Iterable[str]) -> int:
    """Delete the blobs; the bytes they held (a blob already gone counts nothing)."""
    freed = 0
    for key in keys:
        if storage.exists(key):
            freed += storage.size(key)
            storage.delete(key)
    return freed
