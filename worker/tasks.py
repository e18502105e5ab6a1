"""The distill task: job row -> engine (`distill_stage`) -> artifacts in storage -> dataset version.

The stage checkpoints its progress (diet_engine.distill.checkpoint) and each checkpoint
file is copied to storage under `checkpoints/<stream>/stage-<t>/`, so the next
attempt at a job, on any worker, resumes where the last one stopped (the
fingerprint in the files makes sure it computes the same bytes). An attempt that
runs past the job's wall-time limit fails the job but keeps the checkpoint, which
the next job for the same stage resumes. Artifacts are
written to temporary blobs and renamed into place only by the attempt that
still owns the job, with its row locked; the version row and the job's success
are then committed in one transaction. Infrastructure errors (storage,
database, I/O) put the job back in the queue with a growing delay; anything
else (a bad config, a bad block) fails it at once.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from celery import Task
from celery.exceptions import Retry
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from diet_engine.dataset.artifacts import OPTIMIZER, REFERENCE, SYNTHETIC
from diet_engine.distill.checkpoint import FILES as CHECKPOINT_FILES
from diet_engine.distill.checkpoint import StageCheckpoint, file_sha256
from diet_engine.config import DistillConfig, ReferenceConfig
from diet_engine.distill.stage import StageResult, distill_stage
from diet_engine.data.schema import StreamSchema
from service import job_config, webhooks
from service.manifest import INTERNAL_ARTIFACTS, MANIFEST, manifest
from service.registry import audits, datasets, jobs, streams
from service.registry.db import Database
from service.registry.tables import DatasetVersion, Job, JobStatus, utcnow
from service.settings import Settings, get_settings
from service.storage import Blob, Storage
from worker.app import app
from worker.progress import JobAborted, JobReporter, WallTimeExceeded
from service.queue import DISTILL_TASK, enqueue, enqueue_audit
from worker.scratch import scratch_folder

log = logging.getLogger(__name__)

INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # storage and local files (ConnectionError and TimeoutError are OSErrors)
    OperationalError,  # the database went away
    InterfaceError,
    BrokerError,
)
# What a stage writes and the next one reads; OPTIMIZER is internal (kept for the workers, not listed
# for consumers), and missing from versions made before it existed.
DATA_ARTIFACTS = (SYNTHETIC, REFERENCE, OPTIMIZER)


class CorruptArtifact(Exception):
    """A stored artifact whose bytes are not the ones its version recorded."""


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    db: Database
    storage: Storage
    clock: Callable[[], float] = time.monotonic  # what a job's wall time is measured by

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
    if settings.worker_threads:
        # CPU results depend on how kernels split work between threads: pinning the count lets a
        # retry on another worker resume this one's checkpoint (its fingerprint records the count).
        torch.set_num_threads(settings.worker_threads)
    db = Database(settings.database_url)
    webhooks.send_after_commit(db, app)  # events this worker records go out when their transaction commits
    return Runtime(settings, db, Storage(settings.storage_url, settings.storage_options))


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
        try:
            raise self.retry(countdown=delay)  # the job row says sent (jobs.requeue)
        except Retry:
            raise
        except BrokerError:
            _mark_sent(rt, job_id, sent=False)  # not sent after all: the API's reconciler sends it
            raise


def _mark_sent(rt: Runtime, job_id: int, sent: bool = True) -> None:
    with rt.db.session() as session:
        jobs.mark_sent(session, job_id, sent)
        session.commit()


def send_audit(audit_id: int) -> None:
    enqueue_audit(app, audit_id)


def _schedule_audits(rt: Runtime, job_id: int, send: Callable[[int], None]) -> None:
    """The audits the stream's policy asks for now (this version's, or an earlier one's whose blocks came)."""
    try:
        with rt.db.session() as session:
            job = jobs.get(session, job_id)
            made = [a.id for a in audits.schedule_due(session, job.stream)] if job is not None else []
            session.commit()
        for audit_id in made:
            send(audit_id)
            with rt.db.session() as session:
                audits.mark_sent(session, audit_id)
                session.commit()
    except (*INFRASTRUCTURE_ERRORS,) as exc:  # the API's reconciler schedules and sends them next round
        log.warning("could not schedule the audits after job %s: %s", job_id, exc)


def run_job(rt: Runtime, job_id: int, send: Callable[[int], None]) -> float | None:
    """Run the job if it is this call's to run; returns a retry delay after an infrastructure error."""
    stale_before = utcnow() - timedelta(seconds=rt.settings.job_stale_after_s)
    with rt.db.session() as session:
        attempt = jobs.claim(session, job_id, stale_before)
        session.commit()
    if attempt is None:
        log.info("job %s is not runnable now (finished, cancelled, waiting, or running elsewhere)", job_id)
        return None
    log.info("job started", extra={"job": job_id, "attempt": attempt, "pid": os.getpid()})
    try:
        with rt.db.session() as session:
            job = jobs.get(session, job_id)
            assert job is not None  # claimed a moment ago; job rows are never deleted
            plan = _plan(session, job, rt.settings)
        with JobReporter(rt.db, job_id, attempt, rt.settings.job_heartbeat_s, wall_time_s=plan.wall_time_s,
                         clock=rt.clock) as reporter:
            label = _distill(rt, job_id, attempt, plan, reporter)
    except JobAborted as exc:
        log.info("job %s stopped: %s", job_id, exc)
        with rt.db.session() as session:
            job = jobs.get(session, job_id)
            # Cancelled: nobody will resume it. Taken over: the new attempt resumes from it, so it stays.
            if job is not None and job.status == JobStatus.cancelled:
                _drop_checkpoint(rt, _checkpoint_prefix(job))
        return None
    except Exception as exc:
        return _failed(rt, job_id, attempt, exc)
    log.info("job succeeded", extra={"job": job_id, "dataset": label})
    _schedule_audits(rt, job_id, send_audit)
    with rt.db.session() as session:
        waiting = [j.id for j in jobs.waiting_on(session, job_id)]
    try:
        for waiting_id in waiting:
            send(waiting_id)
            _mark_sent(rt, waiting_id)
    except BrokerError:
        # The job is done; its followers stay queued, unsent, and the API's reconciler sends them.
        log.exception("could not send the jobs waiting for job %s: %s", job_id, waiting)
    return None


def _checkpoint_prefix(job: Job) -> str:
    return datasets.checkpoint_prefix(job.stream.name, job.stage)


def _drop_checkpoint(rt: Runtime, prefix: str) -> None:
    try:
        rt.storage.delete_prefix(prefix)
    except OSError as exc:  # a leftover checkpoint costs space only
        log.warning("could not delete the checkpoint %s: %s", prefix, exc)


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
        # Out of time: the next job for the stage resumes from the checkpoint.
        if owned and not retry and not isinstance(exc, WallTimeExceeded):
            _drop_checkpoint(rt, _checkpoint_prefix(jobs.get(session, job_id)))
    return rt.retry_delay(attempt) if retry and owned else None


@dataclass(frozen=True)
class _Plan:
    """What a job needs from the registry, read once, so no transaction stays open while it computes."""

    stream: str
    stage: int
    checkpoint_prefix: str
    schema: StreamSchema
    reference: ReferenceConfig
    config: DistillConfig
    wall_time_s: float
    block: dict[str, Any]
    block_key: str
    parent: DatasetVersion | None


def _plan(session: Session, job: Job, settings: Settings) -> _Plan:
    config, wall_time_s = job_config.split(job.config, settings.job_wall_time_s)
    return _Plan(
        stream=job.stream.name,
        stage=job.stage,
        checkpoint_prefix=_checkpoint_prefix(job),
        schema=StreamSchema.model_validate(job.stream.schema_doc),
        reference=ReferenceConfig.model_validate(job.stream.reference),
        config=config,
        wall_time_s=wall_time_s,
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


def _distill(rt: Runtime, job_id: int, attempt: int, plan: _Plan, reporter: JobReporter) -> str:
    with scratch_folder(job_id) as scratch:
        block_path = rt.storage.local_copy(plan.block_key, scratch, "block.parquet")
        previous = None
        if plan.parent is not None:
            previous = scratch / "previous"
            previous.mkdir()
            _copy_checked(rt, plan.parent, f"{plan.stream}@v{plan.parent.number}", previous)
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
            checkpoint=_checkpoint(rt, plan, scratch / "checkpoint"),
        )
        reporter.check()
        staged: dict[str, Blob] = {}
        try:
            for name in DATA_ARTIFACTS:
                staged[name] = rt.storage.stage_file(out / result.files[name])
            assert INTERNAL_ARTIFACTS <= set(staged)
            return _register(rt, job_id, attempt, plan, result, staged)
        finally:
            for blob in staged.values():
                rt.storage.delete(blob.key)  # gone already where it was renamed into place


def _copy_checked(rt: Runtime, version: DatasetVersion, label: str, folder: Path) -> None:
    """The version's data artifacts in `folder`, each checked against the sha256 its row records."""
    for artifact in version.artifacts:
        if artifact["name"] not in DATA_ARTIFACTS:
            continue
        path = rt.storage.local_copy(artifact["key"], folder, artifact["name"])
        if (found := file_sha256(path)) != artifact["sha256"]:
            raise CorruptArtifact(
                f"{label}'s {artifact['name']} in storage has sha256 {found}, its row says {artifact['sha256']}"
            )


def _checkpoint(rt: Runtime, plan: _Plan, folder: Path) -> StageCheckpoint:
    """The stage's checkpoint folder, with what an earlier attempt left in storage; each save goes back there."""
    folder.mkdir()
    for name in CHECKPOINT_FILES:
        key = f"{plan.checkpoint_prefix}/{name}"
        if rt.storage.exists(key):
            rt.storage.local_copy(key, folder, name)
            log.info("resuming from a checkpoint", extra={"key": key})

    def upload(path: Path) -> None:
        rt.storage.put_file(path, f"{plan.checkpoint_prefix}/{path.name}")

    return StageCheckpoint(folder, every=rt.settings.job_checkpoint_every, on_save=upload)


def _register(
    rt: Runtime, job_id: int, attempt: int, plan: _Plan, result: StageResult, staged: dict[str, Blob]
) -> str:
    """Put the artifacts in place, number the version, write manifest.json, record the version and the
    job's success: one transaction, by the attempt that owns the job (its row locked meanwhile)."""
    with rt.db.session() as session:
        job = jobs.lock_attempt(session, job_id, attempt)
        if job is None:
            raise JobAborted(f"job {job_id} was cancelled or taken over before its version was recorded")
        streams.by_name(session, plan.stream, lock=True)  # version numbers are handed out one at a time
        prefix = datasets.artifact_prefix(plan.stream, job_id)
        artifacts = []
        for name, blob in staged.items():
            rt.storage.rename(blob.key, f"{prefix}/{name}")
            artifacts.append({"name": name, "key": f"{prefix}/{name}", "bytes": blob.bytes, "sha256": blob.sha256})
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
        blob = rt.storage.put([document], f"{prefix}/{MANIFEST}")
        version.artifacts = [
            *artifacts,
            {"name": MANIFEST, "key": blob.key, "bytes": blob.bytes, "sha256": blob.sha256},
        ]
        session.flush()
        webhooks.emit(session, job.stream_id, "version.created", manifest(version).model_dump(mode="json"))
        jobs.finish(session, job, JobStatus.succeeded)
        session.commit()
        label = version.label
    _drop_checkpoint(rt, plan.checkpoint_prefix)
    return label
