"""The `diet` command: the engine's commands (diet_engine.cli), the service's own (`serve`, `tokens`),
and the client commands that talk to a running service (diet_client.cli: streams, blocks, distill,
jobs, datasets, status).

Heavy imports (the web stack, SQL) happen inside the commands, so `diet --help`
and the client commands start quickly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from diet_client.cli import EXIT_CODES_HELP, register
from diet_client.cli.datasets import app as datasets_app
from diet_engine.cli import app as engine_app
from service.export_command import export

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

app = typer.Typer(
    help="DIET: continually distilled datasets for recommender systems.", epilog=EXIT_CODES_HELP, no_args_is_help=True
)
app.add_typer(engine_app)
datasets_app.command("export")(export)  # before the group is mounted: the conversion needs the engine
register(app)
tokens_app = typer.Typer(help="API tokens of the service (stored hashed, shown once).", no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="interface to listen on [default: DIET_HOST or 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="port to listen on [default: DIET_PORT or 8000]")] = None,
    worker: Annotated[bool, typer.Option("--worker/--no-worker", help="start a worker beside the API")] = True,
    workers: Annotated[
        int, typer.Option("--workers", min=1, max=64, help="API processes serving the same registry and port")
    ] = 1,
) -> None:
    """Run the DIET service: migrate the registry, start a worker and serve the HTTP API.

    Data live under ./diet-data (or DIET_DATA_DIR): SQLite, blobs and a folder queue,
    unless DIET_DATABASE_URL, DIET_BROKER_URL and DIET_STORAGE_URL point elsewhere.
    """
    from service import embedded
    from service.settings import get_settings

    settings = get_settings()
    embedded.serve(settings, host or settings.host, settings.port if port is None else port, worker, workers)


@contextmanager
def _registry() -> Iterator[Session]:
    """A session on the registry, migrated first, so token commands work before the first `diet serve`."""
    from service.registry import migrate
    from service.registry.db import Database
    from service.settings import get_settings

    settings = get_settings()
    migrate.upgrade(settings.database_url)
    db = Database(settings.database_url)
    try:
        with db.session() as session:
            yield session
    finally:
        db.dispose()


@tokens_app.command("create")
def tokens_create(
    scope: Annotated[list[str], typer.Option("--scope", help="ingest, distill, read, publish (aliases), webhooks or admin; repeat for several")],
    name: Annotated[str, typer.Option(help="who or what the token is for")] = "cli",
    expires_in: Annotated[
        str | None, typer.Option("--expires-in", help="lifetime, e.g. 90s, 15m, 12h, 30d, 2w [default: never]")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print {id, name, scopes, expires_at, token} as JSON")
    ] = False,
) -> None:
    """Create a token and print it (the only time it is shown). Works on the registry directly, like `serve`."""
    from service.registry import tokens

    try:
        lifetime = tokens.parse_duration(expires_in) if expires_in is not None else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--expires-in") from exc
    with _registry() as session:
        try:
            token, secret = tokens.create(session, name, scope, lifetime)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--scope") from exc
        session.commit()
        expires_at = token.expires_at.isoformat() if token.expires_at else None
        created = {"id": token.id, "name": token.name, "scopes": list(token.scopes), "expires_at": expires_at,
                   "token": secret}  # fmt: skip
    typer.echo(json.dumps(created) if as_json else secret)
    typer.echo("Keep it now: only its digest is stored. Send it as 'Authorization: Bearer <token>'.", err=True)


@tokens_app.command("list")
def tokens_list(
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON list")] = False,
) -> None:
    """List tokens: id, name, scopes, created, state (never their secrets)."""
    from service.registry import tokens
    from service.registry.tables import utcnow

    now = utcnow()
    with _registry() as session:
        if as_json:
            listed = [
                {"id": t.id, "name": t.name, "scopes": list(t.scopes), "created_at": t.created_at.isoformat(),
                 "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None,
                 "expires_at": t.expires_at.isoformat() if t.expires_at else None, "state": t.state(now)}
                for t in tokens.list_all(session)
            ]  # fmt: skip
            typer.echo(json.dumps(listed, indent=2))
            return
        for token in tokens.list_all(session):
            state = token.state(now)
            if state == "revoked":
                state = f"revoked {token.revoked_at:%Y-%m-%d %H:%M}"
            elif state == "expired":
                state = f"expired {token.expires_at:%Y-%m-%d %H:%M}"
            elif token.expires_at is not None:
                state = f"active until {token.expires_at:%Y-%m-%d %H:%M}"
            typer.echo(
                f"{token.id}\t{token.name}\t{','.join(token.scopes)}\t{token.created_at:%Y-%m-%d %H:%M}\t{state}"
            )


@tokens_app.command("revoke")
def tokens_revoke(token_id: Annotated[int, typer.Argument(help="the id `diet tokens list` shows")]) -> None:
    """Revoke a token: requests with it are refused from now on."""
    from service.registry import tokens

    with _registry() as session:
        revoked = tokens.revoke(session, token_id)
        session.commit()
    if not revoked:
        typer.echo(f"no active token with id {token_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked token {token_id}")


if __name__ == "__main__":
    app()
