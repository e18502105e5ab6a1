"""Blocks: uploaded Parquet files of a stream, one per stage, content-addressed."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.registry.paging import Page, paginate
from service.registry.tables import Block


def blob_key(stream: str, sha256: str) -> str:
    return f"blocks/{stream}/{sha256}.parquet"


def get(session: Session, block_id: int, *, lock: bool = False) -> Block | None:
    """The block, deleted or retired or not (see `Block.deleted_at`, `Block.purged_at`)."""
    if not lock:
        return session.get(Block, block_id)
    return session.get(Block, block_id, with_for_update={"of": Block}, populate_existing=True)


def by_sha256(session: Session, stream_id: int, sha256: str) -> Block | None:
    return session.scalar(select(Block).where(Block.stream_id == stream_id, Block.sha256 == sha256))


def by_stage(session: Session, stream_id: int, stage: int, *, lock: bool = False) -> Block | None:
    stmt = select(Block).where(Block.stream_id == stream_id, Block.stage == stage)
    if lock:
        stmt = stmt.with_for_update(of=Block)
    return session.scalar(stmt)


def next_stage(session: Session, stream_id: int) -> int:
    return (session.scalar(select(func.max(Block.stage)).where(Block.stream_id == stream_id)) or 0) + 1


def page(session: Session, stream_id: int | None, limit: int, offset: int) -> Page[Block]:
    # Soft-deleted blocks are hidden; retired ones (blob freed) stay listed with their digest and stats.
    stmt = select(Block).where(Block.deleted_at.is_(None) | Block.purged_at.is_not(None))
    stmt = stmt.order_by(Block.stream_id, Block.stage)
    if stream_id is not None:
        stmt = stmt.where(Block.stream_id == stream_id)
    return paginate(session, stmt, limit, offset)
