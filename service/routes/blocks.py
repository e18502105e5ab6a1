"""POST /blocks (a Parquet upload), GET /blocks, GET /blocks/{id}."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from service import ingest
from service.auth import require
from service.deps import DatabaseDep, MetricsDep, SessionDep, SettingsDep, StorageDep
from service.parquet_guard import DecodeLimits
from service.pages import MAX_STAGE, Id, PageOut, PageParams, page_out, page_params
from service.problems import Problem
from service.registry import blocks
from service.registry.tables import Block, Stream
from service.routes.streams import find_stream

router = APIRouter(tags=["blocks"])

PARQUET_TYPES = {"application/vnd.apache.parquet", "application/octet-stream"}


class BlockOut(BaseModel):
    id: int
    stream: str
    stage: int
    sha256: str
    rows: int
    bytes: int
    time_min: datetime | None
    time_max: datetime | None
    label_rates: dict[str, float]
    created_at: datetime
    retired_at: datetime | None = None  # its bytes were freed; its digest and stats stay


def block_out(block: Block) -> BlockOut:
    return BlockOut(
        id=block.id,
        stream=block.stream.name,
        stage=block.stage,
        sha256=block.sha256,
        rows=block.rows,
        bytes=block.bytes,
        time_min=block.time_min,
        time_max=block.time_max,
        label_rates=block.label_rates,
        created_at=block.created_at,
        retired_at=block.purged_at,
    )


@router.post(
    "/blocks",
    status_code=201,
    response_model=BlockOut,
    dependencies=[Depends(require("ingest"))],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def upload_block(
    request: Request,
    response: Response,
    settings: SettingsDep,
    db: DatabaseDep,
    storage: StorageDep,
    metrics: MetricsDep,
    stream: Annotated[str, Query(description="the stream this block belongs to")],
    stage: Annotated[int | None, Query(ge=1, le=MAX_STAGE, description="default: the stream's next stage")] = None,
) -> BlockOut:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in PARQUET_TYPES:
        raise Problem(415, f"send the Parquet file as Content-Type: application/vnd.apache.parquet, not {media_type!r}")
    limit = settings.max_upload_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Problem(413, f"Content-Length {declared} is over the limit of {limit} bytes (DIET_MAX_UPLOAD_BYTES)")

    def lookup() -> Stream:
        with db.session() as session:
            return find_stream(session, stream)

    stream_row = await run_in_threadpool(lookup)
    blob = await ingest.receive(request.stream(), storage, limit)
    try:
        limits = DecodeLimits(settings.max_block_rows, settings.max_block_decoded_bytes)
        block, created = await run_in_threadpool(ingest.register, db, storage, stream_row, blob, stage, limits)
    finally:
        await run_in_threadpool(storage.delete, blob.key)  # gone already when it became the block's file
    if created:
        metrics.upload_bytes.inc(blob.bytes)
    else:
        response.status_code = 200
    return block_out(block)


@router.get("/blocks", response_model=PageOut[BlockOut], dependencies=[Depends(require("read"))])
def list_blocks(
    request: Request,
    session: SessionDep,
    paging: Annotated[PageParams, Depends(page_params)],
    stream: Annotated[str | None, Query(description="only this stream's blocks")] = None,
) -> PageOut[BlockOut]:
    stream_id = find_stream(session, stream).id if stream is not None else None
    page = blocks.page(session, stream_id, paging.limit, paging.offset)
    return page_out(page, [block_out(b) for b in page.items], request)


@router.get("/blocks/{block_id}", response_model=BlockOut, dependencies=[Depends(require("read"))])
def get_block(block_id: Id, session: SessionDep) -> BlockOut:
    block = blocks.get(session, block_id)
    if block is None:
        raise Problem(404, f"no block with id {block_id}")
    if block.deleted_at is not None and block.purged_at is None:
        raise Problem(404, f"block {block.id} was deleted; restore it with POST /blocks/{block.id}/restore")
    return block_out(block)
