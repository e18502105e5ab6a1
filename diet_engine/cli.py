"""The engine's commands (`python -m diet_engine`); `diet` adds the service's to these (service/cli.py)."""

from __future__ import annotations

import json
import re
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
    from diet_engine.data.convert.ml_100k import convert_ml100k, is_ml100k_dir

    if not is_ml100k_dir(src):
        raise typer.BadParameter(f"{src} has no u.data/u.user/u.item", param_hint="--src")
    counts = convert_ml100k(src, out)
    for name, rows in counts.items():
        console.print(f"{name:>12}  {rows:>7} rows  -> {out / (name + '.parquet')}")


@convert_app.command("ml-1m")
def convert_ml1m_cmd(
    src: Path = typer.Option(..., help="the raw MovieLens-1M folder (ratings_part1..5.csv, users.tsv, movies.tsv)"),
    out: Path = typer.Option(..., help="directory to write schema.json and the split files to"),
) -> None:
    """MovieLens-1M by the project's protocol: tasks like/love, a seeded random partition into b1-b3, subsequent, valid, test."""
    from diet_engine.data.convert.ml_1m import ML1M_RATING_PARTS, convert_ml1m, is_ml1m_dir

    if not is_ml1m_dir(src):
        raise typer.BadParameter(f"{src} lacks {', '.join(ML1M_RATING_PARTS)}, users.tsv or movies.tsv", param_hint="--src")
    counts = convert_ml1m(src, out)
    for name, rows in counts.items():
        console.print(f"{name:>12}  {rows:>7} rows  -> {out / (name + '.parquet')}")


@convert_app.command("csv")
def convert_csv_cmd(
    log: Path = typer.Argument(..., help="the interaction log: CSV (.csv, .tsv, optionally .gz) or Parquet"),
    out: Path = typer.Option(..., help="directory to create with schema.json and the split files"),
    timestamp: str = typer.Option(..., help="time column: epoch seconds, a timestamp, or ISO 8601 strings (naive = UTC)"),
    labels: str = typer.Option(..., help="tasks, comma-separated: NAME (already 0/1), NAME=COL, NAME=COL>=4 "
                                         "(>, <=, <, ==, !=), NAME=COL in (a,b)"),
    fields: str = typer.Option(..., help="categorical columns, comma-separated: COL or COL:BUCKETS"),
    splits: str = typer.Option(..., help="history=START,START,...;subsequent=START;valid=START;test=START;end=END "
                                         "(dates, ISO times or epoch seconds, UTC, strictly increasing)"),
    numeric: str = typer.Option("", help="numeric columns, comma-separated"),
    join: list[str] = typer.Option([], help="FILE:KEY side table left-joined on KEY (CSV or Parquet; repeatable)"),
    buckets: int = typer.Option(100_000, min=2, help="hash buckets of a field without its own :BUCKETS"),
    name: str | None = typer.Option(None, help="stream name (default: from the log's file name)"),
    time_format: str | None = typer.Option(None, help="strptime format of string times, e.g. '%d/%m/%Y %H:%M'"),
    overwrite: bool = typer.Option(False, help="replace OUT if it exists (only once the new one is complete)"),
) -> None:
    """Any interaction log, streamed in record batches: labels from expressions, stages cut by time."""
    from diet_engine.data.convert.splits import ConvertError, utc_text
    from diet_engine.data.convert.csv_log import convert_log

    try:
        with console.status("converting…") as status:
            report = convert_log(
                log, out, timestamp=timestamp, labels=_label_list(labels), fields=_csv_list(fields), splits=splits,
                numeric=_csv_list(numeric), joins=join, buckets=buckets, name=name, time_format=time_format,
                overwrite=overwrite, on_batch=lambda rows: status.update(f"converting… {rows:,} rows read"))
    except ConvertError as e:
        Console(stderr=True).print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    for split, rows in report.rows.items():
        start, end = report.windows[split]
        console.print(f"{split:>12}  {rows:>9,} rows  [{utc_text(start)}, {utc_text(end)})", markup=False, highlight=False)
    console.print(f"read {report.read:,} rows; dropped {report.before:,} before the first split "
                  f"and {report.after:,} at or after the end; wrote {out}/", soft_wrap=True)
    if report.unsorted:
        console.print(f"left in input order (too large to sort): {', '.join(report.unsorted)}")


def _label_list(value: str) -> list[str]:
    """Comma-separated, except inside `in (...)` sets."""
    return [v.strip() for v in re.findall(r"(?:[^,(]|\([^)]*\))+", value) if v.strip()]


def _csv_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@app.command()
def bench(
    data: Path = typer.Option(..., help="a converted stream directory, or the raw ML-100K or ML-1M folder"),
    out: Path = typer.Option(Path("bench-out"), help="where results.json goes"),
    methods: str = typer.Option("full,cold,warmup,random,el2n,kmeans", help="comma-separated: full,cold,warmup,random,el2n,kmeans,diet and the variants diet_no_mf,diet_ts,diet_ms,diet_none,diet_paper,diet_kmeans,diet_pool"),
    models: str = typer.Option("dcn,dcnv2,finalmlp,finalnet,wukong", help="comma-separated architectures the pool is made of"),
    pool: str = typer.Option("p5", help="candidate pool: p5 (each architecture at its default size) or p15 "
                                        "(small, default and large dense parts: NAME-s, NAME, NAME-l)"),
    ratio: float = typer.Option(0.02, help="history kept by reduced-data methods, as a share of historical rows"),
    seed: int = typer.Option(0, help="first seed"),
    seeds: int = typer.Option(1, min=1, help="seeds per cell; results are mean ± std"),
    candidate_repeats: int = typer.Option(3, min=1, help="candidates trained per cell and seed, test metrics averaged"),
    config: Path | None = typer.Option(None, help="JSON with reference/candidate/distill overrides"),
    device: str = typer.Option("cpu", help="where every phase runs: cpu, cuda, cuda:N"),
) -> None:
    """Train every (method, candidate) cell, test it, print the tables and write results.json."""
    from diet_engine.evaluate.bench import BenchConfig, run_bench
    from diet_engine.evaluate.pool import POOL_SIZES, POOLS

    if pool not in POOLS:
        raise typer.BadParameter(f"{pool!r} is not one of {', '.join(POOLS)}", param_hint="--pool")
    # the --config file's values win over the options' (benchmarks/sweep.py passes device, repeats … there)
    options = {"candidate_repeats": candidate_repeats, "device": device}
    extra = {**options, **(json.loads(config.read_text()) if config else {})}
    cfg = BenchConfig(data=data, out=out, methods=_csv_list(methods), models=_csv_list(models), pool=pool,
                      ratio=ratio, seed=seed, seeds=seeds, **extra)
    total = len(cfg.methods) * len(cfg.models) * len(POOL_SIZES[cfg.pool]) * cfg.seeds
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("training candidates", total=total)
        result = run_bench(cfg, on_cell=lambda name: bar.update(task, advance=1, description=name))
    candidates = result["candidates"]
    # wide enough for one line per method even when stdout is not a terminal
    Console(width=max(console.width, 20 + 26 * len(candidates))).print(results_table(result, candidates))
    Console(width=max(console.width, 150)).print(fidelity_table(result))
    console.print(f"results: {cfg.out / 'results.json'}   report: {cfg.out / 'report.html'}")


def results_table(result: dict, candidates: list[str]) -> Table:
    """Test AUC / LogLoss of every (method, candidate) cell, mean ± std over seeds."""
    seeds = len(result["seeds"])
    table = Table(title=f"{result['dataset']}: test AUC / LogLoss (ratio {result['ratio']:.2%}, "
                        f"pool {result.get('pool', 'p5').upper()}, {seeds} seed(s))")
    table.add_column("method")
    for m in candidates:
        table.add_column(m, justify="right")
    for method, row in result["results"].items():
        cells = []
        for m in candidates:
            c = row[m]
            spread = f"±{c['auc_std']:.4f}" if seeds > 1 else ""
            cells.append(f"{c['auc']:.4f}{spread} / {c['logloss']:.4f}")
        table.add_row(method, *cells)
    return table


def fidelity_table(result: dict) -> Table:
    """Per method, how it ranks the pool against full data (evaluate/fidelity.py), with the noise ceiling."""
    from diet_engine.evaluate.report import share_text, signed_text

    ceiling = result.get("noise_ceiling")
    caption = ("noise ceiling (full data's own τ / ρ between disjoint halves of the seeds): "
               f"τ {signed_text(ceiling.get('kendall_tau'))}, ρ {signed_text(ceiling.get('spearman_rho'))}"
               if ceiling else "noise ceiling: needs 2 seeds or more")
    caption += "; *: interval stretched to reach its point (evaluate/fidelity.bootstrap_intervals)"
    table = Table(title=f"fidelity over pool {result.get('pool', 'p5').upper()} ({len(result['candidates'])} candidates)",
                  caption=caption)
    for name in ("method", "mean AUC", "τ vs full [90 %]", "ρ vs full [90 %]", "top-1 regret",
                 "cold→full rec.", "warmup→full rec.", "set alone"):
        table.add_column(name, justify="left" if name == "method" else "right")
    for method in result["results"]:
        regret = result.get("top1_regret", {}).get(method)
        alone = result.get("set_alone", {}).get(method)
        table.add_row(
            method, f"{result['mean_auc'][method]:.4f}", _statistic_text(result, "kendall_tau", method),
            _statistic_text(result, "spearman_rho", method),
            "" if regret is None else f"{regret:.4f}",
            share_text(result["gap_recovered"].get(method)), share_text(result["warmup_gap_recovered"].get(method)),
            "" if alone is None else f"{alone:.4f}",
        )
    return table


def _statistic_text(result: dict, name: str, method: str) -> str:
    """A rank statistic with its interval, starred where the interval was stretched to reach its point."""
    from diet_engine.evaluate.report import interval_text

    text = interval_text(result[name].get(method), result[f"{name}_interval"].get(method))
    return text + (" *" if name in result.get("interval_widened", {}).get(method, []) else "")
