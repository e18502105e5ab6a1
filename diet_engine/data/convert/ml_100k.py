"""MovieLens-100K -> a stream directory, by the project's protocol (DESIGN.md §7).

Tasks like (rating >= 4) and love (rating = 5); eleven fields; stages cut by UTC time
(B1 = 1997-09 … 10, B2 = 1997-11, B3 = 1997-12 … 1998-01, then subsequent, valid, test).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from diet_engine.data.convert.splits import TimeSplits, split_by_time, write_split_dir
from diet_engine.data.schema import CategoricalField, StreamSchema


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



def convert_ml100k(src: Path, out: Path) -> dict[str, int]:
    table = ml100k_table(src)
    return write_split_dir(out, ML100K_SCHEMA, split_by_time(table, "timestamp", ML100K_TIME))
