"""`diet streams create|ls|show` and `diet status`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from diet_client.cli.common import (
    DEFAULT_URL,
    ExitCode,
    JsonOption,
    TokenOption,
    UrlOption,
    connect,
    emit_json,
    fail,
    parse_json_or_file,
    stdout,
)
from diet_client.errors import ApiError
from diet_client.models import Stream

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
def create(
    file: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False,
                       help="schema.json (as `diet convert` writes it) or a definition {name, schema, reference, distill}"),
    ],  # fmt: skip
    name: Annotated[str | None, typer.Option(help="stream name [default: the file's name, else the schema's]")] = None,
    reference: Annotated[str | None, typer.Option(help="reference model config: inline JSON or a JSON file")] = None,
    distill: Annotated[str | None, typer.Option(help="distillation defaults: inline JSON or a JSON file")] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a stream (the same definition again is fine; another one under the same name is refused)."""
    definition = read_definition(file)
    schema = definition["schema"]
    stream_name = name or definition.get("name") or (schema.get("name") if isinstance(schema, dict) else None)
    if not stream_name:
        raise typer.BadParameter("the file names no stream: pass --name", param_hint="--name")
    with connect(url, token, as_json) as diet:
        stream = diet.create_stream(
            stream_name, schema,
            reference=parse_json_or_file(reference, "--reference") or definition.get("reference"),
            distill=parse_json_or_file(distill, "--distill") or definition.get("distill"),
        )  # fmt: skip
    if as_json:
        emit_json(stream)
    else:
        stdout().print(f"stream {stream.name} (id {stream.id}): {_summary(stream)}")


@app.command("ls")
def list_streams(url: UrlOption = DEFAULT_URL, token: TokenOption = None, as_json: JsonOption = False) -> None:
    """List the streams."""
    with connect(url, token, as_json) as diet:
        streams = diet.streams()
    if as_json:
        emit_json(streams)
        return
    table = Table("name", "id", "fields", "tasks", "reference", "ratio", "created")
    for s in streams:
        table.add_row(s.name, str(s.id), str(len(s.stream_schema.get("fields", []))),
                      ",".join(s.stream_schema.get("labels", [])), s.reference.get("model", ""),
                      f"{s.distill.get('ratio', 0):.2%}", f"{s.created_at:%Y-%m-%d %H:%M}")  # fmt: skip
    stdout().print(table)


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="the stream's name")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """A stream's whole definition."""
    with connect(url, token, as_json) as diet:
        stream = diet.stream(name)
    if as_json:
        emit_json(stream)
        return
    out = stdout()
    out.print(f"stream {stream.name} (id {stream.id}), created {stream.created_at:%Y-%m-%d %H:%M}: {_summary(stream)}")
    out.print_json(json.dumps({"schema": stream.stream_schema, "reference": stream.reference, "distill": stream.distill}))


def _summary(stream: Stream) -> str:
    schema = stream.stream_schema
    return (
        f"{len(schema.get('fields', []))} fields, tasks {', '.join(schema.get('labels', []))}; "
        f"reference {stream.reference.get('model')}; distill ratio {stream.distill.get('ratio', 0):.2%}"
    )


def status(url: UrlOption = DEFAULT_URL, as_json: JsonOption = False) -> None:
    """Whether the service is ready: its database, job queue and storage (no token needed)."""
    with connect(url, None, as_json) as diet:
        try:
            ready = diet.ready()
        except ApiError as exc:
            if exc.status != 503:
                raise
            if as_json:
                emit_json(exc.problem)
            checks = exc.problem.get("checks", {})
            lines = "; ".join(f"{k}: {v}" for k, v in checks.items()) or exc.detail
            raise fail(f"not ready at {url}: {lines}", ExitCode.UNAVAILABLE, as_json, exc.problem) from exc
    if as_json:
        emit_json(ready)
        return
    stdout().print(f"{url}: {ready.status} (" + ", ".join(f"{k} {v}" for k, v in ready.checks.items()) + ")")


@app.command("retention")
def retention(
    name: Annotated[str, typer.Argument(help="the stream")],
    keep_last: Annotated[int | None, typer.Option(min=0, help="keep the newest N versions")] = None,
    keep_days: Annotated[int | None, typer.Option(min=0, help="keep versions younger than D days")] = None,
    grace: Annotated[int | None, typer.Option(min=0, help="seconds a deleted version stays restorable")] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the stream's retention policy or, with --keep-last/--keep-days/--grace, set it (admin)."""
    with connect(url, token, as_json) as diet:
        if keep_last is None and keep_days is None and grace is None:
            policy = diet.retention(name)
        else:
            policy = diet.set_retention(name, keep_last=keep_last, keep_days=keep_days, grace_s=grace)
    if as_json:
        emit_json(policy)
        return
    last = "-" if policy.keep_last is None else str(policy.keep_last)
    days = "-" if policy.keep_days is None else str(policy.keep_days)
    stdout().print(f"{policy.stream}: keep_last {last}, keep_days {days}, grace {policy.grace_s} s "
                   f"(set by {policy.updated_by} at {policy.updated_at:%Y-%m-%d %H:%M})")  # fmt: skip


@app.command("gc")
def collect(
    name: Annotated[str, typer.Argument(help="the stream")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only list what would be deleted and freed")] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Apply the retention policy now and free the files of deletions past their grace period (admin)."""
    with connect(url, token, as_json) as diet:
        report = diet.gc(name, dry_run=dry_run)
    if as_json:
        emit_json(report)
        return
    out = stdout()
    verb = "would delete" if dry_run else "deleted"
    for item in report.deleted:
        out.print(f"{verb} {item.version}: {'; '.join(item.reasons)}")
    for item in report.kept:
        out.print(f"kept {item.version}: {'; '.join(item.reasons)}")
    purged = [*report.purged_versions, *(f"block {b}" for b in report.purged_blocks)]
    out.print(f"{'would free' if dry_run else 'freed'} {report.freed_bytes} bytes" + (f" ({', '.join(purged)})" if purged else ""))
