"""Scale-out: two Celery worker processes against one Postgres, Redis and store.

Jobs of two streams run at the same time, one on each worker, while each stream's stages run in
order; each job runs in a child process of its own (a fresh one per job). The small generated
stream of tests/engine_support.py keeps each stage to a second or two on a CPU.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

import pytest
from service_support import (
    BOOTSTRAP_TOKEN,
    PARQUET,
    REDIS_URL,
    client,
    deployed_env,
    start_api,
    worker_process,
)
from test_e2e import wait_for_job
from test_worker import TINY_REFERENCE

from service.registry import migrate

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]

STREAMS = ("left", "right")
# Long enough a loop (a second or more) that both workers are busy at once.
OVERRIDES = {"outer_iters": 60}


def _at(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


def test_two_workers_run_two_streams_at_once_and_each_streams_stages_in_order(
    tmp_path, processes, postgres_url, redis_prefix, tiny_stream
):
    _, root = tiny_stream
    env = deployed_env(tmp_path, postgres_url, REDIS_URL, redis_prefix, worker_threads=1)
    migrate.upgrade(postgres_url)
    api, base_url = start_api(env, tmp_path, processes)
    workers = [worker_process(f"worker-{n}", env, tmp_path) for n in (1, 2)]
    processes.extend(workers)

    def logs() -> str:
        return "\n".join(f"--- {p.name}\n{p.logs(4000)}" for p in (api, *workers))

    schema = json.loads((root / "schema.json").read_text())
    with client(base_url, BOOTSTRAP_TOKEN) as c:
        for stream in STREAMS:
            body = {"name": stream, "schema": schema, "reference": TINY_REFERENCE}
            assert c.post("/streams", json=body).status_code == 201
            for split in ("h1", "h2"):
                uploaded = c.post("/blocks", params={"stream": stream}, content=(root / f"{split}.parquet").read_bytes(),
                                  headers=PARQUET)  # fmt: skip
                assert uploaded.status_code == 201, uploaded.text
        # Both streams' stages 1 and 2 at once: each stage 2 waits for its own stream's stage 1.
        jobs = {
            (stream, stage): c.post("/jobs/distill", json={"stream": stream, "stage": stage, "overrides": OVERRIDES}).json()
            for stream in STREAMS
            for stage in (1, 2)
        }
        done = {key: wait_for_job(c, job["id"], logs, timeout=300) for key, job in jobs.items()}
        assert all(job["status"] == "succeeded" and job["attempts"] == 1 for job in done.values()), logs()

        # The two streams' stage 1 ran at the same time, on the two workers.
        left, right = done["left", 1], done["right", 1]
        assert _at(left["started_at"]) < _at(right["finished_at"]) and _at(right["started_at"]) < _at(left["finished_at"])
        ran_on = {p.name: p.logs(10**6).count('"message": "job started"') for p in workers}
        assert all(ran_on.values()) and sum(ran_on.values()) == 4, ran_on
        # Each stream's stage 2 started after its stage 1 had finished, and continued from its version.
        for stream in STREAMS:
            first, second = done[stream, 1], done[stream, 2]
            assert second["waits_for"] == first["id"]
            assert _at(first["finished_at"]) <= _at(second["started_at"])
            manifest = c.get(f"/datasets/{stream}@v2").json()
            assert manifest["stage"] == 2 and manifest["parent"] == f"{stream}@v1"
            assert [b["stage"] for b in manifest["blocks"]] == [1, 2]

            # What consumers pull: the synthetic rows, the reference's weights and the manifest. The
            # optimiser state stage 2 resumed from is internal: listed for lineage, not downloadable.
            assert {a["name"] for a in manifest["artifacts"]} == {"synthetic.parquet", "reference.safetensors",
                                                                  "manifest.json"}  # fmt: skip
            [internal] = manifest["internal"]
            assert internal["name"] == "optimizer.safetensors" and "url" not in internal
            refused = c.get(f"/datasets/{stream}@v2/files/optimizer.safetensors")
            assert refused.status_code == 404 and "no file 'optimizer.safetensors' to download" in refused.json()["detail"]
            stored = tmp_path / "bucket" / "datasets" / stream / f"job-{second['id']}" / "optimizer.safetensors"
            assert hashlib.sha256(stored.read_bytes()).hexdigest() == internal["sha256"]
            assert stored.stat().st_size == internal["bytes"] > manifest_bytes(manifest, "reference.safetensors")

    # A fresh child process per job: four jobs, four processes, none of them a worker's own (which stayed up).
    started = [
        json.loads(line)
        for worker in workers
        for line in worker.logs(10**6).splitlines()
        if '"message": "job started"' in line
    ]
    pids = {entry["pid"] for entry in started}
    assert len(pids) == 4 and not pids & {worker.popen.pid for worker in workers}, started
    assert all(worker.popen.poll() is None for worker in workers)


def manifest_bytes(manifest: dict, name: str) -> int:
    return next(a["bytes"] for a in manifest["artifacts"] if a["name"] == name)
