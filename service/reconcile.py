"""Keeping the broker in step with the job table, which alone says what is to be done.

The API runs `reconcile` at start and then every `DIET_RECONCILE_S`:

1. A running job whose heartbeat is older than `DIET_JOB_STALE_AFTER_S` lost its worker (killed,
   its host gone): it is queued again, unsent. The silent attempt can no longer write to the row
   (every write names its attempt), and the next attempt resumes from the stage's checkpoint.
2. The broker holds a marker message (service.queue.broker_kept_its_state). When it is gone, the
   broker lost its state (Redis restarted without persistence, or flushed), and with it the
   messages of every queued job: they are all marked unsent. At start the API does this anyway,
   as restarting it has always sent every queued job again.
3. Every queued job that is ready and unsent is sent, and marked sent once the broker took it.
4. Audits a stream's policy asks for (service/registry/audits.py) are queued; queued audits and
   pending webhook deliveries with no message on its way are sent (all marked unsent first when
   the broker lost its state, or at start).
5. Temporary blobs untouched for `DIET_TMP_MAX_AGE_S` were left by a process that died while
   writing (an upload, an artifact): they are deleted.

A duplicate message is harmless (a worker claims a job with one conditional UPDATE), so several
API processes may reconcile at once. Each step is on its own: a database or broker that is down
skips the steps that need it until the next round.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from celery import Celery
from sqlalchemy import select

from service import webhooks
from service.registry import audits, jobs
from service.registry.db import Database
from service.registry.tables import Stream, utcnow
from service.settings import Settings
from service.storage import Storage
from service.queue import broker_kept_its_state, enqueue, enqueue_audit

log = logging.getLogger(__name__)


@dataclass
class Reconciled:
    released: list[int] = field(default_factory=list)  # running jobs whose worker fell silent
    broker_lost_state: bool = False
    sent: list[int] = field(default_factory=list)
    swept: list[str] = field(default_factory=list)  # temporary blob keys
    scheduled: list[int] = field(default_factory=list)  # audits a stream's policy asked for
    sent_audits: list[int] = field(default_factory=list)
    sent_deliveries: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def reconcile(settings: Settings, db: Database, celery: Celery, storage: Storage, *, at_start: bool = False) -> Reconciled:
    done = Reconciled()
    try:
        stale_before = utcnow() - timedelta(seconds=settings.job_stale_after_s)
        with db.session() as session:
            done.released = jobs.release_silent(session, stale_before)
            session.commit()
        if done.released:
            log.warning("jobs whose worker fell silent are queued again", extra={"jobs": done.released})
        _send_unsent(db, celery, done, at_start)
    except Exception as exc:  # the database or the broker is down: next round
        done.errors.append(f"jobs: {type(exc).__name__}: {exc}")
    try:
        _audits_and_deliveries(db, celery, done, at_start or done.broker_lost_state)
    except Exception as exc:
        done.errors.append(f"audits and webhooks: {type(exc).__name__}: {exc}")
    try:
        done.swept = storage.sweep_tmp(settings.tmp_max_age_s)
        if done.swept:
            log.info("deleted abandoned temporary blobs", extra={"keys": done.swept})
    except Exception as exc:
        done.errors.append(f"storage: {type(exc).__name__}: {exc}")
    for error in done.errors:
        log.warning("reconciling: %s", error)
    return done


def _audits_and_deliveries(db: Database, celery: Celery, done: Reconciled, resend_all: bool) -> None:
    """Schedule the audits streams' policies ask for; send unsent audits and webhook deliveries."""
    with db.session() as session:
        if resend_all:
            audits.forget_sent(session)
            webhooks.forget_sent(session)
        for stream in session.scalars(select(Stream).where(Stream.audit.is_not(None))):
            done.scheduled += [a.id for a in audits.schedule_due(session, stream)]
        session.commit()
        audit_ids, delivery_ids = audits.unsent(session), webhooks.unsent(session)
    for audit_id in audit_ids:
        enqueue_audit(celery, audit_id)
        with db.session() as session:
            audits.mark_sent(session, audit_id)
            session.commit()
        done.sent_audits.append(audit_id)
    done.sent_deliveries = webhooks.send(db, celery, delivery_ids)


def _send_unsent(db: Database, celery: Celery, done: Reconciled, at_start: bool) -> None:
    done.broker_lost_state = not broker_kept_its_state(celery)
    if done.broker_lost_state or at_start:
        with db.session() as session:
            forgotten = jobs.forget_sent(session)
            session.commit()
        if done.broker_lost_state:
            log.warning("the broker lost its state; sending every queued job again", extra={"jobs": forgotten})
    with db.session() as session:
        ids = jobs.unsent(session)
    for job_id in ids:
        enqueue(celery, job_id)
        with db.session() as session:
            jobs.mark_sent(session, job_id)
            session.commit()
        done.sent.append(job_id)
    if done.sent:
        log.info("sent queued jobs that had no message in the broker", extra={"jobs": done.sent})
