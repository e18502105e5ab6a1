"""The engine's commands (`python -m diet_engine`); `diet` adds the service's to these (service/cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(help="DIET: continually distilled datasets for recommender systems.", no_args_is_help=True)
convert_app = typer.Typer(help="Turn raw logs into a stream directory (schema.json + one Parquet per split).")
app.add_typer(convert_app, name="convert")
console = Console()


@convert_app.command("ml-100k")
def convert_ml100k_cmd(
    src: Path = typer.Option(..., help="the raw MovieLens-100K folder (u.data, u.user, u.item …)"),
    out: Path = typer.Option(..., help="directory to write schema.json and the split files to"),
) -> None:
    """MovieLens-100K by the project's protocol: tasks like/love, stages b1-b3, subsequent, valid, test."""
    from diet_engine.convert import convert_ml100k, is_ml100k_dir

    if not is_ml100k_dir(src):
        raise typer.BadParameter(f"{src} has no u.data/u.user/u.item", param_hint="--src")
    counts = convert_ml100k(src, out)
    for name, rows in counts.items():
        console.print(f"{name:>12}  {rows:>7} rows  -> {out / (name + '.parquet')}")


def _csv_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@app.command()
def bench(
    data: Path = typer.Option(..., help="a converted stream directory, or the raw ML-100K folder"),
    out: Path = typer.Option(Path("bench-out"), help="where results.json goes"),
    methods: str = typer.Option("full,cold,warmup,random,el2n,kmeans", help="comma-separated: full,cold,warmup,random,el2n,kmeans,diet and the ablations diet_no_mf,diet_no_ts,diet_no_ms,diet_none"),
    models: str = typer.Option("dcn,dcnv2,finalmlp,finalnet,wukong", help="comma-separated model names"),
    ratio: float = typer.Option(0.02, help="history kept by reduced-data methods, as a share of historical rows"),
    seed: int = typer.Option(0, help="first seed"),
    seeds: int = typer.Option(1, min=1, help="seeds per cell; results are mean ± std"),
    config: Path | None = typer.Option(None, help="JSON with reference/candidate/distill overrides"),
) -> None:
    """Train every (method, model) cell, test it, print the table and write results.json."""
    from diet_engine.bench import BenchConfig, run_bench

    extra = json.loads(config.read_text()) if config else {}
    cfg = BenchConfig(data=data, out=out, methods=_csv_list(methods), models=_csv_list(models),
                      ratio=ratio, seed=seed, seeds=seeds, **extra)
    total = len(cfg.methods) * len(cfg.models) * cfg.seeds
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("training candidates", total=total)
        result = run_bench(cfg, on_cell=lambda name: bar.update(task, advance=1, description=name))
    # wide enough for one line per method even when stdout is not a terminal
    Console(width=max(console.width, 60 + 26 * len(cfg.models))).print(results_table(result, cfg.models))
    console.print(f"results: {cfg.out / 'results.json'}")


def results_table(result: dict, models: list[str]) -> Table:
    seeds = len(result["seeds"])
    table = Table(title=f"{result['dataset']}: test AUC / LogLoss (ratio {result['ratio']:.2%}, {seeds} seed(s))")
    table.add_column("method")
    for m in models:
        table.add_column(m, justify="right")
    table.add_column("mean AUC", justify="right")
    table.add_column("τ vs full", justify="right")
    table.add_column("gap rec.", justify="right")
    for method, row in result["results"].items():
        cells = []
        for m in models:
            c = row[m]
            spread = f"±{c['auc_std']:.4f}" if seeds > 1 else ""
            cells.append(f"{c['auc']:.4f}{spread} / {c['logloss']:.4f}")
        mean = sum(row[m]["auc"] for m in models) / len(models)
        tau = result["kendall_tau"].get(method)
        gap = result["gap_recovered"].get(method)
        table.add_row(method, *cells, f"{mean:.4f}", "" if tau is None else f"{tau:+.2f}", "" if gap is None else f"{gap:+.2f}")
    return table
