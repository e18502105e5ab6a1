"""`diet datasets alias set|rm|ls`: names that move between a stream's versions (`STREAM@prod`)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from diet_client.cli.common import Service, service_command, stdout
from diet_client.models import Alias, Aliases, AliasMove

app = typer.Typer(help="Aliases: STREAM@NAME, moved by hand (publish scope); `latest` moves by itself.",
                  no_args_is_help=True)  # fmt: skip

StreamArgument = Annotated[str, typer.Argument(help="the stream")]
NameArgument = Annotated[str, typer.Argument(help="the alias, e.g. prod")]


@app.command("set")
@service_command
def set_alias(
    stream: StreamArgument,
    name: NameArgument,
    version: Annotated[int, typer.Argument(min=1, help="N of STREAM@vN")],
    *,
    service: Service,
) -> None:
    """Point STREAM@NAME at STREAM@vVERSION (creating the alias)."""

    def render(alias: Alias) -> None:
        stdout().print(f"{stream}@{alias.name} -> {alias.version}")

    service.fetch(lambda diet: diet.set_alias(stream, name, version), render)


@app.command("rm")
@service_command
def remove(stream: StreamArgument, name: NameArgument, *, service: Service) -> None:
    """Remove an alias (its history stays)."""

    def render(move: AliasMove) -> None:
        stdout().print(f"{stream}@{move.alias} removed (it named {move.from_version})")

    service.fetch(lambda diet: diet.remove_alias(stream, name), render)


@app.command("ls")
@service_command
def list_aliases(
    stream: StreamArgument,
    history: Annotated[bool, typer.Option("--history", help="also print every move")] = False,
    *,
    service: Service,
) -> None:
    """The stream's aliases and the versions they name; with --history, who moved them when."""

    def render(aliases: Aliases) -> None:
        table = Table("alias", "version", "moved by", "moved at", "moves", caption=f"{len(aliases.aliases)} aliases")
        for a in aliases.aliases:
            table.add_row(f"{stream}@{a.name}", a.version, a.moved_by, f"{a.moved_at:%Y-%m-%d %H:%M:%S}",
                          str(len(a.history)))  # fmt: skip
        out = stdout()
        out.print(table)
        if history:
            for move in [*(m for a in aliases.aliases for m in a.history), *aliases.removed]:
                out.print(f"{stream}@{move.alias}: {_move(move)}")

    service.fetch(lambda diet: diet.aliases(stream), render)


def _move(m: AliasMove) -> str:
    return f"{m.from_version or '-'} -> {m.to_version or 'removed'}  by {m.actor} at {m.at:%Y-%m-%d %H:%M:%S}"
