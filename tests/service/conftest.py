"""Fixtures of the service tests: a cheap in-thread API, child processes, Postgres, Redis.

ML-100K comes converted from the root conftest (`ml100k_dir`).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from s3_support import MotoServer, S3Bucket
from sqlalchemy import create_engine, text
from service_support import (
    BOOTSTRAP_TOKEN,
    PG_ADMIN_URL,
    REDIS_URL,
    Process,
    ThreadedService,
    client,
    embedded_settings,
)

from service.registry import migrate

SMALL_UPLOAD_LIMIT = 1_000_000  # bytes; the ML-100K blocks are 130-200 kB


@pytest.fixture(scope="session")
def ml100k_schema(ml100k_dir: Path) -> dict:
    """The schema.json of ML-100K converted by the root conftest (what a client posts as a stream's schema)."""
    return json.loads((ml100k_dir / "schema.json").read_text())


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedService]:
    """One cheap API per test module: SQLite, local blobs, a folder broker and no worker."""
    settings = embedded_settings(tmp_path_factory.mktemp("service"), max_upload_bytes=SMALL_UPLOAD_LIMIT)
    migrate.upgrade(settings.database_url)
    running = ThreadedService.start(settings)
    yield running
    running.stop()


StartService = Callable[..., tuple[ThreadedService, httpx.Client]]


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[StartService]:
    """Start another in-thread API: `start_service(migrated=True, **settings)` -> (service, admin client)."""
    started: list[tuple[ThreadedService, httpx.Client]] = []

    def start(migrated: bool = True, **overrides: object) -> tuple[ThreadedService, httpx.Client]:
        data_dir = overrides.pop("data_dir", tmp_path / f"service{len(started)}")
        settings = embedded_settings(data_dir, **overrides)
        if migrated:
            migrate.upgrade(settings.database_url)
        running = ThreadedService.start(settings)
        started.append((running, client(running.base_url, BOOTSTRAP_TOKEN)))
        return started[-1]

    yield start
    for running, admin_client in started:
        admin_client.close()
        running.stop()


@pytest.fixture
def admin(service: ThreadedService) -> Iterator[httpx.Client]:
    with client(service.base_url, BOOTSTRAP_TOKEN) as c:
        yield c


@pytest.fixture
def anon(service: ThreadedService) -> Iterator[httpx.Client]:
    with client(service.base_url) as c:
        yield c


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[Process]]:
    """Child processes to stop at the end, last started first: `processes.append(Process(...))`."""
    started: list[Process] = []
    yield started
    for process in reversed(started):
        process.clean_up()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the local server, dropped afterwards."""
    import psycopg

    name = f"diet_test_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """moto's S3 server in a process of its own, shared by the tests that use it (each in its own bucket)."""
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(moto_server: MotoServer) -> S3Bucket:
    """A fresh bucket of the test's own on the moto server."""
    return moto_server.bucket()


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own on the local Redis; its keys are deleted afterwards."""
    import redis

    prefix = f"diet-test-{secrets.token_hex(6)}:"
    yield prefix
    r = redis.Redis.from_url(REDIS_URL)
    keys = list(r.scan_iter(match=f"{prefix}*"))
    if keys:
        r.delete(*keys)
    r.close()


def _row_counts(service) -> dict[str, int]:
    engine = create_engine(service.settings.database_url)
    with engine.connect() as conn:
        counts = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in ("blocks", "jobs")}
    engine.dispose()
    return counts


def _blob_files(service) -> list[str]:
    root = service.settings.data_dir / "blobs"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def nothing_written(service):
    """Asserts that the test added no block or job row and no blob."""
    rows, blobs = _row_counts(service), _blob_files(service)
    yield
    assert _row_counts(service) == rows
    assert _blob_files(service) == blobs
