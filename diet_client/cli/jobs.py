"""`diet distill` and `diet jobs ls|show|wait|cancel`."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from diet_client.cli.common import (
    ExitCode,
    LimitOption,
    OffsetOption,
    Service,
    emit_json,
    fail,
    service_command,
    show_progress,
    stdout,
)
from diet_client.cli.progress import JobView, describe
from diet_client.client import DietClient
from diet_client.errors import WaitTimeout
from diet_client.models import Job, JobStatus, Page

app = typer.Typer(help="Distillation jobs: list, follow, cancel.", no_args_is_help=True)

WaitOption = Annotated[bool, typer.Option("--wait", help="follow the job until it ends; exit 4 unless it succeeded")]
JobArgument = Annotated[int, typer.Argument(help="the job's id")]
TimeoutOption = Annotated[
    float | None, typer.Option(min=0, help="with waiting: give up after this many seconds (exit 4)", show_default=False)
]


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key=value` pairs; a value is read as JSON when it is JSON (5, 0.1, true), else kept as text."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not key=value", param_hint="--set")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


@service_command
def distill(
    stream: Annotated[str, typer.Argument(help="the stream")],
    stage: Annotated[int, typer.Option(min=1, help="the stage (block) to distill")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override a distill setting for this job: key=value (repeat)")
    ] = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = None,
    *,
    service: Service,
) -> None:
    """Distill one stage of a stream: update the reference model on its block and evolve the distilled dataset.

    Stage t continues from the stage t-1 dataset, and may be asked for while that one is still
    queued or running. Asking again while the job is queued or running returns that job.
    """
    overrides = parse_overrides(set_ or [])
    with service.connect() as diet:
        job = diet.distill(stream, stage, overrides)
        if wait:
            _follow(diet, job.id, timeout, service.as_json)
            return
    service.print(job, _print_queued)


@app.command("ls")
@service_command
def list_jobs(
    stream: Annotated[str | None, typer.Option(help="only this stream's jobs")] = None,
    status: Annotated[JobStatus | None, typer.Option(help="only jobs in this state")] = None,
    limit: LimitOption = 50,
    offset: OffsetOption = 0,
    *,
    service: Service,
) -> None:
    """List jobs, newest first."""
    service.fetch(lambda diet: diet.jobs(stream, status, limit=limit, offset=offset), _print_page)


@app.command("show")
@service_command
def show(job_id: JobArgument, *, service: Service) -> None:
    """One job: status, progress, error, the dataset it made."""
    service.fetch(lambda diet: diet.job(job_id), _print_job)


@app.command("wait")
@service_command
def wait_job(job_id: JobArgument, timeout: TimeoutOption = None, *, service: Service) -> None:
    """Follow a job until it ends; exit 0 if it succeeded, 4 if it failed, was cancelled or outlived --timeout."""
    with service.connect() as diet:
        _follow(diet, job_id, timeout, service.as_json)


@app.command("cancel")
@service_command
def cancel(job_id: JobArgument, *, service: Service) -> None:
    """Cancel a queued or running job (a running one stops at its next progress report)."""
    service.fetch(lambda diet: diet.cancel(job_id), lambda job: stdout().print(f"job {job.id}: {job.status}"))


def _follow(diet: DietClient, job_id: int, timeout: float | None, as_json: bool) -> None:
    """Wait for the job with a live view; print it; exit 4 unless it succeeded."""
    try:
        with JobView(show_progress(as_json)) as view:
            job = diet.wait(job_id, timeout_s=timeout, on_progress=view.update)
    except WaitTimeout as exc:
        if as_json:
            emit_json(exc.job)
        raise fail(f"{exc} ({describe(exc.job)})", ExitCode.JOB_UNSUCCESSFUL, as_json) from exc
    if as_json:
        emit_json(job)
    else:
        _print_job(job)
    if job.status != JobStatus.succeeded:
        raise fail(f"job {job.id} did not succeed: {job.status}", ExitCode.JOB_UNSUCCESSFUL, as_json)


def _print_queued(job: Job) -> None:
    after = f", after job {job.waits_for}" if job.waits_for else ""
    stdout().print(f"job {job.id}: stage {job.stage} of {job.stream} {job.status}{after}")


def _print_page(page: Page[Job]) -> None:
    table = Table("id", "stream", "stage", "status", "progress", "dataset", "attempts", "created",
                  caption=f"{len(page.items)} of {page.total}")  # fmt: skip
    for j in page.items:
        progress = f"{j.progress.phase} {j.progress.step}/{j.progress.total}" if j.progress else ""
        table.add_row(str(j.id), j.stream, str(j.stage), str(j.status), progress, j.dataset or "",
                      str(j.attempts), f"{j.created_at:%Y-%m-%d %H:%M:%S}")  # fmt: skip
    stdout().print(table)


def _print_job(job: Job) -> None:
    out = stdout()
    line = f"job {job.id}: stage {job.stage} of {job.stream} {job.status}"
    if job.dataset:
        line += f" -> {job.dataset}"
    if job.started_at and job.finished_at:
        line += f" in {(job.finished_at - job.started_at).total_seconds():.1f}s"
    out.print(line)
    if job.progress and not job.status.finished:
        out.print("  " + describe(job))
    if job.waits_for and job.status == JobStatus.queued:
        out.print(f"  waits for job {job.waits_for}")
    if job.error:
        out.print(f"  error: {job.error}", markup=False)
