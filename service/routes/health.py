"""GET /healthz (the process answers), /readyz (database, broker, storage reachable), /metrics."""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import PlainTextResponse

from diet_client.models import Liveness, Readiness
from service.auth import require
from service.deps import MetricsDep
from service.problems import Problem
from service.queue import ping_broker

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


@router.get("/healthz", response_model=Liveness)
def healthz() -> Liveness:
    return Liveness(status="ok")


@router.get("/readyz", response_model=Readiness)
def readyz(request: Request) -> Readiness:
    state = request.app.state
    checks: dict[str, Callable[[], None]] = {
        "database": state.db.ping,
        "broker": lambda: ping_broker(state.celery),
        "storage": state.storage.ping,
    }
    results: dict[str, str] = {}
    for name, check in checks.items():
        try:
            check()
            results[name] = "ok"
        except Exception as exc:  # any failure means not ready; say which and why
            log.warning("readiness: %s failed: %s", name, exc)
            results[name] = f"unavailable: {type(exc).__name__}: {exc}"
    failed = [name for name, result in results.items() if result != "ok"]
    if failed:
        raise Problem(503, f"not ready: {', '.join(failed)} unavailable", title="Service Unavailable", checks=results)
    return Readiness(status="ready", checks=results)


@router.get(
    "/metrics",
    dependencies=[Depends(require("read"))],
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text"}},
)
def metrics(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
