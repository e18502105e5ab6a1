"""Real faults, injected while the service works, and what must hold afterwards: nothing lost, nothing twice.

* a worker SIGKILLed in the middle of a stage's bi-level loop;
* the API SIGKILLed while a block upload streams in; two uploads of the same bytes at once;
* Redis (without persistence) restarted while jobs wait in its queue;
* PostgreSQL stopped under a running API, and started again.

Each test runs its own processes (uvicorn, Celery workers) and, where it breaks one, its own
server (fault_support): the machine's shared Postgres and Redis are never stopped.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fault_support import OwnPostgres, OwnRedis
from service_support import (
    BOOTSTRAP_TOKEN,
    PARQUET,
    REDIS_URL,
    Process,
    client,
    deployed_env,
    expect_problem,
    free_port,
    start_api,
    worker_process,
)
from test_e2e import LIGHT_REFERENCE

from diet_client import DietClient
from diet_client.transfer import CHUNK
from service.registry import migrate, tokens
from service.registry.db import Database

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]

# Quick to notice a dead worker: a heartbeat twice a second, silent for 4 s is dead, reconciled every second.
FAST_RECOVERY = {"job_heartbeat_s": 0.5, "job_stale_after_s": 4, "reconcile_s": 1}


def poll(what: Callable[[], object], timeout: float, interval: float = 0.1, message: str = "") -> object:
    """what() until it is truthy; its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"not within {timeout}s: {message}")


def finished(c: httpx.Client, job_id: int, timeout: float, logs: Callable[[], str]) -> dict:
    def done() -> dict | None:
        job = c.get(f"/jobs/{job_id}").json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    try:
        return poll(done, timeout, 0.25, f"job {job_id} to finish")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{logs()}") from None


def upload(c: httpx.Client, stream: str, path: Path) -> dict:
    response = c.post("/blocks", params={"stream": stream}, content=path.read_bytes(), headers=PARQUET)
    assert response.status_code in (200, 201), response.text
    return response.json()


def artifact_digests(c: httpx.Client, version: str) -> dict[str, str]:
    """sha256 of each data artifact as downloaded (not as the registry says)."""
    manifest = c.get(f"/datasets/{version}").json()
    return {
        a["name"]: hashlib.sha256(c.get(a["url"]).content).hexdigest()
        for a in manifest["artifacts"]
        if a["name"] != "manifest.json"
    }


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    redis = OwnRedis(tmp_path)
    redis.start()
    yield redis
    redis.kill()


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    postgres = OwnPostgres()
    postgres.start()
    yield postgres
    postgres.remove()


# --------------------------------------------------------------------------------------------- 1


@pytest.mark.slow
def test_a_worker_killed_mid_stage_is_replaced_and_the_job_resumes_to_the_same_bytes(
    tmp_path, processes, postgres_url, redis_prefix, ml100k_dir, ml100k_schema
):
    """SIGKILL the worker in the bi-level loop: the job row's heartbeat stops, the API's reconciler
    queues the job again, a second worker resumes it from the loop checkpoint, one version is
    registered, and its artifacts have the bytes of an undisturbed run of the same seed."""
    env = deployed_env(
        tmp_path, postgres_url, REDIS_URL, redis_prefix, worker_threads=1, job_checkpoint_every=20, **FAST_RECOVERY
    )
    scratch = tmp_path / "worker-tmp"  # the workers' local scratch folders (TMPDIR of this machine)
    scratch.mkdir()
    env["TMPDIR"] = str(scratch)
    migrate.upgrade(postgres_url)
    api, base_url = start_api(env, tmp_path, processes)
    first = worker_process("worker-1", env, tmp_path)
    processes.append(first)
    second: Process | None = None

    def logs() -> str:
        return "\n".join(f"--- {p.name}\n{p.logs(4000)}" for p in (api, first, second) if p is not None)

    # Long enough a loop for the kill to land in it (60-100 ms an iteration on one thread).
    overrides = {"outer_iters": 120, "target_pool_rows": 2048}
    with client(base_url, BOOTSTRAP_TOKEN) as c:
        for stream in ("calm", "killed"):
            definition = {"name": stream, "schema": ml100k_schema, "reference": LIGHT_REFERENCE}
            assert c.post("/streams", json=definition).status_code == 201
            upload(c, stream, ml100k_dir / "b1.parquet")

        calm = c.post("/jobs/distill", json={"stream": "calm", "stage": 1, "overrides": overrides}).json()
        assert finished(c, calm["id"], 60, logs)["status"] == "succeeded", logs()

        job = c.post("/jobs/distill", json={"stream": "killed", "stage": 1, "overrides": overrides}).json()

        def in_the_loop() -> dict | None:
            progress = c.get(f"/jobs/{job['id']}").json()["progress"]
            return progress if progress and progress["phase"] == "optimise" and progress["step"] > 45 else None

        at_kill = poll(in_the_loop, 60, 0.05, "the job to reach the bi-level loop")
        first.kill()
        killed_at = time.monotonic()
        [left_behind] = scratch.glob(f"diet-job-{job['id']}-*")
        second = worker_process("worker-2", env, tmp_path)  # as a service manager would start one
        processes.append(second)

        done = finished(c, job["id"], 60, logs)
        assert done["status"] == "succeeded", logs()
        assert done["attempts"] == 2 and done["dataset"] == "killed@v1"
        print(f"killed at {at_kill}; redelivered and finished {time.monotonic() - killed_at:.1f}s after the kill")
        print("undisturbed timings", c.get("/datasets/calm@v1").json()["metrics"]["timings"])
        print("resumed", c.get("/datasets/killed@v1").json()["metrics"]["resumed"])

        versions = c.get("/datasets", params={"stream": "killed"}).json()["items"]
        assert [v["version"] for v in versions] == ["killed@v1"]
        manifest = c.get("/datasets/killed@v1").json()
        # The second attempt went on from the last loop checkpoint, not from the start.
        resumed = manifest["metrics"]["resumed"]
        assert resumed["reference"] == 1 and 20 <= resumed["loop"] <= at_kill["step"] + 40, resumed
        assert "resuming from a checkpoint" in second.logs()

        assert artifact_digests(c, "killed@v1") == artifact_digests(c, "calm@v1")
    # The second worker deleted what the killed one left on this machine when it started.
    assert not left_behind.exists() and not list(scratch.glob("diet-job-*"))
    # The checkpoints went with the job's success.
    assert not (tmp_path / "bucket" / "checkpoints" / "killed").exists() or not files_under(
        tmp_path / "bucket" / "checkpoints" / "killed"
    )


# --------------------------------------------------------------------------------------------- 2


def big_block(source: Path, dest: Path, copies: int = 8) -> Path:
    """The rows of a block several times over, uncompressed: a few MiB, so an upload takes several chunks."""
    table = pq.read_table(source)
    pq.write_table(pa.concat_tables([table] * copies), dest, compression="none", use_dictionary=False)
    assert dest.stat().st_size > 3 * CHUNK
    return dest


class HeldUpload:
    """A client upload in a thread that stops once, after `after_bytes`, until `finish`: meanwhile a test
    kills the API it is writing to. `finish` lets it go on (it retries) and returns what it uploaded."""

    def __init__(self, base_url: str, stream: str, block: Path, after_bytes: int) -> None:
        self.paused, self.resume, self.outcome = threading.Event(), threading.Event(), {}

        def hold(done: int, total: int) -> None:
            if done >= after_bytes and not self.paused.is_set():  # the first attempt only
                self.paused.set()
                assert self.resume.wait(60)

        def push() -> None:
            try:
                with DietClient(base_url, BOOTSTRAP_TOKEN, retries=8, backoff_s=0.25, max_backoff_s=2) as diet:
                    self.outcome["upload"] = diet.upload_block(stream, block, on_progress=hold)
            except Exception as exc:  # shown by finish's assertion
                self.outcome["error"] = exc

        self.thread = threading.Thread(target=push)
        self.thread.start()

    def finish(self):
        self.resume.set()
        self.thread.join(60)
        assert "error" not in self.outcome, self.outcome.get("error")
        return self.outcome["upload"]


def test_the_api_killed_mid_upload_leaves_nothing_and_the_clients_retry_succeeds(
    tmp_path, processes, postgres_url, redis_prefix, ml100k_dir, ml100k_schema
):
    max_age = 1.0  # temporary blobs idle this long are abandoned
    env = deployed_env(tmp_path, postgres_url, REDIS_URL, redis_prefix, tmp_max_age_s=max_age)
    migrate.upgrade(postgres_url)
    port = free_port()
    api, base_url = start_api(env, tmp_path, processes, port=port)
    bucket = tmp_path / "bucket"
    block = big_block(ml100k_dir / "b1.parquet", tmp_path / "big.parquet")
    with client(base_url, BOOTSTRAP_TOKEN) as c:
        assert c.post("/streams", json={"name": "s", "schema": ml100k_schema}).status_code == 201

    held = HeldUpload(base_url, "s", block, after_bytes=CHUNK)
    assert held.paused.wait(30)
    # The API is writing the body to a temporary blob: kill it there.
    partial = poll(lambda: [p for p in (bucket / "tmp").glob("*") if p.stat().st_size > 0], 10)
    api.kill()
    [orphan] = partial
    time.sleep(max(0.0, orphan.stat().st_mtime + max_age + 0.2 - time.time()))

    start_api(env, tmp_path, processes, "api-again", port=port)
    with client(base_url, BOOTSTRAP_TOKEN) as c:
        assert c.get("/blocks", params={"stream": "s"}).json()["items"] == []  # no block row
    assert not orphan.exists(), "the abandoned upload was not swept when the API started"
    assert files_under(bucket) == ["diet-storage.txt"]

    uploaded = held.finish()  # the client's next write meets the dead connection; it retries against the new API
    assert uploaded.created and uploaded.block.sha256 == hashlib.sha256(block.read_bytes()).hexdigest()
    with client(base_url, BOOTSTRAP_TOKEN) as c:
        assert [b["id"] for b in c.get("/blocks", params={"stream": "s"}).json()["items"]] == [uploaded.block.id]
    assert files_under(bucket) == [f"blocks/s/{uploaded.block.sha256}.parquet", "diet-storage.txt"]


def test_two_uploads_of_the_same_bytes_at_once_make_one_block(
    tmp_path, processes, postgres_url, redis_prefix, ml100k_dir, ml100k_schema
):
    env = deployed_env(tmp_path, postgres_url, REDIS_URL, redis_prefix)
    migrate.upgrade(postgres_url)
    api, base_url = start_api(env, tmp_path, processes)
    block = big_block(ml100k_dir / "b2.parquet", tmp_path / "big.parquet")
    with client(base_url, BOOTSTRAP_TOKEN) as c:
        assert c.post("/streams", json={"name": "s", "schema": ml100k_schema}).status_code == 201

    # Both bodies stream side by side, and both end (and are checked and recorded) at the same time.
    together = threading.Barrier(2, timeout=30)

    def in_step(done: int, total: int) -> None:
        if 0 < done < total:
            together.wait()

    outcomes: list[object] = []

    def push() -> None:
        try:
            with DietClient(base_url, BOOTSTRAP_TOKEN, retries=0) as diet:
                outcomes.append(diet.upload_block("s", block, on_progress=in_step))
        except Exception as exc:
            outcomes.append(exc)

    uploaders = [threading.Thread(target=push) for _ in range(2)]
    for uploader in uploaders:
        uploader.start()
    for uploader in uploaders:
        uploader.join(60)
    assert not [o for o in outcomes if isinstance(o, Exception)], f"{outcomes}\n{api.logs()}"
    assert sorted(o.created for o in outcomes) == [False, True]  # one made it, the other found it
    assert len({o.block.id for o in outcomes}) == 1
    with client(base_url, BOOTSTRAP_TOKEN) as c:
        listed = c.get("/blocks", params={"stream": "s"}).json()
    assert listed["total"] == 1 and listed["items"][0]["stage"] == 1
    sha = outcomes[0].block.sha256
    assert files_under(tmp_path / "bucket") == [f"blocks/s/{sha}.parquet", "diet-storage.txt"]


# --------------------------------------------------------------------------------------------- 3


@pytest.mark.slow
def test_jobs_queued_in_a_redis_that_restarts_empty_are_all_run_once(
    tmp_path, processes, postgres_url, own_redis, ml100k_dir, ml100k_schema
):
    """Redis (no persistence) restarts while one job runs and two wait in its queue: the reconciler
    finds the broker's marker gone and sends the queued jobs again; each job runs once, and each
    makes exactly one version."""
    import redis

    prefix = "diet-faults:"
    env = deployed_env(tmp_path, postgres_url, own_redis.url, prefix, worker_threads=1, reconcile_s=1)
    migrate.upgrade(postgres_url)
    api, base_url = start_api(env, tmp_path, processes)
    worker = worker_process("worker", env, tmp_path)
    processes.append(worker)

    def logs() -> str:
        return f"--- api\n{api.logs(6000)}\n--- worker\n{worker.logs(6000)}"

    quick = {"outer_iters": 30, "target_pool_rows": 2048}
    with client(base_url, BOOTSTRAP_TOKEN) as c:
        for stream in ("a", "b", "c"):
            assert c.post("/streams", json={"name": stream, "schema": ml100k_schema, "reference": LIGHT_REFERENCE}).status_code == 201
            upload(c, stream, ml100k_dir / "b1.parquet")
        upload(c, "a", ml100k_dir / "b2.parquet")
        jobs = [c.post("/jobs/distill", json={"stream": s, "stage": 1, "overrides": quick}).json() for s in "abc"]
        # a's stage 2 waits for a's stage 1: it is not in the broker yet, and is sent when that one is done.
        jobs.append(c.post("/jobs/distill", json={"stream": "a", "stage": 2, "overrides": quick}).json())
        assert jobs[-1]["waits_for"] == jobs[0]["id"]

        queue = redis.Redis.from_url(own_redis.url)
        queued_key = f"{prefix}{env['DIET_QUEUE']}"

        def one_running_two_waiting() -> bool:
            running = c.get("/jobs", params={"status": "running"}).json()["items"]
            return len(running) == 1 and queue.llen(queued_key) == 2

        poll(one_running_two_waiting, 30, 0.05, "one job running and two in Redis's queue")
        queue.close()
        own_redis.restart()  # SIGKILL and start again: the queue is gone

        done = [finished(c, job["id"], 90, logs) for job in jobs]
        assert [j["status"] for j in done] == ["succeeded"] * 4, logs()
        assert [j["attempts"] for j in done] == [1, 1, 1, 1], logs()  # claimed once each: none ran twice
        assert [j["dataset"] for j in done] == ["a@v1", "b@v1", "c@v1", "a@v2"]
        for stream, count in (("a", 2), ("b", 1), ("c", 1)):
            assert c.get("/datasets", params={"stream": stream}).json()["total"] == count
    assert "the broker lost its state" in api.logs(10**6), logs()
    started = [line for line in worker.logs(10**6).splitlines() if '"message": "job started"' in line]
    assert len(started) == 4, started


# --------------------------------------------------------------------------------------------- 4


def test_a_stopped_database_is_503_everywhere_and_the_api_recovers_by_itself(
    start_service, own_postgres, ml100k_dir, ml100k_schema
):
    service, admin = start_service(database_url=own_postgres.url)
    assert admin.post("/streams", json={"name": "s", "schema": ml100k_schema}).status_code == 201
    block = upload(admin, "s", ml100k_dir / "b1.parquet")
    job = admin.post("/jobs/distill", json={"stream": "s", "stage": 1}).json()
    db = Database(own_postgres.url)
    with db.session() as session:
        _, reader_secret = tokens.create(session, "reader", ["read"])
        session.commit()
    db.dispose()
    reader = {"Authorization": f"Bearer {reader_secret}"}
    assert admin.get("/streams", headers=reader).status_code == 200

    own_postgres.stop()

    body = expect_problem(admin.get("/readyz"), 503, "database")
    assert body["checks"]["database"].startswith("unavailable")
    assert body["checks"]["broker"] == "ok" and body["checks"]["storage"] == "ok"
    assert admin.get("/healthz").status_code == 200
    needs_the_database = [
        ("GET", "/streams", {}),
        ("GET", "/streams/s", {}),
        ("POST", "/streams", {"json": {"name": "t", "schema": ml100k_schema}}),
        ("GET", "/blocks", {}),
        ("GET", f"/blocks/{block['id']}", {}),
        ("POST", "/blocks?stream=s", {"content": (ml100k_dir / "b2.parquet").read_bytes(), "headers": PARQUET}),
        ("GET", "/jobs", {}),
        ("GET", f"/jobs/{job['id']}", {}),
        ("POST", "/jobs/distill", {"json": {"stream": "s", "stage": 1}}),
        ("DELETE", f"/jobs/{job['id']}", {}),
        ("GET", "/datasets", {}),
        ("GET", "/datasets/s@latest", {}),
        ("GET", "/datasets/s@v1/files/synthetic.parquet", {}),
        ("GET", "/datasets/s@v1/report", {}),
    ]
    for method, path, kwargs in needs_the_database:
        response = admin.request(method, path, **kwargs)
        expect_problem(response, 503, "database is unavailable")
    # A token kept in the database cannot be checked: 503 (try again), not 401 (go away).
    expect_problem(admin.get("/streams", headers=reader), 503, "database is unavailable")
    expect_problem(admin.get("/metrics", headers=reader), 503)

    own_postgres.start()  # the same API, not restarted

    recovered = poll(lambda: admin.get("/streams").status_code == 200, 30, 0.25, "the API to use the database again")
    assert recovered
    assert admin.get("/readyz").json()["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}
    assert admin.get("/streams", headers=reader).status_code == 200
    assert upload(admin, "s", ml100k_dir / "b2.parquet")["stage"] == 2
    assert admin.get(f"/jobs/{job['id']}").json()["status"] == "queued"
