"""`diet datasets export`: pull a version through the client, convert it with the engine.

It joins the client's `diet datasets` group from here, because the conversion is the engine's
(diet_engine.dataset.export) and the bare client installs without the engine.
"""

from __future__ import annotations

import enum
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from diet_client.cli.common import Service, human_bytes, service_command, show_progress, stdout
from diet_client.cli.datasets import VersionArgument
from diet_client.cli.progress import transfer_bars


class ExportFormat(str, enum.Enum):
    hf = "hf"
    parquet = "parquet"


@service_command
def export(
    version: VersionArgument,
    to: Annotated[Path, typer.Option(file_okay=False, help="folder to write the export to")],
    fmt: Annotated[
        ExportFormat, typer.Option("--format", help="hf: a Hugging Face datasets folder; parquet: one flat file")
    ] = ExportFormat.hf,
    cache: Annotated[
        Path | None, typer.Option(file_okay=False, help="keep the pulled version here [default: a temporary folder]")
    ] = None,
    *,
    service: Service,
) -> None:
    """Pull a version (verified) and write it for other tools: `hf` loads with
    `datasets.load_dataset("parquet", data_dir=TO)`; `parquet` is one file, one column per field embedding.
    The stream's licence goes into the `hf` dataset card."""
    from diet_engine.dataset.export import export_version  # torch: only when the command runs

    with tempfile.TemporaryDirectory(prefix="diet-export-") as scratch, service.connect() as diet:
        manifest = diet.dataset(version)
        licence = diet.stream(manifest.stream).licence
        folder = cache or Path(scratch)
        with transfer_bars(show_progress(service.as_json)) as progress:
            diet.pull(manifest.version, folder, on_progress=progress)
        done = export_version(folder, to, fmt.value, licence=licence)
    written = {"version": done.version, "format": done.format, "rows": done.rows,
               "files": [{"path": str(f.path), "bytes": f.bytes, "sha256": f.sha256} for f in done.files]}  # fmt: skip

    def show(_: object) -> None:
        out = stdout()
        for f in done.files:
            out.print(f"{f.path}  {human_bytes(f.bytes)}  sha256 {f.sha256[:12]}…")
        hint = f'datasets.load_dataset("parquet", data_dir={str(to)!r})' if fmt is ExportFormat.hf else "pyarrow.parquet"
        out.print(f"{done.version} ({done.rows} rows) -> {to}  (load it: {hint})")

    service.print(written, show)
