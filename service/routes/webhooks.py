"""POST/GET /webhooks, GET/DELETE /webhooks/{id}, GET /webhooks/{id}/deliveries (the `webhooks` scope).

A webhook's secret is taken once, kept to sign its deliveries, and never returned.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from diet_client.models import Delivery, DeliveryStatus, Page, Webhook, WebhookIn
from service.auth import Principal, require
from service.deps import SessionDep
from service.pages import Id, PagingDep, page_out
from service.problems import Problem
from service.registry.paging import paginate
from service.registry.tables import Webhook as WebhookRow
from service.registry.tables import WebhookDelivery
from service.routes.streams import find_stream

router = APIRouter(tags=["webhooks"])
MAX_PER_STREAM = 50


def webhook_out(hook: WebhookRow) -> Webhook:
    return Webhook(
        id=hook.id, stream=hook.stream.name, url=hook.url, events=hook.events,
        created_by=hook.created_by, created_at=hook.created_at,
    )  # fmt: skip


def delivery_out(d: WebhookDelivery) -> Delivery:
    return Delivery(
        id=d.id, webhook=d.webhook_id, event=d.event, payload=d.payload, status=d.status, attempts=d.attempts,
        attempt_log=d.attempt_log, created_at=d.created_at, updated_at=d.updated_at, delivered_at=d.delivered_at,
    )  # fmt: skip


def _find(session: Session, webhook_id: int) -> WebhookRow:
    hook = session.get(WebhookRow, webhook_id)
    if hook is None:
        raise Problem(404, f"no webhook with id {webhook_id}")
    return hook


@router.post("/webhooks", status_code=201, response_model=Webhook)
def create_webhook(
    body: WebhookIn, session: SessionDep, principal: Annotated[Principal, Depends(require("webhooks"))]
) -> Webhook:
    """Send the stream's chosen events to `url`, each POST signed: `X-DIET-Signature: t=…,v1=…`, the hex
    HMAC-SHA256 of `"{t}." + body` with `secret` (diet_client.signing.verify checks one)."""
    stream = find_stream(session, body.stream)
    count = session.scalar(select(func.count()).select_from(WebhookRow).where(WebhookRow.stream_id == stream.id))
    if count >= MAX_PER_STREAM:
        raise Problem(409, f"stream {stream.name!r} has {count} webhooks, the most it may have; delete one first")
    hook = WebhookRow(
        stream_id=stream.id, url=body.url, secret=body.secret, events=sorted({e.value for e in body.events}),
        created_by=principal.name,
    )  # fmt: skip
    session.add(hook)
    session.flush()
    session.refresh(hook)
    session.commit()
    return webhook_out(hook)


@router.get("/webhooks", response_model=Page[Webhook], dependencies=[Depends(require("webhooks"))])
def list_webhooks(
    request: Request,
    session: SessionDep,
    paging: PagingDep,
    stream: Annotated[str | None, Query()] = None,
) -> Page[Webhook]:
    stmt = select(WebhookRow).order_by(WebhookRow.id)
    if stream is not None:
        stmt = stmt.where(WebhookRow.stream_id == find_stream(session, stream).id)
    page = paginate(session, stmt, paging.limit, paging.offset)
    return page_out(page, [webhook_out(h) for h in page.items], request)


@router.get("/webhooks/{webhook_id}", response_model=Webhook, dependencies=[Depends(require("webhooks"))])
def get_webhook(webhook_id: Id, session: SessionDep) -> Webhook:
    return webhook_out(_find(session, webhook_id))


@router.delete("/webhooks/{webhook_id}", response_model=Webhook, dependencies=[Depends(require("webhooks"))])
def delete_webhook(webhook_id: Id, session: SessionDep) -> Webhook:
    """Stop sending to it; its delivery log goes with it (a pending retry then finds nothing to send)."""
    hook = _find(session, webhook_id)
    out = webhook_out(hook)
    session.query(WebhookDelivery).filter(WebhookDelivery.webhook_id == hook.id).delete(synchronize_session=False)
    session.delete(hook)
    session.commit()
    return out


@router.get(
    "/webhooks/{webhook_id}/deliveries", response_model=Page[Delivery], dependencies=[Depends(require("webhooks"))]
)
def list_deliveries(
    webhook_id: Id,
    request: Request,
    session: SessionDep,
    paging: PagingDep,
    status: Annotated[DeliveryStatus | None, Query()] = None,
) -> Page[Delivery]:
    """Its deliveries, newest first, each with every attempt (the receiver's status code or the error)."""
    hook = _find(session, webhook_id)
    stmt = select(WebhookDelivery).where(WebhookDelivery.webhook_id == hook.id).order_by(WebhookDelivery.id.desc())
    if status is not None:
        stmt = stmt.where(WebhookDelivery.status == status.value)
    page = paginate(session, stmt, paging.limit, paging.offset)
    return page_out(page, [delivery_out(d) for d in page.items], request)
