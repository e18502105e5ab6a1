"""`diet audit VERSION` and `diet audits ls|show|wait`: does a version still rank models like full history?"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from diet_client.cli.common import ExitCode, LimitOption, Service, emit_json, fail, service_command, stdout
from diet_client.cli.jobs import TimeoutOption, WaitOption, parse_overrides
from diet_client.client import DietClient
from diet_client.errors import WaitTimeout
from diet_client.models import Audit, JobStatus, Page

app = typer.Typer(help="Audit jobs: a version's candidate pool against full history.", no_args_is_help=True)
StageOption = Annotated[int | None, typer.Option(min=1, show_default=False)]


@service_command
def audit(
    version: Annotated[str, typer.Argument(help="STREAM@vN (or @latest, or an alias)")],
    pool: Annotated[str, typer.Option(help="a named pool of architectures (p5: the paper's five)")] = "p5",
    model: Annotated[list[str] | None, typer.Option("--model", help="instead of the pool: a model (repeat)")] = None,
    subsequent: StageOption = None,
    valid: StageOption = None,
    test: StageOption = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="a candidate training setting: key=value (repeat)")
    ] = None,
    repeats: Annotated[int, typer.Option(min=1, max=10, help="candidates per cell")] = 1,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    wait: WaitOption = False,
    timeout: TimeoutOption = None,
    *,
    service: Service,
) -> None:
    """Audit a version on the workers: train the pool on it and on full history, record Kendall τ, top-1 regret and
    mean AUC in its metrics. The evaluation blocks are stages --subsequent/--valid/--test (default: the three after
    the version's stage)."""
    blocks = {k: v for k, v in {"subsequent": subsequent, "valid": valid, "test": test}.items() if v is not None}
    as_json = service.as_json
    with service.connect() as diet:
        made = diet.audit(version, pool=pool, models=model or None, blocks=blocks, candidate=parse_overrides(set_ or []),
                          repeats=repeats, seed=seed)  # fmt: skip
        if not wait:
            _print(made, as_json)
            return
        _follow(diet, made.id, timeout, as_json)


@app.command("ls")
@service_command
def list_audits(
    stream: Annotated[str | None, typer.Option(help="only this stream's audits")] = None,
    version: Annotated[str | None, typer.Option(help="only this version's audits")] = None,
    limit: LimitOption = 50,
    *,
    service: Service,
) -> None:
    """Audits, newest first, with their τ and top-1 regret."""
    service.fetch(lambda diet: diet.audits(stream, version, limit=limit), _print_page)


def _print_page(page: Page[Audit]) -> None:
    table = Table("id", "version", "status", "models", "τ", "top-1 regret", "alarm", "created",
                  caption=f"{len(page.items)} of {page.total}")  # fmt: skip
    for a in page.items:
        r = a.result
        table.add_row(str(a.id), a.version, str(a.status), ", ".join(a.request.get("models", [])),
                      _tau(r.kendall_tau) if r else "", f"{r.top1_regret:.4f}" if r else "",
                      ("yes" if r.alarm else "") if r else "", f"{a.created_at:%Y-%m-%d %H:%M}")  # fmt: skip
    stdout().print(table)


@app.command("show")
@service_command
def show(audit_id: Annotated[int, typer.Argument(help="the audit's id")], *, service: Service) -> None:
    """One audit: its request, evaluation blocks, and result per model."""
    with service.connect() as diet:
        _print(diet.audit_job(audit_id), service.as_json)


@app.command("wait")
@service_command
def wait_audit(
    audit_id: Annotated[int, typer.Argument(help="the audit's id")], timeout: TimeoutOption = None, *, service: Service
) -> None:
    """Follow an audit until it ends; exit 0 if it succeeded, 4 otherwise."""
    with service.connect() as diet:
        _follow(diet, audit_id, timeout, service.as_json)


def _follow(diet: DietClient, audit_id: int, timeout: float | None, as_json: bool) -> None:
    try:
        done = diet.wait_audit(audit_id, timeout_s=timeout)
    except WaitTimeout as exc:
        raise fail(str(exc), ExitCode.JOB_UNSUCCESSFUL, as_json) from exc
    _print(done, as_json)
    if done.status != JobStatus.succeeded:
        raise fail(f"audit {done.id} did not succeed: {done.status}", ExitCode.JOB_UNSUCCESSFUL, as_json)


def _tau(tau: float | None) -> str:
    return "–" if tau is None else f"{tau:+.2f}"


def _print(a: Audit, as_json: bool) -> None:
    if as_json:
        emit_json(a)
        return
    out = stdout()
    stages = ", ".join(f"{k} {a.blocks[k]['stage']}" for k in ("subsequent", "valid", "test") if k in a.blocks)
    out.print(f"audit {a.id} of {a.version}: {a.status}{' (scheduled)' if a.scheduled else ''}; blocks: {stages}")
    if a.progress and not a.status.finished:
        out.print(f"  {a.progress.phase} {a.progress.step}/{a.progress.total}")
    if a.error:
        out.print(f"  error: {a.error}", markup=False)
    r = a.result
    if r is None:
        return
    flag = f"  [red]below the threshold {r.threshold:g}[/red]" if r.alarm and r.threshold is not None else ""
    out.print(f"  Kendall τ {_tau(r.kendall_tau)}, top-1 regret {r.top1_regret:.4f}, mean AUC "
              f"{r.mean_auc['version']:.4f} (full history {r.mean_auc['full']:.4f}) in {r.seconds:.0f} s{flag}")  # fmt: skip
    table = Table("model", "AUC on the version", "AUC on full history")
    for m in r.models:
        table.add_row(m, f"{r.auc['version'][m]:.4f}", f"{r.auc['full'][m]:.4f}")
    out.print(table)
