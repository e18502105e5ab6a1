"""The ML-1M converter against the real files in ../shared/data/ml-1m (DESIGN.md §7)."""

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import ML1M_RAW

from diet_engine.data.blocks import TensorBlock, block_stats
from diet_engine.data.convert.ml_1m import ML1M_SCHEMA, is_ml1m_dir
from diet_engine.data.convert.splits import load_split_dir

SPLITS = ("b1", "b2", "b3", "subsequent", "valid", "test")


@pytest.fixture(scope="module")
def raw_ratings() -> np.ndarray:
    """The five parts in order, parsed here with numpy (not the converter's reader)."""
    text = ",".join((ML1M_RAW / f"ratings_part{i}.csv").read_text().strip().replace("\n", ",") for i in range(1, 6))
    return np.array(text.split(","), dtype=np.int64).reshape(-1, 3)


@pytest.fixture(scope="module")
def splits(ml1m_dir) -> dict:
    return {n: pq.read_table(ml1m_dir / f"{n}.parquet") for n in SPLITS}


def test_rows_per_split_and_schema(ml1m_dir, splits):
    assert is_ml1m_dir(ML1M_RAW)
    assert load_split_dir(ml1m_dir) == ML1M_SCHEMA
    assert {n: t.num_rows for n, t in splits.items()} == {
        "b1": 240_000, "b2": 240_000, "b3": 240_000, "subsequent": 80_000, "valid": 100_000, "test": 100_209}
    assert [f.name for f in ML1M_SCHEMA.fields] == [
        "user_id", "item_id", "gender", "age_code", "occupation", "zip_prefix", "primary_genre", "genres", "release_year"]
    assert ML1M_SCHEMA.labels == ["like", "love"] and ML1M_SCHEMA.splits.all() == list(SPLITS)


def test_rows_follow_the_seeded_permutation(splits, raw_ratings):
    n = len(raw_ratings)
    assert n == 1_000_209
    perm = np.random.default_rng(1000209).permutation(n)
    start = 0
    for name in SPLITS:
        t = splits[name]
        expect = raw_ratings[perm[start:start + t.num_rows]]
        assert np.array_equal(t.column("user_id").to_numpy(), expect[:, 0]), name
        assert np.array_equal(t.column("item_id").to_numpy(), expect[:, 1]), name
        rating = expect[:, 2]
        assert np.array_equal(t.column("like").to_numpy(), (rating >= 4).astype(np.int8)), name
        assert np.array_equal(t.column("love").to_numpy(), (rating == 5).astype(np.int8)), name
        # the time column is the row's place in the permuted stream
        assert np.array_equal(t.column("position").to_numpy(), np.arange(start, start + t.num_rows)), name
        start += t.num_rows
    assert start == n


def test_fields_come_from_users_and_movies(splits):
    users = {int(r[0]): r for r in (line.split("\t") for line in (ML1M_RAW / "users.tsv").read_text().splitlines())}
    movies = {int(r[0]): r for r in (line.split("\t") for line in
                                     (ML1M_RAW / "movies.tsv").read_text(encoding="utf-8").splitlines())}
    rows = splits["valid"].slice(0, 300).to_pylist()
    for row in rows:
        u, m = users[row["user_id"]], movies[row["item_id"]]
        assert (row["gender"], row["age_code"], row["occupation"], row["zip_prefix"]) == (u[1], int(u[2]), int(u[3]), u[4][:3])
        genres = m[2].split("|")
        assert row["primary_genre"] == genres[0] and row["genres"] == "|".join(sorted(genres))
        assert row["release_year"] == int(m[1].rstrip()[-5:-1])
    toy_story = next(r for r in splits["b1"].to_pylist() if r["item_id"] == 1)
    assert (toy_story["primary_genre"], toy_story["genres"], toy_story["release_year"]) == (
        "Animation", "Animation|Children's|Comedy", 1995)
    for t in splits.values():
        assert t.column("release_year").null_count == 0 and t.column("zip_prefix").null_count == 0


def test_blocks_read_with_the_position_as_their_time(ml1m_dir):
    stats = block_stats(ml1m_dir / "b2.parquet", ML1M_SCHEMA)
    assert (stats.rows, stats.time_min, stats.time_max) == (240_000, 240_000, 479_999)
    valid = TensorBlock.load(ml1m_dir / "valid.parquet", ML1M_SCHEMA)
    assert len(valid) == 100_000 and valid.cat.shape[1] == 9 and int(valid.cat.min()) >= 1  # no missing value
    like_rate = float(valid.labels[:, 0].mean())
    assert stats.label_rates["like"] == pytest.approx(like_rate, abs=0.01)
    assert 0.55 < like_rate < 0.60  # (348,971 + 226,310) / 1,000,209 = 0.575 overall


def test_convert_command_refuses_a_folder_without_the_raw_files(tmp_path):
    from typer.testing import CliRunner

    from diet_engine.cli import app

    (tmp_path / "users.tsv").write_text("1\tF\t1\t10\t48067\n")
    result = CliRunner().invoke(app, ["convert", "ml-1m", "--src", str(tmp_path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "ratings_part1.csv" in result.output
    assert not (tmp_path / "out").exists()
