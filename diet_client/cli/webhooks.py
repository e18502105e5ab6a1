"""`diet webhooks add|ls|show|rm|deliveries`: tell a URL about a stream's events."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from diet_client.cli.common import DEFAULT_URL, JsonOption, TokenOption, UrlOption, connect, emit_json, stdout
from diet_client.models import DeliveryStatus, Webhook, WebhookEvent

app = typer.Typer(help="Webhooks: signed POSTs to a URL when a stream's versions, aliases, jobs or audits change.",
                  no_args_is_help=True)  # fmt: skip

IdArgument = Annotated[int, typer.Argument(help="the webhook's id")]


@app.command("add")
def add(
    stream: Annotated[str, typer.Argument(help="the stream")],
    to: Annotated[str, typer.Option("--to", help="the URL the events are POSTed to")],
    event: Annotated[list[WebhookEvent], typer.Option("--event", help="an event to send (repeat for several)")],
    secret: Annotated[str, typer.Option(envvar="DIET_WEBHOOK_SECRET", help="signs each delivery (16+ characters)")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Register a webhook; receivers check `X-DIET-Signature` with diet_client.signing.verify(secret, body, header)."""
    with connect(url, token, as_json) as diet:
        hook = diet.create_webhook(stream, to, [e.value for e in event], secret)
    _print(hook, as_json)


@app.command("ls")
def list_webhooks(
    stream: Annotated[str | None, typer.Option(help="only this stream's webhooks")] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """List webhooks (never their secrets)."""
    with connect(url, token, as_json) as diet:
        page = diet.webhooks(stream, limit=500)
    if as_json:
        emit_json(page)
        return
    table = Table("id", "stream", "url", "events", "by", "created", caption=f"{len(page.items)} of {page.total}")
    for h in page.items:
        table.add_row(str(h.id), h.stream, h.url, ", ".join(h.events), h.created_by, f"{h.created_at:%Y-%m-%d %H:%M}")
    stdout().print(table)


@app.command("show")
def show(webhook_id: IdArgument, url: UrlOption = DEFAULT_URL, token: TokenOption = None,
         as_json: JsonOption = False) -> None:  # fmt: skip
    """One webhook."""
    with connect(url, token, as_json) as diet:
        _print(diet.webhook(webhook_id), as_json)


@app.command("rm")
def remove(webhook_id: IdArgument, url: UrlOption = DEFAULT_URL, token: TokenOption = None,
           as_json: JsonOption = False) -> None:  # fmt: skip
    """Delete a webhook and its delivery log."""
    with connect(url, token, as_json) as diet:
        hook = diet.delete_webhook(webhook_id)
    if as_json:
        emit_json(hook)
    else:
        stdout().print(f"webhook {hook.id} ({hook.url}) deleted")


@app.command("deliveries")
def deliveries(
    webhook_id: IdArgument,
    status: Annotated[DeliveryStatus | None, typer.Option(help="only deliveries in this state")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """A webhook's deliveries, newest first, with each attempt's answer."""
    with connect(url, token, as_json) as diet:
        page = diet.deliveries(webhook_id, status.value if status else None, limit=limit)
    if as_json:
        emit_json(page)
        return
    table = Table("id", "event", "status", "attempts", "answers", "created", caption=f"{len(page.items)} of {page.total}")
    for d in page.items:
        answers = " ".join(str(a.status_code) if a.status_code is not None else "error" for a in d.attempt_log)
        table.add_row(str(d.id), d.event, d.status, str(d.attempts), answers, f"{d.created_at:%Y-%m-%d %H:%M:%S}")
    stdout().print(table)


def _print(hook: Webhook, as_json: bool) -> None:
    if as_json:
        emit_json(hook)
    else:
        stdout().print(f"webhook {hook.id}: {', '.join(hook.events)} of {hook.stream} -> {hook.url}")
