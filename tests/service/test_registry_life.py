"""A registry's whole life through HTTP, Postgres, Redis and a Celery worker (with its beat), on real ML-100K versions:

three stages distilled -> an alias set and moved (history), resolved on every read path, the client, the CLI
and load_dataset -> a diff of two real versions (and on the report page) -> deletion refused while an alias, a
running job or the next stage needs a version -> a retention policy, its dry run, soft deletion and restore ->
the worker's periodic sweep frees the bytes on disk, keeping the rows, digests and stats.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from service_support import BOOTSTRAP_TOKEN, PARQUET, REDIS_URL, client, deployed_env, expect_problem, start_api, worker_process
from test_e2e import STREAM, run_ml100k_pipeline
from typer.testing import CliRunner

from diet_client import DietClient
from diet_engine import load_dataset
from service.cli import app as diet_cli
from service.registry import migrate, tokens
from service.registry.db import Database

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


def _token(database_url: str, scopes: list[str]) -> str:
    db = Database(database_url)
    try:
        with db.session() as session:
            _, secret = tokens.create(session, f"{'-'.join(scopes)}-{secrets.token_hex(3)}", scopes, timedelta(hours=1))
            session.commit()
    finally:
        db.dispose()
    return secret


def _stored_bytes(bucket: Path) -> int:
    """Bytes of the blocks' and versions' blobs (checkpoints and temporary blobs come and go on their own)."""
    return sum(p.stat().st_size for folder in ("blocks", "datasets") for p in (bucket / folder).rglob("*") if p.is_file())


def _cli(url: str, *args: str) -> dict:
    result = CliRunner().invoke(diet_cli, [*args, "--url", url, "--token", BOOTSTRAP_TOKEN, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _median_ms(c: httpx.Client, path: str, n: int = 20) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        assert c.get(path).status_code == 200
        times.append(time.perf_counter() - started)
    return 1000 * sorted(times)[n // 2]


def _poll(check, timeout: float, what: str, logs):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout}s\n{logs()}")


def test_aliases_diff_retention_and_gc(tmp_path, processes, postgres_url, redis_prefix, ml100k_dir, ml100k_schema):
    env = deployed_env(tmp_path, postgres_url, REDIS_URL, redis_prefix, sweep_s=2)
    migrate.upgrade(postgres_url)
    api, url = start_api(env, tmp_path, processes)
    worker = worker_process("worker", env, tmp_path)  # the one with the beat starts for the sweep, at the end
    processes.append(worker)
    workers = [worker]
    bucket = tmp_path / "bucket"

    def logs() -> str:
        return f"--- api\n{api.logs()}\n" + "".join(f"--- {w.name}\n{w.logs()}\n" for w in workers)

    publisher = _token(postgres_url, ["publish"])
    reader = _token(postgres_url, ["read"])
    with client(url, BOOTSTRAP_TOKEN) as admin, client(url, publisher) as pub, client(url, reader) as read:
        run_ml100k_pipeline(admin, ml100k_dir, ml100k_schema, tmp_path, logs)
        v1, v2, v3 = (admin.get(f"/datasets/{STREAM}@v{n}").json() for n in (1, 2, 3))

        # ---- aliases: set, moved, history; only publish (or admin) may move them
        expect_problem(read.put(f"/datasets/{STREAM}/aliases/prod", json={"version": 1}), 403, "'publish'")
        created = pub.put(f"/datasets/{STREAM}/aliases/prod", json={"version": 1})
        assert created.status_code == 201 and created.json()["version"] == f"{STREAM}@v1", created.text
        moved = pub.put(f"/datasets/{STREAM}/aliases/prod", json={"version": 2})
        assert moved.status_code == 200 and moved.json()["version"] == f"{STREAM}@v2"
        assert pub.put(f"/datasets/{STREAM}/aliases/prod", json={"version": 2}).json()["history"] == moved.json()["history"]
        assert admin.put(f"/datasets/{STREAM}/aliases/canary", json={"version": 3}).status_code == 201
        assert pub.delete(f"/datasets/{STREAM}/aliases/canary").json()["from_version"] == f"{STREAM}@v3"
        listed = read.get(f"/datasets/{STREAM}/aliases").json()
        [prod] = listed["aliases"]
        publisher_name = prod["moved_by"]
        assert publisher_name.startswith("publish-")
        assert [(m["from_version"], m["to_version"], m["actor"]) for m in prod["history"]] == [
            (None, f"{STREAM}@v1", publisher_name), (f"{STREAM}@v1", f"{STREAM}@v2", publisher_name),
        ]  # fmt: skip
        assert prod["history"][0]["at"] <= prod["history"][1]["at"] == prod["moved_at"]
        assert [(m["alias"], m["from_version"], m["to_version"], m["actor"]) for m in listed["removed"]] == [
            ("canary", None, f"{STREAM}@v3", "bootstrap"), ("canary", f"{STREAM}@v3", None, publisher_name),
        ]  # fmt: skip
        expect_problem(admin.put(f"/datasets/{STREAM}/aliases/latest", json={"version": 1}), 422, "reserved")

        # ---- STREAM@prod and STREAM@sha256:... resolve on every read path, naming the concrete version
        manifest_digest = next(a["sha256"] for a in v1["artifacts"] if a["name"] == "manifest.json")
        assert read.get(f"/datasets/{STREAM}@sha256:{manifest_digest}").json() == v1
        got = read.get(f"/datasets/{STREAM}@prod")
        assert got.json() == v2 and got.headers["diet-version"] == f"{STREAM}@v2"
        synthetic = next(a for a in v2["artifacts"] if a["name"] == "synthetic.parquet")
        file = read.get(f"/datasets/{STREAM}@prod/files/synthetic.parquet")
        assert file.headers["diet-version"] == f"{STREAM}@v2" and file.headers["cache-control"] == "private, no-cache"
        assert hashlib.sha256(file.content).hexdigest() == synthetic["sha256"]
        page = read.get(f"/datasets/{STREAM}@prod/report")
        assert page.status_code == 200 and page.headers["diet-version"] == f"{STREAM}@v2"
        assert f"DIET dataset {STREAM}@v2" in page.text
        with DietClient(url, reader) as diet:
            assert diet.dataset(f"{STREAM}@prod").version == f"{STREAM}@v2"
            pulled = diet.pull(f"{STREAM}@prod", tmp_path / "prod")
        assert pulled.version == f"{STREAM}@v2"
        assert load_dataset(tmp_path / "prod", version=f"{STREAM}@prod").version == f"{STREAM}@v2"
        assert len(load_dataset(tmp_path / "prod", version=f"{STREAM}@v2")) == v2["rows"]
        with pytest.raises(ValueError, match=f"holds {STREAM}@v2, not {STREAM}@v1"):
            load_dataset(tmp_path / "prod", version=f"{STREAM}@v1")
        pulled_by_cli = _cli(url, "datasets", "pull", f"{STREAM}@prod", "--to", str(tmp_path / "prod-cli"))
        assert pulled_by_cli["version"] == f"{STREAM}@v2"
        assert load_dataset(tmp_path / "prod-cli", version=f"{STREAM}@prod").version == f"{STREAM}@v2"
        cli_aliases = _cli(url, "datasets", "alias", "ls", STREAM)
        assert [a["version"] for a in cli_aliases["aliases"]] == [f"{STREAM}@v2"]
        assert _cli(url, "datasets", "alias", "set", STREAM, "staging", "3")["version"] == f"{STREAM}@v3"
        assert _cli(url, "datasets", "show", f"{STREAM}@staging")["version"] == f"{STREAM}@v3"
        assert _cli(url, "datasets", "alias", "rm", STREAM, "staging")["to_version"] is None

        # ---- the diff of two real versions: v3 keeps rows of v2 and adds stage 3's
        diff = read.get(f"/datasets/{STREAM}@prod/diff/{STREAM}@latest")
        assert diff.status_code == 200, diff.text
        d = diff.json()
        assert (d["a"], d["b"], d["anchored"]) == (f"{STREAM}@v2", f"{STREAM}@v3", True)
        assert (d["rows_a"], d["rows_b"]) == (v2["rows"], v3["rows"])
        assert (d["kept"], d["added"]) == (v3["kept_rows"], v3["new_rows"])
        assert d["dropped"] == v2["rows"] - v3["kept_rows"]
        by_stage = {s["stage"]: s for s in d["by_stage"]}
        assert 3 in by_stage and set(by_stage) <= {1, 2, 3}
        assert by_stage[3]["rows_a"] == 0 and by_stage[3]["added"] == by_stage[3]["rows_b"] == v3["new_rows"]
        assert sum(s["kept"] for s in d["by_stage"]) == d["kept"]
        assert [t["task"] for t in d["label_balance"]] == ["like", "love"]
        assert all(t["change"] == pytest.approx(t["b"] - t["a"]) for t in d["label_balance"])
        drift = d["drift"]
        assert drift["rows"] == d["kept"] and 0 < drift["mean"] <= drift["p95"] <= drift["max"]
        assert d["config"] == []  # the same stream defaults and overrides
        lineage = d["lineage"]
        assert lineage["a_is_ancestor_of_b"] and lineage["common_ancestor"] == f"{STREAM}@v2"
        assert (lineage["only_b"], lineage["blocks_shared"], lineage["blocks_only_b"]) == ([f"{STREAM}@v3"], [1, 2], [3])
        assert _cli(url, "datasets", "diff", f"{STREAM}@v2", f"{STREAM}@v3") == d
        report = read.get(f"/datasets/{STREAM}@v3/report").text
        assert 'id="diff"' in report and f"From {STREAM}@v2 to {STREAM}@v3" in report
        for path in (f"/datasets/{STREAM}@v2", f"/datasets/{STREAM}@prod", f"/datasets/{STREAM}@sha256:{manifest_digest}",
                     f"/datasets/{STREAM}@v2/diff/{STREAM}@v3"):  # fmt: skip
            print(f"GET {path}: median {_median_ms(read, path):.1f} ms over 20 sequential requests")

        # ---- nothing goes while something needs it
        expect_problem(admin.delete(f"/datasets/{STREAM}@v2"), 409, "alias 'prod' points at it")
        refused = expect_problem(admin.delete(f"/datasets/{STREAM}@v3"), 409, "the next stage continues from it")
        assert len(refused["needed_by"]) == 1
        expect_problem(pub.delete(f"/datasets/{STREAM}@v1"), 403, "'admin'")
        b4 = admin.post("/blocks", params={"stream": STREAM}, content=(ml100k_dir / "subsequent.parquet").read_bytes(),
                        headers=PARQUET).json()  # fmt: skip
        expect_problem(admin.delete(f"/blocks/{b4['id']}"), 409, "stage 4 is not distilled yet")
        # A stage-4 job long enough to be caught running: v3 is what it continues from.
        slow = admin.post("/jobs/distill", json={"stream": STREAM, "stage": 4, "overrides": {"outer_iters": 100000}}).json()
        _poll(lambda: admin.get(f"/jobs/{slow['id']}").json()["status"] == "running", 120, "stage 4 never ran", logs)
        expect_problem(admin.delete(f"/datasets/{STREAM}@v3"), 409, f"job {slow['id']} (running) continues from it")
        expect_problem(admin.delete(f"/blocks/{b4['id']}"), 409, f"job {slow['id']} (running) distills it")
        assert admin.delete(f"/jobs/{slow['id']}").json()["status"] == "cancelled"
        _poll(lambda: "stopped" in worker.logs() or "cancelled" in worker.logs(), 120, "the worker kept the job", logs)

        # ---- retention: a dry run changes nothing; a collection soft-deletes; a restore undoes it
        policy = admin.put(f"/streams/{STREAM}/retention", json={"keep_last": 1, "grace_s": 3600}).json()
        assert policy["keep_last"] == 1 and policy["keep_days"] is None
        assert _cli(url, "streams", "retention", STREAM) == policy
        dry = admin.post(f"/streams/{STREAM}/gc", params={"dry_run": "true"}).json()
        assert [i["version"] for i in dry["deleted"]] == [f"{STREAM}@v1"] and dry["freed_bytes"] == 0
        kept = {i["version"]: i["reasons"] for i in dry["kept"]}
        assert kept == {f"{STREAM}@v3": ["among the newest 1"], f"{STREAM}@v2": ["alias 'prod' points at it"]}
        assert admin.get(f"/datasets/{STREAM}@v1").status_code == 200
        assert _cli(url, "streams", "gc", STREAM, "--dry-run") == dry
        before = _stored_bytes(bucket)
        done = admin.post(f"/streams/{STREAM}/gc").json()
        assert [i["version"] for i in done["deleted"]] == [f"{STREAM}@v1"] and done["purged_versions"] == []
        expect_problem(admin.get(f"/datasets/{STREAM}@v1"), 404, "restore it with POST")
        assert [v["number"] for v in admin.get("/datasets", params={"stream": STREAM}).json()["items"]] == [3, 2]
        assert _stored_bytes(bucket) == before  # soft: nothing freed yet
        assert admin.post(f"/datasets/{STREAM}@v1/restore").json() == v1
        deletion = admin.delete(f"/datasets/{STREAM}@v1").json()
        assert deletion["deleted"] == f"{STREAM}@v1" and deletion["restore"] == f"/datasets/{STREAM}@v1/restore"
        b1 = admin.get("/blocks", params={"stream": STREAM}).json()["items"][0]
        assert b1["stage"] == 1 and admin.delete(f"/blocks/{b1['id']}").status_code == 200  # stage 1 is distilled
        expect_problem(admin.get(f"/blocks/{b1['id']}"), 404, "restore it")
        assert b1["id"] not in [b["id"] for b in admin.get("/blocks", params={"stream": STREAM}).json()["items"]]
        assert admin.post(f"/blocks/{b1['id']}/restore").json() == b1
        assert _cli(url, "blocks", "rm", str(b1["id"]))["deleted"] == f"block {b1['id']}"

        # ---- the worker's periodic sweep frees the bytes once the grace period is over; rows, digests, stats stay
        v1_bytes = sum(a["bytes"] for a in v1["artifacts"])
        admin.put(f"/streams/{STREAM}/retention", json={"keep_last": 1, "grace_s": 0})
        worker.stop()
        sweeper = worker_process("sweeper", env, tmp_path, beat=True)  # a worker with the beat (DIET_SWEEP_S=2)
        processes.append(sweeper)
        workers.append(sweeper)
        retired = _poll(lambda: admin.get(f"/blocks/{b1['id']}").json().get("retired_at"), 60, "no sweep retired b1", logs)
        _poll(lambda: admin.get(f"/datasets/{STREAM}@v1").status_code == 410, 60, "no sweep purged v1", logs)
        after = _stored_bytes(bucket)
        print(f"bucket bytes before the sweep {before}, after {after}: freed {before - after} "
              f"(v1's files {v1_bytes} + block 1 {b1['bytes']})")  # fmt: skip
        assert before - after == v1_bytes + b1["bytes"]
        assert "retention sweep done" in sweeper.logs()
        block_row = admin.get(f"/blocks/{b1['id']}").json()
        assert retired and (block_row["sha256"], block_row["rows"], block_row["label_rates"]) == (
            b1["sha256"], b1["rows"], b1["label_rates"])  # fmt: skip
        expect_problem(admin.post(f"/datasets/{STREAM}@v1/restore"), 410, "files were freed")
        expect_problem(admin.get(f"/datasets/{STREAM}@v1/diff/{STREAM}@v2"), 410)
        # Lineage stays whole: v2 still names its parent, and its page says why there is no diff against it.
        assert admin.get(f"/datasets/{STREAM}@v2").json()["parent"] == f"{STREAM}@v1"
        assert f"{STREAM}@v1 was purged" in admin.get(f"/datasets/{STREAM}@v2/report").text
        again = admin.post(f"/streams/{STREAM}/gc").json()
        assert again["deleted"] == [] and again["freed_bytes"] == 0
