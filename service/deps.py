"""What routes get injected: the settings, a registry session, storage, the job queue.

Those that only read app state are `async def`: FastAPI runs a plain `def` dependency in a worker
thread, and a thread hop per dependency per request is what made reads slow under load.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request
from sqlalchemy.orm import Session

from service.metrics import Metrics
from service.registry.db import SESSIONS_AT_ONCE, Database
from service.settings import Settings
from service.storage import Storage


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_db(request: Request) -> Database:
    return request.app.state.db


def get_session(request: Request) -> Iterator[Session]:
    db: Database = request.app.state.db
    with (db.read_session() if request.method in ("GET", "HEAD") else db.session()) as session:
        yield session


async def get_storage(request: Request) -> Storage:
    return request.app.state.storage


async def get_celery(request: Request) -> Celery:
    return request.app.state.celery


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_db)]
# A route session holds a pooled connection from its first query until the answer is serialised, which
# for sync routes waits for a thread. Without a bound, under load every thread would wait for a connection
# held by a request waiting for a thread (until the pool's 30 s timeout: 503s). Bounded here, requests
# beyond the bound wait before taking a session, holding neither a thread nor a connection.
SessionDep = Annotated[Session, Depends(get_session, scope="function", max_concurrency=SESSIONS_AT_ONCE)]
StorageDep = Annotated[Storage, Depends(get_storage)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
