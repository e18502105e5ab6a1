"""POST /jobs/distill rules, cancellation, listing, and dataset lookups, on a service with no worker."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
from service_support import PARQUET, expect_problem

QUICK = {"outer_iters": 5}


def _messages(service) -> list[dict]:
    """The distill messages waiting in the embedded folder broker, as job ids."""
    folder = Path(service.settings.data_dir) / "broker" / "messages"
    out = []
    for path in sorted(folder.glob(f"*.{service.settings.queue}.msg")):  # not the broker's marker
        envelope = json.loads(path.read_text())
        out.append(envelope["headers"]["argsrepr"])
    return out


@pytest.fixture
def stream(admin, ml100k_schema, ml100k_dir) -> str:
    """A stream with blocks for stages 1, 2 and 3."""
    name = f"s_{secrets.token_hex(4)}"
    assert admin.post("/streams", json={"name": name, "schema": ml100k_schema}).status_code == 201
    for block in ("b1", "b2", "b3"):
        response = admin.post(
            "/blocks", params={"stream": name}, content=(ml100k_dir / f"{block}.parquet").read_bytes(), headers=PARQUET
        )
        assert response.status_code == 201, response.text
    return name


def test_job_requests_that_cannot_run_are_refused(admin, stream):
    expect_problem(admin.post("/jobs/distill", json={"stream": "nope", "stage": 1}), 404, "'nope'")
    expect_problem(admin.post("/jobs/distill", json={"stream": stream, "stage": 4}), 409, "stage 4", "has no block")
    out_of_order = expect_problem(
        admin.post("/jobs/distill", json={"stream": stream, "stage": 2}), 409, "distill stage 1 first"
    )
    assert out_of_order["title"] == "Stage out of order"
    bad = expect_problem(
        admin.post("/jobs/distill", json={"stream": stream, "stage": 1, "overrides": {"outer_iters": -1}}),
        422, "overrides.outer_iters",
    )  # fmt: skip
    assert bad["title"] == "Invalid distill overrides"
    expect_problem(
        admin.post("/jobs/distill", json={"stream": stream, "stage": 1, "overrides": {"nope": 1}}), 422, "nope"
    )
    expect_problem(admin.post("/jobs/distill", json={"stream": stream, "stage": 0}), 422, "stage")
    expect_problem(admin.post("/jobs/distill", json={"stream": stream, "stage": 1, "priority": 9}), 422)
    expect_problem(admin.post("/jobs/distill", content=b"{", headers={"Content-Type": "application/json"}), 400)
    assert admin.get("/jobs", params={"stream": stream}).json()["total"] == 0


def test_jobs_queue_in_stage_order_and_cancel_down_the_line(service, admin, stream):
    first = admin.post("/jobs/distill", json={"stream": stream, "stage": 1, "overrides": QUICK})
    assert first.status_code == 202, first.text
    job1 = first.json()
    assert job1["status"] == "queued" and job1["attempts"] == 0 and job1["waits_for"] is None
    assert job1["config"]["outer_iters"] == 5 and job1["config"]["ratio"] == 0.02  # overrides over stream defaults
    assert job1["dataset"] is None and job1["progress"] is None

    again = admin.post("/jobs/distill", json={"stream": stream, "stage": 1, "overrides": QUICK})
    assert again.status_code == 200 and again.json()["id"] == job1["id"]
    expect_problem(admin.post("/jobs/distill", json={"stream": stream, "stage": 1}), 409, "other overrides")

    # Stage 2 may be asked for while stage 1 is queued: it waits, and is not sent to the broker yet.
    second = admin.post("/jobs/distill", json={"stream": stream, "stage": 2, "overrides": QUICK})
    assert second.status_code == 202
    job2 = second.json()
    assert job2["waits_for"] == job1["id"]
    third = admin.post("/jobs/distill", json={"stream": stream, "stage": 3, "overrides": QUICK}).json()
    assert third["waits_for"] == job2["id"]
    sent = _messages(service)
    assert f"[{job1['id']}]" in sent and f"[{job2['id']}]" not in sent and f"[{third['id']}]" not in sent

    listed = admin.get("/jobs", params={"stream": stream, "status": "queued", "limit": 2}).json()
    assert listed["total"] == 3 and [j["id"] for j in listed["items"]] == [third["id"], job2["id"]]
    assert admin.get(listed["next"]).json()["items"][0]["id"] == job1["id"]
    expect_problem(admin.get("/jobs", params={"status": "sleeping"}), 422, "status")

    cancelled = admin.delete(f"/jobs/{job1['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    for waiting in (job2, third):
        after = admin.get(f"/jobs/{waiting['id']}").json()
        assert after["status"] == "failed"
        assert "no stage" in after["error"] and "dataset to continue from" in after["error"]
    assert admin.delete(f"/jobs/{job1['id']}").json()["status"] == "cancelled"  # idempotent
    expect_problem(admin.delete(f"/jobs/{job2['id']}"), 409, "already failed")

    # Nothing is active any more, so stage 2 is out of order again, and stage 1 can be asked anew.
    expect_problem(admin.post("/jobs/distill", json={"stream": stream, "stage": 2}), 409, "distill stage 1 first")
    assert admin.post("/jobs/distill", json={"stream": stream, "stage": 1}).status_code == 202


def test_unknown_jobs(admin):
    expect_problem(admin.get("/jobs/987654"), 404, "no job with id 987654")
    expect_problem(admin.delete("/jobs/987654"), 404)
    expect_problem(admin.get("/jobs", params={"stream": "nope"}), 404)


def test_restart_resends_queued_jobs_the_broker_lost(service, start_service, admin, stream):
    job = admin.post("/jobs/distill", json={"stream": stream, "stage": 1}).json()
    folder = Path(service.settings.data_dir) / "broker" / "messages"
    for message in folder.glob("*.msg"):
        message.unlink()  # the broker lost everything
    # A second API on the same data directory starts, and re-sends what the job table says is queued.
    start_service(data_dir=service.settings.data_dir)
    assert f"[{job['id']}]" in _messages(service)


def test_dataset_lookups(admin, stream):
    expect_problem(admin.get(f"/datasets/{stream}@latest"), 404, "no dataset version yet")
    expect_problem(admin.get(f"/datasets/{stream}@v1"), 404, f"no dataset version {stream}@v1")
    expect_problem(admin.get("/datasets/nope@v1"), 404, "'nope'")
    expect_problem(admin.get(f"/datasets/{stream}@v0"), 422, "STREAM@vN, STREAM@latest, STREAM@ALIAS")
    expect_problem(admin.get(f"/datasets/{stream}@sha256:{'0' * 64}"), 404, "no version of")
    expect_problem(admin.get(f"/datasets/{stream}@prod"), 404, "has no alias 'prod'")
    expect_problem(admin.get(f"/datasets/{stream}"), 422, "STREAM@vN")
    expect_problem(admin.get(f"/datasets/{stream}@v1/files/synthetic.parquet"), 404)
    expect_problem(admin.get(f"/datasets/{stream}@v1/files/..%2Fregistry.sqlite3"), 404)
    assert admin.get("/datasets", params={"stream": stream}).json()["items"] == []
    expect_problem(admin.get("/datasets", params={"stream": "nope"}), 404)


def test_unreachable_broker_is_503_and_the_job_says_so(start_service, ml100k_dir, ml100k_schema):
    _, c = start_service(broker_url="redis://127.0.0.1:1/0")
    body = expect_problem(c.get("/readyz"), 503, "broker")
    assert body["checks"]["broker"].startswith("unavailable") and body["checks"]["database"] == "ok"
    assert c.post("/streams", json={"name": "s", "schema": ml100k_schema}).status_code == 201
    upload = c.post("/blocks", params={"stream": "s"}, content=(ml100k_dir / "b1.parquet").read_bytes(), headers=PARQUET)
    assert upload.status_code == 201
    expect_problem(c.post("/jobs/distill", json={"stream": "s", "stage": 1}), 503, "broker", "marked failed")
    [job] = c.get("/jobs", params={"stream": "s"}).json()["items"]
    assert job["status"] == "failed" and "job queue was unavailable" in job["error"]
