"""MovieLens-1M -> a stream directory, by the project's protocol (DESIGN.md §7).

Tasks like (rating >= 4) and love (rating = 5); nine fields (user_id, item_id, gender, age code,
occupation, zip prefix = first three characters, primary genre = the first one listed, genre set,
release year from the title). This copy of ML-1M has no timestamps, so the stages are a seeded random
partition: the five rating parts are concatenated in order, permuted with
`numpy.random.default_rng(1000209).permutation(n)` and cut in that order into b1, b2, b3 (240,000 rows
each), subsequent (80,000), valid (100,000) and test (the remaining 100,209).

The schema's time column is `position`: each row's index in the permuted stream (0 … n-1, integer
"seconds" to the block readers). It is not a clock, only the stage order a timestamp would give: it
increases from b1 to test, so the service's time range of a block (1970-01-01T00:00:00 + position)
says where in the stream the block lies, and nothing reads it as a date.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from diet_engine.data.convert.splits import ConvertError, write_split_dir
from diet_engine.data.schema import CategoricalField, SplitLayout, StreamSchema

ML1M_SEED = 1000209
ML1M_RATING_PARTS = tuple(f"ratings_part{i}.csv" for i in range(1, 6))
# rows per split in cut order; test takes whatever is left (100,209 of the 1,000,209 ratings)
ML1M_SPLIT_ROWS: dict[str, int | None] = {
    "b1": 240_000, "b2": 240_000, "b3": 240_000, "subsequent": 80_000, "valid": 100_000, "test": None,
}
ML1M_LAYOUT = SplitLayout(history=["b1", "b2", "b3"], subsequent="subsequent", valid="valid", test="test")

ML1M_SCHEMA = StreamSchema(
    name="ml_1m",
    fields=[
        # 6,040 users and 3,706 rated movies: 32,768 buckets keep hash collisions to a few per cent
        CategoricalField(name="user_id", buckets=32768),
        CategoricalField(name="item_id", buckets=32768),
        CategoricalField(name="gender", buckets=4096),
        CategoricalField(name="age_code", buckets=4096),
        CategoricalField(name="occupation", buckets=4096),
        CategoricalField(name="zip_prefix", buckets=4096),
        CategoricalField(name="primary_genre", buckets=4096),
        CategoricalField(name="genres", buckets=4096),
        CategoricalField(name="release_year", buckets=4096),
    ],
    labels=["like", "love"],
    timestamp="position",
    splits=ML1M_LAYOUT,
)

_YEAR = re.compile(r"\((\d{4})\)\s*$")


def is_ml1m_dir(path: Path) -> bool:
    return all((path / f).is_file() for f in (*ML1M_RATING_PARTS, "users.tsv", "movies.tsv"))


def _read_tsv(path: Path, names: list[str], types: dict[str, pa.DataType]) -> pa.Table:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:  # the original movies.dat is Latin-1; this copy is UTF-8
        text = raw.decode("latin-1")
    return pacsv.read_csv(
        pa.BufferReader(text.encode("utf-8")),
        read_options=pacsv.ReadOptions(column_names=names),
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
        convert_options=pacsv.ConvertOptions(column_types=types),
    )


def _positions(ids: np.ndarray, wanted: np.ndarray, what: str) -> np.ndarray:
    """Row of each wanted id in a side table whose `ids` are distinct small positive integers."""
    if len(np.unique(ids)) != len(ids):
        raise ConvertError(f"{what}: repeated ids")
    row = np.full(int(max(ids.max(), wanted.max())) + 1, -1, dtype=np.int64)
    row[ids] = np.arange(len(ids))
    out = row[wanted]
    if (out < 0).any():
        raise ConvertError(f"ratings name {len(np.unique(wanted[out < 0]))} id(s) missing from {what}")
    return out


def read_ratings(src: Path) -> np.ndarray:
    """The five parts concatenated in order: [n, 3] int64 of user_id, item_id, rating."""
    parts = []
    for name in ML1M_RATING_PARTS:
        t = pacsv.read_csv(src / name, read_options=pacsv.ReadOptions(column_names=["user_id", "item_id", "rating"]),
                           convert_options=pacsv.ConvertOptions(column_types={c: pa.int64() for c in ("user_id", "item_id", "rating")}))
        parts.append(np.stack([t.column(c).to_numpy() for c in ("user_id", "item_id", "rating")], axis=1))
    return np.concatenate(parts)


def ml1m_table(src: Path) -> pa.Table:
    """All ratings with the protocol's fields and labels, in permuted stream order, with `position`."""
    ratings = read_ratings(src)
    n = len(ratings)
    ratings = ratings[np.random.default_rng(ML1M_SEED).permutation(n)]
    user, item, rating = ratings.T

    users = _read_tsv(src / "users.tsv", ["user_id", "gender", "age_code", "occupation", "zip"],
                      {"user_id": pa.int64(), "gender": pa.string(), "age_code": pa.int64(),
                       "occupation": pa.int64(), "zip": pa.string()})
    movies = _read_tsv(src / "movies.tsv", ["item_id", "title", "genres"],
                       {"item_id": pa.int64(), "title": pa.string(), "genres": pa.string()})
    genre_lists = [g.split("|") for g in movies.column("genres").to_pylist()]  # 3,883 movies: per-movie is cheap
    years = [_YEAR.search(t) for t in movies.column("title").to_pylist()]
    per_movie = pa.table({
        "primary_genre": pa.array([g[0] for g in genre_lists], pa.string()),
        "genres": pa.array(["|".join(sorted(g)) for g in genre_lists], pa.string()),
        "release_year": pa.array([int(m.group(1)) if m else None for m in years], pa.int64()),  # no "(year)": missing
    })
    # side-table columns gathered to the ratings by Arrow's take: no per-rating Python
    user_rows = users.take(_positions(users.column("user_id").to_numpy(), user, "users.tsv"))
    movie_rows = per_movie.take(_positions(movies.column("item_id").to_numpy(), item, "movies.tsv"))
    return pa.table({
        "user_id": pa.array(user, pa.int64()),
        "item_id": pa.array(item, pa.int64()),
        "gender": user_rows.column("gender"),
        "age_code": user_rows.column("age_code"),
        "occupation": user_rows.column("occupation"),
        "zip_prefix": pc.utf8_slice_codeunits(user_rows.column("zip"), 0, 3),
        "primary_genre": movie_rows.column("primary_genre"),
        "genres": movie_rows.column("genres"),
        "release_year": movie_rows.column("release_year"),
        "like": pa.array((rating >= 4).astype(np.int8)),
        "love": pa.array((rating == 5).astype(np.int8)),
        "position": pa.array(np.arange(n, dtype=np.int64)),
    })


def split_in_order(table: pa.Table, rows: dict[str, int | None]) -> dict[str, pa.Table]:
    """Consecutive slices of `table`, one per split; the split with None takes the rest."""
    parts, start = {}, 0
    for name, size in rows.items():
        size = table.num_rows - start if size is None else size
        if size <= 0 or start + size > table.num_rows:
            raise ConvertError(f"{table.num_rows} rows are too few for the split sizes {rows}")
        parts[name] = table.slice(start, size)
        start += size
    return parts


def convert_ml1m(src: Path, out: Path) -> dict[str, int]:
    return write_split_dir(out, ML1M_SCHEMA, split_in_order(ml1m_table(src), ML1M_SPLIT_ROWS))
