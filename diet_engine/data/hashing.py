"""Stable per-field feature hashing.

A value v of field f goes to bucket

    1 + int.from_bytes(blake2b(f"{f}={v}".encode(), digest_size=8).digest(), "little") % (buckets - 1)

where v is the value's text form (integers without a decimal point, strings as
they are). Bucket 0 holds missing values. The hash depends on nothing but the
field name and the value, so it is the same in every process, on every machine
and for every block: ids first seen in a later block need no vocabulary rebuild.

Hashing is done once per *distinct* value of a record batch (Arrow dictionary
encoding), then scattered back to rows, so its cost follows the number of
distinct values, not the number of rows.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def hash_value(field: str, value: object, buckets: int) -> int:
    """Bucket of one value (the reference definition; `hash_column` must agree)."""
    if value is None:
        return 0
    digest = hashlib.blake2b(f"{field}={_text(value)}".encode(), digest_size=8).digest()
    return 1 + int.from_bytes(digest, "little") % (buckets - 1)


def _text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def hash_column(field: str, column: pa.Array | pa.ChunkedArray, buckets: int) -> np.ndarray:
    """Buckets of a whole Arrow column as int64."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    encoded = pc.dictionary_encode(column)
    uniques = encoded.dictionary.to_pylist()
    table = np.fromiter((hash_value(field, u, buckets) for u in uniques), dtype=np.int64, count=len(uniques))
    indices = encoded.indices
    out = np.zeros(len(column), dtype=np.int64)
    valid = np.asarray(indices.is_valid()) if indices.null_count else None
    idx = indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    if len(table):
        out = table[idx]
    if valid is not None:
        out[~valid] = 0
    return out
