"""HTML reports: one per dataset version (the service's `GET /datasets/{version}/report`) and
one per benchmark run (`report.html` beside `results.json`).

Plain data in, one self-contained HTML string out: inline CSS and inline SVG plots, no
external assets, so the page can be saved, mailed or opened offline. `Report` is the data;
`dataset_report` and `bench_report` build it, `render` turns it into HTML.

Label balance of distilled rows is *soft*: per stage of origin, the mean soft label
sigmoid(logit / T) of each task over the rows distilled from that stage, at the temperature T
the soft labels are used with — the positive rate a candidate trained on them is taught —
next to the positive rate of that stage's real block (no 0/1 threshold).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from datetime import datetime
from string import Template
from typing import IO, TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, Field

from diet_engine.dataset.diff import VersionDiff
from diet_engine.evaluate import plots as report_plots

if TYPE_CHECKING:
    from torch import Tensor

    from diet_engine.data.synthetic import SyntheticSet

REAL = "real block"
DISTILLED = "distilled"


def interval_text(point: float | None, interval: list[float] | None) -> str:
    """A rank statistic and, where known, its 90 % interval (evaluate/fidelity.bootstrap_intervals)."""
    if point is None:
        return ""
    return f"{point:+.2f} [{interval[0]:+.2f}, {interval[1]:+.2f}]" if interval else f"{point:+.2f}"


def signed_text(x: float | None) -> str:
    return "–" if x is None else f"{x:+.2f}"


def share_text(share: float | None) -> str:
    """A share of a gap recovered, as a signed percentage ('' when the gap is undefined)."""
    return "" if share is None or not math.isfinite(share) else f"{share:+.0%}"


class VersionRow(BaseModel):
    """One version of a lineage (oldest first in `Report.lineage`)."""

    version: str
    stage: int
    rows: int
    new_rows: int
    kept_rows: int
    history_rows: int
    ratio: float
    block_rows: int | None = None
    seconds: float | None = None
    created_at: str | None = None


class StageBalance(BaseModel):
    """Positive rates of one stage: its real block's, and the mean soft label of each set's rows from it."""

    stage: int
    real: dict[str, float] | None  # task -> rate; None when the block is unknown
    real_rows: int | None = None
    sets: dict[str, dict[str, float]]  # set name -> task -> mean soft label
    rows: dict[str, int]  # set name -> rows from this stage


class LossCurve(BaseModel):
    panel: str
    label: str
    outer_loss: list[float]
    hard_loss_start: list[float] = Field(default_factory=list)  # H's loss at θ_{t-1}, per addressing round
    address_every: int | None = None


class Cell(BaseModel):
    auc: float
    logloss: float
    auc_std: float = 0.0
    logloss_std: float = 0.0


class Evaluation(BaseModel):
    """The methods × candidates table of a benchmark and its fidelity statistics (evaluate/fidelity.py)."""

    methods: list[str]
    models: list[str]  # the pool's candidates
    cells: dict[str, dict[str, Cell]]
    history_rows: dict[str, int]
    pool: str = "p5"
    mean_auc: dict[str, float] = Field(default_factory=dict)
    kendall_tau: dict[str, float | None] = Field(default_factory=dict)
    kendall_tau_interval: dict[str, list[float]] = Field(default_factory=dict)
    spearman_rho: dict[str, float | None] = Field(default_factory=dict)
    spearman_rho_interval: dict[str, list[float]] = Field(default_factory=dict)
    interval_widened: dict[str, list[str]] = Field(default_factory=dict)
    top1_regret: dict[str, float] = Field(default_factory=dict)
    gap_recovered: dict[str, float | None] = Field(default_factory=dict)
    warmup_gap_recovered: dict[str, float | None] = Field(default_factory=dict)
    noise_ceiling: dict[str, Any] | None = None
    set_alone: dict[str, float] = Field(default_factory=dict)
    seeds: int = 1
    best_reduced: str | None = None


# what Evaluation takes from results.json as it is (bench.summarise writes them)
FIDELITY_KEYS = ("pool", "mean_auc", "kendall_tau", "kendall_tau_interval", "spearman_rho", "spearman_rho_interval",
                 "interval_widened", "top1_regret", "gap_recovered", "warmup_gap_recovered", "noise_ceiling",
                 "set_alone", "best_reduced")


class AuditRow(BaseModel):
    """One audited version of the stream: its candidates' ranking against full data's (service audits)."""

    version: str
    created_at: str | None = None
    kendall_tau: float | None
    top1_regret: float
    mean_auc: float  # the version's candidates'
    full_mean_auc: float  # full history's
    alarm: bool


class Report(BaseModel):
    title: str
    subtitle: str
    facts: list[tuple[str, str]]
    tasks: list[str]
    temperature: float = 1.0  # of the soft labels in `balance`
    lineage: list[VersionRow] = Field(default_factory=list)
    balance: list[StageBalance] = Field(default_factory=list)
    curves: list[LossCurve] = Field(default_factory=list)
    evaluation: Evaluation | None = None
    config: dict[str, Any] | None = None
    diff: VersionDiff | None = None  # against the parent version
    diff_note: str | None = None  # why there is no diff, when there is a parent
    audits: list[AuditRow] = Field(default_factory=list)  # oldest version first
    audit_threshold: float | None = None


# --------------------------------------------------------------------------- soft label rates


class SoftLabelRates(BaseModel):
    tasks: list[str]
    temperature: float
    rates: dict[int, dict[str, float]]  # stage of origin -> task -> mean sigmoid(logit / temperature)
    rows: dict[int, int]  # stage of origin -> rows


def soft_label_rates(
    stage: np.ndarray, logits: np.ndarray, tasks: Sequence[str], temperature: float = 1.0
) -> SoftLabelRates:
    """Mean soft label sigmoid(logit / temperature) per task over the rows of each stage of origin."""
    stage = np.asarray(stage)
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    probs = 0.5 * (1.0 + np.tanh(0.5 * scaled))  # sigmoid without overflow
    rates, rows = {}, {}
    for s in sorted(set(stage.tolist())):
        mask = stage == s
        rows[int(s)] = int(mask.sum())
        rates[int(s)] = {t: float(probs[mask, j].mean()) for j, t in enumerate(tasks)}
    return SoftLabelRates(tasks=list(tasks), temperature=temperature, rates=rates, rows=rows)


def synthetic_label_rates(source: str | IO[bytes], temperature: float = 1.0) -> SoftLabelRates:
    """Soft label rates of a synthetic.parquet (a path or an open file), reading only its stage and logit columns."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(source)
    meta = {k.decode(): v.decode() for k, v in (parquet.schema_arrow.metadata or {}).items()}
    tasks = json.loads(meta["diet.tasks"])
    table = parquet.read(columns=["stage", *(f"logit_{t}" for t in tasks)])
    columns = [table.column(f"logit_{t}").to_numpy() for t in tasks]
    logits = np.stack(columns, axis=1) if table.num_rows else np.empty((0, len(tasks)))
    return soft_label_rates(table.column("stage").to_numpy(), logits, tasks, temperature)


# --------------------------------------------------------------------------- builders


def dataset_report(
    lineage: Sequence[dict[str, Any]],
    block_label_rates: dict[int, dict[str, float]],
    distilled: SoftLabelRates,
    diff: VersionDiff | None = None,
    diff_note: str | None = None,
    audits: Sequence[AuditRow] = (),
    audit_threshold: float | None = None,
) -> Report:
    """The report of a dataset version from its manifests (its ancestors first, itself last),
    the label rates of the real blocks by stage, the soft label rates of its synthetic rows and,
    when given, its diff against its parent (diet_engine.dataset.diff) and the stream's audited
    versions (τ over time, flagged below `audit_threshold`)."""
    if not lineage:
        raise ValueError("a dataset report needs at least the version's own manifest")
    version = lineage[-1]
    block_rows = {b["stage"]: b["rows"] for b in version.get("blocks", [])}
    rows = [
        VersionRow(
            version=m["version"], stage=m["stage"], rows=m["rows"], new_rows=m["new_rows"], kept_rows=m["kept_rows"],
            history_rows=m["history_rows"], ratio=m["ratio"], block_rows=block_rows.get(m["stage"]),
            seconds=m.get("metrics", {}).get("timings", {}).get("total_s"), created_at=_when(m.get("created_at")),
        )
        for m in lineage
    ]  # fmt: skip
    balance = [
        StageBalance(
            stage=stage, real=block_label_rates.get(stage), real_rows=block_rows.get(stage),
            sets={DISTILLED: distilled.rates[stage]} if stage in distilled.rates else {},
            rows={DISTILLED: distilled.rows.get(stage, 0)},
        )
        for stage in sorted(set(block_rows) | set(distilled.rates))
    ]  # fmt: skip
    curves = [
        LossCurve(
            panel="outer loss per stage", label=f"stage {m['stage']} ({m['version']})",
            outer_loss=m.get("metrics", {}).get("outer_loss", []),
            hard_loss_start=m.get("metrics", {}).get("hard_loss_start", []),
            address_every=m.get("config", {}).get("distill", {}).get("address_every"),
        )
        for m in lineage
    ]  # fmt: skip
    artifacts = {a["name"]: a["bytes"] for a in version.get("artifacts", [])}
    reference = version.get("config", {}).get("reference", {})
    facts = [
        ("version", version["version"]),
        ("stage", str(version["stage"])),
        ("parent", version.get("parent") or "none (first stage)"),
        ("distilled rows", f"{version['rows']:,} ({version['new_rows']:,} new, {version['kept_rows']:,} kept)"),
        ("historical rows", f"{version['history_rows']:,}"),
        ("ratio", f"{version['ratio']:.2%}"),
        ("reference model", f"{reference.get('model', '?')}, "
                            f"embedding dim {reference.get('arch', {}).get('embedding_dim', '?')}"),
        ("files", ", ".join(f"{name} {_bytes(n)}" for name, n in artifacts.items()) or "none"),
        ("created", _when(version.get("created_at")) or "?"),
    ]  # fmt: skip
    return Report(
        title=f"DIET dataset {version['version']}",
        subtitle=f"stream {version.get('stream', '?')}, stage {version['stage']}, job {version.get('job', '?')}",
        facts=facts, tasks=distilled.tasks, temperature=distilled.temperature, lineage=rows, balance=balance,
        curves=curves, evaluation=None, config=version.get("config"), diff=diff, diff_note=diff_note,
        audits=list(audits), audit_threshold=audit_threshold,
    )  # fmt: skip


def bench_report(
    result: dict[str, Any], tasks: Sequence[str], sets: dict[str, SyntheticSet], history_labels: Sequence[Tensor]
) -> Report:
    """The report of a benchmark run: its results.json, the stream's tasks, the history sets of its
    last seed and the label columns of the real historical blocks (stage t = history_labels[t-1])."""
    tasks = list(tasks)
    stage_rates = {
        t: {task: float(labels[:, j].float().mean()) for j, task in enumerate(tasks)} if len(labels) else None
        for t, labels in enumerate(history_labels, 1)
    }
    temperature = float(result["config"]["candidate"].get("temperature", 1.0))
    per_set = {m: soft_label_rates(s.stage.cpu().numpy(), s.logits.detach().cpu().numpy(), tasks, temperature) for m, s in sets.items()}
    balance = [
        StageBalance(
            stage=t, real=stage_rates[t], real_rows=len(history_labels[t - 1]),
            sets={m: r.rates[t] for m, r in per_set.items() if t in r.rates},
            rows={m: r.rows.get(t, 0) for m, r in per_set.items()},
        )
        for t in stage_rates
    ]  # fmt: skip
    last = result["phases"][-1] if result.get("phases") else {}
    address_every = result["config"]["distill"].get("address_every")
    curves = [
        LossCurve(panel=f"stage {t}", label=method, outer_loss=m.get("outer_loss", []),
                  hard_loss_start=m.get("hard_loss_start", []), address_every=address_every)  # fmt: skip
        for method, phase in last.items()
        if isinstance(phase, dict) and "stages" in phase
        for t, m in enumerate(phase["stages"], 1)
    ]
    methods = list(result["results"])
    models = list(result.get("candidates") or result["config"]["models"])
    statistics = {k: result[k] for k in FIDELITY_KEYS if result.get(k) is not None}
    evaluation = Evaluation(
        methods=methods, models=models,
        cells={m: {k: Cell.model_validate(result["results"][m][k]) for k in models} for m in methods},
        history_rows={m: result["results"][m][models[0]]["history_rows"] for m in methods},
        **statistics, seeds=len(result.get("seeds", [])) or 1,
    )  # fmt: skip
    facts = [
        ("dataset", str(result["dataset"])),
        ("ratio", f"{result['ratio']:.2%}"),
        ("historical rows", f"{result['history_rows']:,}"),
        ("seeds", ", ".join(str(s) for s in result.get("seeds", []))),
        ("pool", f"{result.get('pool', 'p5').upper()}: {', '.join(models)}"),
        ("best reduced method", result.get("best_reduced") or "–"),
    ]
    return Report(
        title=f"DIET benchmark: {result['dataset']}",
        subtitle=f"{len(methods)} methods × {len(models)} candidates, ratio {result['ratio']:.2%}, "
        f"{evaluation.seeds} seed(s); label balance and loss curves from seed {last.get('seed', '?')}",
        facts=facts, tasks=tasks, temperature=temperature, balance=balance, curves=curves, evaluation=evaluation,
        config=result.get("config"),
    )  # fmt: skip


# --------------------------------------------------------------------------- HTML

PAGE = Template("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color: #222;
       max-width: 1100px; margin: 0 auto; padding: 24px; background: #fff; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 32px 0 8px; border-bottom: 1px solid #e5e5e5; }
.sub { color: #666; margin: 0 0 16px; } .note { color: #555; font-size: 13px; margin: 4px 0 10px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0; }
dl.facts dt { color: #666; } dl.facts dd { margin: 0; font-variant-numeric: tabular-nums; }
table { border-collapse: collapse; margin: 8px 0; font-variant-numeric: tabular-nums; }
th, td { padding: 3px 10px; border-bottom: 1px solid #eee; text-align: right; white-space: nowrap; }
th.t, td.t, th:first-child, td:first-child { text-align: left; } th { background: #f6f6f6; font-weight: 600; }
td.best { font-weight: 700; } .std { color: #888; font-size: 12px; }
svg.plot { width: 100%; height: auto; display: block; margin: 6px 0; }
.scroll { overflow-x: auto; }
pre { background: #f6f6f6; padding: 10px; overflow-x: auto; font-size: 12px; }
footer { color: #888; font-size: 12px; margin-top: 40px; }
</style>
</head>
<body>
<header><h1>$title</h1><p class="sub">$subtitle</p></header>
<section id="summary"><dl class="facts">$facts</dl></section>
$sections
<footer>Generated by diet_engine.evaluate.report on $generated.</footer>
</body>
</html>
""")


def render(report: Report, generated: datetime | None = None) -> str:
    """The report as one self-contained HTML page."""
    facts = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in report.facts)
    sections = [
        _lineage(report.lineage),
        _balance(report.balance, report.tasks, report.temperature),
        _curves(report.curves),
        _diff(report.diff, report.diff_note),
        _evaluation(report.evaluation),
        _audits(report.audits, report.audit_threshold),
        _config(report.config),
    ]
    return PAGE.substitute(
        title=_e(report.title), subtitle=_e(report.subtitle), facts=facts,
        sections="\n".join(s for s in sections if s),
        generated=_e((generated or datetime.now().astimezone()).strftime("%Y-%m-%d %H:%M %Z")),
    )  # fmt: skip


def _lineage(rows: list[VersionRow]) -> str:
    if not rows:
        return ""
    plot = report_plots.stacked_rows(
        [f"v{r.version.rsplit('@v', 1)[-1]} (stage {r.stage})" for r in rows],
        {"new rows": [r.new_rows for r in rows], "kept rows": [r.kept_rows for r in rows]},
        "distilled rows",
    )
    head = ["version", "stage", "block rows", "historical rows", "distilled rows", "new", "kept", "ratio", "time", "created"]
    body = [
        [r.version, r.stage, _int(r.block_rows), _int(r.history_rows), _int(r.rows), _int(r.new_rows),
         _int(r.kept_rows), f"{r.ratio:.2%}", "–" if r.seconds is None else f"{r.seconds:.1f} s", r.created_at or "–"]
        for r in rows
    ]  # fmt: skip
    return (
        '<section id="lineage"><h2>Lineage and sizes</h2>'
        '<p class="note">Each version continues from its parent: rows kept from the parent by memory fusion, '
        "plus new rows distilled from the stage's block.</p>" + plot + _table(head, body) + "</section>"
    )


def _balance(balance: list[StageBalance], tasks: list[str], temperature: float) -> str:
    if not balance:
        return ""
    names = list(dict.fromkeys(name for b in balance for name in b.rows))
    series = [REAL, *names]
    stages = [f"stage {b.stage}" for b in balance]
    values = {
        task: {
            REAL: {f"stage {b.stage}": (b.real or {}).get(task) for b in balance},
            **{n: {f"stage {b.stage}": b.sets.get(n, {}).get(task) for b in balance} for n in names},
        }
        for task in tasks
    }
    plot = report_plots.grouped_bars(tasks, stages, series, values, "positive rate")
    head = ["stage", "rows of", "rows", *tasks]
    body = []
    for b in balance:
        body.append([b.stage, REAL, _int(b.real_rows), *(_rate((b.real or {}).get(t)) for t in tasks)])
        body += [[b.stage, n, _int(b.rows.get(n)), *(_rate(b.sets.get(n, {}).get(t)) for t in tasks)] for n in names]
    return (
        '<section id="balance"><h2>Label balance</h2>'
        '<p class="note">Real: the share of positive labels in the stage\'s block. Others: the mean soft label '
        f"σ(logit / T), T = {temperature:g}, of the rows that come from that stage (the positive rate a candidate "
        "trained on them is taught), not a hard 0/1 threshold.</p>" + plot + _table(head, body, text_columns=2)
        + "</section>"
    )


def _diff(diff: VersionDiff | None, note: str | None) -> str:
    if diff is None:
        return f'<section id="diff"><h2>Changes since the parent</h2><p class="note">{_e(note)}</p></section>' if note else ""
    rows = [[s.stage, _int(s.rows_a), _int(s.rows_b), _int(s.kept), _int(s.added), _int(s.dropped)] for s in diff.by_stage]
    rows.append(["all", _int(diff.rows_a), _int(diff.rows_b), _int(diff.kept), _int(diff.added), _int(diff.dropped)])
    balance = [[t.task, _rate(t.a), _rate(t.b), "–" if t.change is None else f"{t.change:+.3f}"] for t in diff.label_balance]
    drift = diff.drift
    drift_text = (
        f"{drift.rows:,} kept rows moved by {drift.mean:.4f} on average, {drift.p95:.4f} at the 95th percentile, "
        f"{drift.max:.4f} at most (L2 norm of the change of the row's embedding)."
        if drift.mean is not None and drift.p95 is not None and drift.max is not None
        else "No kept rows to measure drift on."
    )
    config = [[c.key, json.dumps(c.a), json.dumps(c.b)] for c in diff.config]
    lineage = diff.lineage
    blocks = (
        f"Blocks seen by both: stages {', '.join(map(str, lineage.blocks_shared)) or 'none'}; "
        f"new in {diff.b}: {', '.join(map(str, lineage.blocks_only_b)) or 'none'}."
    )
    return (
        f'<section id="diff"><h2>Changes since the parent</h2><p class="note">From {_e(diff.a)} to {_e(diff.b)}. '
        "Rows are matched by stage of origin and the real row they started from"
        + ("" if diff.anchored else " (these sets carry no anchors: no row is matched)") + ". "
        + _e(drift_text) + " " + _e(blocks) + "</p>"
        + _table(["stage of origin", f"rows in {diff.a}", f"rows in {diff.b}", "kept", "added", "dropped"], rows)
        + _table(["task", f"mean soft label {diff.a}", f"mean soft label {diff.b}", "change"], balance)
        + (_table(["config key", diff.a, diff.b], config, text_columns=3) if config else
           '<p class="note">Same configuration.</p>')
        + "</section>"
    )  # fmt: skip


def _curves(curves: list[LossCurve]) -> str:
    drawn = [c for c in curves if c.outer_loss]
    if not drawn:
        if not curves:
            return ""
        return '<section id="losses"><h2>Distillation loss</h2><p class="note">No optimisation steps.</p></section>'
    panels: dict[str, list[tuple[str, list[float], list[tuple[int, float]]]]] = {}
    for c in drawn:
        every = c.address_every or 0
        markers = [(1 + i * every, v) for i, v in enumerate(c.hard_loss_start)] if every else []
        panels.setdefault(c.panel, []).append((c.label, c.outer_loss, markers))
    head = ["curve", "iterations", "first", "last", "min", "hard targets at θ(t−1), first round"]
    body = [
        [f"{c.panel}: {c.label}", len(c.outer_loss), _num(c.outer_loss[0]), _num(c.outer_loss[-1]),
         _num(min(c.outer_loss)), _num(c.hard_loss_start[0]) if c.hard_loss_start else "–"]
        for c in drawn
    ]  # fmt: skip
    return (
        '<section id="losses"><h2>Distillation loss</h2>'
        '<p class="note">Outer loss of the bi-level optimisation: BCE on the hard targets of the real block after '
        "the inner steps on the synthetic rows. Open circles: the hard targets' loss at the previous reference "
        "(θ<sub>t−1</sub>) when they were chosen, every addressing round.</p>"
        + report_plots.loss_panels(panels) + _table(head, body) + "</section>"
    )


def _evaluation(ev: Evaluation | None) -> str:
    if ev is None:
        return ""
    best = {k: max((ev.cells[m][k].auc for m in ev.methods if math.isfinite(ev.cells[m][k].auc)), default=None)
            for k in ev.models}  # fmt: skip
    head = ["method", "history rows", *ev.models]
    rows = []
    for m in ev.methods:
        cells = []
        for k in ev.models:
            c = ev.cells[m][k]
            spread = f' <span class="std">±{c.auc_std:.4f}</span>' if ev.seeds > 1 else ""
            cls = ' class="best"' if best[k] is not None and c.auc == best[k] else ""
            cells.append(f"<td{cls}>{c.auc:.4f}{spread} / {c.logloss:.4f}</td>")
        rows.append(f"<tr><td>{_e(m)}{' ★' if m == ev.best_reduced else ''}</td><td>{_int(ev.history_rows.get(m))}</td>"
                    + "".join(cells) + "</tr>")
    means = [ev.mean_auc.get(m, float(np.mean([ev.cells[m][k].auc for k in ev.models]))) for m in ev.methods]
    errors = [float(np.mean([ev.cells[m][k].auc_std for k in ev.models])) for m in ev.methods]
    plot = report_plots.horizontal_bars(ev.methods, means, errors, "test AUC, mean over the pool (± mean std over seeds)")
    table = (
        '<div class="scroll"><table><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head)
        + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>"
    )  # fmt: skip
    return (
        '<section id="evaluation"><h2>Methods × candidates</h2>'
        f'<p class="note">Pool {_e(ev.pool.upper())}: test AUC / LogLoss averaged over tasks and {ev.seeds} seed(s); '
        "bold: best AUC per candidate; ★: best reduced-data method by mean AUC.</p>" + table + plot + "</section>"
        + _fidelity(ev, means)
    )


def _fidelity(ev: Evaluation, means: list[float]) -> str:
    """Per method, how it ranks the pool against full data, and each candidate's AUC against full's (Figure 1)."""
    head = ["method", "mean AUC", "τ vs full [90 %]", "ρ vs full [90 %]", "top-1 regret", "cold→full recovered",
            "warmup→full recovered", "set alone"]
    body = []
    for m, mean in zip(ev.methods, means, strict=True):
        widened = " *" if ev.interval_widened.get(m) else ""
        regret, alone = ev.top1_regret.get(m), ev.set_alone.get(m)
        body.append([
            m, f"{mean:.4f}",
            (interval_text(ev.kendall_tau.get(m), ev.kendall_tau_interval.get(m)) or "–")
            + (widened if "kendall_tau" in ev.interval_widened.get(m, []) else ""),
            (interval_text(ev.spearman_rho.get(m), ev.spearman_rho_interval.get(m)) or "–")
            + (widened if "spearman_rho" in ev.interval_widened.get(m, []) else ""),
            "–" if regret is None else f"{regret:.4f}",
            share_text(ev.gap_recovered.get(m)) or "–", share_text(ev.warmup_gap_recovered.get(m)) or "–",
            "–" if alone is None else f"{alone:.4f}",
        ])  # fmt: skip
    ceiling = ev.noise_ceiling
    ceiling_note = (
        f"Noise ceiling: full data's own τ {signed_text(ceiling.get('kendall_tau'))} and ρ "
        f"{signed_text(ceiling.get('spearman_rho'))} between the means of two disjoint sets of "
        f"{ceiling.get('seeds_per_half')} seed(s), averaged over {ceiling.get('splits')} split(s)."
        if ceiling else "Noise ceiling: needs two seeds or more."
    )
    scatter = ""
    if "full" in ev.cells:
        full = [ev.cells["full"][k].auc for k in ev.models]
        series = {m: [ev.cells[m][k].auc for k in ev.models] for m in ev.methods if m != "full"}
        if series:
            scatter = report_plots.agreement_scatter(full, series, "full-data test AUC", "test AUC under the method")
    return (
        '<section id="fidelity"><h2>Fidelity: does the method rank the pool as full data does?</h2>'
        '<p class="note">On the means over seeds. τ: Kendall τ-b, ρ: Spearman ρ, between the method\'s and full '
        "data's test AUCs over the pool, each with a 90 % interval from resampling seeds and candidates together "
        "(*: the percentile interval was stretched to reach its point estimate, the bootstrap's bias). Top-1 "
        "regret: full data's best AUC minus full data's AUC of the candidate the method ranks first. Recovered: "
        "the share of the cold→full / warmup→full gap in mean AUC. Set alone: test AUC after the history phase, "
        f"before the fine-tune on the subsequent block. {_e(ceiling_note)}</p>"
        + _table(head, body) + scatter
        + '<p class="note">Each point a candidate: its test AUC under a method against its full-data test AUC '
        "(the paper's Figure 1). A method that ranks as full data does lies along a rising line.</p>"
        + "</section>"
    )


def _audits(rows: list[AuditRow], threshold: float | None) -> str:
    if not rows:
        return ""
    plot = report_plots.line_over(
        [f"v{r.version.rsplit('@v', 1)[-1]}" for r in rows], [r.kendall_tau for r in rows], "Kendall τ", threshold
    )
    head = ["version", "audited", "Kendall τ", "top-1 regret", "mean AUC", "full data's", "flag"]
    body = [
        [r.version, r.created_at or "–", "–" if r.kendall_tau is None else f"{r.kendall_tau:+.2f}",
         f"{r.top1_regret:.4f}", _num(r.mean_auc), _num(r.full_mean_auc), "τ below threshold" if r.alarm else ""]
        for r in rows
    ]  # fmt: skip
    bar = "" if threshold is None else f" The stream's alarm threshold is τ = {threshold:g}."
    return (
        '<section id="audits"><h2>Audits: does it rank models like full history?</h2>'
        "<p class=\"note\">Each audit trains a pool of architectures on the version and on full history and "
        "compares their test-AUC rankings (Kendall τ-b; top-1 regret is full data's AUC lost by taking the "
        f"version's best model).{_e(bar)}</p>" + plot + _table(head, body, text_columns=2) + "</section>"
    )


def _config(config: dict[str, Any] | None) -> str:
    if not config:
        return ""
    return (
        '<section id="config"><h2>Configuration</h2><details><summary>as run</summary><pre>'
        + _e(json.dumps(config, indent=2))
        + "</pre></details></section>"
    )


def _table(head: list[str], body: list[list[Any]], text_columns: int = 1) -> str:
    """A table whose first `text_columns` columns are left-aligned text, the rest right-aligned numbers."""
    def cell(tag: str, i: int, value: Any) -> str:
        align = ' class="t"' if i < text_columns else ""
        return f"<{tag}{align}>{_e(str(value))}</{tag}>"

    header = "".join(cell("th", i, h) for i, h in enumerate(head))
    rows = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in body)
    return f'<div class="scroll"><table><thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table></div>'


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _int(n: int | None) -> str:
    return "–" if n is None else f"{n:,}"


def _rate(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.3f}"


def _num(x: float) -> str:
    return f"{x:.4f}" if math.isfinite(x) else "nan"


def _bytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _when(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    return str(value)[:16].replace("T", " ")
