"""The report's plots as inline SVG strings (matplotlib, drawn without pyplot so threads may render at once).

Each function takes plain numbers and returns an `<svg>` element that scales to its container.
"""

from __future__ import annotations

import io
import math
import re
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Tableau-like colours; the real data are always the first (grey), so they read the same in every chart.
REAL_COLOUR = "#7f7f7f"
COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
# rc settings are process-wide: hold them only while one figure is written
_SAVE_LOCK = threading.Lock()
_SIZE_ATTRS = re.compile(r'^<svg([^>]*?) width="([0-9.]+)pt" height="[^"]*"', re.S)


def _figure(width_in: float, height_in: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), layout="constrained")


def _svg(fig: Figure) -> str:
    import matplotlib

    buf = io.StringIO()
    with _SAVE_LOCK, matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "diet-report"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    # natural size (pt -> CSS px) as the most it grows to; it shrinks with a narrower page (the viewBox stays)
    return _SIZE_ATTRS.sub(
        lambda m: f'<svg{m[1]} class="plot" role="img" style="max-width: {float(m[2]) * 4 / 3:.0f}px"', text, count=1
    )


def _style(ax) -> None:  # type: ignore[no-untyped-def]
    ax.grid(axis="y", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def grouped_bars(
    panels: Sequence[str],
    groups: Sequence[str],
    series: Sequence[str],
    values: dict[str, dict[str, dict[str, float | None]]],
    ylabel: str,
) -> str:
    """One panel per `panels` entry; in each, bars per group (x) and series (colour). values[panel][series][group]."""
    n = len(panels)
    fig = _figure(max(4.0, 3.6 * n), 3.0)
    axes = fig.subplots(1, n, squeeze=False)[0]
    width = 0.8 / max(1, len(series))
    for ax, panel in zip(axes, panels, strict=True):
        for k, name in enumerate(series):
            colour = REAL_COLOUR if k == 0 else COLOURS[(k - 1) % len(COLOURS)]
            xs, ys = [], []
            for g, group in enumerate(groups):
                value = values.get(panel, {}).get(name, {}).get(group)
                if value is not None and math.isfinite(value):
                    xs.append(g + (k - (len(series) - 1) / 2) * width)
                    ys.append(value)
            ax.bar(xs, ys, width=width * 0.95, color=colour, label=name)
        ax.set_xticks(range(len(groups)), list(groups))
        ax.set_title(panel, fontsize=10)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.tick_params(labelsize=8)
        _style(ax)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=len(series), fontsize=8,
               frameon=False)  # fmt: skip
    return _svg(fig)


def line_over(labels: Sequence[str], values: Sequence[float | None], ylabel: str, threshold: float | None = None) -> str:
    """One value per label (e.g. each audited version's τ), with an optional threshold line."""
    fig = _figure(max(4.0, 0.9 * len(labels) + 2.0), 2.6)
    ax = fig.subplots()
    points = [(i, v) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=COLOURS[0], label=ylabel)
    if threshold is not None:
        ax.axhline(threshold, color=COLOURS[3], linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
        low = [p for p in points if p[1] < threshold]
        ax.scatter([p[0] for p in low], [p[1] for p in low], color=COLOURS[3], zorder=3, s=40)
    ax.set_xticks(range(len(labels)), list(labels))
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=8, frameon=False)
    _style(ax)
    return _svg(fig)


def stacked_rows(labels: Sequence[str], parts: dict[str, Sequence[int]], ylabel: str) -> str:
    """Bars per label, stacked by part (e.g. new and kept rows of each version)."""
    fig = _figure(max(4.0, 0.9 * len(labels) + 2.0), 2.8)
    ax = fig.subplots()
    bottom = [0] * len(labels)
    for k, (name, counts) in enumerate(parts.items()):
        ax.bar(range(len(labels)), counts, bottom=bottom, color=COLOURS[k % len(COLOURS)], label=name, width=0.6)
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    ax.set_xticks(range(len(labels)), list(labels))
    ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=8, frameon=False)
    _style(ax)
    return _svg(fig)


def loss_panels(panels: dict[str, list[tuple[str, list[float], list[tuple[int, float]]]]]) -> str:
    """Small multiples of loss curves: panel -> [(label, curve per iteration, [(iteration, marker value)])]."""
    from matplotlib.ticker import MaxNLocator

    n = len(panels)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = _figure(max(4.5, 3.8 * cols), 2.9 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (panel, curves) in zip(axes, panels.items(), strict=False):
        for k, (label, curve, markers) in enumerate(curves):
            colour = COLOURS[k % len(COLOURS)]
            ax.plot(range(1, len(curve) + 1), curve, color=colour, linewidth=1.4, label=label)
            if markers:
                ax.plot([m[0] for m in markers], [m[1] for m in markers], linestyle="none", marker="o",
                        markersize=3.5, markerfacecolor="white", color=colour)  # fmt: skip
        ax.set_title(panel, fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("outer iteration", fontsize=9)
        ax.set_ylabel("BCE on hard targets", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=7, frameon=False)
        _style(ax)
    for ax in axes[n:]:
        ax.set_visible(False)
    return _svg(fig)


def horizontal_bars(labels: Sequence[str], values: Sequence[float], errors: Sequence[float], xlabel: str) -> str:
    """One bar per label (top to bottom), with ± error whiskers; the x axis starts near the smallest value."""
    fig = _figure(6.0, 0.35 * len(labels) + 1.0)
    ax = fig.subplots()
    ys = list(range(len(labels)))[::-1]
    finite = [v for v in values if math.isfinite(v)]
    low = min(finite) if finite else 0.0
    high = max(finite) if finite else 1.0
    span = max(high - low, 1e-3)
    left = max(0.0, low - 0.6 * span)
    whiskers = list(errors) if any(e > 0 for e in errors) else None  # one seed: no spread to show
    ax.barh(ys, [v - left if math.isfinite(v) else 0 for v in values], left=left, xerr=whiskers,
            color=COLOURS[0], height=0.6, error_kw={"elinewidth": 0.8, "capsize": 2})  # fmt: skip
    ax.set_yticks(ys, list(labels))
    ax.set_xlim(left, high + 0.4 * span)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(axis="x", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return _svg(fig)


MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]


def agreement_scatter(reference: Sequence[float], series: dict[str, Sequence[float]], xlabel: str, ylabel: str) -> str:
    """One point per candidate and series: its value under the series (y) against its reference value (x),
    one colour (and marker) per series; the dashed line y = x is where the reference's own points lie.
    Points off the chart's scale (non-finite) are left out."""
    fig = _figure(6.0, 4.2)
    ax = fig.subplots()
    xs_all, ys_all = [], []
    for k, (name, values) in enumerate(series.items()):
        points = [(x, y) for x, y in zip(reference, values, strict=True) if math.isfinite(x) and math.isfinite(y)]
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        xs_all += xs
        ys_all += ys
        ax.plot(xs, ys, linestyle="none", marker=MARKERS[k % len(MARKERS)], markersize=5, alpha=0.85,
                color=COLOURS[k % len(COLOURS)], label=name)  # fmt: skip
    if xs_all:
        def limits(values: list[float]) -> tuple[float, float]:
            low, high = min(values), max(values)
            pad = max(high - low, 1e-3) * 0.08
            return low - pad, high + pad

        (x0, x1), (y0, y1) = limits(xs_all), limits(ys_all)
        ax.plot([x0, x1], [x0, x1], linestyle="--", linewidth=0.9, color=REAL_COLOUR, label="y = x")
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right center", fontsize=8, frameon=False)
    return _svg(fig)
