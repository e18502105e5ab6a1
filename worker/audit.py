"""The audit task: a version's candidate pool against full history, by the engine's audit (the bench's code).

The version's files and the evaluation blocks named in the audit row are copied to a scratch
folder, `diet_engine.evaluate.audit.audit_version` trains and scores the pool, and the result is
recorded in one transaction: in the audit row, in the version's metrics (`metrics.audit`, the
latest audit of that version), and as events: `job.finished` (or `job.failed`), and `audit.alarm`
when τ falls below the stream's threshold (`streams.audit.threshold`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Task

from diet_engine.dataset.artifacts import REFERENCE, SYNTHETIC
from diet_engine.evaluate.audit import AuditConfig, audit_version
from service import webhooks
from service.manifest import MANIFEST
from service.registry import audits
from service.registry.tables import Audit, Block, DatasetVersion, JobStatus
from worker.app import app
from service.queue import AUDIT_TASK
from worker.scratch import scratch_folder
from worker.tasks import Runtime, runtime

log = logging.getLogger(__name__)
EVALUATION = ("subsequent", "valid", "test")


class AuditStopped(Exception):
    """The audit row is no longer running (cancelled in the registry)."""


@dataclass(frozen=True)
class _Plan:
    version: str
    artifacts: dict[str, str]  # name -> storage key
    blocks: dict[str, Any]  # history: [keys]; subsequent/valid/test: key
    config: AuditConfig
    threshold: float | None


@app.task(name=AUDIT_TASK, bind=True, acks_late=True)
def audit(self: Task, audit_id: int) -> None:
    run_audit(runtime(), audit_id)


def run_audit(rt: Runtime, audit_id: int) -> None:
    with rt.db.session() as session:
        attempt = audits.claim(session, audit_id)
        session.commit()
        if attempt is None:
            log.info("audit %s is not runnable now (finished, cancelled, or running elsewhere)", audit_id)
            return
        plan = _plan(session, audits.get(session, audit_id))
    log.info("audit started", extra={"audit": audit_id, "version": plan.version})
    try:
        result = _run(rt, audit_id, plan)
    except AuditStopped:
        return
    except Exception as exc:
        log.error("audit %s failed", audit_id, exc_info=exc)
        _record(rt, audit_id, JobStatus.failed, error=f"{type(exc).__name__}: {exc}")
        return
    _record(rt, audit_id, JobStatus.succeeded, result=result)


def _plan(session: Any, audit: Audit) -> _Plan:
    def key(ref: dict[str, Any]) -> str:
        return session.get(Block, ref["id"]).key

    policy = audit.stream.audit or {}
    return _Plan(
        version=audit.version.label,
        artifacts={a["name"]: a["key"] for a in audit.version.artifacts},
        blocks={"history": [key(r) for r in audit.blocks["history"]], **{n: key(audit.blocks[n]) for n in EVALUATION}},
        config=AuditConfig.model_validate({k: v for k, v in audit.request.items() if k != "pool"}),
        threshold=policy.get("threshold"),
    )


def _run(rt: Runtime, audit_id: int, plan: _Plan) -> dict[str, Any]:
    with scratch_folder(audit_id) as scratch:
        version = scratch / "version"
        version.mkdir()
        for name in (SYNTHETIC, REFERENCE, MANIFEST):
            rt.storage.local_copy(plan.artifacts[name], version, name)
        history = [rt.storage.local_copy(k, scratch, f"history-{i}.parquet") for i, k in enumerate(plan.blocks["history"])]
        evaluation = {n: rt.storage.local_copy(plan.blocks[n], scratch, f"{n}.parquet") for n in EVALUATION}

        def on_cell(cell: str, done: int, total: int) -> None:
            with rt.db.session() as session:
                running = audits.report(session, audit_id, {"phase": cell, "step": done, "total": total})
                session.commit()
            if not running:
                raise AuditStopped(f"audit {audit_id} is no longer running")

        scores = audit_version(
            version, [Path(p) for p in history], evaluation["subsequent"], evaluation["valid"], evaluation["test"],
            plan.config, device=rt.device, on_cell=on_cell,
        )  # fmt: skip
    tau = scores["kendall_tau"]
    alarm = plan.threshold is not None and tau is not None and tau < plan.threshold
    return {**{k: v for k, v in scores.items() if k != "cells"}, "alarm": alarm, "threshold": plan.threshold,
            "cells": {m: {k: {"auc": c["auc"], "logloss": c["logloss"], "auc_repeats": c["auc_repeats"]}
                          for k, c in cells.items()} for m, cells in scores["cells"].items()}}  # fmt: skip


def _record(rt: Runtime, audit_id: int, status: JobStatus, *, result: dict[str, Any] | None = None,
            error: str | None = None) -> None:  # fmt: skip
    with rt.db.session() as session:
        audit = audits.get(session, audit_id, lock=True)
        if audit is None or audit.status != JobStatus.running.value:
            return  # cancelled meanwhile
        audits.finish(session, audit, status, result=result, error=error)
        version = session.get(DatasetVersion, audit.version_id)
        summary = {"audit": audit.id, "version": version.label, "status": status.value, "error": error}
        if result is not None:
            summary.update({k: result[k] for k in ("models", "kendall_tau", "top1_regret", "mean_auc", "alarm", "threshold")})
            version.metrics = {**version.metrics, "audit": summary}  # a new dict: the JSON column sees the change
        event = "job.finished" if status is JobStatus.succeeded else "job.failed"
        webhooks.emit(session, audit.stream_id, event, {"kind": "audit", "job": audit.id, **summary})
        if result is not None and result["alarm"]:
            webhooks.emit(session, audit.stream_id, "audit.alarm", summary)
        session.commit()
    log.info("audit %s %s", audit_id, status.value, extra={"audit": audit_id})
