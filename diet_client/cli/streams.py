"""`diet streams create|ls|show|retention|gc` and `diet status`."""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.table import Table

from diet_client.cli.common import ExitCode, Service, emit_json, fail, parse_json_or_file, service_command, stdout
from diet_client.errors import ApiError
from diet_client.models import GcReport, Readiness, Retention, Stream

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


@app.command("retention")
@service_command
def retention(
    name: Annotated[str, typer.Argument(help="the stream")],
    keep_last: Annotated[int | None, typer.Option(min=0, help="keep the newest N versions")] = None,
    keep_days: Annotated[int | None, typer.Option(min=0, help="keep versions younger than D days")] = None,
    grace: Annotated[int | None, typer.Option(min=0, help="seconds a deleted version stays restorable")] = None,
    *,
    service: Service,
) -> None:
    """Show the stream's retention policy or, with --keep-last/--keep-days/--grace, set it (admin)."""

    def call(diet):  # type: ignore[no-untyped-def]
        if keep_last is None and keep_days is None and grace is None:
            return diet.retention(name)
        return diet.set_retention(name, keep_last=keep_last, keep_days=keep_days, grace_s=grace)

    service.fetch(call, _print_retention)


@app.command("gc")
@service_command
def collect(
    name: Annotated[str, typer.Argument(help="the stream")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only list what would be deleted and freed")] = False,
    *,
    service: Service,
) -> None:
    """Apply the retention policy now and free the files of deletions past their grace period (admin)."""
    service.fetch(lambda diet: diet.gc(name, dry_run=dry_run), _print_gc)


def _print_retention(policy: Retention) -> None:
    last = "-" if policy.keep_last is None else str(policy.keep_last)
    days = "-" if policy.keep_days is None else str(policy.keep_days)
    stdout().print(f"{policy.stream}: keep_last {last}, keep_days {days}, grace {policy.grace_s} s "
                   f"(set by {policy.updated_by} at {policy.updated_at:%Y-%m-%d %H:%M})")  # fmt: skip


def _print_gc(report: GcReport) -> None:
    out = stdout()
    verb = "would delete" if report.dry_run else "deleted"
    for item in report.deleted:
        out.print(f"{verb} {item.version}: {'; '.join(item.reasons)}")
    for item in report.kept:
        out.print(f"kept {item.version}: {'; '.join(item.reasons)}")
    purged = [*report.purged_versions, *(f"block {b}" for b in report.purged_blocks)]
    freed = "would free" if report.dry_run else "freed"
    out.print(f"{freed} {report.freed_bytes} bytes" + (f" ({', '.join(purged)})" if purged else ""))
