"""`diet blocks push|ls|show`: upload Parquet blocks of a stream and look at them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from diet_client.cli.common import LimitOption, OffsetOption, Service, human_bytes, service_command, show_progress, stdout
from diet_client.cli.progress import transfer_bars
from diet_client.models import Block, Deletion, Page, Upload

app = typer.Typer(help="Blocks: one Parquet file of a stream's logs per stage.", no_args_is_help=True)


@app.command("push")
@service_command
def push(
    stream: Annotated[str, typer.Argument(help="the stream the blocks belong to")],
    files: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, help="Parquet files, oldest first")],
    stage: Annotated[int | None, typer.Option(min=1, help="the stage of a single file [default: the next one]")] = None,
    *,
    service: Service,
) -> None:
    """Upload blocks in the order given: each becomes the stream's next stage. The same bytes again are a no-op."""
    if stage is not None and len(files) > 1:
        raise typer.BadParameter("--stage names the stage of one file; push several files without it", param_hint="--stage")
    uploads = []
    with service.connect() as diet, transfer_bars(show_progress(service.as_json)) as progress:
        for path in files:
            uploads.append(
                diet.upload_block(stream, path, stage=stage,
                                  on_progress=lambda done, total, n=path.name: progress(n, done, total))  # fmt: skip
            )

    def render(uploads: list[Upload]) -> None:
        out = stdout()
        for path, upload in zip(files, uploads, strict=True):
            b = upload.block
            state = "uploaded" if upload.created else "already there"
            out.print(f"{path.name}: block {b.id}, stage {b.stage}, {b.rows} rows, {human_bytes(b.bytes)}, "
                      f"sha256 {b.sha256[:12]}… ({state})")  # fmt: skip

    service.print(uploads, render)


@app.command("ls")
@service_command
def list_blocks(
    stream: Annotated[str | None, typer.Option(help="only this stream's blocks")] = None,
    limit: LimitOption = 50,
    offset: OffsetOption = 0,
    *,
    service: Service,
) -> None:
    """List blocks, by stream and stage."""
    service.fetch(lambda diet: diet.blocks(stream, limit=limit, offset=offset), _print_page)


@app.command("show")
@service_command
def show(block_id: Annotated[int, typer.Argument(help="the block's id")], *, service: Service) -> None:
    """One block."""
    service.fetch(lambda diet: diet.block(block_id), lambda block: _print_table([block]))


def _print_page(page: Page[Block]) -> None:
    _print_table(page.items, caption=f"{len(page.items)} of {page.total}")


def _print_table(blocks: list[Block], caption: str | None = None) -> None:
    table = Table("id", "stream", "stage", "rows", "size", "from", "to", "label rates", "sha256", caption=caption)
    for b in blocks:
        table.add_row(*_row(b))
    stdout().print(table)


def _row(b: Block) -> list[str]:
    when = [f"{t:%Y-%m-%d %H:%M}" if t else "" for t in (b.time_min, b.time_max)]
    rates = " ".join(f"{k} {v:.3f}" for k, v in b.label_rates.items())
    return [str(b.id), b.stream, str(b.stage), str(b.rows), human_bytes(b.bytes), *when, rates, b.sha256[:12] + "…"]


BlockIdArgument = Annotated[int, typer.Argument(min=1, help="the block's id")]


@app.command("rm")
@service_command
def remove(block_id: BlockIdArgument, *, service: Service) -> None:
    """Delete a block whose stage is distilled (admin); once the grace period is over it is retired: its bytes
    are freed, its sha256 and stats stay."""
    service.fetch(lambda diet: diet.delete_block(block_id), _print_deletion)


@app.command("restore")
@service_command
def restore(block_id: BlockIdArgument, *, service: Service) -> None:
    """Undo a block's deletion while its grace period lasts."""
    service.fetch(lambda diet: diet.restore_block(block_id),
                  lambda b: stdout().print(f"block {b.id} (stage {b.stage}) restored"))  # fmt: skip


def _print_deletion(d: Deletion) -> None:
    stdout().print(f"{d.deleted} deleted; restorable until {d.purge_after:%Y-%m-%d %H:%M:%S} UTC ({d.restore})")
