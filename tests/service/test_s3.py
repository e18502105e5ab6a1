"""The service on S3: moto's S3 server (a process of its own on 127.0.0.1) through the real s3fs client.

* the storage layer: publish by rename, ranges, the sweep of abandoned temporary blobs, presigned URLs;
* bad uploads leave no object and no row; an API killed mid-upload leaves nothing a reader can see;
* the whole pipeline (upload, distill on a worker, pull with a Range resume, the report), with
  artifact downloads served by the API and, with DIET_ARTIFACT_REDIRECT, by the store itself.
"""

from __future__ import annotations

import hashlib
import io
import json
import time

import httpx
import pyarrow.parquet as pq
import pytest
from service_support import (
    BOOTSTRAP_TOKEN,
    PARQUET,
    REDIS_URL,
    ThreadedService,
    client,
    deployed_env,
    embedded_settings,
    expect_problem,
    free_port,
    start_api,
    worker_process,
)
from test_e2e import wait_for_job
from test_faults import HeldUpload, big_block, poll
from test_worker import TINY_REFERENCE

from diet_client import DietClient
from diet_client.errors import ChecksumMismatch
from diet_client.transfer import CHUNK
from service.registry import migrate
from service.storage import MARKER, Storage

pytestmark = pytest.mark.s3


def test_storage_on_s3_publishes_by_rename_reads_ranges_and_sweeps(s3_bucket):
    storage = Storage(s3_bucket.url, s3_bucket.options)
    assert s3_bucket.keys() == [MARKER]
    blob = storage.put([b"hello ", b"world"], "blocks/s/abc.parquet")
    assert blob.sha256 == hashlib.sha256(b"hello world").hexdigest() and blob.bytes == 11
    assert s3_bucket.keys() == ["blocks/s/abc.parquet", MARKER]  # the temporary object went with the rename
    assert b"".join(storage.iter_bytes("blocks/s/abc.parquet", 6, 9)) == b"worl"
    assert storage.size("blocks/s/abc.parquet") == 11

    writer = storage.writer()
    writer.write(b"half an upload")
    assert not storage.exists(writer.key)  # an object store shows an object only once it is whole
    writer.close()  # then abandoned by its writer
    assert storage.sweep_tmp(max_age_s=3600) == []
    assert storage.sweep_tmp(max_age_s=0) == [writer.key]
    assert s3_bucket.keys() == ["blocks/s/abc.parquet", MARKER]

    url = storage.presigned_url("blocks/s/abc.parquet", expires_s=60)
    assert url.startswith(f"{s3_bucket.server.endpoint}/{s3_bucket.name}/")
    assert httpx.get(url, headers={"Range": "bytes=6-"}).content == b"world"  # no credentials but the signature
    storage.delete_prefix("blocks")
    assert s3_bucket.keys() == [MARKER]


@pytest.fixture
def s3_service(s3_bucket, tmp_path):
    """An in-thread API on SQLite whose blobs live in the bucket."""
    settings = embedded_settings(tmp_path / "data", storage_url=s3_bucket.url, storage_options=s3_bucket.options,
                                 max_upload_bytes=1_000_000)  # fmt: skip
    migrate.upgrade(settings.database_url)
    running = ThreadedService.start(settings)
    yield running
    running.stop()


def test_bad_uploads_leave_no_object_and_no_row_on_s3(s3_service, s3_bucket, ml100k_dir, ml100k_schema):
    with client(s3_service.base_url, BOOTSTRAP_TOKEN) as admin:
        assert admin.post("/streams", json={"name": "s", "schema": ml100k_schema}).status_code == 201
        before = s3_bucket.keys()

        def post(body: bytes) -> httpx.Response:
            return admin.post("/blocks", params={"stream": "s"}, content=body, headers=PARQUET)

        expect_problem(post(b"not parquet at all" * 100), 422, "not a readable Parquet file")
        expect_problem(post((ml100k_dir / "b1.parquet").read_bytes()[:-1000]), 422, "Parquet")
        table = pq.read_table(ml100k_dir / "b1.parquet").drop_columns(["love"])
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        expect_problem(post(buffer.getvalue()), 422, "love: missing")
        expect_problem(post(b"x" * 1_000_001), 413, "DIET_MAX_UPLOAD_BYTES")
        assert admin.get("/blocks", params={"stream": "s"}).json()["total"] == 0
        assert s3_bucket.keys() == before == [MARKER]

        good = post((ml100k_dir / "b1.parquet").read_bytes())
        assert good.status_code == 201, good.text
        assert s3_bucket.keys() == [f"blocks/s/{good.json()['sha256']}.parquet", MARKER]
        assert s3_bucket.read(f"blocks/s/{good.json()['sha256']}.parquet") == (ml100k_dir / "b1.parquet").read_bytes()


@pytest.mark.faults
@pytest.mark.postgres
def test_the_api_killed_mid_upload_to_s3_leaves_nothing_and_the_retry_succeeds(
    tmp_path, processes, postgres_url, redis_prefix, s3_bucket, ml100k_dir, ml100k_schema
):
    env = {**deployed_env(tmp_path, postgres_url, REDIS_URL, redis_prefix), **s3_bucket.env()}
    migrate.upgrade(postgres_url)
    port = free_port()
    api, base_url = start_api(env, tmp_path, processes, port=port)
    block = big_block(ml100k_dir / "b1.parquet", tmp_path / "big.parquet")
    with client(base_url, BOOTSTRAP_TOKEN) as c:
        assert c.post("/streams", json={"name": "s", "schema": ml100k_schema}).status_code == 201

    held = HeldUpload(base_url, "s", block, after_bytes=2 * CHUNK)
    assert held.paused.wait(30)
    time.sleep(0.5)  # the API has the first chunks in hand
    api.kill()
    assert s3_bucket.keys() == [MARKER]  # nothing half-written is visible (an object exists once whole)

    start_api(env, tmp_path, processes, "api-again", port=port)
    uploaded = held.finish()
    assert uploaded.created and uploaded.block.sha256 == hashlib.sha256(block.read_bytes()).hexdigest()
    assert s3_bucket.keys() == [f"blocks/s/{uploaded.block.sha256}.parquet", MARKER]


@pytest.mark.e2e
@pytest.mark.postgres
@pytest.mark.redis
def test_the_pipeline_on_s3_upload_distill_pull_with_resume_and_report(
    tmp_path, processes, postgres_url, redis_prefix, s3_bucket, tiny_stream
):
    """An API streaming artifacts from S3, a second one redirecting to presigned URLs, one worker."""
    _, root = tiny_stream
    env = {**deployed_env(tmp_path, postgres_url, REDIS_URL, redis_prefix, worker_threads=1), **s3_bucket.env()}
    migrate.upgrade(postgres_url)
    api, base_url = start_api(env, tmp_path, processes)
    _, redirecting_url = start_api({**env, "DIET_ARTIFACT_REDIRECT": "true"}, tmp_path, processes, name="api-redirect")
    worker = worker_process("worker", env, tmp_path)
    processes.append(worker)

    def logs() -> str:
        return f"--- api\n{api.logs()}\n--- worker\n{worker.logs()}"

    schema = json.loads((root / "schema.json").read_text())
    with DietClient(base_url, BOOTSTRAP_TOKEN) as diet, client(base_url, BOOTSTRAP_TOKEN) as c:
        assert diet.ready().status == "ready"
        diet.create_stream("tiny", schema, reference=TINY_REFERENCE)
        for split in ("h1", "h2"):
            assert diet.upload_block("tiny", root / f"{split}.parquet").created
        jobs = [diet.distill("tiny", stage, {"outer_iters": 5}) for stage in (1, 2)]
        for job in jobs:
            assert wait_for_job(c, job.id, logs)["status"] == "succeeded", logs()
        manifest = diet.dataset("tiny@latest")
        assert manifest.version == "tiny@v2" and manifest.parent == "tiny@v1"
        [internal] = manifest.internal

        # Every object in the bucket is a block or an artifact of a registered version: no temporary
        # object and no checkpoint is left.
        prefixes = {f"datasets/tiny/job-{job.id}" for job in jobs}
        registered = {f"{p}/{n}" for p in prefixes for n in ("synthetic.parquet", "reference.safetensors",
                                                             "optimizer.safetensors", "manifest.json")}  # fmt: skip
        blocks = {f"blocks/tiny/{b.sha256}.parquet" for b in diet.blocks("tiny").items}
        assert set(s3_bucket.keys()) == registered | blocks | {MARKER}
        assert hashlib.sha256(s3_bucket.read(f"datasets/tiny/job-{jobs[1].id}/{internal.name}")).hexdigest() == internal.sha256

        pulled = diet.pull("tiny@v2", tmp_path / "pulled")  # through the API, from S3
        assert {f.name for f in pulled.files} == {a.name for a in manifest.artifacts}
        assert sum(f.bytes for f in pulled.files) == sum(a.bytes for a in manifest.artifacts)

        report = c.get("/datasets/tiny@v2/report")
        assert report.status_code == 200 and "tiny@v2" in report.text

    # The redirecting API: a GET is a 307 to the store, which the client follows, resuming a download.
    synthetic = manifest.artifact("synthetic.parquet")
    data = (tmp_path / "pulled" / "synthetic.parquet").read_bytes()
    with client(redirecting_url, BOOTSTRAP_TOKEN) as c:
        moved = c.get(synthetic.url)
        assert moved.status_code == 307 and moved.headers["etag"] == f'"{synthetic.sha256}"'
        assert moved.headers["location"].startswith(f"{s3_bucket.server.endpoint}/{s3_bucket.name}/")
        assert httpx.get(moved.headers["location"]).content == data  # the signature is the credential
        assert c.head(synthetic.url).headers["content-length"] == str(synthetic.bytes)  # HEAD still answers here
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    (resumed_dir / "synthetic.parquet.part").write_bytes(data[: len(data) // 2])  # an interrupted pull
    with DietClient(redirecting_url, BOOTSTRAP_TOKEN) as diet:
        again = diet.pull("tiny@v2", resumed_dir)
        by_name = {f.name: f for f in again.files}
        assert by_name["synthetic.parquet"].resumed_from == len(data) // 2
        for name, f in by_name.items():
            assert f.path.read_bytes() == (tmp_path / "pulled" / name).read_bytes() and f.sha256 == manifest.artifact(name).sha256

        # What the client followed the redirect to is checked too: bytes changed in the store are refused.
        reference = manifest.artifact("reference.safetensors")
        key = f"{s3_bucket.prefix}/datasets/tiny/job-{jobs[1].id}/{reference.name}"
        s3_bucket.server.client.put_object(Bucket=s3_bucket.name, Key=key, Body=b"\0" * reference.bytes)
        with pytest.raises(ChecksumMismatch):
            diet.download("tiny@v2", reference.name, tmp_path / "tampered" / reference.name, artifact=reference)
        assert not (tmp_path / "tampered" / f"{reference.name}.part").exists()

