"""Blocks: uploaded Parquet files of a stream, one per stage, content-addressed."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.registry.paging import Page, paginate
from service.registry.tables import Block


def blob_key(stream: str, sha256: str) -> str:
    return f"blocks/{stream}/{sha256}.parquet"


def get(session: Session, block_id: int) -> Block | None:
    return session.get(Block, block_id)


def by_sha256(session: Session, stream_id: int, sha256: str) -> Block | None:
    return session.scalar(select(Block).where(Block.stream_id == stream_id, Block.sha256 == sha256))


def by_stage(session: Session, stream_id: int, stage: int) -> Block | None:
    return session.scalar(select(Block).where(Block.stream_id == stream_id, Block.stage == stage))


def next_stage(session: Session, stream_id: int) -> int:
    return (session.scalar(select(func.max(Block.stage)).where(Block.stream_id == stream_id)) or 0) + 1


def page(session: Session, stream_id: int | None, limit: int, offset: int) -> Page[Block]:
    stmt = select(Block).order_by(Block.stream_id, Block.stage)
    if stream_id is not None:
        stmt = stmt.where(Block.stream_id == stream_id)
    return paginate(session, stmt, limit, offset)
