"""Any interaction log (CSV or Parquet) -> a stream directory, in record batches.

`convert_log` reads the log batch by batch, never whole; left-joins small side
tables (user or item features) by key; derives binary labels from simple
expressions; cuts rows into splits by time (`TimeSplits`) and writes one Parquet
file per split plus `schema.json`: the shape `convert_ml100k` writes and
`diet bench --data` reads.

What can be checked before reading rows is (every column exists, names are
valid, the split spec increases, side-table keys are unique); what only rows can
show (a label that is not 0/1, an unreadable timestamp, an empty split) fails
mid-stream. Either way the output is built in a hidden directory beside `out`
and renamed into place at the very end, so a failure leaves nothing behind.

Rows keep the input's order within each split. A split whose rows arrive out
of time order is sorted afterwards when it has at most `max_sort_rows` rows,
and otherwise left in input order (and reported): the engine shuffles within a
block, so only the cut between splits has to follow time.
"""

from __future__ import annotations

import re
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pydantic import ValidationError

from diet_engine.data.convert.splits import PARQUET_COMPRESSION, ConvertError, TimeSplits, utc_text, write_schema
from diet_engine.data.schema import CategoricalField, NumericField, StreamSchema

PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
CSV_BLOCK_BYTES = 4 << 20
PARQUET_BATCH_ROWS = 65_536
ROW_GROUP_ROWS = 131_072
MAX_SORT_ROWS = 5_000_000
UTC_SECONDS = pa.timestamp("s", tz="UTC")


# --------------------------------------------------------------------------- labels

_OPS: dict[str, Callable] = {
    ">=": pc.greater_equal, ">": pc.greater, "<=": pc.less_equal, "<": pc.less, "==": pc.equal, "!=": pc.not_equal,
}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_LABEL = re.compile(
    rf"""^\s*(?P<name>\w+)\s*
    (?:=\s*(?P<col>\w+)\s*
        (?:(?P<op>>=|<=|==|!=|>|<)\s*(?P<num>{_NUMBER})
          |\s+in\s*\((?P<set>[^()]*)\)
        )?
    )?\s*$""",
    re.VERBOSE,
)
_TRUE = ("1", "1.0", "true", "t", "yes", "y")
_FALSE = ("0", "0.0", "false", "f", "no", "n")


@dataclass(frozen=True)
class LabelRule:
    """One task's binary label from one column.

    `NAME` or `NAME=COL`: the column already holds 0/1 (or true/false);
    `NAME=COL OP NUMBER` with OP in >=, >, <=, <, ==, !=;
    `NAME=COL in (a,b,c)`: 1 where the value is one of those (numbers compare as numbers).
    """

    name: str
    column: str
    op: str | None = None
    values: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "LabelRule":
        m = _LABEL.match(text)
        if not m:
            raise ConvertError(f"labels: cannot read {text!r}; expected NAME, NAME=COL, NAME=COL>=NUMBER "
                               "(or >, <=, <, ==, !=) or NAME=COL in (a,b,c)")
        name, col = m["name"], m["col"] or m["name"]
        if m["op"]:
            return cls(name, col, m["op"], (m["num"],))
        if m["set"] is not None:
            values = tuple(v.strip().strip("'\"") for v in m["set"].split(",") if v.strip())
            if not values:
                raise ConvertError(f"labels: {text!r} has an empty 'in (...)' set")
            return cls(name, col, "in", values)
        return cls(name, col)

    def evaluate(self, column: pa.Array) -> pa.Array:
        """The label as int8 0/1; ConvertError on missing or non-binary values."""
        if column.null_count:
            raise ConvertError(f"label {self.name}: column {self.column} has {column.null_count} missing value(s)")
        if self.op is None:
            return _as_binary(column, self)
        if self.op == "in":
            return pc.cast(self._member(column), pa.int8())
        return pc.cast(_OPS[self.op](_numbers(column, self.column), float(self.values[0])), pa.int8())

    def _member(self, column: pa.Array) -> pa.Array:
        if all(re.fullmatch(_NUMBER, v) for v in self.values):
            return pc.is_in(_numbers(column, self.column), value_set=pa.array([float(v) for v in self.values]))
        return pc.is_in(_text(column), value_set=pa.array(self.values, pa.string()))


def _as_binary(column: pa.Array, rule: LabelRule) -> pa.Array:
    if _is_text(column.type):
        words = pc.utf8_lower(pc.utf8_trim_whitespace(column))
        ones, zeros = pc.is_in(words, value_set=pa.array(_TRUE)), pc.is_in(words, value_set=pa.array(_FALSE))
        bad = pc.invert(pc.or_(ones, zeros))
        values = ones
    else:
        numbers = _numbers(column, rule.column)
        bad = pc.invert(pc.is_in(numbers, value_set=pa.array([0.0, 1.0])))
        values = pc.equal(numbers, 1.0)
    if pc.any(bad).as_py():
        found = pc.unique(column.filter(bad)).to_pylist()[:5]
        raise ConvertError(f"label {rule.name}: column {rule.column} must hold 0/1 (or true/false), found {found}; "
                           f"derive a binary label instead, e.g. {rule.name}={rule.column}>=4")
    return pc.cast(values, pa.int8())


# --------------------------------------------------------------------------- column conversions

def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _decoded(column: pa.Array) -> pa.Array:
    return column.dictionary_decode() if pa.types.is_dictionary(column.type) else column


def _numbers(column: pa.Array, name: str) -> pa.Array:
    column = _decoded(column)
    t = column.type
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or _is_text(t)):
        raise ConvertError(f"column {name}: expected numbers, got {t}")
    try:
        return pc.cast(column, pa.float64())
    except pa.ArrowInvalid as e:
        raise ConvertError(f"column {name}: expected numbers ({e})") from None


def _text(column: pa.Array) -> pa.Array:
    column = _decoded(column)
    return column if pa.types.is_string(column.type) else pc.cast(column, pa.string())


def _categorical(column: pa.Array) -> pa.Array:
    """Integers stay int64, anything else becomes text: hashing reads both by their text form."""
    column = _decoded(column)
    return pc.cast(column, pa.int64()) if pa.types.is_integer(column.type) else _text(column)


def epoch_seconds(column: pa.Array, name: str, time_format: str | None = None) -> np.ndarray:
    """Epoch seconds of integer seconds, Arrow timestamps or dates (naive = UTC), or time strings.

    Strings are integer seconds, ISO 8601 (naive = UTC, or with an offset), or
    parsed by `time_format` (strptime syntax) when given.
    """
    if column.null_count:
        raise ConvertError(f"timestamp {name}: {column.null_count} row(s) have no time")
    column = _decoded(column)
    t = column.type
    if _is_text(t):
        column = _parse_times(column, name, time_format)
        t = column.type
    if pa.types.is_integer(t):
        return column.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    if pa.types.is_floating(t):
        return np.floor(column.to_numpy(zero_copy_only=False)).astype(np.int64)
    if pa.types.is_date(t):
        column = pc.cast(column, pa.timestamp("s"))
        t = column.type
    if pa.types.is_timestamp(t):
        seconds = pc.cast(column, pa.timestamp("s", tz=t.tz), safe=False)  # drops sub-second parts
        return pc.cast(seconds, pa.int64()).to_numpy(zero_copy_only=False)
    raise ConvertError(f"timestamp {name}: expected epoch seconds, a timestamp or time strings, got {t}")


def _parse_times(column: pa.Array, name: str, time_format: str | None) -> pa.Array:
    try:
        if time_format:
            return pc.strptime(column, format=time_format, unit="s")
        if pc.all(pc.match_substring_regex(column, r"^\s*-?\d+\s*$")).as_py():
            return pc.cast(pc.utf8_trim_whitespace(column), pa.int64())
    except pa.ArrowInvalid as e:
        raise ConvertError(f"timestamp {name}: {e}") from None
    # naive ISO times first (taken as UTC), then ones that all carry an offset
    for target in (pa.timestamp("us"), pa.timestamp("us", tz="UTC")):
        try:
            return pc.cast(column, target)
        except pa.ArrowInvalid as e:
            problem = e
    raise ConvertError(f"timestamp {name}: not ISO 8601 times or epoch seconds ({problem}); "
                       "give --time-format (strptime syntax) for another format") from None


# --------------------------------------------------------------------------- reading

def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in PARQUET_SUFFIXES


def _csv_parse(path: Path) -> pacsv.ParseOptions:
    tab = ".tsv" in [s.lower() for s in path.suffixes]
    return pacsv.ParseOptions(delimiter="\t" if tab else ",")


def _csv_convert(columns: list[str]) -> pacsv.ConvertOptions:
    # Every column is read as text and converted per use: a streamed CSV's
    # types are guessed from its first block, and a later block can break the guess.
    return pacsv.ConvertOptions(column_types={c: pa.string() for c in columns}, include_columns=columns,
                                strings_can_be_null=True)


def column_names(path: Path) -> list[str]:
    """Header of a CSV or Parquet file, without reading its rows."""
    if not path.is_file():
        raise ConvertError(f"{path}: no such file")
    try:
        if _is_parquet(path):
            return pq.ParquetFile(path).schema_arrow.names
        with pacsv.open_csv(path, parse_options=_csv_parse(path)) as reader:
            return reader.schema.names
    except (pa.ArrowInvalid, OSError) as e:
        raise ConvertError(f"{path}: unreadable ({e})") from None


def read_batches(path: Path, columns: list[str], batch_rows: int = PARQUET_BATCH_ROWS,
                 block_bytes: int = CSV_BLOCK_BYTES) -> Iterator[pa.RecordBatch]:
    """The chosen columns of a CSV or Parquet file, one record batch at a time."""
    try:
        if _is_parquet(path):
            yield from pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns)
            return
        with pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=block_bytes),
                            parse_options=_csv_parse(path), convert_options=_csv_convert(columns)) as reader:
            yield from reader
    except pa.ArrowInvalid as e:
        raise ConvertError(f"{path}: {e}") from None


def read_whole(path: Path, columns: list[str]) -> pa.Table:
    """A small side table, whole."""
    try:
        if _is_parquet(path):
            return pq.read_table(path, columns=columns)
        return pacsv.read_csv(path, parse_options=_csv_parse(path), convert_options=_csv_convert(columns))
    except pa.ArrowInvalid as e:
        raise ConvertError(f"{path}: {e}") from None


# --------------------------------------------------------------------------- the mapping

@dataclass(frozen=True)
class JoinSpec:
    """`FILE:KEY`: a side table left-joined to the log on column KEY (both sides)."""

    path: Path
    key: str

    @classmethod
    def parse(cls, text: str) -> "JoinSpec":
        path, sep, key = text.rpartition(":")
        if not sep or not path or not key.strip():
            raise ConvertError(f"join: expected FILE:KEY, got {text!r}")
        return cls(Path(path), key.strip())


@dataclass
class Source:
    """The log (join None) or one side table, and the columns taken from it."""

    path: Path
    names: list[str]
    join: JoinSpec | None = None
    take: list[str] = field(default_factory=list)

    def offers(self, column: str) -> bool:
        # a side table's key is the log's column, not a new one
        return column in self.names and (self.join is None or column != self.join.key)


def parse_fields(specs: list[str], buckets: int) -> list[CategoricalField]:
    """`col` or `col:N` (N hash buckets; `buckets` otherwise)."""
    out = []
    for spec in specs:
        name, _, n = spec.partition(":")
        if n and not n.strip().isdigit():
            raise ConvertError(f"fields: {spec!r}: buckets must be an integer (col:N)")
        try:
            out.append(CategoricalField(name=name.strip(), buckets=int(n) if n else buckets))
        except ValidationError as e:
            raise ConvertError(f"fields: {spec!r}: {_first_error(e)}") from None
    return out


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(x) for x in err["loc"])
    return f"{where}: {err['msg']}" if where else err["msg"]


def _stream_name(path: Path) -> str:
    stem = path.name.split(".")[0]
    name = re.sub(r"[^A-Za-z0-9_]", "_", stem)[:64] or "stream"
    return name if re.match(r"[A-Za-z_]", name) else f"s_{name}"[:64]


def build_schema(name: str, fields: list[CategoricalField], numeric: list[str], labels: list[LabelRule],
                 timestamp: str, splits: TimeSplits) -> StreamSchema:
    try:
        return StreamSchema(name=name, fields=fields, numeric=[NumericField(name=n) for n in numeric],
                            labels=[r.name for r in labels], timestamp=timestamp, splits=splits.layout)
    except ValidationError as e:
        raise ConvertError(f"schema: {_first_error(e)}") from None


def resolve_sources(log: Path, joins: list[JoinSpec], wanted: dict[str, str]) -> list[Source]:
    """Which file each wanted column (name -> where it was asked for) comes from; errors name the culprit."""
    sources = [Source(log, column_names(log))]
    for j in joins:
        sources.append(Source(j.path, column_names(j.path), j))
    for i, src in enumerate(sources[1:], 1):
        if src.join.key not in src.names:
            raise ConvertError(f"join {src.path}:{src.join.key}: {src.path} has no column {src.join.key!r}")
        _take(_owner(src.join.key, f"--join {src.path}:{src.join.key}", sources[:i]), src.join.key)
    for column, asked in wanted.items():
        _take(_owner(column, asked, sources), column)
    return sources


def _take(src: Source, column: str) -> None:
    if column not in src.take:
        src.take.append(column)


def _owner(column: str, asked: str, sources: list[Source]) -> Source:
    owners = [s for s in sources if s.offers(column)]
    if len(owners) > 1:
        raise ConvertError(f"column {column!r} ({asked}) is in both {owners[0].path} and {owners[1].path}; "
                           "rename it in one of them")
    if not owners:
        have = "; ".join(f"{s.path.name} has {', '.join(s.names)}" for s in sources)
        raise ConvertError(f"unknown column {column!r} ({asked}); {have}")
    return owners[0]


@dataclass
class SideTable:
    """A side table in memory, indexed by the text of its key."""

    key: str
    columns: dict[str, pa.Array]
    keys: pa.Array

    @classmethod
    def load(cls, src: Source) -> "SideTable":
        key = src.join.key
        table = read_whole(src.path, [key, *src.take])
        table = table.filter(pc.is_valid(table.column(key))).combine_chunks()
        keys = _text(table.column(key).combine_chunks())
        if pc.count_distinct(keys).as_py() != len(keys):
            raise ConvertError(f"join {src.path}:{key}: the key repeats in {src.path}; a left join needs one row per key")
        cols = {c: table.column(c).combine_chunks() for c in src.take}
        return cls(key, cols, keys)

    def join(self, columns: dict[str, pa.Array]) -> None:
        """Add this table's columns to one batch (left join: a key not found gives nulls)."""
        rows = pc.index_in(_text(columns[self.key]), value_set=self.keys)
        for name, values in self.columns.items():
            columns[name] = values.take(rows)


# --------------------------------------------------------------------------- writing

class SplitWriter:
    """One split's Parquet file, written in row groups of about `ROW_GROUP_ROWS` rows."""

    def __init__(self, path: Path, ts_column: str) -> None:
        self.path = path
        self.ts_column = ts_column
        self.rows = 0
        self.in_order = True
        self._last = np.iinfo(np.int64).min
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._writer: pq.ParquetWriter | None = None

    def add(self, part: pa.Table, secs: np.ndarray) -> None:
        if not part.num_rows:
            return
        if self.in_order and (secs[0] < self._last or np.any(np.diff(secs) < 0)):
            self.in_order = False
        self._last = max(self._last, int(secs[-1]))
        self._pending.append(part)
        self._pending_rows += part.num_rows
        self.rows += part.num_rows
        if self._pending_rows >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        table = pa.concat_tables(self._pending)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, table.schema, compression=PARQUET_COMPRESSION)
        self._writer.write_table(table)
        self._pending, self._pending_rows = [], 0

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def close(self, max_sort_rows: int) -> bool:
        """Finish the file; returns whether its rows are in time order."""
        self._flush()
        if self._writer is not None:
            self._writer.close()
        if not self.in_order and self.rows <= max_sort_rows:
            table = pq.read_table(self.path).sort_by(self.ts_column)  # stable: ties keep input order
            pq.write_table(table, self.path, compression=PARQUET_COMPRESSION, row_group_size=ROW_GROUP_ROWS)
            self.in_order = True
        return self.in_order


@dataclass
class ConvertReport:
    out: Path
    schema: StreamSchema
    rows: dict[str, int]  # per split
    windows: dict[str, tuple[int, int]]  # per split, [start, end) in epoch seconds
    read: int  # rows read from the log
    before: int  # rows earlier than the first split (dropped)
    after: int  # rows at or after `end` (dropped)
    unsorted: list[str]  # splits left in input order (too large to sort)


class _Conversion:
    """The per-batch work: join, labels, timestamps, split assignment, writing."""

    def __init__(self, schema: StreamSchema, labels: list[LabelRule], sides: list[SideTable], splits: TimeSplits,
                 time_format: str | None, tmp: Path) -> None:
        self.schema, self.labels, self.sides, self.splits = schema, labels, sides, splits
        self.time_format = time_format
        self.writers = [SplitWriter(tmp / f"{n}.parquet", schema.timestamp) for n in splits.names()]
        self.read = self.before = self.after = 0
        self.tmin: int | None = None
        self.tmax: int | None = None

    def add(self, batch: pa.RecordBatch) -> None:
        self.read += batch.num_rows
        columns = {name: batch.column(name) for name in batch.schema.names}
        secs = epoch_seconds(columns[self.schema.timestamp], self.schema.timestamp, self.time_format)
        if not len(secs):
            return
        self.tmin = int(secs.min()) if self.tmin is None else min(self.tmin, int(secs.min()))
        self.tmax = int(secs.max()) if self.tmax is None else max(self.tmax, int(secs.max()))
        which = self.splits.assign(secs)
        self.before += int((which < 0).sum())
        self.after += int((which >= len(self.writers)).sum())
        kept = np.flatnonzero((which >= 0) & (which < len(self.writers)))
        if not len(kept):
            return
        rows = pa.array(kept)
        columns = {name: col.take(rows) for name, col in columns.items()}
        for side in self.sides:
            side.join(columns)
        table = self._output(columns, secs[kept])
        for i, writer in enumerate(self.writers):
            mine = np.flatnonzero(which[kept] == i)
            if len(mine):
                writer.add(table.take(pa.array(mine)), secs[kept][mine])

    def _output(self, columns: dict[str, pa.Array], secs: np.ndarray) -> pa.Table:
        s = self.schema
        out = {f.name: _categorical(columns[f.name]) for f in s.fields}
        out.update({n.name: _numbers(columns[n.name], n.name) for n in s.numeric})
        out.update({r.name: r.evaluate(columns[r.column]) for r in self.labels})
        out[s.timestamp] = pa.array(secs, UTC_SECONDS)
        return pa.table(out)

    def abort(self) -> None:
        for w in self.writers:
            w.abort()

    def finish(self, max_sort_rows: int) -> tuple[dict[str, int], list[str]]:
        in_order = [w.close(max_sort_rows) for w in self.writers]
        names = self.splits.names()
        for name, writer in zip(names, self.writers):
            if not writer.rows:
                raise ConvertError(self._empty_message(name))
        return {n: w.rows for n, w in zip(names, self.writers)}, [n for n, ok in zip(names, in_order) if not ok]

    def _empty_message(self, name: str) -> str:
        start, end = self.splits.windows()[name]
        seen = "no rows with a time" if self.tmin is None else f"times from {utc_text(self.tmin)} to {utc_text(self.tmax)}"
        return f"split {name} [{utc_text(start)}, {utc_text(end)}) has no rows; the log has {seen}: check --splits"


# --------------------------------------------------------------------------- the conversion

def convert_log(
    log: Path,
    out: Path,
    *,
    timestamp: str,
    labels: Sequence[str],
    fields: Sequence[str],
    splits: str | TimeSplits,
    numeric: Sequence[str] = (),
    joins: Sequence[str] = (),
    buckets: int = 100_000,
    name: str | None = None,
    time_format: str | None = None,
    overwrite: bool = False,
    max_sort_rows: int = MAX_SORT_ROWS,
    batch_rows: int = PARQUET_BATCH_ROWS,
    block_bytes: int = CSV_BLOCK_BYTES,
    on_batch: Callable[[int], None] | None = None,
) -> ConvertReport:
    """Convert a CSV or Parquet log into `out` (schema.json + one Parquet file per split).

    labels: `NAME`, `NAME=COL`, `NAME=COL>=4` (>, <=, <, ==, != too) or `NAME=COL in (a,b)`;
    fields: `col` or `col:N` hash buckets; joins: `FILE:KEY` side tables (left join);
    splits: a `TimeSplits` spec. `on_batch` gets the rows read so far.
    """
    log, out = Path(log), Path(out)
    if out.exists() and not overwrite:
        raise ConvertError(f"{out} exists; remove it, or replace it with --overwrite (overwrite=True)")
    rules = [LabelRule.parse(t) for t in labels]
    time_splits = splits if isinstance(splits, TimeSplits) else TimeSplits.parse(splits)
    schema = build_schema(name or _stream_name(log), parse_fields(list(fields), buckets), list(numeric), rules,
                          timestamp, time_splits)
    sources = resolve_sources(log, [JoinSpec.parse(j) for j in joins], _wanted(schema, rules))
    sides = [SideTable.load(s) for s in sources[1:]]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.partial")  # beside `out`: the rename stays on one disk
    tmp.mkdir()
    work = _Conversion(schema, rules, sides, time_splits, time_format, tmp)
    try:
        for batch in read_batches(log, sources[0].take, batch_rows, block_bytes):
            work.add(batch)
            if on_batch:
                on_batch(work.read)
        rows, unsorted = work.finish(max_sort_rows)
        write_schema(tmp, schema)
        _move_into_place(tmp, out)
    except BaseException:
        work.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ConvertReport(out, schema, rows, time_splits.windows(), work.read, work.before, work.after, unsorted)


def _wanted(schema: StreamSchema, rules: list[LabelRule]) -> dict[str, str]:
    wanted = {schema.timestamp: "--timestamp"}
    wanted.update({f.name: "--fields" for f in schema.fields})
    wanted.update({n.name: "--numeric" for n in schema.numeric})
    for r in rules:
        wanted.setdefault(r.column, f"--labels {r.name}")
    return wanted


def _move_into_place(tmp: Path, out: Path) -> None:
    if not out.exists():
        tmp.rename(out)
        return
    old = out.with_name(f".{out.name}.{secrets.token_hex(4)}.replaced")
    out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
