"""Prometheus metrics of one app: HTTP traffic, uploaded bytes, and registry counts read at scrape time."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.registry.db import Database
from service.registry.tables import DatasetVersion, Job, JobStatus

log = logging.getLogger("service.access")


class RegistryCollector(Collector):
    """Jobs by status and dataset versions, counted in the database when Prometheus scrapes."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            with self.db.session() as s:
                by_status = dict(s.execute(select(Job.status, func.count()).group_by(Job.status)).all())
                versions = s.scalar(select(func.count()).select_from(DatasetVersion)) or 0
        except SQLAlchemyError as exc:
            log.warning("metrics: registry unavailable: %s", exc)
            return
        jobs = GaugeMetricFamily("diet_jobs", "Distillation jobs by status", labels=["status"])
        for status in JobStatus:
            jobs.add_metric([status.value], by_status.get(status.value, 0))
        yield jobs
        yield GaugeMetricFamily("diet_dataset_versions", "Registered dataset versions", value=versions)


class Metrics:
    def __init__(self, db: Database) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "diet_http_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "diet_http_request_duration_seconds", "HTTP request duration", ["method", "route"], registry=self.registry
        )
        self.upload_bytes = Counter(
            "diet_block_upload_bytes", "Bytes of accepted block uploads", registry=self.registry
        )
        self.jobs_created = Counter("diet_jobs_created", "Distillation jobs created", registry=self.registry)
        self.registry.register(RegistryCollector(db))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetricsMiddleware:
    """Counts, times and logs every HTTP request by its route template (not its raw path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - start
            route: Any = scope.get("route")
            template = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(scope["method"], template, str(status)).inc()
            self.metrics.latency.labels(scope["method"], template).observe(elapsed)
            log.info(
                "%s %s %s",
                scope["method"],
                scope["path"],
                status,
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "route": template,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )
