"""`diet datasets ls|show|pull|report|diff|rm|restore` and `diet datasets alias ...`: find, fetch, compare,
name and delete distilled dataset versions.

`diet datasets export` is added to this group by service/cli.py: it converts with the engine, which
the bare client does not install.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from diet_client.cli.common import (
    LimitOption,
    OffsetOption,
    Service,
    human_bytes,
    service_command,
    show_progress,
    stdout,
)
from diet_client.cli import aliases
from diet_client.cli.progress import transfer_bars
from diet_client.models import DatasetDiff, Deletion, Manifest, Page, PulledDataset

app = typer.Typer(
    help="Distilled dataset versions: STREAM@vN, STREAM@latest, STREAM@ALIAS or STREAM@sha256:DIGEST.",
    no_args_is_help=True,
)
app.add_typer(aliases.app, name="alias")

VersionArgument = Annotated[str, typer.Argument(help="STREAM@vN, STREAM@latest, STREAM@ALIAS or STREAM@sha256:DIGEST")]


@app.command("ls")
@service_command
def list_versions(
    stream: Annotated[str | None, typer.Option(help="only this stream's versions")] = None,
    limit: LimitOption = 50,
    offset: OffsetOption = 0,
    *,
    service: Service,
) -> None:
    """List versions, newest first."""
    service.fetch(lambda diet: diet.datasets(stream, limit=limit, offset=offset), _print_page)


@app.command("show")
@service_command
def show(version: VersionArgument, *, service: Service) -> None:
    """A version's manifest: stage, parent, blocks, sizes, config, metrics and files."""
    service.fetch(lambda diet: diet.dataset(version), _print_manifest)


@app.command("pull")
@service_command
def pull(
    version: VersionArgument,
    to: Annotated[
        Path | None, typer.Option(file_okay=False, help="folder to put the files in [default: ./STREAM-vN]")
    ] = None,
    *,
    service: Service,
) -> None:
    """Download a version's files (resuming interrupted downloads) and check each against its sha256."""
    with service.connect() as diet:
        manifest = diet.dataset(version)
        folder = to or Path(manifest.version.replace("@", "-"))
        with transfer_bars(show_progress(service.as_json)) as progress:
            # As asked (an alias, `latest`): pulled.json records it, for load_dataset(folder, version=...).
            pulled = diet.pull(version, folder, on_progress=progress)
    service.print(pulled, _print_pulled)


@app.command("report")
@service_command
def report(
    version: VersionArgument,
    to: Annotated[
        Path | None, typer.Option(dir_okay=False, help="HTML file to write [default: ./STREAM-vN.html]; - for stdout")
    ] = None,
    *,
    service: Service,
) -> None:
    """Save a version's HTML report: lineage, sizes, label balance, loss curves and the diff against its parent."""
    with service.connect() as diet:
        label = diet.dataset(version).version
        html = diet.report(label)
    if to is not None and str(to) == "-":
        typer.echo(html)
        return
    path = to or Path(label.replace("@", "-") + ".html")
    path.write_text(html, encoding="utf-8")
    written = {"version": label, "path": str(path), "bytes": len(html.encode())}
    service.print(written, lambda _: stdout().print(f"{label} report -> {path}"))


def _print_page(page: Page[Manifest]) -> None:
    table = Table("version", "stage", "parent", "rows", "new", "kept", "history", "ratio", "created",
                  caption=f"{len(page.items)} of {page.total}")  # fmt: skip
    for m in page.items:
        table.add_row(m.version, str(m.stage), m.parent or "", str(m.rows), str(m.new_rows), str(m.kept_rows),
                      str(m.history_rows), f"{m.ratio:.2%}", f"{m.created_at:%Y-%m-%d %H:%M}")  # fmt: skip
    stdout().print(table)


def _print_manifest(m: Manifest) -> None:
    out = stdout()
    out.print(f"{m.version}: stage {m.stage}, parent {m.parent or '-'}, job {m.job}, created {m.created_at:%Y-%m-%d %H:%M}")
    out.print(f"  {m.rows} rows ({m.new_rows} new, {m.kept_rows} kept) for {m.history_rows} historical rows: {m.ratio:.2%}")
    out.print("  blocks: " + ", ".join(f"stage {b.stage} ({b.rows} rows)" for b in m.blocks))
    files = Table("file", "size", "sha256")
    for a in m.artifacts:
        files.add_row(a.name, human_bytes(a.bytes), a.sha256)
    out.print(files)


def _print_pulled(pulled: PulledDataset) -> None:
    out = stdout()
    for f in pulled.files:
        if f.resumed_from == f.bytes:
            how = " (already there)"
        else:
            how = f" (resumed at {human_bytes(f.resumed_from)})" if f.resumed_from else ""
        out.print(f"{f.path}  {human_bytes(f.bytes)}  sha256 {f.sha256[:12]}… verified{how}")
    out.print(f"{pulled.version} -> {pulled.directory}  (load it: diet_engine.load_dataset({str(pulled.directory)!r}))")


@app.command("diff")
@service_command
def diff(a: VersionArgument, b: VersionArgument, *, service: Service) -> None:
    """What changed from A to B: rows kept, added and dropped by stage of origin, label balance, drift, config."""
    service.fetch(lambda diet: diet.diff(a, b), _print_diff)


@app.command("rm")
@service_command
def remove(version: VersionArgument, *, service: Service) -> None:
    """Delete a version (admin): hidden now, restorable until its grace period ends, then its files are freed.
    Refused while an alias, a queued job or the next stage needs it."""
    service.fetch(lambda diet: diet.delete_dataset(version), _print_deletion)


@app.command("restore")
@service_command
def restore(version: Annotated[str, typer.Argument(help="STREAM@vN")], *, service: Service) -> None:
    """Undo a deletion while its grace period lasts."""
    service.fetch(lambda diet: diet.restore_dataset(version), lambda m: stdout().print(f"{m.version} restored"))


def _print_deletion(d: Deletion) -> None:
    stdout().print(f"{d.deleted} deleted; restorable until {d.purge_after:%Y-%m-%d %H:%M:%S} UTC "
                   f"(diet datasets restore {d.deleted})")  # fmt: skip


def _print_diff(d: DatasetDiff) -> None:
    out = stdout()
    out.print(f"{d.a} -> {d.b}: {d.rows_a} -> {d.rows_b} rows; {d.kept} kept, {d.added} added, {d.dropped} dropped"
              + ("" if d.anchored else " (no anchors: rows cannot be matched)"))  # fmt: skip
    rows = Table("stage of origin", f"rows in {d.a}", f"rows in {d.b}", "kept", "added", "dropped")
    for s in d.by_stage:
        rows.add_row(str(s.stage), str(s.rows_a), str(s.rows_b), str(s.kept), str(s.added), str(s.dropped))
    out.print(rows)
    balance = Table("task", f"soft label {d.a}", f"soft label {d.b}", "change")
    for t in d.label_balance:
        balance.add_row(t.task, _rate(t.a), _rate(t.b), "-" if t.change is None else f"{t.change:+.4f}")
    out.print(balance)
    if d.drift.mean is not None:
        out.print(f"drift of the {d.drift.rows} kept rows (L2): mean {d.drift.mean:.4f}, p95 {d.drift.p95:.4f}, "
                  f"max {d.drift.max:.4f}")  # fmt: skip
    for c in d.config:
        out.print(f"config {c.key}: {c.a!r} -> {c.b!r}")
    lineage = d.lineage
    out.print(f"lineage: common ancestor {lineage.common_ancestor or '-'}; new blocks in {d.b}: "
              f"{', '.join(map(str, lineage.blocks_only_b)) or 'none'}")  # fmt: skip


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"
