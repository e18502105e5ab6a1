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

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from diet_engine.data.blocks import DEFAULT_READ_ROWS, text_columns
from service.problems import Problem

# The engine holds one read batch (DEFAULT_READ_ROWS rows) of the schema columns at a time.
MAX_BATCH_DECODED_BYTES = 512 * 1024**2
_TITLE = "Block too large when decoded"


@dataclass(frozen=True)
class DecodeLimits:
    max_rows: int
    max_decoded_bytes: int
    max_batch_decoded_bytes: int = MAX_BATCH_DECODED_BYTES


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


def check_rows(rows: int, limits: DecodeLimits) -> None:
    if rows > limits.max_rows:
        raise Problem(413, f"the block holds {rows} rows, over the limit of {limits.max_rows} (DIET_MAX_BLOCK_ROWS)",
                      title=_TITLE)  # fmt: skip


class DecodedSize:
    """What the engine's read batches of `columns` decode to, counted batch by batch from batches whose text
    columns were read as dictionaries (each distinct value once); raises a 413 Problem once over `limits`."""

    def __init__(self, arrow: pa.Schema, columns: list[str], limits: DecodeLimits, file_bytes: int) -> None:
        present = [c for c in columns if arrow.get_field_index(c) >= 0]  # the engine names the missing ones
        self.text = text_columns(arrow, present)
        self.fixed_row_bytes = sum(_fixed_width(arrow.field(c).type) for c in present if c not in self.text)
        self.limits = limits
        self.file_bytes = file_bytes
        self.rows = self.total = 0

    def add_rows(self, n: int, text_bytes: int = 0) -> None:
        batch_bytes = n * self.fixed_row_bytes + text_bytes
        self.rows += n
        self.total += batch_bytes
        limits = self.limits
        if batch_bytes > limits.max_batch_decoded_bytes:
            raise Problem(
                413, f"rows {self.rows - n}..{self.rows - 1} of the block decode to {batch_bytes} bytes, over the "
                f"{limits.max_batch_decoded_bytes} bytes one read batch may take: are some values very long?",
                title=_TITLE,
            )  # fmt: skip
        if self.total > limits.max_decoded_bytes:
            raise Problem(
                413, f"the block decodes to more than {limits.max_decoded_bytes} bytes (DIET_MAX_BLOCK_DECODED_BYTES) "
                f"from {self.file_bytes} bytes of Parquet", title=_TITLE,
            )  # fmt: skip

    def add(self, batch: pa.RecordBatch) -> None:
        """Count one engine read batch (DEFAULT_READ_ROWS rows), its text columns read as dictionaries."""
        self.add_rows(batch.num_rows, sum(_text_bytes(batch.column(c)) for c in self.text))


def check_decoded_size(path: Path, columns: list[str], limits: DecodeLimits) -> None:
    """Raise a 413 Problem when the block's `columns` decode to more than `limits` allow (a pass of its own)."""
    rows = pq.read_metadata(path).num_rows
    check_rows(rows, limits)
    arrow = pq.read_schema(path)
    counter = DecodedSize(arrow, columns, limits, path.stat().st_size)
    if not counter.text:  # fixed widths only: counted from the row count, nothing read
        for start in range(0, rows, DEFAULT_READ_ROWS):
            counter.add_rows(min(DEFAULT_READ_ROWS, rows - start))
        return
    reader = pq.ParquetFile(path, read_dictionary=counter.text, pre_buffer=False)  # one row group in memory, not all
    for batch in reader.iter_batches(batch_size=DEFAULT_READ_ROWS, columns=counter.text):
        counter.add(batch)
