"""Deletion that keeps lineage whole: DELETE and restore of versions and blocks, retention policies, GC.

Deleting is soft (hidden, restorable for the grace period) and refused with 409, naming what needs
the thing, while an alias, a queued or running job or the next stage needs it. Blobs are freed
once the grace period is over, by `POST /streams/{name}/gc` or the worker's periodic sweep.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from sqlalchemy.orm import Session

from diet_client import models as wire
from diet_client.models import Deletion, GcReport, Manifest, Retention, RetentionIn
from service import gc
from service.auth import Principal, require
from service.deps import SessionDep, SettingsDep, StorageDep
from service.manifest import manifest
from service.pages import Id
from service.problems import Problem
from service.registry import blocks, datasets, lifecycle, retention, streams
from service.registry.tables import Block, DatasetVersion, Stream
from service.routes.blocks import block_out
from service.routes.datasets import find_version
from service.routes.streams import find_stream

router = APIRouter(tags=["retention"])
Admin = Annotated[Principal, Depends(require("admin"))]


def _lock_stream(session: Session, stream: Stream) -> None:
    """Deletions, GC and alias moves of a stream take its row lock: none sees the others half done."""
    streams.by_name(session, stream.name, lock=True)


def _refuse_if_needed(what: str, needs: list[str]) -> None:
    if needs:
        raise Problem(409, f"{what} is still needed: {'; '.join(needs)}", title="Still referenced", needed_by=needs)


def _deletion(item: DatasetVersion | Block, name: str, restore: str, session: Session, default_grace_s: int) -> Deletion:
    assert item.deleted_at is not None and item.deleted_by is not None
    purge_after: datetime = item.deleted_at + lifecycle.grace(session, item.stream_id, default_grace_s)
    return Deletion(
        deleted=name, deleted_at=item.deleted_at, deleted_by=item.deleted_by, purge_after=purge_after, restore=restore
    )


@router.delete("/datasets/{version}", response_model=Deletion)
def delete_version(version: str, session: SessionDep, settings: SettingsDep, principal: Admin) -> Deletion:
    """Soft-delete a version: hidden now, restorable until `purge_after`, when its files are freed."""
    found = find_version(session, version)
    _lock_stream(session, found.stream)
    locked = datasets.get(session, found.stream_id, found.number, lock=True)
    assert locked is not None  # version rows are never removed
    if locked.deleted_at is not None:
        raise Problem(404, f"{locked.label} was deleted meanwhile")
    _refuse_if_needed(locked.label, lifecycle.version_needs(session, locked))
    lifecycle.soft_delete(locked, principal.name)
    session.commit()
    return _deletion(locked, locked.label, f"/datasets/{locked.label}/restore", session, settings.deletion_grace_s)


@router.post("/datasets/{version}/restore", response_model=Manifest)
def restore_version(version: str, session: SessionDep, principal: Admin) -> Manifest:
    """Undo a deletion while its grace period lasts (410 once its files are freed)."""
    found = find_version(session, version, include_deleted=True)
    _lock_stream(session, found.stream)
    locked = datasets.get(session, found.stream_id, found.number, lock=True)
    assert locked is not None
    if locked.purged_at is not None:
        raise Problem(410, f"{locked.label} cannot be restored: its files were freed at {locked.purged_at:%Y-%m-%d %H:%M:%S} UTC")
    if locked.deleted_at is None:
        raise Problem(409, f"{locked.label} is not deleted")
    lifecycle.restore(locked)
    session.commit()
    return manifest(locked)


def _block(session: Session, block_id: int) -> Block:
    """The block, locked after its stream's row (the order every deletion takes its locks in)."""
    block = blocks.get(session, block_id)
    if block is None:
        raise Problem(404, f"no block with id {block_id}")
    _lock_stream(session, block.stream)
    locked = blocks.get(session, block_id, lock=True)
    assert locked is not None  # block rows are never removed
    return locked


@router.delete("/blocks/{block_id}", response_model=Deletion)
def delete_block(block_id: Id, session: SessionDep, settings: SettingsDep, principal: Admin) -> Deletion:
    """Soft-delete a block once its stage is distilled; after the grace period it is retired: its bytes are
    freed, its sha256 and stats stay in the registry (and in the manifests of the versions that saw it)."""
    block = _block(session, block_id)
    if block.deleted_at is not None:
        state = "retired" if block.purged_at is not None else "deleted"
        raise Problem(409, f"block {block.id} is already {state}", title="Already deleted")
    _refuse_if_needed(f"block {block.id} (stage {block.stage})", lifecycle.block_needs(session, block))
    lifecycle.soft_delete(block, principal.name)
    session.commit()
    return _deletion(block, f"block {block.id}", f"/blocks/{block.id}/restore", session, settings.deletion_grace_s)


@router.post("/blocks/{block_id}/restore", response_model=wire.Block)
def restore_block(block_id: Id, session: SessionDep, principal: Admin) -> wire.Block:
    block = _block(session, block_id)
    if block.purged_at is not None:
        raise Problem(410, f"block {block.id} is retired: its bytes were freed (upload them again as a new stream's block)")
    if block.deleted_at is None:
        raise Problem(409, f"block {block.id} is not deleted")
    lifecycle.restore(block)
    session.commit()
    return block_out(block)


@router.get("/streams/{name}/retention", response_model=Retention, dependencies=[Depends(require("read"))])
def get_retention(name: str, session: SessionDep) -> Retention:
    stream = find_stream(session, name)
    policy = retention.get(session, stream.id)
    if policy is None:
        raise Problem(404, f"stream {stream.name!r} has no retention policy: it keeps every version (PUT one)")
    return gc.retention_out(policy, stream)


@router.put("/streams/{name}/retention", response_model=Retention)
def put_retention(name: str, body: RetentionIn, session: SessionDep, principal: Admin) -> Retention:
    """Set the stream's policy: keep the newest `keep_last` versions and those younger than `keep_days`."""
    stream = find_stream(session, name)
    _lock_stream(session, stream)
    policy = retention.put(session, stream.id, body.keep_last, body.keep_days, body.grace_s, principal.name)
    session.commit()
    return gc.retention_out(policy, stream)


@router.post("/streams/{name}/gc", response_model=GcReport)
def collect_stream(
    name: str,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    principal: Admin,
    dry_run: Annotated[bool, Query(description="only list what would be deleted and purged")] = False,
) -> GcReport:
    """Apply the retention policy now (what the worker's sweep does periodically) and purge what is past its grace."""
    stream = find_stream(session, name)
    return gc.collect(
        session, storage, stream, default_grace_s=settings.deletion_grace_s, actor=principal.name, dry_run=dry_run
    )
