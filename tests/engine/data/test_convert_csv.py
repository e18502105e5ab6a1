"""`diet convert csv`: a generated log (CSV or Parquet, side tables) -> a stream directory the bench runs on."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from diet_engine.data.convert import csv_log as convert_csv
from diet_engine.evaluate.bench import BenchConfig, run_bench
from diet_engine.cli import app
from diet_engine.config import CandidateConfig, ReferenceConfig
from diet_engine.data.convert.splits import ConvertError, TimeSplits, load_split_dir
from diet_engine.data.convert.csv_log import LabelRule, convert_log, epoch_seconds
from diet_engine.data.blocks import TensorBlock, block_stats
from diet_engine.models import ModelConfig

SPEC = "history=2024-01-01,2024-01-11,2024-01-21;subsequent=2024-02-01;valid=2024-02-08;test=2024-02-15;end=2024-02-22"
NAMES = ["b1", "b2", "b3", "subsequent", "valid", "test"]
KNOWN_USERS = 40  # users 40..49 are missing from the side table: their features are null
ARCH = ModelConfig(embedding_dim=8, hidden=[16], n_experts=2, expert_dim=8, tower_hidden=[8])


def _utc(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=timezone.utc).timestamp())


def generated(rows: int = 2400, seed: int = 0) -> dict[str, np.ndarray]:
    """A learnable rating log over 2023-12-29 .. 2024-02-24 (a little outside SPEC on both sides), distinct seconds."""
    rng = np.random.default_rng(seed)
    start, end = _utc("2023-12-29"), _utc("2024-02-24")
    ts = np.sort(rng.choice(end - start, rows, replace=False)) + start
    user, item = rng.integers(0, 50, rows), rng.integers(0, 80, rows)
    score = np.sin(user * 0.7) + np.cos(item * 1.3) + rng.normal(0, 0.5, rows)
    rating = np.clip(np.round(3 + 1.2 * score), 1, 5).astype(np.int64)
    return {"ts": ts, "user_id": user, "item_id": item, "rating": rating, "price": rng.random(rows).round(3),
            "clicked": np.where(rating >= 3, "true", "false")}


def iso(ts: np.ndarray) -> list[str]:
    return [datetime.fromtimestamp(int(t), tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S") for t in ts]


def write_inputs(root: Path, log: dict[str, np.ndarray]) -> Path:
    """log.csv (string times), users.csv (gender, age group), items.parquet (genre); returns the folder."""
    root.mkdir(parents=True, exist_ok=True)
    table = pa.table({"when": iso(log["ts"]), **{k: v for k, v in log.items() if k != "ts"}})
    pacsv.write_csv(table, root / "log.csv")
    users = np.arange(KNOWN_USERS)
    pacsv.write_csv(pa.table({"user_id": users, "gender": np.where(users % 3 == 0, "F", "M"),
                              "age_group": [f"{20 + 10 * (u % 4)}s" for u in users]}), root / "users.csv")
    items = np.arange(80)
    pq.write_table(pa.table({"item_id": items, "genre": [f"g{i % 5}" for i in items]}), root / "items.parquet")
    return root


MAPPING = dict(
    timestamp="when",
    labels=["like=rating>=4", "love=rating == 5", "meh=rating in (2, 3)", "clicked"],
    fields=["user_id:512", "item_id:512", "gender", "age_group", "genre"],
    numeric=["price"],
    splits=SPEC,
    buckets=64,
)


def convert(root: Path, out: Path, log: str = "log.csv", **kw):
    args = {**MAPPING, "joins": [f"{root}/users.csv:user_id", f"{root}/items.parquet:item_id"], **kw}
    return convert_log(root / log, out, **args)


@pytest.fixture(scope="module")
def log() -> dict[str, np.ndarray]:
    return generated()


@pytest.fixture(scope="module")
def converted(log, tmp_path_factory) -> tuple[Path, Path, object]:
    root = write_inputs(tmp_path_factory.mktemp("inputs"), log)
    out = tmp_path_factory.mktemp("converted") / "stream"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(convert_csv, "ROW_GROUP_ROWS", 100)  # many record batches in, many row groups out
        report = convert(root, out, block_bytes=8192)
    return root, out, report


def window_mask(ts: np.ndarray, name: str) -> np.ndarray:
    start, end = TimeSplits.parse(SPEC).windows()[name]
    return (ts >= start) & (ts < end)


# --------------------------------------------------------------------------- conversion

def test_csv_log_with_side_tables_becomes_a_stream_directory(converted, log):
    _, out, report = converted
    schema = load_split_dir(out)
    assert schema.name == "log"
    assert [f.name for f in schema.fields] == ["user_id", "item_id", "gender", "age_group", "genre"]
    assert [f.buckets for f in schema.fields] == [512, 512, 64, 64, 64]
    assert [n.name for n in schema.numeric] == ["price"]
    assert schema.labels == ["like", "love", "meh", "clicked"] and schema.timestamp == "when"
    assert schema.splits.all() == NAMES
    assert sorted(p.name for p in out.iterdir()) == sorted([*(f"{n}.parquet" for n in NAMES), "schema.json"])

    ts = log["ts"]
    assert report.rows == {n: int(window_mask(ts, n).sum()) for n in NAMES}
    assert report.before == int((ts < _utc("2024-01-01")).sum()) > 0
    assert report.after == int((ts >= _utc("2024-02-22")).sum()) > 0
    assert report.read == len(ts) and report.unsorted == []


def test_rows_carry_the_joined_features_and_derived_labels(converted, log):
    _, out, _ = converted
    mask = window_mask(log["ts"], "b2")
    part = pq.read_table(out / "b2.parquet")
    assert part.column("when").type.tz == "UTC"
    assert epoch_seconds(part.column("when").combine_chunks(), "when").tolist() == log["ts"][mask].tolist()
    rating, user = log["rating"][mask], log["user_id"][mask]
    assert part.column("like").to_pylist() == (rating >= 4).astype(int).tolist()
    assert part.column("love").to_pylist() == (rating == 5).astype(int).tolist()
    assert part.column("meh").to_pylist() == np.isin(rating, [2, 3]).astype(int).tolist()
    assert part.column("clicked").to_pylist() == (rating >= 3).astype(int).tolist()
    gender = [None if u >= KNOWN_USERS else ("F" if u % 3 == 0 else "M") for u in user]
    assert part.column("gender").to_pylist() == gender
    assert part.column("genre").to_pylist() == [f"g{i % 5}" for i in log["item_id"][mask]]


def test_the_engine_reads_every_split_and_hashes_missing_side_features_to_zero(converted, log):
    _, out, _ = converted
    schema = load_split_dir(out)
    for name in NAMES:
        stats = block_stats(out / f"{name}.parquet", schema)
        assert stats.rows == int(window_mask(log["ts"], name).sum())
    block = TensorBlock.load(out / "b1.parquet", schema)
    missing = log["user_id"][window_mask(log["ts"], "b1")] >= KNOWN_USERS
    gender = block.cat[:, 2].numpy()
    assert missing.any() and (gender[missing] == 0).all() and (gender[~missing] > 0).all()


def test_parquet_log_with_epoch_seconds_in_any_order_matches_the_csv(converted, log, tmp_path):
    root, csv_out, _ = converted
    shuffled = np.random.default_rng(1).permutation(len(log["ts"]))
    pq.write_table(pa.table({"when": log["ts"][shuffled], **{k: v[shuffled] for k, v in log.items() if k != "ts"}}),
                   root / "log.parquet")
    report = convert(root, tmp_path / "pq", log="log.parquet", batch_rows=300)
    assert report.unsorted == []
    schema = load_split_dir(csv_out)
    for name in NAMES:  # same rows, sorted back into time order, hashed alike (ints and their text)
        a = TensorBlock.load(csv_out / f"{name}.parquet", schema)
        b = TensorBlock.load(tmp_path / "pq" / f"{name}.parquet", schema)
        assert (a.ts == b.ts).all() and (a.cat == b.cat).all() and (a.labels == b.labels).all()
    kept = convert(root, tmp_path / "input-order", log="log.parquet", batch_rows=300, max_sort_rows=0)
    assert kept.unsorted == NAMES  # too large to sort: written in input order, and said so


def test_joins_can_share_a_key_and_chain(converted, log, tmp_path):
    root, _, _ = converted
    users = np.arange(50)
    pacsv.write_csv(pa.table({"user_id": users, "visits": users * 2}), tmp_path / "stats.csv")
    pacsv.write_csv(pa.table({"genre": ["g0", "g1", "g2", "g3"], "family": ["x", "x", "y", "y"]}), tmp_path / "genres.csv")
    joins = [f"{root}/users.csv:user_id", f"{tmp_path}/stats.csv:user_id",
             f"{root}/items.parquet:item_id", f"{tmp_path}/genres.csv:genre"]  # genre comes from items.parquet
    convert(root, tmp_path / "out", joins=joins, fields=["user_id", "gender", "family"], numeric=["visits"])
    part = pq.read_table(tmp_path / "out" / "b1.parquet")
    mask = window_mask(log["ts"], "b1")
    assert part.column("visits").to_pylist() == (log["user_id"][mask] * 2.0).tolist()
    family = {0: "x", 1: "x", 2: "y", 3: "y"}
    assert part.column("family").to_pylist() == [family.get(i % 5) for i in log["item_id"][mask]]


def test_overwrite_replaces_only_when_asked(converted, tmp_path):
    root, _, _ = converted
    out = tmp_path / "s"
    convert(root, out)
    with pytest.raises(ConvertError, match="exists"):
        convert(root, out)
    report = convert(root, out, name="renamed", overwrite=True)
    assert load_split_dir(out).name == "renamed" and report.out == out
    assert [p.name for p in tmp_path.iterdir()] == ["s"]


# --------------------------------------------------------------------------- bad mappings

BAD = [
    ({"fields": ["user_id", "nope"]}, "unknown column 'nope' \\(--fields\\)"),
    ({"labels": ["like=ratng>=4"]}, "unknown column 'ratng'"),
    ({"timestamp": "time"}, "unknown column 'time' \\(--timestamp\\)"),
    ({"labels": ["like=rating"]}, "label like: column rating must hold 0/1"),
    ({"labels": ["like=rating=>4"]}, "labels: cannot read"),
    ({"splits": SPEC.replace("2024-01-11", "2024-01-25")}, "b3 = 2024-01-21T00:00:00Z is not after b2"),
    ({"splits": SPEC.replace("history=", "history=2023-01-01,2023-02-01,")}, "split b1 .* has no rows"),
    ({"splits": SPEC.replace(";end=2024-02-22", "")}, "missing end"),
    ({"joins": ["users.csv:uid"]}, "users.csv has no column 'uid'"),
    ({"joins": ["users.csv:user_id", "users.csv:user_id"]}, "is in both"),
    ({"fields": ["user-id"]}, "fields: 'user-id'"),
    ({"time_format": "%d/%m/%Y"}, "timestamp when"),
]


@pytest.mark.parametrize("change,message", BAD, ids=[m.split(" ")[0] + str(i) for i, (_, m) in enumerate(BAD)])
def test_bad_mappings_fail_clearly_and_leave_nothing(converted, tmp_path, change, message):
    root, _, _ = converted
    if "joins" in change:
        change = {**change, "joins": [f"{root}/{j}" for j in change["joins"]]}
    parent = tmp_path / "outputs"
    with pytest.raises(ConvertError, match=message):
        convert(root, parent / "stream", **change)
    assert not parent.exists() or not any(parent.iterdir())


def test_errors_found_mid_stream_leave_nothing(log, tmp_path, monkeypatch):
    bad = {k: v.copy() for k, v in log.items()}
    bad["clicked"][np.flatnonzero(window_mask(log["ts"], "test"))[-1]] = "maybe"  # the last row kept
    root = write_inputs(tmp_path / "in", bad)
    monkeypatch.setattr(convert_csv, "ROW_GROUP_ROWS", 50)  # so every split file has row groups on disk by then
    with pytest.raises(ConvertError, match=r"label clicked: .*\['maybe'\]"):
        convert(root, tmp_path / "out" / "stream", block_bytes=4096)
    assert not any((tmp_path / "out").iterdir())


def test_side_table_keys_must_be_unique(log, tmp_path):
    root = write_inputs(tmp_path, log)
    pacsv.write_csv(pa.table({"user_id": [1, 1], "gender": ["F", "M"], "age_group": ["x", "y"]}), root / "users.csv")
    with pytest.raises(ConvertError, match="key repeats"):
        convert(root, tmp_path / "out")


# --------------------------------------------------------------------------- the mini-languages

def test_label_expressions():
    rating = pa.array([1, 3, 4, 5])
    assert LabelRule.parse("like=rating>=4").evaluate(rating).to_pylist() == [0, 0, 1, 1]
    assert LabelRule.parse("low = rating < 3").evaluate(rating).to_pylist() == [1, 0, 0, 0]
    assert LabelRule.parse("x=rating!=3").evaluate(pa.array(["1", "3"])).to_pylist() == [1, 0]
    assert LabelRule.parse("mid=rating in (3,4)").evaluate(pa.array(["3.0", "5"])).to_pylist() == [1, 0]
    assert LabelRule.parse("m=genre in ('a', b)").evaluate(pa.array(["a", "b", "c"])).to_pylist() == [1, 1, 0]
    rule = LabelRule.parse("click")
    assert (rule.name, rule.column, rule.op) == ("click", "click", None)
    assert rule.evaluate(pa.array([True, False])).to_pylist() == [1, 0]
    assert rule.evaluate(pa.array(["1", "FALSE", " yes"])).to_pylist() == [1, 0, 1]
    with pytest.raises(ConvertError, match="missing"):
        LabelRule.parse("like=rating>4").evaluate(pa.array([5, None]))
    with pytest.raises(ConvertError, match="expected numbers"):
        LabelRule.parse("like=rating>4").evaluate(pa.array(["5", "five"]))
    for bad in ("like=rating>=four", "like=rating in ()", "like=rating>=4;drop", "=rating>4"):
        with pytest.raises(ConvertError, match="labels"):
            LabelRule.parse(bad)


def test_split_spec_accepts_dates_times_and_seconds():
    splits = TimeSplits.parse("history=100, 200;subsequent=2024-01-01T06:00+02:00;valid=2024-01-02;"
                              "test=2024-01-03T00:00:00Z;end=1704326400")
    assert splits.names() == ["b1", "b2", "subsequent", "valid", "test"]
    assert splits.bounds == (100, 200, _utc("2024-01-01T04:00"), _utc("2024-01-02"), _utc("2024-01-03"), 1704326400)
    # a start belongs to its split, an end to the next
    assert splits.assign(np.array([99, 100, 199, 200, 1704326399, 1704326400])).tolist() == [-1, 0, 0, 1, 4, 5]
    for bad, message in [("history=1;history=2", "given twice"), ("history=1;start=2", "key in"),
                         ("history=;subsequent=2;valid=3;test=4;end=5", "at least one"),
                         ("history=1;subsequent=3;valid=3;test=4;end=5", "valid .* is not after subsequent")]:
        with pytest.raises(ConvertError, match=message):
            TimeSplits.parse(bad)


def test_time_strings_naive_offsets_and_formats():
    assert epoch_seconds(pa.array(["2024-01-01 00:00:01"]), "t").tolist() == [_utc("2024-01-01") + 1]
    assert epoch_seconds(pa.array(["2024-01-01T02:00:00+02:00"]), "t").tolist() == [_utc("2024-01-01")]
    assert epoch_seconds(pa.array(["1704067200"]), "t").tolist() == [_utc("2024-01-01")]
    assert epoch_seconds(pa.array(["31/12/2023"]), "t", "%d/%m/%Y").tolist() == [_utc("2023-12-31")]
    with pytest.raises(ConvertError, match="--time-format"):
        epoch_seconds(pa.array(["31/12/2023"]), "t")
    with pytest.raises(ConvertError, match="no time"):
        epoch_seconds(pa.array([1, None]), "t")


# --------------------------------------------------------------------------- CLI and the bench

def test_cli_converts_and_reports_bad_mappings_without_a_traceback(converted, tmp_path):
    root, _, _ = converted
    base = ["convert", "csv", str(root / "log.csv"), "--timestamp", "when", "--labels", "like=rating>=4,meh=rating in (2,3)",
            "--fields", "user_id,item_id,gender", "--join", f"{root}/users.csv:user_id", "--buckets", "64"]
    ok = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "ok"), "--splits", SPEC])
    assert ok.exit_code == 0, ok.output
    assert "subsequent" in ok.output and load_split_dir(tmp_path / "ok").labels == ["like", "meh"]
    unsorted = SPEC.replace("valid=2024-02-08", "valid=2024-01-30")
    bad = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "bad"), "--splits", unsorted])
    assert bad.exit_code == 2 and "error: splits: boundaries must increase strictly" in bad.output
    assert "Traceback" not in bad.output and not (tmp_path / "bad").exists()


def test_bench_runs_on_a_converted_log(converted, tmp_path):
    _, out, report = converted
    cfg = BenchConfig(data=out, out=tmp_path / "bench", methods=["cold", "el2n"], models=["dcn"], ratio=0.05,
                      reference=ReferenceConfig(arch=ARCH), candidate=CandidateConfig(arch=ARCH, distilled_epochs=1))
    result = run_bench(cfg)
    assert result["dataset"] == "log" and (tmp_path / "bench" / "results.json").is_file()
    history = sum(report.rows[n] for n in ("b1", "b2", "b3"))
    assert result["history_rows"] == history
    for method in ("cold", "el2n"):
        cell = result["results"][method]["dcn"]
        assert 0 <= cell["auc"] <= 1 and np.isfinite(cell["logloss"])
    assert result["results"]["cold"]["dcn"]["history_rows"] == 0
    assert 0 < result["results"]["el2n"]["dcn"]["history_rows"] <= 0.05 * history + 3
