"""Webhooks: registered per stream, refused when malformed, and delivered signed by the worker — retried
after a 500 with backoff, every attempt in the delivery log — without holding up the request that caused them."""

from __future__ import annotations

import json
import time

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

from diet_client.signing import HEADER, verify
from service import webhooks
from service.registry import migrate
from service.registry.db import Database
from service.registry.tables import WebhookDelivery
from worker.webhooks import attempt

SECRET = "s3cret-s3cret-s3cret"


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def _stream_with_a_queued_job(c, ml100k_dir, ml100k_schema, name: str) -> int:
    assert c.post("/streams", json={"name": name, "schema": ml100k_schema}).status_code in (200, 201)
    uploaded = c.post("/blocks", params={"stream": name}, content=(ml100k_dir / "b1.parquet").read_bytes(), headers=PARQUET)
    assert uploaded.status_code in (200, 201), uploaded.text
    job = c.post("/jobs/distill", json={"stream": name, "stage": 1})
    assert job.status_code in (200, 202), job.text
    return job.json()["id"]


def test_webhooks_are_checked_listed_and_deleted(admin, ml100k_schema, receiver):
    assert admin.post("/streams", json={"name": "hooked", "schema": ml100k_schema}).status_code in (200, 201)
    body = {"stream": "hooked", "url": receiver.url, "events": ["job.failed", "version.created"], "secret": SECRET}
    created = admin.post("/webhooks", json=body)
    assert created.status_code == 201, created.text
    hook = created.json()
    assert hook["events"] == ["job.failed", "version.created"] and "secret" not in hook
    assert admin.get(f"/webhooks/{hook['id']}").json() == hook
    assert hook in admin.get("/webhooks", params={"stream": "hooked"}).json()["items"]

    expect_problem(admin.post("/webhooks", json={**body, "stream": "nope"}), 404, "no stream named 'nope'")
    for bad in ({"events": ["job.exploded"]}, {"events": []}, {"url": "ftp://x"}, {"secret": "short"},
                {"secret": "with\x00nul-with-nul"}, {"extra": 1}):  # fmt: skip
        expect_problem(admin.post("/webhooks", json={**body, **bad}), 422)
    expect_problem(admin.get("/webhooks/999999"), 404, "no webhook")

    assert admin.delete(f"/webhooks/{hook['id']}").json() == hook
    expect_problem(admin.get(f"/webhooks/{hook['id']}/deliveries"), 404, "no webhook")


def test_an_event_is_recorded_with_its_transaction_and_signed_on_delivery(service, admin, ml100k_dir, ml100k_schema, receiver):
    """A cancelled job is a job.failed event; one attempt against a receiver that answers 500, then one that answers 200."""
    receiver.answers = [500]
    hook = admin.post("/webhooks", json={"stream": "signed", "url": receiver.url, "events": ["job.failed"], "secret": SECRET})
    assert hook.status_code == 404  # no such stream yet
    job_id = _stream_with_a_queued_job(admin, ml100k_dir, ml100k_schema, "signed")
    hook = admin.post("/webhooks", json={"stream": "signed", "url": receiver.url, "events": ["job.failed"], "secret": SECRET}).json()
    assert admin.delete(f"/jobs/{job_id}").json()["status"] == "cancelled"

    [delivery] = admin.get(f"/webhooks/{hook['id']}/deliveries").json()["items"]
    assert delivery["status"] == "pending" and delivery["attempts"] == 0 and delivery["event"] == "job.failed"
    assert delivery["payload"]["data"] == {"kind": "distill", "job": job_id, "stage": 1, "status": "cancelled",
                                           "error": "cancelled by request", "dataset": None}  # fmt: skip

    db = Database(service.settings.database_url)
    try:
        settings = service.settings.model_copy(update={"webhook_backoff_s": 0.5, "webhook_max_attempts": 3})
        assert attempt(db, settings, delivery["id"]) == 0.5  # the receiver said 500: again in 0.5 s
        assert attempt(db, settings, delivery["id"]) is None  # delivered
        assert attempt(db, settings, delivery["id"]) is None  # a duplicate message sends nothing
    finally:
        db.dispose()
    first, second = receiver.wait_for(2)
    assert len(receiver.received) == 2
    for got in (first, second):
        assert verify(SECRET, got.body, got.headers[HEADER], now=got.at)
        assert not verify("another-secret-entirely", got.body, got.headers[HEADER])
        assert not verify(SECRET, got.body + b" ", got.headers[HEADER])
        assert got.headers["X-DIET-Event"] == "job.failed" and got.headers["X-DIET-Delivery"] == str(delivery["id"])
        assert json.loads(got.body)["data"]["job"] == job_id
    logged = admin.get(f"/webhooks/{hook['id']}/deliveries").json()["items"][0]
    assert logged["status"] == "delivered" and logged["attempts"] == 2
    assert [a["status_code"] for a in logged["attempt_log"]] == [500, 200]
    assert logged["attempt_log"][0]["error"] == "the receiver answered 500"
    assert admin.get(f"/webhooks/{hook['id']}/deliveries", params={"status": "failed"}).json()["items"] == []


def test_a_rolled_back_transaction_emits_nothing(service, admin, ml100k_schema, receiver):
    assert admin.post("/streams", json={"name": "rolled", "schema": ml100k_schema}).status_code in (200, 201)
    hook = admin.post("/webhooks", json={"stream": "rolled", "url": receiver.url, "events": ["alias.moved"], "secret": SECRET}).json()
    db = Database(service.settings.database_url)
    try:
        with db.session() as session:
            from service.registry import streams

            ids = webhooks.emit(session, streams.by_name(session, "rolled"), "alias.moved", {"alias": "prod"})
            assert len(ids) == 1
            session.rollback()
        with db.session() as session:
            assert session.get(WebhookDelivery, ids[0]) is None
            with pytest.raises(ValueError, match="unknown webhook event"):
                webhooks.emit(session, 1, "alias.exploded", {})
    finally:
        db.dispose()
    assert admin.get(f"/webhooks/{hook['id']}/deliveries").json()["total"] == 0


def test_a_scope_of_its_own(service, anon):
    from test_auth_every_route import _make_token

    read_only = _make_token(service, ["read"])
    with client(service.base_url, read_only) as c:
        expect_problem(c.get("/webhooks"), 403, "lacks the 'webhooks' scope")
    with client(service.base_url, _make_token(service, ["webhooks"])) as c:
        assert c.get("/webhooks").status_code == 200


@pytest.mark.e2e
@pytest.mark.postgres
@pytest.mark.redis
def test_deployed_delivery_is_retried_by_the_worker(tmp_path, processes, postgres_url, redis_prefix, ml100k_dir,
                                                    ml100k_schema, receiver):  # fmt: skip
    """Postgres, Redis, an API and a Celery worker: the receiver answers 500 twice; the worker retries with backoff."""
    env = deployed_env(tmp_path, postgres_url, REDIS_URL, redis_prefix, webhook_backoff_s=0.3, webhook_max_attempts=4)
    migrate.upgrade(postgres_url)
    api, base_url = start_api(env, tmp_path, processes)
    worker = worker_process("worker", env, tmp_path)
    processes.append(worker)
    receiver.answers = [500, 500]
    with client(base_url, BOOTSTRAP_TOKEN) as c:
        job_id = _stream_with_a_queued_job(c, ml100k_dir, ml100k_schema, "deployed")
        hook = c.post("/webhooks", json={"stream": "deployed", "url": receiver.url, "events": ["job.failed", "job.finished"],
                                         "secret": SECRET}).json()  # fmt: skip
        started = time.monotonic()
        assert c.delete(f"/jobs/{job_id}").status_code == 200  # job.failed (cancelled); answered before any delivery
        answered = time.monotonic() - started
        got = receiver.wait_for(3, timeout=90)
        deadline = time.monotonic() + 30
        while (d := c.get(f"/webhooks/{hook['id']}/deliveries").json()["items"][0])["status"] == "pending":
            assert time.monotonic() < deadline, f"{d}\n{worker.logs()}"
            time.sleep(0.2)
    assert d["status"] == "delivered" and d["attempts"] == 3, worker.logs()
    assert [a["status_code"] for a in d["attempt_log"]] == [500, 500, 200]
    assert all(verify(SECRET, r.body, r.headers[HEADER], now=r.at) for r in got)
    at = [a["at"] for a in d["attempt_log"]]
    gaps = [(_t(at[i + 1]) - _t(at[i])) for i in range(2)]
    assert gaps[0] >= 0.3 and gaps[1] >= 0.6, gaps  # backoff doubles
    assert answered < 5, answered


def _t(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def test_moving_an_alias_emits_alias_moved(service, admin, ml100k_dir, ml100k_schema, receiver):
    """Set, then remove: one delivery each, naming the versions (a version row made as the worker makes one)."""
    from test_audits import _fake_version

    assert admin.post("/streams", json={"name": "aliased", "schema": ml100k_schema}).status_code in (200, 201)
    uploaded = admin.post("/blocks", params={"stream": "aliased"}, content=(ml100k_dir / "b1.parquet").read_bytes(),
                          headers=PARQUET)  # fmt: skip
    assert uploaded.status_code in (200, 201), uploaded.text
    db = Database(service.settings.database_url)
    try:
        _fake_version(db, "aliased", 1, 1)
    finally:
        db.dispose()
    hook = admin.post("/webhooks", json={"stream": "aliased", "url": receiver.url, "events": ["alias.moved"], "secret": SECRET}).json()
    assert admin.put("/datasets/aliased/aliases/prod", json={"version": 1}).status_code == 201
    assert admin.delete("/datasets/aliased/aliases/prod").status_code == 200
    removed, moved = admin.get(f"/webhooks/{hook['id']}/deliveries").json()["items"]  # newest first
    assert moved["event"] == removed["event"] == "alias.moved"
    assert {k: moved["payload"]["data"][k] for k in ("alias", "from", "to")} == {"alias": "prod", "from": None, "to": "aliased@v1"}
    assert {k: removed["payload"]["data"][k] for k in ("alias", "from", "to")} == {"alias": "prod", "from": "aliased@v1", "to": None}
