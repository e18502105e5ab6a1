"""`diet blocks push|ls|show`: upload Parquet blocks of a stream and look at them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from diet_client.cli.common import (
    DEFAULT_URL,
    JsonOption,
    TokenOption,
    UrlOption,
    connect,
    emit_json,
    human_bytes,
    show_progress,
    stdout,
)
from diet_client.cli.progress import transfer_bars
from diet_client.models import Block

app = typer.Typer(help="Blocks: one Parquet file of a stream's logs per stage.", no_args_is_help=True)


@app.command("push")
def push(
    stream: Annotated[str, typer.Argument(help="the stream the blocks belong to")],
    files: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, help="Parquet files, oldest first")],
    stage: Annotated[int | None, typer.Option(min=1, help="the stage of a single file [default: the next one]")] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Upload blocks in the order given: each becomes the stream's next stage. The same bytes again are a no-op."""
    if stage is not None and len(files) > 1:
        raise typer.BadParameter("--stage names the stage of one file; push several files without it", param_hint="--stage")
    uploads = []
    with connect(url, token, as_json) as diet, transfer_bars(show_progress(as_json)) as progress:
        for path in files:
            uploads.append(
                diet.upload_block(stream, path, stage=stage,
                                  on_progress=lambda done, total, n=path.name: progress(n, done, total))  # fmt: skip
            )
    if as_json:
        emit_json(uploads)
        return
    out = stdout()
    for path, upload in zip(files, uploads, strict=True):
        b = upload.block
        state = "uploaded" if upload.created else "already there"
        out.print(f"{path.name}: block {b.id}, stage {b.stage}, {b.rows} rows, {human_bytes(b.bytes)}, "
                  f"sha256 {b.sha256[:12]}… ({state})")  # fmt: skip


@app.command("ls")
def list_blocks(
    stream: Annotated[str | None, typer.Option(help="only this stream's blocks")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """List blocks, by stream and stage."""
    with connect(url, token, as_json) as diet:
        page = diet.blocks(stream, limit=limit, offset=offset)
    if as_json:
        emit_json(page)
        return
    table = Table("id", "stream", "stage", "rows", "size", "from", "to", "label rates", "sha256",
                  caption=f"{len(page.items)} of {page.total}")  # fmt: skip
    for b in page.items:
        table.add_row(*_row(b))
    stdout().print(table)


@app.command("show")
def show(
    block_id: Annotated[int, typer.Argument(help="the block's id")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """One block."""
    with connect(url, token, as_json) as diet:
        block = diet.block(block_id)
    if as_json:
        emit_json(block)
        return
    table = Table("id", "stream", "stage", "rows", "size", "from", "to", "label rates", "sha256")
    table.add_row(*_row(block))
    stdout().print(table)


def _row(b: Block) -> list[str]:
    when = [f"{t:%Y-%m-%d %H:%M}" if t else "" for t in (b.time_min, b.time_max)]
    rates = " ".join(f"{k} {v:.3f}" for k, v in b.label_rates.items())
    return [str(b.id), b.stream, str(b.stage), str(b.rows), human_bytes(b.bytes), *when, rates, b.sha256[:12] + "…"]


@app.command("rm")
def remove(
    block_id: Annotated[int, typer.Argument(min=1, help="the block's id")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete a block whose stage is distilled (admin); once the grace period is over it is retired: its bytes
    are freed, its sha256 and stats stay."""
    with connect(url, token, as_json) as diet:
        deletion = diet.delete_block(block_id)
    if as_json:
        emit_json(deletion)
    else:
        stdout().print(f"{deletion.deleted} deleted; restorable until {deletion.purge_after:%Y-%m-%d %H:%M:%S} UTC")


@app.command("restore")
def restore(
    block_id: Annotated[int, typer.Argument(min=1, help="the block's id")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Undo a block's deletion while its grace period lasts."""
    with connect(url, token, as_json) as diet:
        block = diet.restore_block(block_id)
    if as_json:
        emit_json(block)
    else:
        stdout().print(f"block {block.id} (stage {block.stage}) restored")
