"""Blocks of logs as tensors: read from Parquet in record batches, hashed per field.

Two block kinds share one interface (`len(block)`, `block.batches(...)`):
`ParquetBlock` streams a file through a bounded shuffle buffer (blocks larger
than memory), `TensorBlock` holds rows in memory (validation splits, selected
or distilled rows, small blocks).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch import Tensor

from diet_engine.data.hashing import hash_column
from diet_engine.data.schema import StreamSchema

DEFAULT_READ_ROWS = 65_536


class DataError(ValueError):
    """A block does not fit its stream's schema or holds invalid values."""

    def __init__(self, message: str, columns: list[str] | None = None) -> None:
        super().__init__(message)
        self.columns = columns or []


@dataclass
class Batch:
    cat: Tensor  # [B, Fc] int64 hashed buckets
    num: Tensor  # [B, Fn] float32
    labels: Tensor  # [B, T] float32 in {0, 1}

    def __len__(self) -> int:
        return self.cat.shape[0]

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(self.cat.to(device), self.num.to(device), self.labels.to(device))


class Block(Protocol):
    def __len__(self) -> int: ...

    def batches(
        self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[Batch]: ...


# --------------------------------------------------------------------------- schema checks

def _is_int_or_str(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def check_arrow_schema(arrow: pa.Schema, schema: StreamSchema) -> None:
    """Raise DataError naming every missing or mistyped column."""
    problems: list[str] = []
    bad: list[str] = []

    def need(name: str, ok, what: str) -> None:
        idx = arrow.get_field_index(name)
        if idx < 0:
            problems.append(f"{name}: missing")
            bad.append(name)
        elif not ok(arrow.field(idx).type):
            problems.append(f"{name}: expected {what}, got {arrow.field(idx).type}")
            bad.append(name)

    for f in schema.fields:
        need(f.name, _is_int_or_str, "integer or string")
    for n in schema.numeric:
        need(n.name, _is_number, "number")
    for label in schema.labels:
        need(label, _is_number, "0/1 number or boolean")
    need(schema.timestamp, lambda t: pa.types.is_timestamp(t) or pa.types.is_integer(t), "timestamp or integer seconds")
    if problems:
        raise DataError("block does not match the stream schema: " + "; ".join(problems), bad)


def timestamp_seconds_array(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Epoch seconds of a timestamp or integer-seconds column, as an Arrow int64 column."""
    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.timestamp("s", tz=column.type.tz))
    return pc.cast(column, pa.int64())


def timestamps_seconds(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Epoch seconds of a timestamp or integer-seconds column."""
    return np.asarray(timestamp_seconds_array(column).to_numpy(zero_copy_only=False), dtype=np.int64)


# --------------------------------------------------------------------------- record batch -> tensors

def batch_to_tensors(rb: pa.RecordBatch | pa.Table, schema: StreamSchema) -> tuple[Batch, np.ndarray]:
    """Hash one record batch; returns the rows and their epoch-second timestamps."""
    n = rb.num_rows
    cat = np.empty((n, len(schema.fields)), dtype=np.int64)
    for j, f in enumerate(schema.fields):
        cat[:, j] = hash_column(f.name, rb.column(f.name), f.buckets)
    num = np.empty((n, len(schema.numeric)), dtype=np.float32)
    for j, f in enumerate(schema.numeric):
        col = rb.column(f.name)
        num[:, j] = np.nan_to_num(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), nan=0.0)
    labels = np.empty((n, len(schema.labels)), dtype=np.float32)
    for j, name in enumerate(schema.labels):
        col = rb.column(name)
        if col.null_count:
            raise DataError(f"label {name} has missing values", [name])
        vals = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
        if not np.all((vals == 0.0) | (vals == 1.0)):
            raise DataError(f"label {name} must be 0 or 1 (found other values, NaN or negatives)", [name])
        labels[:, j] = vals
    ts = timestamps_seconds(rb.column(schema.timestamp))
    return Batch(torch.from_numpy(cat), torch.from_numpy(num), torch.from_numpy(labels)), ts


def iter_parquet(path: str | Path, schema: StreamSchema, rows: int = DEFAULT_READ_ROWS) -> Iterator[tuple[Batch, np.ndarray]]:
    """Record batches of a Parquet file as tensors, never the whole file at once."""
    # pre_buffer reads ahead every row group's column chunks at once: the whole file in memory.
    pf = pq.ParquetFile(path, pre_buffer=False)
    check_arrow_schema(pf.schema_arrow, schema)
    for rb in pf.iter_batches(batch_size=rows, columns=schema.columns()):
        yield batch_to_tensors(rb, schema)


# --------------------------------------------------------------------------- blocks

def same_device(a: torch.device | str, b: torch.device | str) -> bool:
    """Whether two device names mean one device ('cuda' is the current GPU, as 'cuda:0' may be)."""

    def resolved(d: torch.device | str) -> torch.device:
        d = torch.device(d)
        if d.type == "cuda" and d.index is None:
            return torch.device("cuda", torch.cuda.current_device())
        return d

    return resolved(a) == resolved(b)


@dataclass
class TensorBlock:
    cat: Tensor
    num: Tensor
    labels: Tensor
    ts: Tensor  # [N] int64 epoch seconds

    def __len__(self) -> int:
        return self.cat.shape[0]

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None) -> Iterator[Batch]:
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        order = order.to(self.cat.device)  # rows on a GPU are gathered there, not through the host
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield Batch(self.cat[idx], self.num[idx], self.labels[idx])

    @property
    def device(self) -> torch.device:
        return self.cat.device

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "TensorBlock":
        """The rows on `device` (itself when already there): one copy per epoch instead of one per batch."""
        return TensorBlock(*(getattr(self, k).to(device, non_blocking=non_blocking) for k in ("cat", "num", "labels", "ts")))

    def pin_memory(self) -> "TensorBlock":
        """Page-locked host rows: copies to a GPU run asynchronously and at full bus speed."""
        return TensorBlock(*(getattr(self, k).pin_memory() for k in ("cat", "num", "labels", "ts")))

    def take(self, idx: Tensor) -> "TensorBlock":
        return TensorBlock(self.cat[idx], self.num[idx], self.labels[idx], self.ts[idx])

    def as_batch(self) -> Batch:
        return Batch(self.cat, self.num, self.labels)

    @staticmethod
    def concat(blocks: list["TensorBlock"]) -> "TensorBlock":
        return TensorBlock(*(torch.cat([getattr(b, k) for b in blocks]) for k in ("cat", "num", "labels", "ts")))

    @staticmethod
    def load(path: str | Path, schema: StreamSchema) -> "TensorBlock":
        parts = [(b, ts) for b, ts in iter_parquet(path, schema)]
        if not parts:
            return TensorBlock(
                torch.empty(0, len(schema.fields), dtype=torch.long),
                torch.empty(0, len(schema.numeric)),
                torch.empty(0, schema.num_tasks),
                torch.empty(0, dtype=torch.long),
            )
        return TensorBlock(
            torch.cat([b.cat for b, _ in parts]),
            torch.cat([b.num for b, _ in parts]),
            torch.cat([b.labels for b, _ in parts]),
            torch.from_numpy(np.concatenate([ts for _, ts in parts])),
        )


class ParquetBlock:
    """A block streamed from Parquet: shuffling is exact within a buffer of `buffer_rows`."""

    def __init__(self, path: str | Path, schema: StreamSchema, buffer_rows: int = 1 << 20) -> None:
        self.path = Path(path)
        self.schema = schema
        self.buffer_rows = buffer_rows
        pf = pq.ParquetFile(self.path)
        check_arrow_schema(pf.schema_arrow, schema)
        self._rows = pf.metadata.num_rows

    def __len__(self) -> int:
        return self._rows

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None) -> Iterator[Batch]:
        buffered: list[Batch] = []
        size = 0
        carry: Batch | None = None
        for batch, _ in iter_parquet(self.path, self.schema):
            buffered.append(batch)
            size += len(batch)
            if size >= self.buffer_rows:
                carry = yield from self._drain(buffered, batch_size, shuffle, generator, carry)
                buffered, size = [], 0
        carry = yield from self._drain(buffered, batch_size, shuffle, generator, carry)
        if carry is not None and len(carry):
            yield carry

    @staticmethod
    def _drain(parts: list[Batch], batch_size: int, shuffle: bool, generator, carry: Batch | None):
        if carry is not None:
            parts = [carry, *parts]
        if not parts:
            return None
        block = TensorBlock(
            torch.cat([p.cat for p in parts]), torch.cat([p.num for p in parts]),
            torch.cat([p.labels for p in parts]), torch.empty(0, dtype=torch.long),
        )
        n = len(block)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        full = (n // batch_size) * batch_size
        for start in range(0, full, batch_size):
            idx = order[start : start + batch_size]
            yield Batch(block.cat[idx], block.num[idx], block.labels[idx])
        rest = order[full:]
        return Batch(block.cat[rest], block.num[rest], block.labels[rest])


def num_batches(block: Block, batch_size: int) -> int:
    return math.ceil(len(block) / batch_size)


@dataclass
class BlockStats:
    rows: int
    time_min: int | None  # epoch seconds
    time_max: int | None
    label_rates: dict[str, float]


def _is_text(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)


def text_columns(arrow: pa.Schema, columns: list[str]) -> list[str]:
    """Those of `columns` that hold text: read as dictionaries, each distinct value is decoded once."""
    return [c for c in columns if arrow.get_field_index(c) >= 0 and _is_text(arrow.field(c).type)]


def _label_positives(name: str, column: pa.Array) -> float:
    """How many rows of a 0/1 label column are 1; DataError unless every row is 0 or 1."""
    if column.null_count:
        raise DataError(f"label {name} has missing values", [name])
    if not len(column):
        return 0.0
    if pa.types.is_floating(column.type):
        # NaN equals neither, so it is refused too
        ok = pc.all(pc.or_(pc.equal(column, 0.0), pc.equal(column, 1.0))).as_py()
    else:  # integers and booleans: their range says it
        low, high = (v.as_py() for v in pc.min_max(column).values())
        ok = 0 <= low and high <= 1
    if not ok:
        raise DataError(f"label {name} must be 0 or 1 (found other values, NaN or negatives)", [name])
    return float(pc.sum(column).as_py())


class BlockSummary:
    """The whole-block checks and summary, fed record batch by record batch, each checked as a whole column
    with Arrow compute (no per-row Python): 0/1 labels without gaps, numbers and timestamps that convert the
    way training converts them, text that is valid UTF-8; it counts rows, positives and the time range."""

    def __init__(self, schema: StreamSchema) -> None:
        self.schema = schema
        self.rows = 0
        self.positives = np.zeros(schema.num_tasks)
        self.time_min: int | None = None
        self.time_max: int | None = None

    def add(self, rb: pa.RecordBatch) -> None:
        schema = self.schema
        for f in schema.fields:
            column = rb.column(f.name)
            if _is_text(column.type):
                column.validate(full=True)  # UTF-8 (of the dictionary only, when read as one)
        for f in schema.numeric:
            column = rb.column(f.name)
            if pa.types.is_int64(column.type) or pa.types.is_uint64(column.type):  # other numbers always convert
                pc.cast(column, pa.float64())  # as batch_to_tensors converts them: past 2**53 it refuses
        for j, name in enumerate(schema.labels):
            self.positives[j] += _label_positives(name, rb.column(name))
        seconds = timestamp_seconds_array(rb.column(schema.timestamp))
        if len(seconds) - seconds.null_count:
            low, high = (v.as_py() for v in pc.min_max(seconds).values())
            self.time_min = low if self.time_min is None else min(self.time_min, low)
            self.time_max = high if self.time_max is None else max(self.time_max, high)
        self.rows += rb.num_rows

    def stats(self) -> BlockStats:
        n = self.rows
        rates = {name: (float(self.positives[j] / n) if n else 0.0) for j, name in enumerate(self.schema.labels)}
        return BlockStats(n, self.time_min, self.time_max, rates)


def read_batches(path: str | Path, schema: StreamSchema, rows: int = DEFAULT_READ_ROWS) -> Iterator[pa.RecordBatch]:
    """The schema columns of a Parquet file in record batches, text read as dictionaries, one row group at a time."""
    arrow = pq.read_schema(path)
    check_arrow_schema(arrow, schema)
    # pre_buffer reads ahead every row group's column chunks at once: the whole file in memory.
    pf = pq.ParquetFile(path, pre_buffer=False, read_dictionary=text_columns(arrow, schema.columns()))
    yield from pf.iter_batches(batch_size=rows, columns=schema.columns())


def block_stats(path: str | Path, schema: StreamSchema, rows: int = DEFAULT_READ_ROWS) -> BlockStats:
    """Validate a whole block (schema, 0/1 labels, convertible values) and summarise it, batch by batch."""
    summary = BlockSummary(schema)
    for rb in read_batches(path, schema, rows):
        summary.add(rb)
    return summary.stats()
