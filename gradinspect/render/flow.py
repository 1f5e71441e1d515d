"""Gradient flow: per-layer bars of log10 ||dL/dW|| and log10 ||dL/dinput||, forward order,
findings marked — in the terminal (rich) or as a PNG through matplotlib (optional extra)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from gradinspect.errors import UsageError
from gradinspect.plaintext import plain
from gradinspect.records import LayerReport, Severity
from gradinspect.report import Report

MARK = {Severity.INFO: "·", Severity.WARNING: "!", Severity.ERROR: "✗"}
STYLE = {Severity.INFO: "cyan", Severity.WARNING: "yellow", Severity.ERROR: "bold red"}


def _log10(value: float) -> float | None:
    return math.log10(value) if math.isfinite(value) and value > 0 else None


def flow_values(report: Report) -> list[tuple[str, float | None, float | None]]:
    """(layer path, log10 ||dL/dW||, log10 ||dL/dinput||) in forward order."""
    return [(ly.path, _log10(ly.weight_grad_norm),
             _log10(ly.grads.input.norm) if ly.grads.input is not None else None)
            for ly in report.layers]


def _worst(layer: LayerReport) -> Severity | None:
    return max((f.severity for f in layer.warnings), key=lambda s: s.rank) if layer.warnings \
        else None


def flow_renderable(report: Report, width: int = 40) -> RenderableType:
    """Bars on a shared log10 scale; a layer whose gradient is 0 or not finite shows why."""
    rows = flow_values(report)
    finite = [v for _, w, x in rows for v in (w, x) if v is not None]
    low = math.floor(min(finite)) if finite else 0.0
    high = math.ceil(max(finite)) if finite else 1.0
    span = max(high - low, 1.0)
    table = Table.grid(padding=(0, 1))
    table.add_column(no_wrap=True)
    table.add_column(no_wrap=True)
    table.add_column(no_wrap=True, justify="right")
    table.add_column(no_wrap=True)

    def bar(value: float | None, style: str) -> Text:
        if value is None:
            return Text("(zero or non-finite)", style="bold red")
        filled = max(1, round((value - low) / span * width))
        return Text("█" * filled, style=style)

    for layer, (path, w, x) in zip(report.layers, rows, strict=True):
        worst = _worst(layer)
        mark = Text(MARK[worst], style=STYLE[worst]) if worst else Text(" ")
        table.add_row(mark, Text(plain(path), style="bold"), Text("∂W", style="dim"),
                      Text.assemble(bar(w, "green"), f" {w:+.2f}" if w is not None else ""))
        if layer.grads.input is None:
            table.add_row("", "", Text("∂x", style="dim"), Text("(no float input)", style="dim"))
            continue
        table.add_row("", "", Text("∂x", style="dim"),
                      Text.assemble(bar(x, "blue"), f" {x:+.2f}" if x is not None else ""))
    title = Text(f"gradient flow: log10 norms, scale {low:+.0f} … {high:+.0f}  "
                 "(∂W = ‖∂L/∂W‖, ∂x = ‖∂L/∂input‖; ✗ error, ! warning, · info)", style="bold")
    return Group(title, table)


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend, or a usage error naming the extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise UsageError("--plot needs matplotlib, which is not installed",
                         "pip install 'gradinspect[plot]'") from exc
    return plt


def flow_figure(report: Report) -> Any:
    """The chart as a matplotlib figure: per layer, bars of log10 ||dL/dW|| and
    log10 ||dL/dinput|| that start at a common floor below the smallest value, so a larger
    gradient draws a longer bar (as ``--flow`` does in the terminal)."""
    plt = pyplot()
    rows = flow_values(report)
    names = [p for p, _, _ in rows]
    y = np.arange(len(names))
    w = np.array([v if v is not None else np.nan for _, v, _ in rows])
    x = np.array([v if v is not None else np.nan for _, _, v in rows])
    both = np.concatenate([w, x])
    floor = float(np.floor(np.nanmin(both))) - 0.5 if np.isfinite(both).any() else -1.0
    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.45 * len(names)))
    ax.barh(y - 0.2, w - floor, left=floor, height=0.4, label="log10 ‖∂L/∂W‖",
            color="tab:green")
    ax.barh(y + 0.2, x - floor, left=floor, height=0.4, label="log10 ‖∂L/∂input‖",
            color="tab:blue")
    right = float(np.nanmax(np.concatenate([both, [floor]])))
    for i, layer in enumerate(report.layers):
        worst = _worst(layer)
        if worst is not None:
            ax.annotate(f"{worst.value}: {', '.join(f.code for f in layer.warnings)}",
                        (right, i), xytext=(6, -3), textcoords="offset points", fontsize=8,
                        annotation_clip=False,
                        color={"info": "teal", "warning": "darkorange",
                               "error": "red"}[worst.value])
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    if floor < 0 < right:
        ax.axvline(0, color="black", linewidth=0.5)  # norm 1
    ax.set_xlim(left=floor)
    ax.set_xlabel("log10 norm")
    ax.set_title(f"gradient flow — {report.model.name}, loss {report.loss.name}")
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.25), ncol=2, fontsize=8,
              frameon=False)
    fig.tight_layout()
    return fig


def save_figure(fig: Any, path: Path) -> None:
    """Write a matplotlib figure as a PNG and close it; an unwritable path is an
    ``OutputError``."""
    plt = pyplot()
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        from gradinspect.errors import OutputError

        raise OutputError(f"{path}: cannot write the plot ({exc})") from exc
    finally:
        plt.close(fig)


def write_plot(report: Report, path: Path) -> None:
    """The same chart as a PNG (needs matplotlib: ``pip install 'gradinspect[plot]'``)."""
    save_figure(flow_figure(report), path)
