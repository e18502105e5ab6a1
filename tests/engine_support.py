"""Small generated streams for the engine's tests (synthetic, learnable, deterministic)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from diet_engine.data.convert.splits import write_split_dir
from diet_engine.data.schema import CategoricalField, NumericField, SplitLayout, StreamSchema


def tiny_schema(buckets: int = 64) -> StreamSchema:
    return StreamSchema(
        name="tiny",
        fields=[CategoricalField(name=n, buckets=buckets) for n in ("user", "item", "ctx")],
        numeric=[NumericField(name="price")],
        labels=["click", "buy"],
        timestamp="ts",
        splits=SplitLayout(history=["h1", "h2"], subsequent="sub", valid="valid", test="test"),
    )


def generated_log(rows: int, seed: int = 0, start: int = 1_700_000_000) -> pa.Table:
    """A learnable click/buy log: user and item affinities decide the labels."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, 50, rows)
    item = rng.integers(0, 80, rows)
    ctx = rng.choice(["a", "b", "c"], rows)
    price = rng.random(rows).astype(np.float64)
    score = np.sin(user * 0.7) + np.cos(item * 1.3) + (ctx == "a") * 0.5 - price
    click = (score + rng.normal(0, 0.5, rows) > 0.3).astype(np.int8)
    buy = (click & (score > 1.0)).astype(np.int8)
    ts = start + np.arange(rows) * 60
    return pa.table({
        "user": user, "item": item, "ctx": ctx, "price": price, "click": click, "buy": buy,
        "ts": pa.array(ts, pa.timestamp("s", tz="UTC")),
    })


def write_generated_stream(out: Path, rows_per_split: int = 600, seed: int = 0) -> StreamSchema:
    schema = tiny_schema()
    names = schema.splits.all()
    table = generated_log(rows_per_split * len(names), seed)
    parts = {n: table.slice(i * rows_per_split, rows_per_split) for i, n in enumerate(names)}
    write_split_dir(out, schema, parts)
    return schema
