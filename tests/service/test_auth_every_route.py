"""Every route but the health checks and the API docs refuses missing, wrong, malformed, expired, revoked and
wrong-scope tokens. The route list comes from the app itself, so a new route cannot be forgotten; tokens are
kept only as digests, and artifact names cannot reach outside a version's files."""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from service_support import BOOTSTRAP_TOKEN, client, expect_problem
from sqlalchemy import create_engine, inspect, text
from test_auth_and_health import _cli

from service.registry import tokens
from service.registry.db import Database
from service.registry.tables import utcnow

pytestmark = pytest.mark.security

# Reachable without a token: liveness, readiness and the API's own description.
PUBLIC = {"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
SCOPES = ("ingest", "distill", "read", "publish", "webhooks")


# Routes that delete or free data: admin tokens only.
ADMIN_ONLY = {
    ("DELETE", "/datasets/{version}"),
    ("POST", "/datasets/{version}/restore"),
    ("DELETE", "/blocks/{block_id}"),
    ("POST", "/blocks/{block_id}/restore"),
    ("PUT", "/streams/{name}/retention"),
    ("POST", "/streams/{name}/gc"),
}


def _endpoints(app: FastAPI) -> list[tuple[str, str, str]]:
    """(method, template, path with sample parameters) of every operation the app serves, from its OpenAPI
    description (which FastAPI builds from the routes themselves), plus its own docs routes."""
    out = [
        (method.upper(), template, re.sub(r"\{[^}]+\}", "1", template))
        for template, operations in app.openapi()["paths"].items()
        for method in operations
    ]
    out += [("GET", path, path) for path in ("/openapi.json", "/docs", "/redoc")]
    return out


def _make_token(service, scopes: list[str], *, expired: bool = False, revoked: bool = False) -> str:
    db = Database(service.settings.database_url)
    try:
        with db.session() as session:
            token, secret = tokens.create(session, f"t-{secrets.token_hex(3)}", scopes, timedelta(hours=1))
            if expired:
                token.expires_at = utcnow() - timedelta(seconds=1)
            if revoked:
                token.revoked_at = utcnow()
            session.commit()
    finally:
        db.dispose()
    return secret


def _refused(response: httpx.Response, status: int, phrase: str) -> None:
    """A problem document with this status (a HEAD answer carries only its status and headers)."""
    if response.request.method == "HEAD":
        assert response.status_code == status, response.request.url
        assert response.headers["content-type"].startswith("application/problem+json")
    else:
        expect_problem(response, status, phrase)


@pytest.fixture(scope="module")
def app(service) -> FastAPI:
    return service.server.config.app


@pytest.fixture(scope="module")
def scoped(service) -> dict[str, str]:
    """A token for each single scope."""
    return {scope: _make_token(service, [scope]) for scope in SCOPES}


@pytest.fixture
def raw(service) -> Iterator[httpx.Client]:
    with client(service.base_url) as c:
        yield c


def test_every_route_but_the_public_ones_declares_bearer_auth(app):
    operations = app.openapi()["paths"]
    assert len(_endpoints(app)) >= 18  # the walk found the app's routes
    unguarded = sorted(
        f"{method.upper()} {template}"
        for template, methods in operations.items()
        for method, operation in methods.items()
        if template not in PUBLIC and {"HTTPBearer": []} not in operation.get("security", [])
    )
    assert unguarded == [], f"routes without `Depends(require(scope))`: {unguarded}"


def test_public_routes_answer_without_a_token(app, raw):
    for method, template, path in _endpoints(app):
        if template in PUBLIC:
            assert raw.request(method, path).status_code in (200, 503), path


def test_every_guarded_route_refuses_bad_tokens(service, app, raw, scoped):
    expired = _make_token(service, ["admin"], expired=True)
    revoked = _make_token(service, ["admin"], revoked=True)
    refusals = {
        "no token": ({}, "Authorization: Bearer"),
        "unknown token": ({"Authorization": "Bearer diet_" + secrets.token_urlsafe(32)}, "unknown or revoked"),
        "not a bearer token": ({"Authorization": "Basic dXNlcjpwdw=="}, "Authorization: Bearer"),
        "empty bearer": ({"Authorization": "Bearer"}, "Authorization: Bearer"),
        "expired token": ({"Authorization": f"Bearer {expired}"}, "expired at"),
        "revoked token": ({"Authorization": f"Bearer {revoked}"}, "unknown or revoked"),
    }
    checked = 0
    for method, template, path in _endpoints(app):
        if template in PUBLIC:
            continue
        for case, (headers, phrase) in refusals.items():
            response = raw.request(method, path, headers=headers)
            assert response.status_code == 401, f"{method} {path} with {case}: {response.status_code}"
            _refused(response, 401, phrase)
            assert response.headers["www-authenticate"] == "Bearer"
        # At most one single-scope token gets past the token check (to a 404, 422 ... on these sample
        # values), as does admin; the other scopes are refused with 403, naming the scope wanted.
        # Destructive routes (deletion, retention, GC) admit no single scope: only admin.
        answers = {
            scope: raw.request(method, path, headers={"Authorization": f"Bearer {scoped[scope]}"}) for scope in SCOPES
        }
        admitted = [scope for scope, response in answers.items() if response.status_code not in (401, 403)]
        wanted = admitted[0] if admitted else "admin"
        assert len(admitted) == 1 or (not admitted and (method, template) in ADMIN_ONLY), (
            f"{method} {path}: {[(s, r.status_code) for s, r in answers.items()]}"
        )
        for scope, response in answers.items():
            if scope not in admitted:
                _refused(response, 403, f"lacks the '{wanted}' scope")
        as_admin = raw.request(method, path, headers={"Authorization": f"Bearer {BOOTSTRAP_TOKEN}"})
        assert as_admin.status_code not in (401, 403), f"{method} {path}: {as_admin.text}"
        checked += 1
    assert checked >= 12
    assert ADMIN_ONLY <= {(m, t) for m, t, _ in _endpoints(app)}  # the list names real routes


def test_cli_token_expires(service, raw):
    created = _cli("tokens", "create", "--scope", "read", "--expires-in", "2s", "--json", data_dir=service.settings.data_dir)
    assert created.returncode == 0, created.stderr
    made = json.loads(created.stdout)
    assert made["expires_at"] is not None
    auth = {"Authorization": f"Bearer {made['token']}"}
    assert raw.get("/streams", headers=auth).status_code == 200
    time.sleep(2.2)
    expect_problem(raw.get("/streams", headers=auth), 401, "expired at")
    listed = _cli("tokens", "list", data_dir=service.settings.data_dir)
    assert any(line.startswith(f"{made['id']}\t") and "\texpired " in line for line in listed.stdout.splitlines())
    for bad in ("0s", "soon", "-5m", "3y"):
        refused = _cli("tokens", "create", "--scope", "read", "--expires-in", bad, data_dir=service.settings.data_dir)
        assert refused.returncode == 2 and "--expires-in" in refused.stderr, (bad, refused.stderr)


def test_no_plaintext_token_anywhere_in_the_database(service):
    created = _cli("tokens", "create", "--scope", "admin", "--name", "audit", data_dir=service.settings.data_dir)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    engine = create_engine(service.settings.database_url)
    try:
        with engine.connect() as conn:
            cells = [
                str(value)
                for table in inspect(engine).get_table_names()
                for row in conn.execute(text(f'SELECT * FROM "{table}"'))
                for value in row
            ]
    finally:
        engine.dispose()
    assert tokens.digest(secret) in cells  # the digest is what is kept ...
    assert not any(secret in cell or secret[5:] in cell for cell in cells)  # ... and never the secret
    # Nor in the database files themselves (free pages, the write-ahead log).
    database = Path(service.settings.database_url.removeprefix("sqlite:///"))
    for path in database.parent.glob(database.name + "*"):
        assert secret[5:].encode() not in path.read_bytes(), path


def test_names_cannot_walk_out_of_a_version(admin):
    for version in ("..", "../registry.sqlite3", "x@v1/../..", "a%00b@v1", "x@v1%2F..", "..%2F..%2Fetc@latest"):
        response = admin.get(f"/datasets/{version}")
        assert response.status_code in (404, 422), (version, response.status_code)
    for name in ("../../registry.sqlite3", "..%2F..%2Fregistry.sqlite3", "%2Fetc%2Fpasswd", "manifest.json%00.txt"):
        response = admin.get(f"/datasets/x@v1/files/{name}")
        assert response.status_code in (404, 422), (name, response.status_code)
        assert b"CREATE TABLE" not in response.content and b"root:" not in response.content
