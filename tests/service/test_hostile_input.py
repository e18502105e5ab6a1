"""Hostile and broken input the schema fuzzing cannot make: Parquet bombs, bad values, hostile names, stages
far ahead, oversized JSON, and clients that announce a body and never send it. Each is answered with a
clear 4xx problem document, and nothing is left behind (no row, no blob)."""

from __future__ import annotations

import io
import resource
import secrets
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from service_support import PARQUET, expect_problem

from service.pages import MAX_STAGE
from service.parquet_guard import DecodeLimits, check_decoded_size
from service.problems import Problem

pytestmark = pytest.mark.security

TINY_SCHEMA = {
    "name": "tiny",
    "fields": [{"name": "user", "buckets": 1000}],
    "labels": ["like"],
    "timestamp": "ts",
}


def _parquet(table: pa.Table, **options) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, **options)
    return buffer.getvalue()


def _tiny_table(rows: int, user: pa.Array | None = None, like: pa.Array | None = None, constant: bool = False) -> pa.Table:
    return pa.table({
        "user": user if user is not None else pa.array([f"u{i % 7}" for i in range(rows)]),
        "like": like if like is not None else pa.array(np.arange(rows) % 2, pa.int8()),
        "ts": pa.array(np.full(rows, 880_000_000) if constant else np.arange(rows) + 880_000_000, pa.int64()),
    })  # fmt: skip


def _bomb(rows: int, value_bytes: int) -> bytes:
    """Every row's user is the same long string: a few kB of Parquet, rows × value_bytes spelled out."""
    user = pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, np.int32)), pa.array(["a" * value_bytes]))
    table = _tiny_table(rows, user=user, like=pa.array(np.zeros(rows, np.int8)), constant=True)
    return _parquet(table, compression="zstd")


@pytest.fixture
def tiny(admin) -> str:
    name = f"t_{secrets.token_hex(4)}"
    assert admin.post("/streams", json={"name": name, "schema": TINY_SCHEMA}).status_code == 201
    return name


def _upload(client: httpx.Client, stream: str, data: bytes, **params) -> httpx.Response:
    return client.post("/blocks", params={"stream": stream, **params}, content=data, headers=PARQUET)


# --------------------------------------------------------------------------- Parquet bombs


def test_parquet_bomb_is_413_without_spending_memory(admin, tiny, nothing_written):
    bomb = _bomb(rows=200_000, value_bytes=100_000)  # 20 GB spelled out
    assert len(bomb) < 10_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB; the API runs in this process
    started = time.monotonic()
    body = expect_problem(_upload(admin, tiny, bomb), 413, "decode to", "bytes")
    assert body["title"] == "Block too large when decoded"
    assert time.monotonic() - started < 20
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 300, f"peak memory grew by {grown_mb:.0f} MB"


def test_too_many_rows_is_413(start_service):
    service, admin = start_service(max_block_rows=5_000)
    name = "rows"
    assert admin.post("/streams", json={"name": name, "schema": TINY_SCHEMA}).status_code == 201
    expect_problem(_upload(admin, name, _parquet(_tiny_table(6_000))), 413, "6000 rows", "limit of 5000")
    assert _upload(admin, name, _parquet(_tiny_table(5_000))).status_code == 201
    assert not list((service.settings.data_dir / "blobs" / "tmp").iterdir())


def test_decoded_size_is_counted_from_dictionaries(tmp_path: Path):
    path = tmp_path / "b.parquet"
    path.write_bytes(_bomb(rows=10_000, value_bytes=1_000))  # 10 MB of user text, 90 kB of fixed-width columns
    columns = ["user", "like", "ts"]
    check_decoded_size(path, columns, DecodeLimits(max_rows=10_000, max_decoded_bytes=11_000_000))
    with pytest.raises(Problem, match="more than 10000000 bytes") as refused:
        check_decoded_size(path, columns, DecodeLimits(max_rows=10_000, max_decoded_bytes=10_000_000))
    assert refused.value.status == 413
    with pytest.raises(Problem, match="one read batch"):
        check_decoded_size(path, columns, DecodeLimits(10_000, 10**12, max_batch_decoded_bytes=1_000_000))


# --------------------------------------------------------------------------- bad values and names


@pytest.mark.parametrize(
    ("like", "phrase"),
    [
        (pa.array([0.0, float("nan"), 1.0] * 10), "like must be 0 or 1"),
        (pa.array([0, -1, 1] * 10, pa.int8()), "like must be 0 or 1"),
        (pa.array([0, None, 1] * 10, pa.int8()), "like has missing values"),
    ],
    ids=["nan", "negative", "null"],
)
def test_bad_label_values_are_422(admin, tiny, nothing_written, like, phrase):
    body = expect_problem(_upload(admin, tiny, _parquet(_tiny_table(30, like=like))), 422, phrase)
    assert body["columns"] == ["like"]


@pytest.mark.parametrize(
    ("column", "values", "phrase"),
    [
        ("user", pa.array([0.5] * 30), "user: expected integer or string"),
        ("ts", pa.array(["yesterday"] * 30), "ts: expected timestamp or integer seconds"),
        ("like", pa.array([[1]] * 30), "like: expected 0/1 number"),
    ],
)
def test_wrong_column_types_are_422(admin, tiny, nothing_written, column, values, phrase):
    table = _tiny_table(30)
    table = table.set_column(table.schema.get_field_index(column), column, values)
    body = expect_problem(_upload(admin, tiny, _parquet(table)), 422, phrase)
    assert body["columns"] == [column]


@pytest.mark.parametrize("garbage", [b"PAR1", b"PAR1" + b"\x00" * 64 + b"PAR1", b"PAR1" + secrets.token_bytes(4000)])
def test_garbage_with_parquet_magic_is_422(admin, tiny, nothing_written, garbage):
    expect_problem(_upload(admin, tiny, garbage), 422, "not a readable Parquet file")


def test_parquet_cut_anywhere_is_422(admin, tiny, nothing_written):
    data = _parquet(_tiny_table(500))
    for cut in (4, len(data) // 3, len(data) // 2, len(data) - 9, len(data) - 1):
        expect_problem(_upload(admin, tiny, data[:cut]), 422)


@pytest.mark.parametrize("name", ["../etc", "a/b", "a\x00b", "..", "a%2Fb", "x" * 65, "ünï", ""])
def test_hostile_stream_names_are_refused(admin, name, nothing_written):
    expect_problem(admin.post("/streams", json={"name": name, "schema": TINY_SCHEMA}), 422, "name")
    schema = {**TINY_SCHEMA, "fields": [{"name": name, "buckets": 10}]}
    expect_problem(admin.post("/streams", json={"name": "ok_name", "schema": schema}), 422, "fields")
    response = admin.post("/blocks", params={"stream": name}, content=b"PAR1", headers=PARQUET)
    assert response.status_code in (404, 422), response.text
    assert admin.get("/streams/ok_name").status_code == 404


def test_stage_far_ahead(admin, tiny, nothing_written):
    data = _parquet(_tiny_table(30))
    for stage in (MAX_STAGE + 1, 2**31, 2**63, 10**30):
        expect_problem(_upload(admin, tiny, data, stage=stage), 422, "stage")
        expect_problem(admin.post("/jobs/distill", json={"stream": tiny, "stage": stage}), 422, "stage")
    expect_problem(admin.post("/jobs/distill", json={"stream": tiny, "stage": MAX_STAGE}), 409, "has no block")


# --------------------------------------------------------------------------- oversized and slow bodies


def test_oversized_json_is_413(admin, nothing_written, service):
    big = {"name": "big", "schema": TINY_SCHEMA, "padding": "x" * (service.settings.max_json_bytes + 1)}
    expect_problem(admin.post("/streams", json=big), 413, "over the limit", "DIET_MAX_JSON_BYTES")

    def chunks():  # no Content-Length: counted while it arrives
        yield b'{"name": "big", "padding": "'
        for _ in range(40):
            yield b"x" * 65_536
        yield b'"}'

    streamed = admin.post("/streams", content=chunks(), headers={"Content-Type": "application/json"})
    assert "content-length" not in streamed.request.headers
    expect_problem(streamed, 413, "larger than the limit")
    assert admin.get("/streams/big").status_code == 404


def _raw_request(port: int, head: str, body_start: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head.encode() + b"\r\n" + body_start)
    return sock


def _read_until_closed(sock: socket.socket, limit_s: float) -> bytes:
    """Everything the server sends until it closes the connection (fails after limit_s)."""
    sock.settimeout(limit_s)
    received = b""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"the server kept the connection open for {limit_s} s; got {received[:300]!r}")


def _headers(method: str, path: str, length: int, content_type: str, token: str) -> str:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n"
    )


def test_ten_gigabytes_announced_is_refused_at_once(service, tiny, nothing_written):
    token = service.settings.bootstrap_token.get_secret_value()
    port = int(service.base_url.rsplit(":", 1)[1])
    for path, content_type in ((f"/blocks?stream={tiny}", PARQUET["Content-Type"]), ("/streams", "application/json")):
        started = time.monotonic()
        sock = _raw_request(port, _headers("POST", path, 10 * 1024**3, content_type, token), b"PAR1 and then nothing")
        answer = _read_until_closed(sock, 10)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"application/problem+json" in answer and b"over the limit" in answer
        assert time.monotonic() - started < 5


@pytest.mark.slow
def test_a_body_that_never_arrives_times_out_and_frees_the_connection(start_service):
    service, admin = start_service(body_timeout_s=4.0, max_upload_bytes=1_000_000)
    assert admin.post("/streams", json={"name": "slow", "schema": TINY_SCHEMA}).status_code == 201
    token = service.settings.bootstrap_token.get_secret_value()
    port = int(service.base_url.rsplit(":", 1)[1])
    started = time.monotonic()
    stalled = [
        _raw_request(port, _headers("POST", "/blocks?stream=slow", 900_000, PARQUET["Content-Type"], token), b"PAR1xx"),
        _raw_request(port, _headers("POST", "/streams", 5_000, "application/json", token), b'{"name": "sl'),
    ]
    # Meanwhile the API serves everyone else, while the stalled requests are still unanswered.
    for _ in range(5):
        ok_started = time.monotonic()
        assert admin.get("/healthz").status_code == 200
        assert admin.get("/streams/slow").status_code == 200
        assert time.monotonic() - ok_started < 2.0
    assert time.monotonic() - started < 4.0
    for sock in stalled:
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(1)
        sock.setblocking(True)
    for sock in stalled:
        answer = _read_until_closed(sock, 10)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
        assert b"application/problem+json" in answer and b"stopped arriving" in answer
    assert time.monotonic() - started < 12
    # Nothing was kept: no block row, no blob, not even a temporary one.
    assert admin.get("/blocks", params={"stream": "slow"}).json()["total"] == 0
    blobs = service.settings.data_dir / "blobs"
    assert not [p for p in blobs.rglob("*") if p.is_file() and p.name != "diet-storage.txt"]


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_nul_and_huge_numbers_are_4xx(start_service, request, backend):
    """Postgres refuses NUL in text and integers past its column types; SQLite, integers past 64 bits."""
    overrides = {"database_url": request.getfixturevalue("postgres_url")} if backend == "postgres" else {}
    _, admin = start_service(**overrides)
    assert admin.post("/streams", json={"name": "tiny", "schema": TINY_SCHEMA}).status_code == 201
    nul = "ti\x00ny"
    expect_problem(admin.get("/streams/ti%00ny"), 404, "no stream named")
    expect_problem(admin.get("/blocks", params={"stream": nul}), 404, "no stream named")
    expect_problem(admin.get("/jobs", params={"stream": nul}), 404, "no stream named")
    expect_problem(admin.get("/datasets", params={"stream": nul}), 404, "no stream named")
    expect_problem(admin.post("/jobs/distill", json={"stream": nul, "stage": 1}), 404, "no stream named")
    expect_problem(_upload(admin, nul, b"PAR1"), 404, "no stream named")
    expect_problem(admin.post("/streams", json={"name": nul, "schema": TINY_SCHEMA}), 422, "name")
    expect_problem(admin.get("/datasets/ti%00ny@v1"), 422, "not a version")
    expect_problem(admin.get("/datasets/tiny@v1/files/a%00b"), 404)
    for number in (2**31, 2**63, 10**30):
        expect_problem(admin.get(f"/blocks/{number}"), 422)
        expect_problem(admin.get(f"/jobs/{number}"), 422)
        expect_problem(admin.get(f"/datasets/tiny@v{number}"), 404)
        expect_problem(admin.get("/blocks", params={"offset": number}), 422)
        expect_problem(_upload(admin, "tiny", _parquet(_tiny_table(30)), stage=number), 422, "stage")
    assert admin.get("/blocks", params={"stream": "tiny"}).json()["total"] == 0


@pytest.mark.slow
def test_a_head_that_never_completes_times_out(start_service):
    """Slowloris on the request head: silent connections and unfinished headers are closed with a 408."""
    service, admin = start_service(body_timeout_s=2.0)
    port = int(service.base_url.rsplit(":", 1)[1])
    started = time.monotonic()
    silent = socket.create_connection(("127.0.0.1", port), timeout=10)
    partial = socket.create_connection(("127.0.0.1", port), timeout=10)
    partial.sendall(b"GET /streams HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthori")
    assert admin.get("/healthz").status_code == 200  # others are served meanwhile
    for sock in (silent, partial):
        answer = _read_until_closed(sock, 10)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
        assert b"application/problem+json" in answer and b"request head did not arrive" in answer
    assert 2.0 <= time.monotonic() - started < 8
    # A keep-alive connection is not cut while its requests keep coming.
    with httpx.Client(base_url=service.base_url) as c:
        for _ in range(3):
            assert c.get("/healthz").status_code == 200
            time.sleep(1.0)
