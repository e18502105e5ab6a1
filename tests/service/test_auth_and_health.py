"""Tokens and scopes, health and readiness, metrics, unknown routes, an unreachable database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from service_support import REPO, expect_problem
from sqlalchemy import create_engine, text


def _cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DIET_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_health_needs_no_token_and_readyz_checks_every_dependency(anon):
    assert anon.get("/healthz").json() == {"status": "ok"}
    ready = anon.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}


def test_missing_or_wrong_token_is_401(anon):
    body = expect_problem(anon.get("/streams"), 401, "Authorization: Bearer")
    assert body["title"] == "Unauthorized"
    assert anon.get("/streams").headers["www-authenticate"] == "Bearer"
    expect_problem(anon.get("/streams", headers={"Authorization": "Bearer nope"}), 401, "unknown or revoked")
    expect_problem(anon.get("/streams", headers={"Authorization": "Basic dXNlcjpwdw=="}), 401)
    expect_problem(anon.get("/metrics"), 401)


def test_cli_tokens_are_hashed_scoped_and_revocable(service, anon):
    created = _cli("tokens", "create", "--scope", "read", "--name", "reader", data_dir=service.settings.data_dir)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("diet_") and len(secret) > 40

    # Only the digest is stored.
    engine = create_engine(service.settings.database_url)
    with engine.connect() as conn:
        stored = [tuple(r) for r in conn.execute(text("SELECT name, token_sha256, scopes FROM tokens"))]
    engine.dispose()
    assert all(secret not in str(row) for row in stored)
    assert any(row[0] == "reader" for row in stored)

    auth = {"Authorization": f"Bearer {secret}"}
    assert anon.get("/streams", headers=auth).status_code == 200
    assert anon.get("/metrics", headers=auth).status_code == 200
    body = expect_problem(anon.post("/streams", json={}, headers=auth), 403, "'ingest' scope")
    assert "read" in body["detail"]
    expect_problem(anon.post("/jobs/distill", json={"stream": "x", "stage": 1}, headers=auth), 403, "'distill'")

    listed = _cli("tokens", "list", data_dir=service.settings.data_dir)
    token_id = next(line.split("\t")[0] for line in listed.stdout.splitlines() if "\treader\t" in line)
    revoked = _cli("tokens", "revoke", token_id, data_dir=service.settings.data_dir)
    assert revoked.returncode == 0, revoked.stderr
    expect_problem(anon.get("/streams", headers=auth), 401, "revoked")


def test_cli_rejects_unknown_scopes(service):
    result = _cli("tokens", "create", "--scope", "superuser", data_dir=service.settings.data_dir)
    assert result.returncode != 0
    assert "scopes must be among" in result.stderr and "superuser" in result.stderr


def test_ingest_token_cannot_read(service, anon):
    created = _cli("tokens", "create", "--scope", "ingest", data_dir=service.settings.data_dir)
    auth = {"Authorization": f"Bearer {created.stdout.strip()}"}
    expect_problem(anon.get("/blocks", headers=auth), 403, "'read' scope")
    expect_problem(anon.get("/datasets", headers=auth), 403, "'read' scope")


def test_metrics_are_prometheus_text(admin):
    admin.get("/streams")
    response = admin.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text_ = response.text
    assert 'diet_http_requests_total{method="GET",route="/streams",status="200"}' in text_
    assert 'diet_jobs{status="queued"}' in text_
    assert "diet_http_request_duration_seconds_bucket" in text_


def test_unknown_route_and_method_are_problems(admin):
    expect_problem(admin.get("/nothing/here"), 404, "no route GET /nothing/here")
    expect_problem(admin.put("/healthz"), 405, "PUT is not allowed")


def test_unreachable_database_is_503_not_500(start_service):
    _, c = start_service(migrated=False, database_url="postgresql+psycopg://postgres@127.0.0.1:1/none")
    body = expect_problem(c.get("/readyz"), 503, "database")
    assert body["checks"]["database"].startswith("unavailable")
    assert body["checks"]["storage"] == "ok"
    expect_problem(c.get("/streams"), 503, "database is unavailable")
    assert c.get("/healthz").status_code == 200
