"""`diet streams create|ls|show` and `diet status`."""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.table import Table

from diet_client.cli.common import ExitCode, Service, emit_json, fail, parse_json_or_file, service_command, stdout
from diet_client.errors import ApiError
from diet_client.models import Readiness, Stream

app = typer.Typer(help="Log streams: a schema, a reference model and distillation defaults.", no_args_is_help=True)


def read_definition(path: Path) -> dict[str, Any]:
    """A stream definition file ({"name", "schema", "reference"?, "distill"?}) or a bare schema.json."""
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise typer.BadParameter(f"cannot read JSON from {path}: {exc}", param_hint="FILE") from exc
    if not isinstance(document, dict):
        raise typer.BadParameter(f"{path} does not hold a JSON object", param_hint="FILE")
    return document if "schema" in document else {"schema": document}


@app.command("create")
@service_command
def create(
    file: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False,
                       help="schema.json (as `diet convert` writes it) or a definition {name, schema, reference, distill}"),
    ],  # fmt: skip
    name: Annotated[str | None, typer.Option(help="stream name [default: the file's name, else the schema's]")] = None,
    reference: Annotated[str | None, typer.Option(help="reference model config: inline JSON or a JSON file")] = None,
    distill: Annotated[str | None, typer.Option(help="distillation defaults: inline JSON or a JSON file")] = None,
    *,
    service: Service,
) -> None:
    """Create a stream (the same definition again is fine; another one under the same name is refused)."""
    definition = read_definition(file)
    schema = definition["schema"]
    stream_name = name or definition.get("name") or (schema.get("name") if isinstance(schema, dict) else None)
    if not stream_name:
        raise typer.BadParameter("the file names no stream: pass --name", param_hint="--name")
    service.fetch(
        lambda diet: diet.create_stream(
            stream_name, schema,
            reference=parse_json_or_file(reference, "--reference") or definition.get("reference"),
            distill=parse_json_or_file(distill, "--distill") or definition.get("distill"),
        ),
        lambda stream: stdout().print(f"stream {stream.name} (id {stream.id}): {_summary(stream)}"),
    )  # fmt: skip


@app.command("ls")
@service_command
def list_streams(*, service: Service) -> None:
    """List the streams."""
    service.fetch(lambda diet: diet.streams(), _print_streams)


@app.command("show")
@service_command
def show(name: Annotated[str, typer.Argument(help="the stream's name")], *, service: Service) -> None:
    """A stream's whole definition."""
    service.fetch(lambda diet: diet.stream(name), _print_stream)


def _print_streams(streams: list[Stream]) -> None:
    table = Table("name", "id", "fields", "tasks", "reference", "ratio", "created")
    for s in streams:
        table.add_row(s.name, str(s.id), str(len(s.stream_schema.get("fields", []))),
                      ",".join(s.stream_schema.get("labels", [])), s.reference.get("model", ""),
                      f"{s.distill.get('ratio', 0):.2%}", f"{s.created_at:%Y-%m-%d %H:%M}")  # fmt: skip
    stdout().print(table)


def _print_stream(stream: Stream) -> None:
    out = stdout()
    out.print(f"stream {stream.name} (id {stream.id}), created {stream.created_at:%Y-%m-%d %H:%M}: {_summary(stream)}")
    out.print_json(json.dumps({"schema": stream.stream_schema, "reference": stream.reference, "distill": stream.distill}))


def _summary(stream: Stream) -> str:
    schema = stream.stream_schema
    return (
        f"{len(schema.get('fields', []))} fields, tasks {', '.join(schema.get('labels', []))}; "
        f"reference {stream.reference.get('model')}; distill ratio {stream.distill.get('ratio', 0):.2%}"
    )


@service_command(token=False)
def status(*, service: Service) -> None:
    """Whether the service is ready: its database, job queue and storage (no token needed)."""
    with service.connect() as diet:
        try:
            ready = diet.ready()
        except ApiError as exc:
            if exc.status != 503:
                raise
            if service.as_json:
                emit_json(exc.problem)
            checks = exc.problem.get("checks", {})
            lines = "; ".join(f"{k}: {v}" for k, v in checks.items()) or exc.detail
            raise fail(f"not ready at {service.url}: {lines}", ExitCode.UNAVAILABLE, service.as_json, exc.problem) from exc
    service.print(ready, _print_ready(service.url))


def _print_ready(url: str) -> Callable[[Readiness], None]:
    return lambda ready: stdout().print(f"{url}: {ready.status} (" + ", ".join(f"{k} {v}" for k, v in ready.checks.items()) + ")")
