"""Parquet bombs: a small upload must not decode into more rows or bytes than the API can afford.

Parquet compresses and dictionary-encodes: a few kilobytes can stand for billions of
rows, or for one long string repeated in every row, which the engine's reader would
spell out batch by batch. Before the engine reads a block, this check counts what its
schema columns decode to, without decoding them: fixed-width columns from the row
count, text columns read as dictionaries (each distinct value once, plus an index per
row). It refuses a block with too many rows, too many decoded bytes in all, or one
engine read batch too large to hold in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from diet_engine.data.blocks import DEFAULT_READ_ROWS
from service.problems import Problem

# The engine holds one read batch (DEFAULT_READ_ROWS rows) of the schema columns at a time.
MAX_BATCH_DECODED_BYTES = 512 * 1024**2
_TITLE = "Block too large when decoded"


@dataclass(frozen=True)
class DecodeLimits:
    max_rows: int
    max_decoded_bytes: int
    max_batch_decoded_bytes: int = MAX_BATCH_DECODED_BYTES


def _is_text(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _fixed_width(t: pa.DataType) -> int:
    """Bytes per row of a fixed-width column (0 for others: the engine refuses those types anyway)."""
    try:
        return max(t.bit_width, 8) // 8
    except ValueError:
        return 0


def _text_bytes(column: pa.Array | pa.ChunkedArray) -> int:
    """Bytes the column takes spelled out (values plus 4-byte offsets), counted from its dictionary form."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    total = 0
    for chunk in chunks:
        if pa.types.is_dictionary(chunk.type):
            if len(chunk.dictionary):
                lengths = pc.binary_length(chunk.dictionary).fill_null(0)
                total += int(pc.sum(pc.take(lengths, chunk.indices.fill_null(0))).as_py() or 0)
        else:
            total += int(pc.sum(pc.binary_length(chunk).fill_null(0)).as_py() or 0)
        total += 4 * len(chunk)
    return total


def _batch_sizes(path: Path, columns: list[str], rows: int) -> Iterator[tuple[int, int]]:
    """(rows, decoded bytes) of each engine read batch of `columns`; text columns are read as dictionaries."""
    arrow = pq.read_schema(path)
    present = [c for c in columns if arrow.get_field_index(c) >= 0]  # the engine names the missing ones
    text = [c for c in present if _is_text(arrow.field(c).type)]
    fixed_row_bytes = sum(_fixed_width(arrow.field(c).type) for c in present if c not in text)
    if not text:
        for start in range(0, rows, DEFAULT_READ_ROWS):
            n = min(DEFAULT_READ_ROWS, rows - start)
            yield n, n * fixed_row_bytes
        return
    reader = pq.ParquetFile(path, read_dictionary=text, pre_buffer=False)  # one row group in memory, not all
    for batch in reader.iter_batches(batch_size=DEFAULT_READ_ROWS, columns=text):
        yield batch.num_rows, batch.num_rows * fixed_row_bytes + sum(_text_bytes(batch.column(c)) for c in text)


def check_decoded_size(path: Path, columns: list[str], limits: DecodeLimits) -> None:
    """Raise a 413 Problem when the block's `columns` decode to more than `limits` allow."""
    rows = pq.read_metadata(path).num_rows
    if rows > limits.max_rows:
        raise Problem(413, f"the block holds {rows} rows, over the limit of {limits.max_rows} (DIET_MAX_BLOCK_ROWS)",
                      title=_TITLE)  # fmt: skip
    done = total = 0
    for n, batch_bytes in _batch_sizes(path, columns, rows):
        done += n
        total += batch_bytes
        if batch_bytes > limits.max_batch_decoded_bytes:
            raise Problem(
                413, f"rows {done - n}..{done - 1} of the block decode to {batch_bytes} bytes, over the "
                f"{limits.max_batch_decoded_bytes} bytes one read batch may take: are some values very long?",
                title=_TITLE,
            )  # fmt: skip
        if total > limits.max_decoded_bytes:
            raise Problem(
                413, f"the block decodes to more than {limits.max_decoded_bytes} bytes (DIET_MAX_BLOCK_DECODED_BYTES) "
                f"from {path.stat().st_size} bytes of Parquet", title=_TITLE,
            )  # fmt: skip
