"""`diet webhooks add|ls|show|rm|deliveries`: tell a URL about a stream's events."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from diet_client.cli.common import LimitOption, Service, service_command, stdout
from diet_client.models import Delivery, DeliveryStatus, Page, Webhook, WebhookEvent

app = typer.Typer(help="Webhooks: signed POSTs to a URL when a stream's versions, aliases, jobs or audits change.",
                  no_args_is_help=True)  # fmt: skip

IdArgument = Annotated[int, typer.Argument(help="the webhook's id")]


@app.command("add")
@service_command
def add(
    stream: Annotated[str, typer.Argument(help="the stream")],
    to: Annotated[str, typer.Option("--to", help="the URL the events are POSTed to")],
    event: Annotated[list[WebhookEvent], typer.Option("--event", help="an event to send (repeat for several)")],
    secret: Annotated[str, typer.Option(envvar="DIET_WEBHOOK_SECRET", help="signs each delivery (16+ characters)")],
    *,
    service: Service,
) -> None:
    """Register a webhook; receivers check `X-DIET-Signature` with diet_client.signing.verify(secret, body, header)."""
    service.fetch(lambda diet: diet.create_webhook(stream, to, [e.value for e in event], secret), _print_webhook)


@app.command("ls")
@service_command
def list_webhooks(
    stream: Annotated[str | None, typer.Option(help="only this stream's webhooks")] = None,
    limit: LimitOption = 50,
    *,
    service: Service,
) -> None:
    """List webhooks (never their secrets)."""
    service.fetch(lambda diet: diet.webhooks(stream, limit=limit), _print_webhooks)


@app.command("show")
@service_command
def show(webhook_id: IdArgument, *, service: Service) -> None:
    """One webhook."""
    service.fetch(lambda diet: diet.webhook(webhook_id), _print_webhook)


@app.command("rm")
@service_command
def remove(webhook_id: IdArgument, *, service: Service) -> None:
    """Delete a webhook and its delivery log."""
    service.fetch(
        lambda diet: diet.delete_webhook(webhook_id), lambda h: stdout().print(f"webhook {h.id} ({h.url}) deleted")
    )


@app.command("deliveries")
@service_command
def deliveries(
    webhook_id: IdArgument,
    status: Annotated[DeliveryStatus | None, typer.Option(help="only deliveries in this state")] = None,
    limit: LimitOption = 50,
    *,
    service: Service,
) -> None:
    """A webhook's deliveries, newest first, with each attempt's answer."""
    service.fetch(lambda diet: diet.deliveries(webhook_id, status.value if status else None, limit=limit),
                  _print_deliveries)  # fmt: skip


def _print_webhook(hook: Webhook) -> None:
    stdout().print(f"webhook {hook.id}: {', '.join(hook.events)} of {hook.stream} -> {hook.url}")


def _print_webhooks(page: Page[Webhook]) -> None:
    table = Table("id", "stream", "url", "events", "by", "created", caption=f"{len(page.items)} of {page.total}")
    for h in page.items:
        table.add_row(str(h.id), h.stream, h.url, ", ".join(h.events), h.created_by, f"{h.created_at:%Y-%m-%d %H:%M}")
    stdout().print(table)


def _print_deliveries(page: Page[Delivery]) -> None:
    table = Table("id", "event", "status", "attempts", "answers", "created", caption=f"{len(page.items)} of {page.total}")
    for d in page.items:
        answers = " ".join(str(a.status_code) if a.status_code is not None else "error" for a in d.attempt_log)
        table.add_row(str(d.id), d.event, d.status, str(d.attempts), answers, f"{d.created_at:%Y-%m-%d %H:%M:%S}")
    stdout().print(table)
