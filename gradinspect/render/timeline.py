"""The timeline as text (sparklines per entry, forward order) or a PNG (matplotlib extra).
Takes ``Timeline`` records only."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from gradinspect.plaintext import plain
from gradinspect.render.flow import pyplot, save_figure
from gradinspect.timeline import Timeline, log10_change, timeline_dict

BARS = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 16
"""At most this many characters per sparkline: longer runs are resampled (each character is
the geometric mean of its share of the records)."""


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _resampled(series: Sequence[float | None], width: int) -> list[float | None]:
    if len(series) <= width:
        return list(series)
    out: list[float | None] = []
    for k in range(width):
        part = series[k * len(series) // width:(k + 1) * len(series) // width]
        logs = [math.log10(v) for v in part if v is not None and v > 0]
        zero = any(v == 0 for v in part)
        out.append(10 ** (sum(logs) / len(logs)) if logs else (0.0 if zero else None))
    return out


def sparkline(series: Sequence[float | None], width: int = SPARK_WIDTH) -> str:
    """One character per record (resampled to ``width``) on the series' own log10 scale:
    ``▁`` its smallest, ``█`` its largest; ``0`` exactly zero, a cross sign where missing or
    not finite."""
    points = _resampled(series, width)
    logs = [math.log10(v) for v in points if v is not None and v > 0]
    low, high = (min(logs), max(logs)) if logs else (0.0, 0.0)
    chars = []
    for v in points:
        if v is None:
            chars.append("×")
        elif v == 0:
            chars.append("0")
        else:
            span = high - low
            level = 0 if span <= 0 else round((math.log10(v) - low) / span * (len(BARS) - 1))
            chars.append(BARS[level])
    return "".join(chars)


def _marks(steps: Sequence[int], found: Sequence[tuple[str, int]], width: int) -> str:
    """Under a sparkline: ``^`` where a finding first appears."""
    if not found or not steps:
        return ""
    n = min(len(steps), width)
    line = [" "] * n
    for _, step in found:
        index = steps.index(step) if step in steps else 0
        line[min(index * n // len(steps), n - 1)] = "^"
    return "".join(line).rstrip()


def timeline_renderable(timeline: Timeline) -> RenderableType:
    """Per entry: the trend of ||dL/dW|| with first/last values and the change in log10, the
    trend of ||dL/dinput|| and of the gain, and the findings at the step they first appear."""
    steps = timeline.steps
    header = Text(plain(f"timeline {timeline.source}: {len(steps)} records, steps "
                        f"{steps[0]}…{steps[-1]}, epochs {min(timeline.epochs)}…"
                        f"{max(timeline.epochs)}"), style="bold")
    table = Table(box=None, padding=(0, 1), show_edge=False, pad_edge=False)
    table.add_column("layer", no_wrap=True, max_width=22, overflow="ellipsis")
    table.add_column("kind", no_wrap=True)
    table.add_column("‖∂L/∂W‖", no_wrap=True)
    table.add_column("first", justify="right", no_wrap=True)
    table.add_column("last", justify="right", no_wrap=True)
    table.add_column("Δlog10", justify="right", no_wrap=True)
    table.add_column("‖∂L/∂x‖", no_wrap=True)
    table.add_column("gain", no_wrap=True)
    width = min(SPARK_WIDTH, len(steps))
    for e in timeline.entries:
        finite = [v for v in e.weight_grad_norm if v is not None]
        change = log10_change(e.weight_grad_norm)
        spark = Text(sparkline(e.weight_grad_norm, width))
        marks = _marks(steps, [(f.code, f.step) for f in e.findings], width)
        if marks:
            spark.append("\n" + marks, style="yellow")
        table.add_row(
            Text(plain(e.path)), e.kind, spark,
            _fmt(finite[0] if finite else None), _fmt(finite[-1] if finite else None),
            "-" if change is None else f"{change:+.2f}",
            sparkline(e.input_grad_norm, width) if any(
                v is not None for v in e.input_grad_norm) else "-",
            sparkline(e.backward_gain, width) if any(
                v is not None for v in e.backward_gain) else "-",
        )
    lines = []
    for e in timeline.entries:
        for f in e.findings:
            lines.append(f"step {f.step}: {f.severity} {f.code} at {e.path}")
    lines += [f"step {f.step}: {f.severity} {f.code} (model)" for f in timeline.findings]
    lines.sort(key=lambda line: int(line.split(":", 1)[0].split()[1]))
    parts: list[RenderableType] = [header, table]
    if lines:
        parts.append(Text("findings, where they first appear (^ under the trend)", style="bold"))
        parts.append(Text("\n".join(plain(line) for line in lines)))
    else:
        parts.append(Text("no findings in any record", style="green"))
    return Group(*parts)


def render_timeline_json(timeline: Timeline) -> str:
    """``--json``: the series per entry (see ``timeline_dict``)."""
    return json.dumps(timeline_dict(timeline), indent=2, allow_nan=False) + "\n"


def write_timeline_plot(timeline: Timeline, path: Path) -> None:
    """One line per entry: ||dL/dW|| over the steps on a log axis (needs matplotlib:
    ``pip install 'gradinspect[plot]'``)."""
    fig, ax = pyplot().subplots(figsize=(9, 5))
    steps = np.array(timeline.steps, dtype=float)
    for e in timeline.entries:
        y = np.array([v if v is not None and v > 0 else np.nan for v in e.weight_grad_norm])
        ax.plot(steps, y, marker="o", markersize=3, label=e.path)
        for f in e.findings:
            k = timeline.steps.index(f.step)
            if not math.isnan(y[k]):
                ax.annotate(f.code, (steps[k], y[k]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("‖∂L/∂W‖")
    if len(timeline.entries) <= 20:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    save_figure(fig, path)
