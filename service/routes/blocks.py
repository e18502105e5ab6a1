"""POST /blocks (a Parquet upload), GET /blocks, GET /blocks/{id}."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from diet_client import models as wire
from service import ingest
from service.answers import from_row
from service.auth import require
from service.deps import DatabaseDep, MetricsDep, SessionDep, SettingsDep, StorageDep
from service.parquet_guard import DecodeLimits
from service.pages import MAX_STAGE, Id, PagingDep, page_out
from service.problems import Problem
from service.registry import blocks
from service.registry.tables import Block, Stream
from service.routes.streams import find_stream, stream_filter

router = APIRouter(tags=["blocks"])

PARQUET_TYPES = {"application/vnd.apache.parquet", "application/octet-stream"}


def block_out(block: Block) -> wire.Block:
    return from_row(wire.Block, block, stream=block.stream.name, retired_at=block.purged_at)


@router.post(
    "/blocks",
    status_code=201,
    response_model=wire.Block,
    responses={200: {"model": wire.Block, "description": "the same bytes were there already"}},
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
) -> wire.Block:
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


@router.get("/blocks", response_model=wire.Page[wire.Block], dependencies=[Depends(require("read"))])
def list_blocks(
    request: Request,
    session: SessionDep,
    paging: PagingDep,
    stream: Annotated[str | None, Query(description="only this stream's blocks")] = None,
) -> wire.Page[wire.Block]:
    stream_id = stream_filter(session, stream)
    page = blocks.page(session, stream_id, paging.limit, paging.offset)
    return page_out(page, [block_out(b) for b in page.items], request)


@router.get("/blocks/{block_id}", response_model=wire.Block, dependencies=[Depends(require("read"))])
def get_block(block_id: Id, session: SessionDep) -> wire.Block:
    block = blocks.get(session, block_id)
    if block is None:
        raise Problem(404, f"no block with id {block_id}")
    if block.deleted_at is not None and block.purged_at is None:
        raise Problem(404, f"block {block.id} was deleted; restore it with POST /blocks/{block.id}/restore")
    return block_out(block)
