"""From request body to block row: stream to a temporary blob, check it with the engine, then record it.

Nothing is recorded, and no blob is left, unless the whole file is a readable
Parquet file that fits the stream's schema.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from diet_engine.data.blocks import BlockStats, DataError, block_stats
from diet_engine.data.schema import StreamSchema
from service.parquet_guard import DecodeLimits, check_decoded_size
from service.problems import Problem
from service.registry import blocks
from service.registry.db import Database
from service.registry.tables import Block, Stream
from service.storage import Blob, Storage, TooLarge

log = logging.getLogger(__name__)


async def receive(chunks: AsyncIterator[bytes], storage: Storage, max_bytes: int) -> Blob:
    """Write a request body to a temporary blob, chunk by chunk, with a running sha256 and a size limit."""
    writer = await run_in_threadpool(storage.writer, max_bytes)
    try:
        async for chunk in chunks:
            if chunk:
                await run_in_threadpool(writer.write, chunk)
        return await run_in_threadpool(writer.close)
    except TooLarge:
        await run_in_threadpool(writer.discard)
        raise Problem(413, f"the body is larger than the limit of {max_bytes} bytes (DIET_MAX_UPLOAD_BYTES)") from None
    except ClientDisconnect:
        await run_in_threadpool(writer.discard)
        raise Problem(400, "the client went away before the upload finished") from None
    except BaseException:
        await run_in_threadpool(writer.discard)
        raise


def _epoch(seconds: int | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


def check_block(storage: Storage, blob: Blob, schema: StreamSchema, limits: DecodeLimits | None = None) -> BlockStats:
    """Read the whole blob with the engine (record batch by record batch): schema, labels, time range."""
    with tempfile.TemporaryDirectory(prefix="diet-upload-") as scratch:
        path = storage.local_copy(blob.key, Path(scratch), "block.parquet")
        try:
            if limits is not None:  # what it decodes to is counted before the engine decodes it
                check_decoded_size(path, schema.columns(), limits)
            stats = block_stats(path, schema)
        except DataError as exc:
            raise Problem(422, str(exc), title="Block does not fit the stream schema", columns=exc.columns) from exc
        except (pa.ArrowException, OSError) as exc:
            raise Problem(422, f"the body is not a readable Parquet file: {exc}", title="Unreadable Parquet") from exc
    if stats.rows == 0:
        raise Problem(422, "the block has no rows", title="Empty block")
    return stats


def register(
    db: Database, storage: Storage, stream: Stream, blob: Blob, stage: int | None, limits: DecodeLimits | None = None
) -> tuple[Block, bool]:
    """The block for this blob, and whether it is new. The caller deletes blob.key afterwards."""
    with db.session() as session:
        existing = blocks.by_sha256(session, stream.id, blob.sha256)
    if existing is not None:
        return _same_bytes(existing, stage), False

    stats = check_block(storage, blob, StreamSchema.model_validate(stream.schema_doc), limits)
    key = blocks.blob_key(stream.name, blob.sha256)
    with db.session() as session:
        # Checked again: another upload of the same bytes may have been recorded while this one was read.
        again = blocks.by_sha256(session, stream.id, blob.sha256)
        if again is not None:
            return _same_bytes(again, stage), False
        at = stage or blocks.next_stage(session, stream.id)
        taken = blocks.by_stage(session, stream.id, at)
        if taken is not None:
            if taken.sha256 == blob.sha256:  # the same bytes, committed by another upload between the two queries
                return _same_bytes(taken, stage), False
            raise Problem(409, f"stage {at} of {stream.name!r} already holds block {taken.id} (other bytes)")
        block = Block(
            stream_id=stream.id,
            stage=at,
            sha256=blob.sha256,
            key=key,
            rows=stats.rows,
            bytes=blob.bytes,
            time_min=_epoch(stats.time_min),
            time_max=_epoch(stats.time_max),
            label_rates=stats.label_rates,
        )
        session.add(block)
        try:
            session.flush()
        except IntegrityError:
            # The same bytes, or another block for this stage, were recorded meanwhile.
            session.rollback()
            again = blocks.by_sha256(session, stream.id, blob.sha256)
            if again is not None:
                return _same_bytes(again, stage), False
            raise Problem(409, f"stage {at} of {stream.name!r} was taken by another upload meanwhile") from None
        # The row is flushed (its unique keys are ours) before the blob takes its final name,
        # and the blob goes again if the row cannot be committed.
        storage.rename(blob.key, key)
        try:
            session.commit()
        except BaseException:
            storage.delete(key)
            raise
        session.refresh(block, ["stream"])  # loaded now: the caller reads it after the session is gone
        log.info("block recorded", extra={"stream": stream.name, "stage": at, "block": block.id, "rows": stats.rows})
        return block, True


def _same_bytes(block: Block, stage: int | None) -> Block:
    if block.purged_at is not None:
        raise Problem(409, f"these bytes were block {block.id} (stage {block.stage}), which is retired", title="Block retired")
    if block.deleted_at is not None:
        raise Problem(409, f"these bytes are block {block.id}, deleted: restore it with POST /blocks/{block.id}/restore")
    if stage is not None and stage != block.stage:
        raise Problem(409, f"these bytes are already block {block.id}, at stage {block.stage}, not {stage}")
    return block
