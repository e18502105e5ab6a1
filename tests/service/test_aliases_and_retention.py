"""Aliases, retention and deletion on the cheap in-thread API (SQLite, no worker, so jobs stay queued):
names that cannot be aliases, policies that are refused, and a block a queued job needs that cannot go.
The same routes with real versions, a worker and Postgres: test_registry_life.py."""

from __future__ import annotations

import secrets

import pytest
from service_support import PARQUET, expect_problem


@pytest.fixture
def stream(admin, ml100k_schema) -> str:
    name = f"s_{secrets.token_hex(4)}"
    assert admin.post("/streams", json={"name": name, "schema": ml100k_schema}).status_code == 201
    return name


def test_alias_names_and_versions_that_are_refused(admin, stream):
    for name in ("latest", "v3", "v01"):
        expect_problem(admin.put(f"/datasets/{stream}/aliases/{name}", json={"version": 1}), 422, name)
    expect_problem(admin.put(f"/datasets/{stream}/aliases/-x", json={"version": 1}), 422, "not an alias name")
    expect_problem(admin.put(f"/datasets/{stream}/aliases/prod", json={"version": 1}), 404, f"{stream}@v1")
    expect_problem(admin.put(f"/datasets/{stream}/aliases/prod", json={"version": 0}), 422)
    expect_problem(admin.put(f"/datasets/{stream}/aliases/prod", json={"version": 1, "x": 1}), 422)
    expect_problem(admin.put("/datasets/nope/aliases/prod", json={"version": 1}), 404, "'nope'")
    expect_problem(admin.delete(f"/datasets/{stream}/aliases/prod"), 404, "no alias 'prod'")
    assert admin.get(f"/datasets/{stream}/aliases").json() == {"stream": stream, "aliases": [], "removed": []}


def test_retention_policy_round_trip_and_limits(admin, stream):
    expect_problem(admin.get(f"/streams/{stream}/retention"), 404, "keeps every version")
    put = admin.put(f"/streams/{stream}/retention", json={"keep_last": 2, "keep_days": 30, "grace_s": 60})
    assert put.status_code == 200, put.text
    policy = put.json()
    assert (policy["keep_last"], policy["keep_days"], policy["grace_s"], policy["updated_by"]) == (2, 30, 60, "bootstrap")
    assert admin.get(f"/streams/{stream}/retention").json() == policy
    for bad in ({"keep_last": -1}, {"keep_days": -2}, {"grace_s": -1}, {"keep_last": "two"}, {"forever": True}):
        expect_problem(admin.put(f"/streams/{stream}/retention", json=bad), 422)
    report = admin.post(f"/streams/{stream}/gc", params={"dry_run": "true"}).json()
    assert report["dry_run"] and report["deleted"] == [] and report["freed_bytes"] == 0


def test_a_block_a_queued_job_needs_cannot_be_deleted(admin, stream, ml100k_dir):
    block = admin.post("/blocks", params={"stream": stream}, content=(ml100k_dir / "b1.parquet").read_bytes(), headers=PARQUET)
    assert block.status_code == 201, block.text
    block_id = block.json()["id"]
    job = admin.post("/jobs/distill", json={"stream": stream, "stage": 1}).json()  # stays queued: no worker here
    refused = expect_problem(admin.delete(f"/blocks/{block_id}"), 409, f"job {job['id']} (queued) distills it")
    assert refused["needed_by"] == [f"job {job['id']} (queued) distills it",
                                    "stage 1 is not distilled yet: the job that distills it reads this block"]  # fmt: skip
    admin.delete(f"/jobs/{job['id']}")  # cancelled: the stage is still not distilled
    expect_problem(admin.delete(f"/blocks/{block_id}"), 409, "stage 1 is not distilled yet")
    assert admin.get(f"/blocks/{block_id}").json()["retired_at"] is None
    expect_problem(admin.post(f"/blocks/{block_id}/restore"), 409, "is not deleted")
    expect_problem(admin.delete("/blocks/999999"), 404)

