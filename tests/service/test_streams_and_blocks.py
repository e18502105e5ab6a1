"""POST /streams and POST /blocks: what is accepted, and every way an upload is refused with nothing left behind."""

from __future__ import annotations

import hashlib
import io
import secrets

import pyarrow.parquet as pq
import pytest
from service_support import PARQUET, expect_problem

from diet_engine.config import DistillConfig


@pytest.fixture
def stream(admin, ml100k_schema) -> str:
    """A fresh stream with the ML-100K schema."""
    name = f"s_{secrets.token_hex(4)}"
    response = admin.post("/streams", json={"name": name, "schema": ml100k_schema})
    assert response.status_code == 201, response.text
    return name


# --------------------------------------------------------------------------- streams


def test_create_stream_is_idempotent_and_fixed(admin, ml100k_schema):
    name = f"s_{secrets.token_hex(4)}"
    body = {"name": name, "schema": ml100k_schema, "distill": {"ratio": 0.05}}
    created = admin.post("/streams", json=body)
    assert created.status_code == 201
    stream = created.json()
    assert stream["schema"] == ml100k_schema
    assert stream["distill"]["ratio"] == 0.05  # as given
    assert stream["distill"]["outer_iters"] == DistillConfig().outer_iters  # defaults filled in
    assert stream["reference"]["model"] == "dcn"

    again = admin.post("/streams", json=body)
    assert again.status_code == 200 and again.json() == stream
    # Spelling the defaults out is the same definition.
    explicit = {**body, "reference": stream["reference"], "distill": stream["distill"]}
    assert admin.post("/streams", json=explicit).status_code == 200

    expect_problem(admin.post("/streams", json={**body, "distill": {"ratio": 0.1}}), 409, "different distill")
    assert admin.get(f"/streams/{name}").json() == stream
    expect_problem(admin.get("/streams/nope"), 404, "no stream named 'nope'")


def test_reads_carry_etags_and_unchanged_ones_are_304(admin, ml100k_dir, stream):
    reads = ["/streams", f"/streams/{stream}", "/blocks", f"/blocks?stream={stream}", "/jobs"]
    tags = {}
    for read in reads:
        answer = admin.get(read)
        assert answer.status_code == 200 and answer.headers["etag"].startswith('"'), read
        assert answer.headers["cache-control"] == "private, no-cache"  # reuse, but ask first
        tags[read] = answer.headers["etag"]
        unchanged = admin.get(read, headers={"If-None-Match": f'"other", {tags[read]}'})
        assert unchanged.status_code == 304 and unchanged.content == b"" and unchanged.headers["etag"] == tags[read]
    admin.post("/blocks", params={"stream": stream}, content=(ml100k_dir / "b1.parquet").read_bytes(), headers=PARQUET)
    changed = admin.get(f"/blocks?stream={stream}", headers={"If-None-Match": tags[f"/blocks?stream={stream}"]})
    assert changed.status_code == 200 and changed.json()["total"] == 1
    assert changed.headers["etag"] != tags[f"/blocks?stream={stream}"]
    assert admin.get("/streams/nope", headers={"If-None-Match": "*"}).status_code == 404  # errors are never 304


def test_bad_stream_bodies(admin, ml100k_schema):
    bad_json = admin.post("/streams", content=b'{"name": "x",', headers={"Content-Type": "application/json"})
    assert expect_problem(bad_json, 400, "not valid JSON")["title"] == "Malformed JSON"

    missing = expect_problem(admin.post("/streams", json={"name": "x"}), 422, "schema")
    assert any(e["loc"][-1] == "schema" for e in missing["errors"])

    dup = {**ml100k_schema, "labels": ["like", "like"]}
    expect_problem(admin.post("/streams", json={"name": "x", "schema": dup}), 422, "repeated")
    expect_problem(admin.post("/streams", json={"name": "bad name!", "schema": ml100k_schema}), 422, "name")
    unknown_model = {"name": "x", "schema": ml100k_schema, "reference": {"model": "resnet"}}
    expect_problem(admin.post("/streams", json=unknown_model), 422, "unknown model 'resnet'")
    expect_problem(admin.post("/streams", json={"name": "x", "schema": ml100k_schema, "extra": 1}), 422, "extra")
    # Bounded work: sizes and counts past their bounds, and a wall time past the server's maximum.
    for config, phrase in (
        ({"distill": {"outer_iters": 10**9}}, "distill.outer_iters"),
        ({"reference": {"arch": {"embedding_dim": 10**6}}}, "reference.arch.embedding_dim"),
        ({"reference": {"arch": {"hidden": [8] * 100}}}, "reference.arch.hidden"),
        ({"reference": {"train": {"batch_size": 10**9}}}, "reference.train.batch_size"),
        ({"distill": {"wall_time_s": 10**12}}, "distill.wall_time_s"),
    ):
        expect_problem(admin.post("/streams", json={"name": "x", "schema": ml100k_schema, **config}), 422, phrase)
    expect_problem(
        admin.post("/streams", json={"name": "x", "schema": ml100k_schema, "distill": {"wall_time_s": 25 * 3600}}),
        422, "more than this server's maximum of 86400 s",
    )  # fmt: skip
    assert admin.get("/streams/x").status_code == 404


# --------------------------------------------------------------------------- blocks


def test_upload_records_stats_and_is_idempotent(admin, service, ml100k_dir, stream):
    data = (ml100k_dir / "b1.parquet").read_bytes()
    first = admin.post("/blocks", params={"stream": stream}, content=data, headers=PARQUET)
    assert first.status_code == 201, first.text
    block = first.json()
    assert block["stream"] == stream and block["stage"] == 1
    assert block["sha256"] == hashlib.sha256(data).hexdigest() and block["bytes"] == len(data)
    assert block["rows"] == 17008
    assert block["time_min"].startswith("1997-09") and block["time_max"].startswith("1997-10")
    table = pq.read_table(io.BytesIO(data))
    assert block["label_rates"]["like"] == pytest.approx(sum(table.column("like").to_pylist()) / 17008)

    again = admin.post("/blocks", params={"stream": stream}, content=data, headers=PARQUET)
    assert again.status_code == 200 and again.json() == block
    expect_problem(
        admin.post("/blocks", params={"stream": stream, "stage": 4}, content=data, headers=PARQUET),
        409, "already block", "at stage 1",
    )  # fmt: skip
    assert admin.get(f"/blocks/{block['id']}").json() == block
    assert (service.settings.data_dir / "blobs" / "blocks" / stream / f"{block['sha256']}.parquet").is_file()

    second = admin.post(
        "/blocks", params={"stream": stream}, content=(ml100k_dir / "b2.parquet").read_bytes(), headers=PARQUET
    )
    assert second.status_code == 201 and second.json()["stage"] == 2
    listed = admin.get("/blocks", params={"stream": stream}).json()
    assert [b["stage"] for b in listed["items"]] == [1, 2] and listed["total"] == 2 and listed["next"] is None
    page = admin.get("/blocks", params={"stream": stream, "limit": 1}).json()
    assert len(page["items"]) == 1 and page["next"].endswith("offset=1")
    assert admin.get(page["next"]).json()["items"][0]["stage"] == 2

    taken = admin.post(
        "/blocks",
        params={"stream": stream, "stage": 2},
        content=(ml100k_dir / "b3.parquet").read_bytes(),
        headers=PARQUET,
    )
    expect_problem(taken, 409, "stage 2", "already holds block")


def test_upload_with_explicit_stage(admin, ml100k_dir, stream):
    response = admin.post(
        "/blocks",
        params={"stream": stream, "stage": 3},
        content=(ml100k_dir / "b3.parquet").read_bytes(),
        headers=PARQUET,
    )
    assert response.status_code == 201 and response.json()["stage"] == 3


def test_broken_parquet_is_422_and_leaves_nothing(admin, stream, ml100k_dir, nothing_written):
    garbage = admin.post("/blocks", params={"stream": stream}, content=b"not parquet at all" * 100, headers=PARQUET)
    assert expect_problem(garbage, 422, "not a readable Parquet file")["title"] == "Unreadable Parquet"
    truncated = (ml100k_dir / "b1.parquet").read_bytes()[:-1000]
    expect_problem(admin.post("/blocks", params={"stream": stream}, content=truncated, headers=PARQUET), 422, "Parquet")
    expect_problem(admin.post("/blocks", params={"stream": stream}, content=b"", headers=PARQUET), 422)


def test_wrong_schema_is_422_naming_the_columns(admin, stream, ml100k_dir, nothing_written):
    table = pq.read_table(ml100k_dir / "b1.parquet").drop_columns(["love", "gender"])
    table = table.set_column(table.schema.get_field_index("like"), "like", table.column("like").cast("string"))
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    body = expect_problem(
        admin.post("/blocks", params={"stream": stream}, content=buffer.getvalue(), headers=PARQUET),
        422, "gender: missing", "love: missing", "like: expected",
    )  # fmt: skip
    assert sorted(body["columns"]) == ["gender", "like", "love"]


def test_labels_outside_0_1_are_422(admin, stream, ml100k_dir, nothing_written):
    import pyarrow as pa
    import pyarrow.compute as pc

    table = pq.read_table(ml100k_dir / "b1.parquet")
    table = table.set_column(
        table.schema.get_field_index("like"), "like", pc.add(table.column("like").cast(pa.int8()), 1)
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    body = expect_problem(
        admin.post("/blocks", params={"stream": stream}, content=buffer.getvalue(), headers=PARQUET), 422, "like"
    )
    assert body["columns"] == ["like"]


def test_oversize_body_is_413(admin, stream, nothing_written):
    big = b"x" * 1_500_000  # the test service's limit is 1,000,000 bytes
    declared = admin.post("/blocks", params={"stream": stream}, content=big, headers=PARQUET)
    expect_problem(declared, 413, "Content-Length 1500000 is over the limit")

    def chunks():  # no Content-Length: the limit is enforced while streaming
        for _ in range(15):
            yield b"y" * 100_000

    streamed = admin.post("/blocks", params={"stream": stream}, content=chunks(), headers=PARQUET)
    assert "content-length" not in streamed.request.headers
    expect_problem(streamed, 413, "larger than the limit of 1000000 bytes")


def test_upload_refusals_before_reading(admin, ml100k_dir, nothing_written):
    data = (ml100k_dir / "b1.parquet").read_bytes()
    expect_problem(admin.post("/blocks", params={"stream": "nope"}, content=data, headers=PARQUET), 404, "'nope'")
    expect_problem(admin.post("/blocks", content=data, headers=PARQUET), 422, "stream")
    expect_problem(
        admin.post("/blocks", params={"stream": "nope"}, content=data, headers={"Content-Type": "text/csv"}),
        415, "application/vnd.apache.parquet",
    )  # fmt: skip
    expect_problem(admin.post("/blocks", params={"stream": "x", "stage": 0}, content=data, headers=PARQUET), 422)


def test_unknown_blocks(admin):
    expect_problem(admin.get("/blocks/999999"), 404, "no block with id 999999")
    expect_problem(admin.get("/blocks/abc"), 422)
    expect_problem(admin.get("/blocks", params={"stream": "nope"}), 404, "'nope'")


def test_same_bytes_committed_between_the_two_lookups_are_the_same_block(admin, ml100k_dir, stream, monkeypatch):
    """The race of two concurrent uploads of one block, made deterministic: the other upload commits after this
    one looked the bytes up (twice) and before it looks at the stage; the answer is that block, not a 409."""
    from service.registry import blocks

    data = (ml100k_dir / "b1.parquet").read_bytes()
    first = admin.post("/blocks", params={"stream": stream}, content=data, headers=PARQUET)
    assert first.status_code == 201, first.text
    looked_up = blocks.by_sha256
    monkeypatch.setattr(blocks, "by_sha256", lambda session, stream_id, sha256: None)  # not committed yet, as seen
    again = admin.post("/blocks", params={"stream": stream, "stage": 1}, content=data, headers=PARQUET)
    monkeypatch.setattr(blocks, "by_sha256", looked_up)
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    listed = admin.get("/blocks", params={"stream": stream}).json()
    assert listed["total"] == 1
