import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from diet_engine.data.convert.ml_100k import ML100K_SPLITS
from diet_engine.data.convert.splits import load_split_dir
from diet_engine.data.blocks import DataError, ParquetBlock, TensorBlock, block_stats, check_arrow_schema
from diet_engine.data.hashing import hash_column, hash_value

from engine_support import generated_log, tiny_schema


def test_hash_is_the_documented_blake2b():
    digest = hashlib.blake2b(b"user_id=42", digest_size=8).digest()
    assert hash_value("user_id", 42, 1000) == 1 + int.from_bytes(digest, "little") % 999


def test_hash_is_stable_per_field_and_reserves_zero_for_missing():
    col = pa.array([7, None, 7, 8])
    out = hash_column("u", col, 100)
    assert out[1] == 0 and out[0] == out[2] and out[0] != 0
    assert hash_column("u", col, 100).tolist() == out.tolist()  # same in every call
    assert hash_value("u", 7, 100) != hash_value("v", 7, 100) or hash_value("u", 8, 100) != hash_value("v", 8, 100)
    # integer-valued floats and ints hash alike, strings by their text
    assert hash_value("u", 7.0, 100) == hash_value("u", 7, 100) == hash_value("u", "7", 100)


def test_unseen_ids_need_no_vocabulary():
    later = hash_column("item", pa.array([10_000_001, 10_000_002]), 4096)
    assert ((later >= 1) & (later < 4096)).all()


def test_batching_covers_every_row_once(tmp_path):
    schema = tiny_schema()
    pq.write_table(generated_log(1000), tmp_path / "b.parquet", row_group_size=128)
    whole = TensorBlock.load(tmp_path / "b.parquet", schema)
    assert len(whole) == 1000 and whole.cat.shape == (1000, 3) and whole.num.shape == (1000, 1)
    stream = ParquetBlock(tmp_path / "b.parquet", schema, buffer_rows=300)
    seen = [b for b in stream.batches(64, shuffle=True, generator=torch.Generator().manual_seed(0))]
    assert sum(len(b) for b in seen) == 1000
    rows = lambda cat: sorted(map(tuple, cat.tolist()))  # noqa: E731
    assert rows(torch.cat([b.cat for b in seen])) == rows(whole.cat)
    assert all(len(b) == 64 for b in seen[:-1])


def test_schema_mismatch_names_the_columns(tmp_path):
    table = generated_log(10).drop_columns(["item"])
    table = table.set_column(table.schema.get_field_index("ctx"), "ctx", pa.array([1.5] * 10))
    with pytest.raises(DataError) as err:
        check_arrow_schema(table.schema, tiny_schema())
    assert set(err.value.columns) == {"item", "ctx"}


@pytest.mark.parametrize("bad", [[0, 2], [0, -1], [0, float("nan")]])
def test_labels_must_be_binary(tmp_path, bad):
    table = generated_log(2).set_column(4, "click", pa.array(bad, pa.float64()))
    pq.write_table(table, tmp_path / "b.parquet")
    with pytest.raises(DataError, match="click"):
        block_stats(tmp_path / "b.parquet", tiny_schema())


@pytest.mark.parametrize("labels", [pa.array([True, False, False, True] * 25), pa.array([1.0, 0.0, 0.0, 1.0] * 25),
                                    pa.array([1, 0, 0, 1] * 25, pa.uint8())])  # fmt: skip
def test_label_rates_of_every_label_type(tmp_path, labels):
    pq.write_table(generated_log(100).set_column(4, "click", labels), tmp_path / "b.parquet")
    assert block_stats(tmp_path / "b.parquet", tiny_schema(), rows=16).label_rates["click"] == 0.5


def test_block_stats(tmp_path):
    table = generated_log(500)
    pq.write_table(table, tmp_path / "b.parquet")
    stats = block_stats(tmp_path / "b.parquet", tiny_schema(), rows=64)
    assert stats.rows == 500
    assert stats.time_max - stats.time_min == 499 * 60
    assert stats.label_rates["click"] == pytest.approx(np.mean(table.column("click").to_numpy()))


def test_ml100k_conversion_follows_the_protocol(ml100k_dir):
    schema = load_split_dir(ml100k_dir)
    assert schema.labels == ["like", "love"]
    assert [f.name for f in schema.fields] == [
        "user_id", "item_id", "age_bucket", "gender", "occupation", "zip_prefix",
        "primary_genre", "genres", "release_year", "hour", "weekday",
    ]
    rows = {n: pq.ParquetFile(ml100k_dir / f"{n}.parquet").metadata.num_rows for n in ML100K_SPLITS}
    assert rows == {"b1": 17008, "b2": 23980, "b3": 26006, "subsequent": 15311, "valid": 8336, "test": 9359}
    test = pq.read_table(ml100k_dir / "test.parquet")
    assert pa.types.is_timestamp(test.column("timestamp").type) and test.column("timestamp").type.tz == "UTC"
    like, love = test.column("like").to_numpy(), test.column("love").to_numpy()
    assert ((love == 1) <= (like == 1)).all()  # a 5 is also a >= 4
