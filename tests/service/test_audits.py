"""Audit jobs: refused when they cannot measure anything, and on ML-100K through HTTP, Postgres, Redis and a
Celery worker: the τ, top-1 regret and mean AUC recorded in the version's metrics are the bench's statistics of
the same candidates (trained again here by the engine's audit, bit for bit), a stream's policy audits each k-th
stage by itself, an alarm goes to the webhooks, and the report page shows τ over the audited versions."""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import pytest
from service_support import (
    BOOTSTRAP_TOKEN,
    PARQUET,
    REDIS_URL,
    Receiver,
    client,
    deployed_env,
    expect_problem,
    start_api,
    worker_process,
)
from test_e2e import LIGHT_REFERENCE, QUICK, wait_for_job

from diet_client.signing import HEADER, verify
from diet_engine.config import CandidateConfig
from diet_engine.data.blocks import TensorBlock
from diet_engine.dataset.loader import load_dataset
from diet_engine.evaluate.bench import train_cell
from diet_engine.evaluate.fidelity import kendall_tau_b, top1_regret
from service.registry import migrate

BLOCKS = ("b1", "b2", "b3", "subsequent", "valid", "test")  # stages 1-6
POOL = ["dcn", "dcnv2", "finalnet"]
CANDIDATE = {"distilled_epochs": 1, "train": {"batch_size": 4096}}
SECRET = "audit-hook-secret-0123"


def _upload(c: httpx.Client, ml100k_dir, stream: str, blocks=BLOCKS) -> None:
    for name in blocks:
        r = c.post("/blocks", params={"stream": stream}, content=(ml100k_dir / f"{name}.parquet").read_bytes(), headers=PARQUET)
        assert r.status_code in (200, 201), r.text


def wait_for_audit(c: httpx.Client, audit_id: int, logs, timeout: float = 480.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        audit = c.get(f"/jobs/audit/{audit_id}").json()
        if audit["status"] in ("succeeded", "failed", "cancelled"):
            return audit
        time.sleep(0.5)
    raise AssertionError(f"audit {audit_id} did not finish in {timeout}s: {audit}\n{logs()}")


def test_audits_that_cannot_measure_are_refused(admin, ml100k_dir, ml100k_schema, nothing_written_audits):
    expect_problem(admin.post("/jobs/audit", json={"version": "nope@v1"}), 404, "no stream named 'nope'")
    expect_problem(admin.post("/jobs/audit", json={"version": "not a version"}), 422)
    assert admin.post("/streams", json={"name": "audited", "schema": ml100k_schema}).status_code in (200, 201)
    expect_problem(admin.post("/jobs/audit", json={"version": "audited@v1"}), 404, "no dataset version")
    expect_problem(admin.get("/jobs/audit/424242"), 404, "no audit")
    for bad in ({"models": ["dcn"]}, {"repeats": 0}, {"blocks": {"test": 0}}, {"surprise": True}, {"seed": -1}):
        expect_problem(admin.post("/jobs/audit", json={"version": "audited@v1", **bad}), 422)


@pytest.fixture
def nothing_written_audits(service):
    from sqlalchemy import create_engine, text

    def count() -> int:
        engine = create_engine(service.settings.database_url)
        with engine.connect() as conn:
            n = conn.execute(text("SELECT count(*) FROM audits")).scalar_one()
        engine.dispose()
        return n

    before = count()
    yield
    assert count() == before


def test_a_stream_audit_policy_is_checked(admin, ml100k_schema):
    base = {"name": "policy", "schema": ml100k_schema}
    for bad in ({"every": 0}, {"every": 2, "pool": "p99"}, {"every": 2, "threshold": 2}, {"every": 2, "candidate": {"arch": {}}}):
        expect_problem(admin.post("/streams", json={**base, "audit": bad}), 422)
    made = admin.post("/streams", json={**base, "audit": {"every": 2}, "licence": "CC-BY-4.0"})
    assert made.status_code == 201, made.text
    assert made.json()["audit"]["every"] == 2 and made.json()["licence"] == "CC-BY-4.0"
    expect_problem(admin.post("/streams", json={**base, "audit": {"every": 3}}), 409, "audit")


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
def test_audit_on_ml100k_records_the_bench_statistics(tmp_path, processes, postgres_url, redis_prefix, ml100k_dir,
                                                      ml100k_schema):  # fmt: skip
    env = deployed_env(tmp_path, postgres_url, REDIS_URL, redis_prefix, worker_threads=2, webhook_backoff_s=0.2)
    migrate.upgrade(postgres_url)
    api, base_url = start_api(env, tmp_path, processes)
    worker = worker_process("worker", env, tmp_path)
    processes.append(worker)
    receiver = Receiver()

    def logs() -> str:
        return f"--- api\n{api.logs()}\n--- worker\n{worker.logs()}"

    # every second stage: v1 (stage 1) is audited only when asked. A threshold of 1 alarms unless the rankings agree.
    policy = {"every": 2, "threshold": 1.0, "models": POOL, "candidate": CANDIDATE}
    try:
        with client(base_url, BOOTSTRAP_TOKEN, timeout=60) as c:
            made = c.post("/streams", json={"name": "ml", "schema": ml100k_schema, "reference": LIGHT_REFERENCE,
                                            "audit": policy})  # fmt: skip
            assert made.status_code == 201, made.text
            hook = c.post("/webhooks", json={"stream": "ml", "url": receiver.url, "secret": SECRET,
                                             "events": ["version.created", "job.finished", "audit.alarm"]}).json()  # fmt: skip
            _upload(c, ml100k_dir, "ml", BLOCKS[:3])
            job = c.post("/jobs/distill", json={"stream": "ml", "stage": 1, "overrides": QUICK}).json()
            assert wait_for_job(c, job["id"], logs)["status"] == "succeeded", logs()
            expect_problem(c.post("/jobs/audit", json={"version": "ml@v1", "models": POOL}), 409, "stage 4")
            expect_problem(c.post("/jobs/audit", json={"version": "ml@v1", "blocks": {"subsequent": 1}}), 422, "seen")
            for bad in ({"pool": "p99"}, {"models": ["dcn", "magic"]}, {"candidate": {"distilled_epochs": 0}},
                        {"candidate": {"arch": {}}}, {"blocks": {"subsequent": 2, "valid": 2}}):  # fmt: skip
                expect_problem(c.post("/jobs/audit", json={"version": "ml@v1", **bad}), 422)
            _upload(c, ml100k_dir, "ml", BLOCKS[3:])

            asked = c.post("/jobs/audit", json={"version": "ml@latest", "models": POOL, "candidate": CANDIDATE,
                                                "blocks": {"subsequent": 4, "valid": 5, "test": 6}})  # fmt: skip
            assert asked.status_code == 202, asked.text
            again = c.post("/jobs/audit", json={"version": "ml@v1", "models": POOL, "candidate": CANDIDATE,
                                                "blocks": {"subsequent": 4, "valid": 5, "test": 6}})  # fmt: skip
            assert again.status_code == 200 and again.json()["id"] == asked.json()["id"]
            audit = wait_for_audit(c, asked.json()["id"], logs)
            assert audit["status"] == "succeeded", (audit, logs())
            assert [a["scheduled"] for a in c.get("/jobs/audit", params={"stream": "ml"}).json()["items"]] == [False]
            deadline = time.monotonic() + 30  # the deliveries go out from the worker's webhook queue
            while len(receiver.received) < 3 + int(audit["result"]["alarm"]):
                assert time.monotonic() < deadline, logs()
                time.sleep(0.2)
            manifest = c.get("/datasets/ml@v1").json()
            pulled = tmp_path / "v1"
            pulled.mkdir()
            for artifact in manifest["artifacts"]:
                (pulled / artifact["name"]).write_bytes(c.get(artifact["url"]).content)
            report = c.get("/datasets/ml@v1/report").text
            deliveries = c.get(f"/webhooks/{hook['id']}/deliveries", params={"limit": 100}).json()["items"]
    finally:
        receiver.close()

    result = audit["result"]
    assert result["models"] == POOL and set(result["auc"]) == {"full", "version"}
    # the bench's statistics of the recorded cells ...
    full_auc, version_auc = (np.array([result["auc"][m][k] for k in POOL]) for m in ("full", "version"))
    assert result["kendall_tau"] == kendall_tau_b(full_auc[None], version_auc[None])[0]
    assert result["top1_regret"] == top1_regret(version_auc, full_auc)
    assert result["alarm"] == (result["kendall_tau"] < 1.0)
    # ... of the very candidates the engine trains for the same version, blocks and seed (one model's pair of cells)
    ds = load_dataset(pulled)
    candidate = CandidateConfig.model_validate({"arch": ds.reference.arch.model_dump(), "temperature": ds.temperature,
                                                **CANDIDATE})  # fmt: skip
    load = lambda name: TensorBlock.load(ml100k_dir / f"{name}.parquet", ds.schema)  # noqa: E731
    valid, test, sub = load("valid"), load("test"), load("subsequent")
    full = train_cell("finalnet", ds.schema, [load("b1"), sub], valid, test, candidate, 1, 0, 0)
    version = train_cell("finalnet", ds.schema, [sub], valid, test, candidate, 1, 0, len(ds),
                         embeddings=ds.embeddings, distilled=ds.synthetic, probe=test)  # fmt: skip
    assert (full["auc"], version["auc"]) == (result["auc"]["full"]["finalnet"], result["auc"]["version"]["finalnet"])
    print(f"ML-100K v1 audit: τ {result['kendall_tau']}, top-1 regret {result['top1_regret']:.4f}, "
          f"mean AUC {result['mean_auc']}, {result['seconds']:.1f} s on the worker")

    # the version's metrics hold its latest audit; the report shows τ over the audited versions
    latest = manifest["metrics"]["audit"]
    assert latest["audit"] == audit["id"] and latest["threshold"] == 1.0 and latest["kendall_tau"] == result["kendall_tau"]
    assert 'id="audits"' in report and "Kendall τ" in report
    assert ("τ below threshold" in report) == result["alarm"]

    events = [d["event"] for d in deliveries]
    assert events.count("version.created") == 1
    finished = [d["payload"]["data"] for d in deliveries if d["event"] == "job.finished"]
    assert sorted(f["kind"] for f in finished) == ["audit", "distill"]
    assert events.count("audit.alarm") == int(result["alarm"])
    for got in receiver.received:
        assert verify(SECRET, got.body, got.headers[HEADER], now=got.at)
    assert sorted(json.loads(r.body)["event"] for r in receiver.received) == sorted(events)


def _fake_version(db, stream_name: str, stage: int, number: int):
    """A version row as the worker records one (no files: nothing here reads them)."""
    from service.registry import blocks, streams
    from service.registry.tables import DatasetVersion, Job

    with db.session() as session:
        stream = streams.by_name(session, stream_name)
        seen = [blocks.by_stage(session, stream.id, s) for s in range(1, stage + 1)]
        job = Job(stream_id=stream.id, stage=stage, block_id=seen[-1].id, overrides={}, config={}, status="succeeded")
        session.add(job)
        session.flush()
        session.add(DatasetVersion(
            stream_id=stream.id, number=number, stage=stage, job_id=job.id, rows=10, new_rows=10, kept_rows=0,
            history_rows=100, ratio=0.1, config={}, metrics={}, artifacts=[],
            blocks=[{"id": b.id, "stage": b.stage, "sha256": b.sha256, "rows": b.rows} for b in seen],
        ))  # fmt: skip
        session.commit()


def test_a_policy_audits_each_kth_stage_once_its_blocks_are_there(service, admin, ml100k_dir, ml100k_schema):
    from service.app import reconcile_now
    from service.registry.db import Database

    policy = {"every": 2, "threshold": 0.5, "models": ["dcn", "wukong"]}
    assert admin.post("/streams", json={"name": "every2", "schema": ml100k_schema, "audit": policy}).status_code == 201
    _upload(admin, ml100k_dir, "every2", BLOCKS[:4])  # stages 1-4
    db = Database(service.settings.database_url)
    app = service.server.config.app
    try:
        _fake_version(db, "every2", 1, 1)
        _fake_version(db, "every2", 2, 2)
        reconcile_now(app)
        # v2 (stage 2) is due, but its test block (stage 5) is not there yet; v1 is not due at all
        assert admin.get("/jobs/audit", params={"stream": "every2"}).json()["total"] == 0
        _upload(admin, ml100k_dir, "every2", BLOCKS[4:5])
        reconcile_now(app)
        reconcile_now(app)  # once only
    finally:
        db.dispose()
    [audit] = admin.get("/jobs/audit", params={"stream": "every2"}).json()["items"]
    assert audit["version"] == "every2@v2" and audit["scheduled"] and audit["status"] == "queued"
    assert {k: audit["blocks"][k]["stage"] for k in ("subsequent", "valid", "test")} == {"subsequent": 3, "valid": 4, "test": 5}
    assert [b["stage"] for b in audit["blocks"]["history"]] == [1, 2]
    assert audit["request"] == {"pool": None, "models": ["dcn", "wukong"], "candidate": {}, "repeats": 1, "seed": 0}
    assert admin.get(f"/jobs/audit/{audit['id']}").json() == audit
    assert admin.get("/jobs/audit", params={"version": "every2@v1"}).json()["total"] == 0
