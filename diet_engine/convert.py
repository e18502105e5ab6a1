"""Raw logs -> one Parquet file per split plus `schema.json`.

`convert_ml100k` follows the project's MovieLens-100K protocol (DESIGN.md §7):
tasks like (rating >= 4) and love (rating = 5); stages cut by UTC time.
`diet_engine.convert_csv` converts any other log with the same pieces: the
split spec (`TimeSplits`), `ConvertError` and `write_schema`.
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

from diet_engine.schema import CategoricalField, SplitLayout, StreamSchema


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


ML100K_TIME = TimeSplits.parse(
    "history=1997-09-01,1997-11-01,1997-12-01;subsequent=1998-02-01;valid=1998-03-16;test=1998-04-01;end=1998-04-23"
)
ML100K_SPLITS: dict[str, tuple[int, int]] = ML100K_TIME.windows()  # b1-b3, subsequent, valid, test

ML100K_SCHEMA = StreamSchema(
    name="ml_100k",
    fields=[
        CategoricalField(name="user_id", buckets=8192),
        CategoricalField(name="item_id", buckets=16384),
        CategoricalField(name="age_bucket", buckets=4096),
        CategoricalField(name="gender", buckets=4096),
        CategoricalField(name="occupation", buckets=4096),
        CategoricalField(name="zip_prefix", buckets=4096),
        CategoricalField(name="primary_genre", buckets=4096),
        CategoricalField(name="genres", buckets=4096),
        CategoricalField(name="release_year", buckets=4096),
        CategoricalField(name="hour", buckets=4096),
        CategoricalField(name="weekday", buckets=4096),
    ],
    labels=["like", "love"],
    timestamp="timestamp",
    splits=ML100K_TIME.layout,
)

# MovieLens-1M's age groups, applied to 100K's exact ages.
_AGE_EDGES = np.array([18, 25, 35, 45, 50, 56])
_AGE_NAMES = np.array(["<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"])


def _read_lines(path: Path) -> list[list[str]]:
    # u.item is Latin-1 (accented titles); the other files are ASCII.
    return [line.split("|") for line in path.read_text(encoding="latin-1").splitlines() if line]


def is_ml100k_dir(path: Path) -> bool:
    return (path / "u.data").is_file() and (path / "u.user").is_file() and (path / "u.item").is_file()


def ml100k_table(src: Path) -> pa.Table:
    """All 100,000 ratings with the protocol's fields, labels and timestamp, sorted by time."""
    ratings = np.loadtxt(src / "u.data", dtype=np.int64)
    user, item, rating, ts = ratings.T

    users = {int(r[0]): r for r in _read_lines(src / "u.user")}
    genre_names = [r[0] for r in _read_lines(src / "u.genre")]
    items = {int(r[0]): r for r in _read_lines(src / "u.item")}

    age = np.array([int(users[u][1]) for u in user])
    gender = [users[u][2] for u in user]
    occupation = [users[u][3] for u in user]
    zip_prefix = [users[u][4][:3] for u in user]

    def genres_of(i: int) -> list[str]:
        flags = items[i][5:24]
        return [g for g, f in zip(genre_names, flags) if f.strip() == "1"] or ["unknown"]

    item_genres = {i: genres_of(i) for i in items}
    primary = [item_genres[i][0] for i in item]
    genre_set = ["|".join(sorted(item_genres[i])) for i in item]

    def year(i: int) -> int | None:
        date = items[i][2].strip()
        return int(date[-4:]) if date else None

    release = [year(i) for i in item]
    when = [datetime.fromtimestamp(int(t), tz=timezone.utc) for t in ts]

    table = pa.table(
        {
            "user_id": pa.array(user, pa.int64()),
            "item_id": pa.array(item, pa.int64()),
            "age_bucket": pa.array(_AGE_NAMES[np.searchsorted(_AGE_EDGES, age, side="right")]),
            "gender": pa.array(gender),
            "occupation": pa.array(occupation),
            "zip_prefix": pa.array(zip_prefix),
            "primary_genre": pa.array(primary),
            "genres": pa.array(genre_set),
            "release_year": pa.array(release, pa.int64()),
            "hour": pa.array([w.hour for w in when], pa.int64()),
            "weekday": pa.array([w.weekday() for w in when], pa.int64()),
            "like": pa.array((rating >= 4).astype(np.int8)),
            "love": pa.array((rating == 5).astype(np.int8)),
            "timestamp": pa.array(ts, pa.timestamp("s", tz="UTC")),
        }
    )
    return table.take(np.argsort(ts, kind="stable"))


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


def convert_ml100k(src: Path, out: Path) -> dict[str, int]:
    table = ml100k_table(src)
    return write_split_dir(out, ML100K_SCHEMA, split_by_time(table, "timestamp", ML100K_TIME))


def load_split_dir(path: Path) -> StreamSchema:
    schema = StreamSchema.model_validate(json.loads((path / "schema.json").read_text()))
    if schema.splits is None:
        raise ValueError(f"{path}/schema.json has no 'splits' section")
    return schema
