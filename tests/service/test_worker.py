"""The worker's handling of a job row: claiming once, retrying infrastructure errors, failing bad configs,
noticing cancellation. Runs the task's code in-process against the cheap service's registry."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import replace
from datetime import timedelta

import pytest
from service_support import PARQUET
from sqlalchemy import update

from diet_engine.distill.stage import StageProgress
from service.registry import jobs
from service.registry.datasets import checkpoint_prefix
from service.registry.db import Database
from service.registry.tables import Stream, utcnow
from service.storage import Storage
from worker.progress import JobAborted, JobReporter
from worker.tasks import Runtime, run_job


@pytest.fixture
def runtime(service) -> Runtime:
    settings = service.settings.model_copy(update={"job_max_retries": 1, "job_retry_backoff_s": 7})
    rt = Runtime(settings, Database(settings.database_url), Storage(settings.storage_url))
    yield rt
    rt.db.dispose()


@pytest.fixture
def stream(admin, ml100k_dir, ml100k_schema) -> dict:
    """A stream with its first two blocks; returns {"name", "blocks": [block, block]}."""
    name = f"w_{secrets.token_hex(4)}"
    assert admin.post("/streams", json={"name": name, "schema": ml100k_schema}).status_code == 201
    blocks = []
    for b in ("b1", "b2"):
        response = admin.post(
            "/blocks", params={"stream": name}, content=(ml100k_dir / f"{b}.parquet").read_bytes(), headers=PARQUET
        )
        blocks.append(response.json())
    return {"name": name, "blocks": blocks}


TINY_REFERENCE = {"arch": {"embedding_dim": 4, "hidden": [8], "n_experts": 2, "expert_dim": 4, "tower_hidden": [4]}}


@pytest.fixture
def tiny(admin, tiny_stream) -> str:
    """A stream of the small generated log (tests/engine_support.py) with a small reference, and two blocks."""
    _, root = tiny_stream
    name = f"t_{secrets.token_hex(4)}"
    body = {"name": name, "schema": json.loads((root / "schema.json").read_text()), "reference": TINY_REFERENCE}
    assert admin.post("/streams", json=body).status_code == 201
    for split in ("h1", "h2"):
        block = admin.post("/blocks", params={"stream": name}, content=(root / f"{split}.parquet").read_bytes(),
                           headers=PARQUET)  # fmt: skip
        assert block.status_code == 201, block.text
    return name


def test_infrastructure_errors_are_retried_with_backoff_then_fail(admin, runtime, stream):
    runtime.storage.delete(f"blocks/{stream['name']}/{stream['blocks'][0]['sha256']}.parquet")  # the store lost it
    job = admin.post("/jobs/distill", json={"stream": stream["name"], "stage": 1}).json()

    assert run_job(runtime, job["id"], send=lambda _: None) == 7.0  # job_retry_backoff_s x 2^0
    after_first = admin.get(f"/jobs/{job['id']}").json()
    assert after_first["status"] == "queued" and after_first["attempts"] == 1
    assert after_first["error"].startswith("attempt 1 failed, retrying: FileNotFoundError")

    assert run_job(runtime, job["id"], send=lambda _: None) is None  # job_max_retries = 1 used up
    after_second = admin.get(f"/jobs/{job['id']}").json()
    assert after_second["status"] == "failed" and after_second["attempts"] == 2
    assert after_second["error"].startswith("FileNotFoundError") and after_second["finished_at"]


def test_bad_configs_fail_at_once(admin, runtime, stream):
    # A definition the API would refuse today (it checks model names), as if stored before that check.
    with runtime.db.session() as session:
        session.execute(update(Stream).where(Stream.name == stream["name"]).values(reference={"model": "nope"}))
        session.commit()
    job = admin.post("/jobs/distill", json={"stream": stream["name"], "stage": 1}).json()
    assert run_job(runtime, job["id"], send=lambda _: None) is None
    failed = admin.get(f"/jobs/{job['id']}").json()
    assert failed["status"] == "failed" and failed["attempts"] == 1
    assert failed["error"].startswith("ValueError: unknown model 'nope'")


def test_a_job_is_claimed_once_and_waits_its_turn(admin, runtime, stream):
    first = admin.post("/jobs/distill", json={"stream": stream["name"], "stage": 1}).json()
    second = admin.post("/jobs/distill", json={"stream": stream["name"], "stage": 2}).json()
    now = utcnow()
    with runtime.db.session() as session:
        assert jobs.claim(session, second["id"], now) is None  # stage 1 has not succeeded yet
        assert jobs.claim(session, first["id"], now - timedelta(minutes=2)) == 1
        # The message again (a broker redelivery): the job is running with a fresh heartbeat.
        assert jobs.claim(session, first["id"], now - timedelta(minutes=2)) is None
        # Its worker fell silent: another may take it over, and the old attempt loses it.
        assert jobs.claim(session, first["id"], utcnow() + timedelta(seconds=1)) == 2
        assert jobs.report(session, first["id"], 1, {"phase": "x", "step": 0, "total": 1}) is False
        assert jobs.report(session, first["id"], 2) is True
        session.commit()
    assert run_job(runtime, first["id"], send=lambda _: None) is None  # running elsewhere: not run twice
    assert admin.get(f"/jobs/{first['id']}").json()["attempts"] == 2


def test_progress_is_recorded_and_cancellation_stops_the_stage(admin, runtime, stream):
    job = admin.post("/jobs/distill", json={"stream": stream["name"], "stage": 1}).json()
    with runtime.db.session() as session:
        attempt = jobs.claim(session, job["id"], utcnow())
        session.commit()
    with JobReporter(runtime.db, job["id"], attempt, heartbeat_s=0.05) as reporter:
        reporter.progress(StageProgress(phase="reference", step=3, total=17, losses={"reference": 0.61}))
        shown = admin.get(f"/jobs/{job['id']}").json()
        assert shown["status"] == "running"
        assert shown["progress"] == {"phase": "reference", "step": 3, "total": 17, "losses": {"reference": 0.61}}

        assert admin.delete(f"/jobs/{job['id']}").json()["status"] == "cancelled"
        with pytest.raises(JobAborted):
            reporter.progress(StageProgress(phase="optimise", step=1, total=5))
    assert admin.get(f"/jobs/{job['id']}").json()["status"] == "cancelled"


def test_a_job_past_its_wall_time_fails_keeping_its_checkpoint_and_the_next_job_resumes(admin, runtime, tiny):
    prefix = checkpoint_prefix(tiny, 1)

    def clock() -> float:
        """The attempt's clock: still, until the loop's first checkpoint is in storage, then 2 s later (a
        real clock would make where the time runs out depend on this machine's load)."""
        return 2.0 if runtime.storage.exists(f"{prefix}/loop.safetensors") else 0.0

    rt = replace(runtime, settings=runtime.settings.model_copy(update={"job_checkpoint_every": 5}), clock=clock)
    long_loop = {"outer_iters": 40}
    job = admin.post("/jobs/distill", json={"stream": tiny, "stage": 1, "overrides": {**long_loop, "wall_time_s": 1.5}})
    assert job.status_code == 202, job.text
    assert run_job(rt, job.json()["id"], send=lambda _: None) is None  # not retried: more time is the user's call
    failed = admin.get(f"/jobs/{job.json()['id']}").json()
    assert failed["status"] == "failed" and failed["attempts"] == 1, failed
    assert failed["error"].startswith("WallTimeExceeded: attempt 1 ran 2.0 s, past the job's wall-time limit of 1.5 s")
    assert "its checkpoint is kept: ask for the stage again" in failed["error"]
    assert failed["progress"]["phase"] == "optimise"  # stopped in the loop (progress rows are throttled)
    assert rt.storage.exists(f"{prefix}/reference.safetensors") and rt.storage.exists(f"{prefix}/loop.safetensors")

    # More time for the same work: the new job resumes where the last one stopped.
    rt = replace(rt, clock=time.monotonic)
    retry = admin.post("/jobs/distill", json={"stream": tiny, "stage": 1, "overrides": {**long_loop, "wall_time_s": 600}})
    assert retry.status_code == 202 and retry.json()["id"] != failed["id"]
    assert run_job(rt, retry.json()["id"], send=lambda _: None) is None
    done = admin.get(f"/jobs/{retry.json()['id']}").json()
    assert done["status"] == "succeeded", done
    resumed = admin.get(f"/datasets/{done['dataset']}").json()["metrics"]["resumed"]
    assert resumed == {"reference": 1, "loop": 5}
    assert not rt.storage.exists(f"{prefix}/loop.safetensors")  # gone with the success


def test_a_wall_time_limit_stops_a_real_clock_too(admin, runtime, tiny):
    job = admin.post("/jobs/distill", json={"stream": tiny, "stage": 1, "overrides": {"wall_time_s": 0.001}}).json()
    assert run_job(runtime, job["id"], send=lambda _: None) is None
    failed = admin.get(f"/jobs/{job['id']}").json()
    assert failed["status"] == "failed" and "past the job's wall-time limit of 0.001 s" in failed["error"]


def test_the_internal_optimiser_state_is_checked_against_its_sha256_before_the_next_stage_uses_it(
    admin, runtime, tiny
):
    quick = {"outer_iters": 2}
    first = admin.post("/jobs/distill", json={"stream": tiny, "stage": 1, "overrides": quick}).json()
    assert run_job(runtime, first["id"], send=lambda _: None) is None
    manifest = admin.get(f"/datasets/{tiny}@v1").json()
    [internal] = manifest["internal"]
    assert internal["name"] == "optimizer.safetensors" and internal["name"] not in {a["name"] for a in manifest["artifacts"]}
    stored = runtime.storage.path(f"datasets/{tiny}/job-{first['id']}/optimizer.safetensors")
    with open(stored, "r+b") as fh:  # a bit flipped in the store
        fh.seek(internal["bytes"] - 1)
        last = fh.read(1)
        fh.seek(internal["bytes"] - 1)
        fh.write(bytes([last[0] ^ 1]))

    second = admin.post("/jobs/distill", json={"stream": tiny, "stage": 2, "overrides": quick}).json()
    assert run_job(runtime, second["id"], send=lambda _: None) is None
    failed = admin.get(f"/jobs/{second['id']}").json()
    assert failed["status"] == "failed"
    assert failed["error"].startswith(f"CorruptArtifact: {tiny}@v1's optimizer.safetensors in storage has sha256 ")
