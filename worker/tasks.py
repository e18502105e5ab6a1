"""The distill task: job row -> engine (`distill_stage`) -> artifacts in storage -> dataset version.

The version row and the job's success are committed in one transaction, after
the artifacts are in place. Infrastructure errors (storage, database, I/O) put
the job back in the queue with a growing delay; anything else (a bad config, a
bad block) fails it at once.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from celery import Task
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from diet_engine.artifacts import REFERENCE, SYNTHETIC
from diet_engine.config import DistillConfig, ReferenceConfig
from diet_engine.distill import StageResult, distill_stage
from diet_engine.schema import StreamSchema
from service.manifest import MANIFEST, manifest
from service.registry import datasets, jobs, streams
from service.registry.db import Database
from service.registry.tables import DatasetVersion, Job, JobStatus, utcnow
from service.settings import Settings, get_settings
from service.storage import Storage
from worker.app import app
from worker.progress import JobAborted, JobReporter
from worker.queue import DISTILL_TASK, enqueue

log = logging.getLogger(__name__)

INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # storage and local files (ConnectionError and TimeoutError are OSErrors)
    OperationalError,  # the database went away
    InterfaceError,
    BrokerError,
)
DATA_ARTIFACTS = (SYNTHETIC, REFERENCE)


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    db: Database
    storage: Storage

    @property
    def device(self) -> str:
        if self.settings.worker_device != "auto":
            return self.settings.worker_device
        return "cuda" if torch.cuda.is_available() else "cpu"

    def retry_delay(self, attempt: int) -> float:
        return float(self.settings.job_retry_backoff_s * 2 ** (attempt - 1))


@functools.cache
def runtime() -> Runtime:
    """One database pool and storage client per worker process."""
    settings = get_settings()
    return Runtime(settings, Database(settings.database_url), Storage(settings.storage_url, settings.storage_options))


@app.task(name=DISTILL_TASK, bind=True, acks_late=True, max_retries=None)
def distill(self: Task, job_id: int) -> None:
    rt = runtime()
    try:
        delay = run_job(rt, job_id, send=lambda waiting: enqueue(self.app, waiting))
    except INFRASTRUCTURE_ERRORS as exc:
        # The registry itself was unreachable (claiming, or recording an outcome): try again later.
        retries = self.request.retries
        if retries >= rt.settings.job_max_retries:
            raise
        log.warning("job %s: infrastructure error outside the stage, retrying: %s", job_id, exc)
        raise self.retry(exc=exc, countdown=rt.retry_delay(retries + 1)) from exc
    if delay is not None:
        raise self.retry(countdown=delay)


def run_job(rt: Runtime, job_id: int, send: Callable[[int], None]) -> float | None:
    """Run the job if it is this call's to run; returns a retry delay after an infrastructure error."""
    stale_before = utcnow() - timedelta(seconds=rt.settings.job_stale_after_s)
    with rt.db.session() as session:
        attempt = jobs.claim(session, job_id, stale_before)
        session.commit()
    if attempt is None:
        log.info("job %s is not runnable now (finished, cancelled, waiting, or running elsewhere)", job_id)
        return None
    log.info("job started", extra={"job": job_id, "attempt": attempt})
    try:
        with JobReporter(rt.db, job_id, attempt, rt.settings.job_heartbeat_s) as reporter:
            label = _distill(rt, job_id, attempt, reporter)
    except JobAborted as exc:
        log.info("job %s stopped: %s", job_id, exc)
        return None
    except Exception as exc:
        return _failed(rt, job_id, attempt, exc)
    log.info("job succeeded", extra={"job": job_id, "dataset": label})
    with rt.db.session() as session:
        waiting = [j.id for j in jobs.waiting_on(session, job_id)]
    try:
        for waiting_id in waiting:
            send(waiting_id)
    except BrokerError:
        # The job is done; its followers stay queued and are sent again when the API next starts.
        log.exception("could not send the jobs waiting for job %s: %s", job_id, waiting)
    return None


def _failed(rt: Runtime, job_id: int, attempt: int, exc: Exception) -> float | None:
    error = f"{type(exc).__name__}: {exc}"
    retry = isinstance(exc, INFRASTRUCTURE_ERRORS) and attempt <= rt.settings.job_max_retries
    log.error("job %s attempt %s failed%s", job_id, attempt, ", will retry" if retry else "", exc_info=exc)
    with rt.db.session() as session:
        if retry:
            owned = jobs.requeue(session, job_id, attempt, f"attempt {attempt} failed, retrying: {error}")
        else:
            owned = jobs.fail(session, job_id, attempt, error)
        session.commit()
    return rt.retry_delay(attempt) if retry and owned else None


@dataclass(frozen=True)
class _Plan:
    """What a job needs from the registry, read once, so no transaction stays open while it computes."""

    stream: str
    stage: int
    schema: StreamSchema
    reference: ReferenceConfig
    config: DistillConfig
    block: dict[str, Any]
    block_key: str
    parent: DatasetVersion | None


def _plan(session: Session, job: Job) -> _Plan:
    return _Plan(
        stream=job.stream.name,
        stage=job.stage,
        schema=StreamSchema.model_validate(job.stream.schema_doc),
        reference=ReferenceConfig.model_validate(job.stream.reference),
        config=DistillConfig.model_validate(job.config),
        block={"id": job.block.id, "stage": job.block.stage, "sha256": job.block.sha256, "rows": job.block.rows},
        block_key=job.block.key,
        parent=_parent(session, job),
    )


def _parent(session: Session, job: Job) -> DatasetVersion | None:
    """The stage t-1 version to continue from: the one its prerequisite job made, else the newest."""
    if job.stage == 1:
        return None
    if job.after_job is not None:
        parent = job.after_job.dataset
    else:
        parent = datasets.latest(session, job.stream_id, job.stage - 1)
    if parent is None:
        raise ValueError(f"stage {job.stage} needs a stage {job.stage - 1} dataset version, and there is none")
    return parent


def _distill(rt: Runtime, job_id: int, attempt: int, reporter: JobReporter) -> str:
    with rt.db.session() as session:
        job = jobs.get(session, job_id)
        assert job is not None  # claimed a moment ago; job rows are never deleted
        plan = _plan(session, job)

    with tempfile.TemporaryDirectory(prefix=f"diet-job-{job_id}-") as tmp:
        scratch = Path(tmp)
        block_path = rt.storage.local_copy(plan.block_key, scratch, "block.parquet")
        previous = None
        if plan.parent is not None:
            previous = scratch / "previous"
            previous.mkdir()
            keys = {a["name"]: a["key"] for a in plan.parent.artifacts}
            for name in DATA_ARTIFACTS:
                rt.storage.local_copy(keys[name], previous, name)
        out = scratch / "out"
        result = distill_stage(
            plan.schema,
            block_path,
            plan.stage,
            out,
            previous=previous,
            reference=plan.reference,
            config=plan.config,
            progress=reporter.progress,
            device=rt.device,
        )
        reporter.check()
        prefix = datasets.artifact_prefix(plan.stream, job_id)
        artifacts = []
        for name in DATA_ARTIFACTS:
            blob = rt.storage.put_file(out / result.files[name], f"{prefix}/{name}")
            artifacts.append({"name": name, "key": blob.key, "bytes": blob.bytes, "sha256": blob.sha256})
    return _register(rt, job_id, attempt, plan, result, artifacts)


def _register(
    rt: Runtime, job_id: int, attempt: int, plan: _Plan, result: StageResult, artifacts: list[dict[str, Any]]
) -> str:
    """Number the version, write manifest.json, record the version and the job's success: one transaction."""
    with rt.db.session() as session:
        job = jobs.lock_attempt(session, job_id, attempt)
        if job is None:
            raise JobAborted(f"job {job_id} was cancelled before its version was recorded")
        streams.by_name(session, plan.stream, lock=True)  # version numbers are handed out one at a time
        parent = session.get(DatasetVersion, plan.parent.id) if plan.parent else None
        version = DatasetVersion(
            stream_id=job.stream_id,
            number=datasets.next_number(session, job.stream_id),
            stage=plan.stage,
            parent_id=parent.id if parent else None,
            job_id=job_id,
            blocks=[*(parent.blocks if parent else []), plan.block],
            rows=result.rows,
            new_rows=result.new_rows,
            kept_rows=result.kept_rows,
            history_rows=result.history_rows,
            ratio=result.ratio,
            config={
                "reference": plan.reference.model_dump(mode="json"),
                "distill": plan.config.model_dump(mode="json"),
            },
            metrics=result.metrics,
            artifacts=artifacts,
        )
        session.add(version)
        session.flush()
        document = manifest(version, with_manifest_file=False).model_dump_json(indent=2).encode()
        blob = rt.storage.put([document], f"{datasets.artifact_prefix(plan.stream, job_id)}/{MANIFEST}")
        version.artifacts = [
            *artifacts,
            {"name": MANIFEST, "key": blob.key, "bytes": blob.bytes, "sha256": blob.sha256},
        ]
        jobs.finish(session, job, JobStatus.succeeded)
        session.commit()
        return version.label
