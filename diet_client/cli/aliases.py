"""`diet datasets alias set|rm|ls`: names that move between a stream's versions (`STREAM@prod`)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from diet_client.cli.common import DEFAULT_URL, JsonOption, TokenOption, UrlOption, connect, emit_json, stdout
from diet_client.models import AliasMove

app = typer.Typer(help="Aliases: STREAM@NAME, moved by hand (publish scope); `latest` moves by itself.",
                  no_args_is_help=True)  # fmt: skip

StreamArgument = Annotated[str, typer.Argument(help="the stream")]
NameArgument = Annotated[str, typer.Argument(help="the alias, e.g. prod")]


def _move(m: AliasMove) -> str:
    return f"{m.from_version or '-'} -> {m.to_version or 'removed'}  by {m.actor} at {m.at:%Y-%m-%d %H:%M:%S}"


@app.command("set")
def set_alias(
    stream: StreamArgument,
    name: NameArgument,
    version: Annotated[int, typer.Argument(min=1, help="N of STREAM@vN")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Point STREAM@NAME at STREAM@vVERSION (creating the alias)."""
    with connect(url, token, as_json) as diet:
        alias = diet.set_alias(stream, name, version)
    if as_json:
        emit_json(alias)
    else:
        stdout().print(f"{stream}@{alias.name} -> {alias.version}")


@app.command("rm")
def remove(
    stream: StreamArgument, name: NameArgument, url: UrlOption = DEFAULT_URL, token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:  # fmt: skip
    """Remove an alias (its history stays)."""
    with connect(url, token, as_json) as diet:
        move = diet.remove_alias(stream, name)
    if as_json:
        emit_json(move)
    else:
        stdout().print(f"{stream}@{move.alias} removed (it named {move.from_version})")


@app.command("ls")
def list_aliases(
    stream: StreamArgument, url: UrlOption = DEFAULT_URL, token: TokenOption = None, as_json: JsonOption = False,
    history: Annotated[bool, typer.Option("--history", help="also print every move")] = False,
) -> None:  # fmt: skip
    """The stream's aliases and the versions they name; with --history, who moved them when."""
    with connect(url, token, as_json) as diet:
        aliases = diet.aliases(stream)
    if as_json:
        emit_json(aliases)
        return
    table = Table("alias", "version", "moved by", "moved at", "moves", caption=f"{len(aliases.aliases)} aliases")
    for a in aliases.aliases:
        table.add_row(f"{stream}@{a.name}", a.version, a.moved_by, f"{a.moved_at:%Y-%m-%d %H:%M:%S}", str(len(a.history)))
    out = stdout()
    out.print(table)
    if history:
        for a in aliases.aliases:
            for m in a.history:
                out.print(f"{stream}@{a.name}: {_move(m)}")
        for m in aliases.removed:
            out.print(f"{stream}@{m.alias}: {_move(m)}")
