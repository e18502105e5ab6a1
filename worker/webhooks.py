"""The webhook task: POST one delivery, signed; record the attempt; try again later with backoff.

Each attempt reads the delivery and its webhook in one short transaction, POSTs with no transaction
open, then records the outcome: delivered on a 2xx, failed once `DIET_WEBHOOK_MAX_ATTEMPTS` are used
up, else pending with the next try `DIET_WEBHOOK_BACKOFF_S * 2**(attempt-1)` seconds later (a new
message with a countdown). Redirects are not followed: a receiver answers where it was registered.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import httpx
from celery import Task

from diet_client.signing import HEADER, sign
from service.registry.db import Database
from service.registry.tables import WebhookDelivery, utcnow
from service.settings import Settings
from worker.app import app
from service.queue import WEBHOOK_TASK, enqueue_delivery
from worker.tasks import runtime

log = logging.getLogger(__name__)
USER_AGENT = "diet-webhooks/1"


@dataclass(frozen=True)
class _Outgoing:
    url: str
    body: bytes
    headers: dict[str, str]


@app.task(name=WEBHOOK_TASK, bind=True, acks_late=True)
def deliver(self: Task, delivery_id: int) -> None:
    rt = runtime()
    delay = attempt(rt.db, rt.settings, delivery_id)
    if delay is not None:
        enqueue_delivery(self.app, delivery_id, countdown=delay)


def attempt(db: Database, settings: Settings, delivery_id: int, client: httpx.Client | None = None) -> float | None:
    """One try at a delivery; returns the delay before the next, or None when it is settled (or gone)."""
    with db.session() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        if delivery is None or delivery.status != "pending":
            return None  # delivered or failed already (a duplicate message), or its webhook was deleted
        outgoing = _outgoing(delivery)
    started, status_code, error = time.perf_counter(), None, None
    try:
        with client or httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False) as http:
            response = http.post(outgoing.url, content=outgoing.body, headers=outgoing.headers)
        status_code = response.status_code
        if not 200 <= status_code < 300:
            error = f"the receiver answered {status_code}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - started
    with db.session() as session:
        delivery = session.get(WebhookDelivery, delivery_id, with_for_update=True)
        if delivery is None or delivery.status != "pending":
            return None
        now = utcnow()
        delivery.attempts += 1
        delivery.attempt_log = [
            *delivery.attempt_log,
            {"at": now.isoformat(), "status_code": status_code, "error": error, "seconds": round(seconds, 4)},
        ]
        if error is None:
            delivery.status, delivery.delivered_at = "delivered", now
        elif delivery.attempts >= settings.webhook_max_attempts:
            delivery.status = "failed"
        tries, status = delivery.attempts, delivery.status
        session.commit()
    log.info("webhook delivery %s attempt %s: %s", delivery_id, tries, error or status_code)
    if status != "pending":
        return None
    return settings.webhook_backoff_s * 2 ** (tries - 1)


def _outgoing(delivery: WebhookDelivery) -> _Outgoing:
    body = json.dumps({"delivery": delivery.id, **delivery.payload}, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-DIET-Event": delivery.event,
        "X-DIET-Delivery": str(delivery.id),
        HEADER: sign(delivery.webhook.secret, body),
    }
    return _Outgoing(delivery.webhook.url, body, headers)
