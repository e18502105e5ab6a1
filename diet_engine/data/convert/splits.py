"""What every converter shares: the split spec, the error type, and how a stream directory is written and read.

A stream directory is `schema.json` plus one Parquet file per split (history stages b1..bn, subsequent,
valid, test): the same shape a user uploads, block by block. `ml_100k`, `ml_1m` and `csv_log` build
their tables and hand them to `write_split_dir`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from diet_engine.data.schema import SplitLayout, StreamSchema

PARQUET_COMPRESSION = "zstd"


class ConvertError(ValueError):
    """A log cannot be converted as asked (bad mapping, bad values, empty split)."""


_SPLIT_KEYS = ("history", "subsequent", "valid", "test", "end")


@dataclass(frozen=True)
class TimeSplits:
    """Contiguous [start, end) windows in epoch seconds: historical stages, subsequent, valid, test.

    Written as a spec of `;`-separated `key=value` pairs, each value where its
    split starts (`history` lists one start per historical stage, named b1..bn)
    and `end` where the test split ends:

        history=2024-01-01,2024-02-01,2024-03-01;subsequent=2024-04-01;valid=2024-04-15;test=2024-05-01;end=2024-05-15

    A value is a UTC date (`2024-01-01`), a date and time (`2024-01-01T06:00`,
    UTC unless it carries an offset) or integer epoch seconds. Boundaries must
    increase strictly in the order above.
    """

    layout: SplitLayout
    bounds: tuple[int, ...]  # one more than splits: start of each, then the end

    @classmethod
    def parse(cls, spec: str) -> "TimeSplits":
        values = _spec_pairs(spec)
        history = [_epoch_seconds(v, "history") for v in values["history"].split(",") if v.strip()]
        if not history:
            raise ConvertError("splits: 'history' needs at least one start")
        later = [_epoch_seconds(values[k], k) for k in _SPLIT_KEYS[1:]]
        layout = SplitLayout(history=[f"b{i}" for i in range(1, len(history) + 1)],
                             subsequent="subsequent", valid="valid", test="test")
        splits = cls(layout, (*history, *later))
        splits._check_increasing()
        return splits

    def _check_increasing(self) -> None:
        labels = [*self.layout.all(), "end"]
        for i in range(1, len(self.bounds)):
            if self.bounds[i] <= self.bounds[i - 1]:
                raise ConvertError(
                    f"splits: boundaries must increase strictly, but {labels[i]} = {utc_text(self.bounds[i])} "
                    f"is not after {labels[i - 1]} = {utc_text(self.bounds[i - 1])} (history starts are b1..bn)")

    def names(self) -> list[str]:
        return self.layout.all()

    def windows(self) -> dict[str, tuple[int, int]]:
        """Split name -> [start, end) in epoch seconds."""
        return {n: (self.bounds[i], self.bounds[i + 1]) for i, n in enumerate(self.names())}

    def assign(self, secs: np.ndarray) -> np.ndarray:
        """Index of each row's split; -1 before the first start, len(names) at or after the end."""
        return np.searchsorted(np.asarray(self.bounds, dtype=np.int64), secs, side="right") - 1


def _spec_pairs(spec: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for part in (p.strip() for p in spec.split(";")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in _SPLIT_KEYS:
            raise ConvertError(f"splits: expected key=value with key in {', '.join(_SPLIT_KEYS)}; got {part!r}")
        if key in pairs:
            raise ConvertError(f"splits: {key!r} given twice")
        pairs[key] = value.strip()
    missing = [k for k in _SPLIT_KEYS if k not in pairs]
    if missing:
        raise ConvertError(f"splits: missing {', '.join(missing)} (spec: {' ; '.join(f'{k}=...' for k in _SPLIT_KEYS)})")
    return pairs


def _epoch_seconds(value: str, key: str) -> int:
    value = value.strip()
    if re.fullmatch(r"-?\d+", value):
        return int(value)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ConvertError(f"splits: {key}={value!r} is neither a date/time (2024-01-31, 2024-01-31T06:00) "
                           "nor epoch seconds") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp())


def utc_text(secs: int) -> str:
    """Epoch seconds as ISO 8601 UTC, for messages."""
    return datetime.fromtimestamp(secs, tz=timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def split_by_time(table: pa.Table, ts_column: str, splits: TimeSplits) -> dict[str, pa.Table]:
    """An in-memory table cut into its splits; rows outside every window are left out."""
    which = splits.assign(table.column(ts_column).cast(pa.int64()).to_numpy())
    return {name: table.filter(pa.array(which == i)) for i, name in enumerate(splits.names())}


def write_schema(out: Path, schema: StreamSchema) -> None:
    (out / "schema.json").write_text(schema.model_dump_json(indent=2) + "\n")


def write_split_dir(out: Path, schema: StreamSchema, parts: dict[str, pa.Table]) -> dict[str, int]:
    """Write `schema.json` and `<split>.parquet` files; returns rows per split."""
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, part in parts.items():
        pq.write_table(part, out / f"{name}.parquet", compression=PARQUET_COMPRESSION)
        counts[name] = part.num_rows
    write_schema(out, schema)
    return counts



def load_split_dir(path: Path) -> StreamSchema:
    schema = StreamSchema.model_validate(json.loads((path / "schema.json").read_text()))
    if schema.splits is None:
        raise ValueError(f"{path}/schema.json has no 'splits' section")
    return schema
