"""The whole ML-100K walk-through over HTTP: embedded (`diet serve`) and deployed (Postgres, Redis, Celery).

create the stream -> upload b1, b2, b3 -> distill stages 1, 2, 3 -> fetch @latest
-> download both artifacts, check their sha256, load them with the engine.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from service_support import (
    BOOTSTRAP_TOKEN,
    PARQUET,
    REDIS_URL,
    Process,
    client,
    deployed_env,
    free_port,
    start_api,
    worker_process,
)

from diet_engine.dataset.artifacts import load_reference, load_synthetic
from service.registry import migrate

STREAM = "ml_100k"
# A small reference model and a short bi-level loop keep each stage to seconds on a CPU.
LIGHT_REFERENCE = {"arch": {"embedding_dim": 8, "hidden": [32], "expert_dim": 16}, "train": {"batch_size": 1024}}
QUICK = {"outer_iters": 5}
ROWS = {"b1": 17008, "b2": 23980, "b3": 26006}


def wait_for_job(c: httpx.Client, job_id: int, logs: Callable[[], str], timeout: float = 480.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = c.get(f"/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s: {job}\n{logs()}")


def download(c: httpx.Client, url: str, dest: Path) -> httpx.Headers:
    with c.stream("GET", url) as response:
        assert response.status_code == 200, response.read()
        with open(dest, "wb") as out:
            for chunk in response.iter_bytes():
                out.write(chunk)
        return response.headers


def run_ml100k_pipeline(c: httpx.Client, ml100k_dir: Path, schema: dict, work: Path, logs: Callable[[], str]) -> dict:
    created = c.post("/streams", json={"name": STREAM, "schema": schema, "reference": LIGHT_REFERENCE})
    assert created.status_code == 201, created.text
    for stage, block in enumerate(ROWS, start=1):
        uploaded = c.post(
            "/blocks",
            params={"stream": STREAM},
            content=(ml100k_dir / f"{block}.parquet").read_bytes(),
            headers=PARQUET,
        )
        assert uploaded.status_code == 201, uploaded.text
        assert uploaded.json()["stage"] == stage and uploaded.json()["rows"] == ROWS[block]

    # All three at once: stage 2 waits for stage 1's dataset, stage 3 for stage 2's.
    jobs = []
    for stage in (1, 2, 3):
        response = c.post("/jobs/distill", json={"stream": STREAM, "stage": stage, "overrides": QUICK})
        assert response.status_code == 202, response.text
        jobs.append(response.json())
    assert [j["waits_for"] for j in jobs] == [None, jobs[0]["id"], jobs[1]["id"]]

    for number, job in enumerate(jobs, start=1):
        done = wait_for_job(c, job["id"], logs)
        assert done["status"] == "succeeded", f"{done}\n{logs()}"
        assert done["dataset"] == f"{STREAM}@v{number}" and done["attempts"] == 1 and done["error"] is None
        assert done["progress"]["phase"] == "done" and done["started_at"] <= done["finished_at"]
        print(
            f"stage {number}: queued {done['created_at']} started {done['started_at']} finished {done['finished_at']}"
        )

    manifest = c.get(f"/datasets/{STREAM}@latest").json()
    assert manifest == c.get(f"/datasets/{STREAM}@v3").json()
    assert manifest["version"] == f"{STREAM}@v3" and manifest["stage"] == 3 and manifest["parent"] == f"{STREAM}@v2"
    assert [b["stage"] for b in manifest["blocks"]] == [1, 2, 3]
    assert manifest["history_rows"] == sum(ROWS.values())
    assert manifest["rows"] == manifest["new_rows"] + manifest["kept_rows"] > 0
    assert manifest["ratio"] == pytest.approx(manifest["rows"] / manifest["history_rows"])
    assert manifest["config"]["distill"]["outer_iters"] == 5
    assert "timings" in manifest["metrics"]
    listed = c.get("/datasets", params={"stream": STREAM}).json()
    assert [v["number"] for v in listed["items"]] == [3, 2, 1]
    for read in (f"/datasets/{STREAM}@latest", f"/datasets/{STREAM}@v3", "/datasets"):  # polled: 304 until it changes
        answer = c.get(read)
        unchanged = c.get(read, headers={"If-None-Match": answer.headers["etag"]})
        assert unchanged.status_code == 304 and unchanged.content == b"", read
        assert unchanged.headers["etag"] == answer.headers["etag"]

    artifacts = {a["name"]: a for a in manifest["artifacts"]}
    assert set(artifacts) == {"synthetic.parquet", "reference.safetensors", "manifest.json"}
    paths = {}
    for name, artifact in artifacts.items():
        paths[name] = work / name
        headers = download(c, artifact["url"], paths[name])
        data = paths[name].read_bytes()
        assert hashlib.sha256(data).hexdigest() == artifact["sha256"] and len(data) == artifact["bytes"]
        assert headers["etag"] == f'"{artifact["sha256"]}"'
        partial = c.get(artifact["url"], headers={"Range": "bytes=10-99"})
        assert partial.status_code == 206 and partial.content == data[10:100]
        assert partial.headers["content-range"] == f"bytes 10-99/{len(data)}"
        assert c.get(artifact["url"], headers={"If-None-Match": headers["etag"]}).status_code == 304

    stored = json.loads(paths["manifest.json"].read_text())
    assert stored == {**manifest, "artifacts": [a for a in manifest["artifacts"] if a["name"] != "manifest.json"]}

    synthetic, tasks = load_synthetic(paths["synthetic.parquet"])
    assert len(synthetic) == manifest["rows"] and tasks == ["like", "love"]
    assert set(synthetic.stage.tolist()) <= {1, 2, 3} and 3 in synthetic.stage.tolist()
    model, info = load_reference(paths["reference.safetensors"])
    assert info.stage == 3 and info.history_rows == manifest["history_rows"] and info.schema.name == schema["name"]
    assert synthetic.emb.shape[1:] == (info.schema.num_fields, info.arch.embedding_dim) == (11, 8)
    return manifest


@pytest.mark.e2e
@pytest.mark.slow
def test_embedded_service(tmp_path, processes, ml100k_dir, ml100k_schema):
    """`diet serve`: SQLite, a local data directory and its own Celery worker over a folder queue."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {
        "DIET_DATA_DIR": str(tmp_path / "diet-data"),
        "DIET_BOOTSTRAP_TOKEN": BOOTSTRAP_TOKEN,
        "DIET_WORKER_DEVICE": "cpu",
    }
    serve = Process("diet-serve", [sys.executable, "-m", "service.cli", "serve", "--port", str(port)], env, tmp_path)
    processes.append(serve)
    serve.wait_healthy(base_url)
    assert f"DIET service on {base_url}" in serve.logs()

    started = time.monotonic()
    with client(base_url, BOOTSTRAP_TOKEN) as c:
        assert c.get("/readyz").status_code == 200
        manifest = run_ml100k_pipeline(c, ml100k_dir, ml100k_schema, tmp_path, serve.logs)
    print(f"embedded pipeline: {time.monotonic() - started:.1f}s")

    # SIGTERM stops the API and the worker it started.
    workers = serve.children()
    assert workers, f"diet serve started no worker:\n{serve.logs()}"
    serve.stop()
    assert serve.popen.returncode == 128 + 15
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], "the embedded worker outlived diet serve"

    # Everything lives in the data directory: a restarted service finds the same versions.
    again = Process("diet-serve-again", serve.popen.args, env, tmp_path)
    processes.append(again)
    again.wait_healthy(base_url)
    with client(base_url, BOOTSTRAP_TOKEN) as c:
        assert c.get(f"/datasets/{STREAM}@latest").json() == manifest


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
def test_deployed_service(tmp_path, processes, postgres_url, redis_prefix, ml100k_dir, ml100k_schema):
    """uvicorn + a Celery worker process, with Postgres, Redis and a storage root, as docker-compose runs them."""
    env = deployed_env(tmp_path, postgres_url, REDIS_URL, redis_prefix)
    migrate.upgrade(postgres_url)
    api, base_url = start_api(env, tmp_path, processes)
    worker = worker_process("worker", env, tmp_path)
    processes.append(worker)

    def logs() -> str:
        return f"--- api\n{api.logs()}\n--- worker\n{worker.logs()}"

    started = time.monotonic()
    with client(base_url, BOOTSTRAP_TOKEN) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 200, ready.text
        run_ml100k_pipeline(c, ml100k_dir, ml100k_schema, tmp_path, logs)
    print(f"deployed pipeline: {time.monotonic() - started:.1f}s")
    assert not (tmp_path / "unused" / "registry.sqlite3").exists()  # the registry was Postgres
    assert any((tmp_path / "bucket" / "datasets" / STREAM).iterdir())
