"""Webhook events: recorded in the transaction that causes them, delivered by the worker after it commits.

    webhooks.emit(session, stream, "version.created", {"version": "s@v3", ...})
    session.commit()  # the deliveries' messages go to the broker now, not before (nor after a rollback)

`emit` adds one delivery row per webhook of the stream that wants the event; nothing is sent if the
transaction rolls back. A process wires its sessions to its Celery app once (`send_after_commit`),
and from then every commit hands its new deliveries to the broker (the webhook queue); the worker's
`diet.webhook` task POSTs them, signed (diet_client.signing), and retries with backoff
(worker/webhooks.py). A delivery whose message never reached the broker stays unsent and the API's
reconciler sends it (service/reconcile.py). The request that caused an event never waits for its
delivery: at most for the broker to take a message.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import event as sa_event
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from diet_client.models import WebhookEvent
from service.registry.db import Database
from service.registry.tables import Stream, Webhook, WebhookDelivery, utcnow
from service.queue import enqueue_delivery

log = logging.getLogger(__name__)

EVENTS = tuple(e.value for e in WebhookEvent)
_PENDING = "diet.webhook_deliveries"  # session.info key: deliveries added in the current transaction


def emit(session: Session, stream: Stream | int, event: str, payload: dict[str, Any]) -> list[int]:
    """Record `event` for every webhook of `stream` that wants it; returns the new deliveries' ids."""
    if event not in EVENTS:
        raise ValueError(f"unknown webhook event {event!r}; valid: {', '.join(EVENTS)}")
    stream_id = stream.id if isinstance(stream, Stream) else stream
    hooks = session.scalars(select(Webhook).where(Webhook.stream_id == stream_id).order_by(Webhook.id)).all()
    deliveries = []
    for hook in hooks:
        if event not in hook.events:
            continue
        body = {"event": event, "stream": hook.stream.name, "webhook": hook.id, "at": utcnow().isoformat(), "data": payload}
        deliveries.append(WebhookDelivery(webhook_id=hook.id, event=event, payload=body, attempt_log=[]))
    if not deliveries:
        return []
    session.add_all(deliveries)
    session.flush()
    ids = [d.id for d in deliveries]
    session.info.setdefault(_PENDING, []).extend(ids)
    return ids


def send_after_commit(db: Database, celery: Celery) -> None:
    """From now on, each commit of `db`'s sessions sends the deliveries its transaction emitted."""
    for factory in (db.sessions, db.read_sessions):
        _listen(factory, db, celery)


def _listen(factory: sessionmaker[Session], db: Database, celery: Celery) -> None:
    def committed(session: Session) -> None:
        ids = session.info.pop(_PENDING, [])
        if ids:
            send(db, celery, ids)

    def rolled_back(session: Session) -> None:
        session.info.pop(_PENDING, None)

    sa_event.listen(factory, "after_commit", committed)
    sa_event.listen(factory, "after_rollback", rolled_back)


def send(db: Database, celery: Celery, ids: list[int]) -> list[int]:
    """Hand deliveries to the broker and mark them sent; a broker that is down leaves them to the reconciler."""
    sent = []
    for delivery_id in ids:
        try:
            enqueue_delivery(celery, delivery_id)
        except BrokerError as exc:
            log.warning("could not send webhook delivery %s (the reconciler will): %s", delivery_id, exc)
            continue
        sent.append(delivery_id)
    if sent:
        # Its own connection: this runs after the caller's transaction ended.
        with db.engine.begin() as conn:
            conn.execute(update(WebhookDelivery).where(WebhookDelivery.id.in_(sent)).values(sent_at=utcnow()))
    return sent


def unsent(session: Session) -> list[int]:
    """Pending deliveries with no message known to be on its way."""
    stmt = select(WebhookDelivery.id).where(WebhookDelivery.status == "pending", WebhookDelivery.sent_at.is_(None))
    return list(session.scalars(stmt.order_by(WebhookDelivery.id)))


def forget_sent(session: Session) -> int:
    """The broker lost its messages: every pending delivery is unsent again."""
    result = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.status == "pending", WebhookDelivery.sent_at.is_not(None))
        .values(sent_at=None)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount
