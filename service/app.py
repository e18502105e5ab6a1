"""The FastAPI application.

`create_app(settings)` builds it; deployments run `uvicorn --factory service.app:main`,
which reads the `DIET_*` environment and logs JSON lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from service import logs, problems, webhooks
from service.etags import JsonETags
from service.limits import BodyGuard
from service.metrics import Metrics, RequestMetricsMiddleware
from service.reconcile import Reconciled, reconcile
from service.registry.db import Database
from service.routes import aliases, audits, blocks, datasets, diff, health, lifecycle, reports, streams
from service.routes import webhooks as webhook_routes
from service.routes import jobs as job_routes
from service.settings import Settings, get_settings
from service.storage import Storage
from service.queue import make_celery, prepare_broker

log = logging.getLogger(__name__)


def reconcile_now(app: FastAPI, *, at_start: bool = False) -> Reconciled:
    state = app.state
    return reconcile(state.settings, state.db, state.celery, state.storage, at_start=at_start)


async def _reconcile_forever(app: FastAPI) -> None:
    while True:
        await asyncio.sleep(app.state.settings.reconcile_s)
        try:
            await run_in_threadpool(reconcile_now, app)
        except Exception:  # never let the loop die; the next round tries again
            log.exception("reconciling the job table failed")


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # The API must come up (and say "not ready") even while the broker or the database is down.
    await run_in_threadpool(reconcile_now, app, at_start=True)
    loop = asyncio.create_task(_reconcile_forever(app), name="reconcile")
    try:
        yield
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
        app.state.db.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="DIET service",
        summary="Continually distilled datasets beside a recommender's log stream",
        version="0.1.0",
        lifespan=_lifespan,
    )
    app.state.settings = settings
    app.state.db = Database(settings.database_url)
    app.state.storage = Storage(settings.storage_url, settings.storage_options)
    prepare_broker(settings)
    app.state.celery = make_celery(settings)
    webhooks.send_after_commit(app.state.db, app.state.celery)
    app.state.metrics = Metrics(app.state.db)

    problems.install(app)
    app.add_middleware(JsonETags)  # innermost of these: metrics and logs see its 304s
    app.add_middleware(RequestMetricsMiddleware, metrics=app.state.metrics)
    # Outermost, so its limits hold for everything inside; uploads stream under their own, larger limit.
    app.add_middleware(
        BodyGuard,
        max_bytes=settings.max_json_bytes,
        idle_timeout_s=settings.body_timeout_s,
        exempt=lambda scope: scope["method"] == "POST" and scope["path"] == "/blocks",
    )
    # audits before jobs: /jobs/audit is not a job id
    for module in (health, streams, blocks, audits, job_routes, datasets, aliases, diff, lifecycle, reports, webhook_routes):
        app.include_router(module.router, responses=problems.RESPONSES)
    return app


def main() -> FastAPI:
    """The app as deployed: settings from the environment, structured logs."""
    settings = get_settings()
    logs.configure(settings.log_level)
    return create_app(settings)
