"""ReportDiff -> a rich table or JSON text."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from gradinspect.plaintext import plain
from gradinspect.render.table import fmt

if TYPE_CHECKING:
    from gradinspect.diff import FigureChange, ReportDiff

SHOWN = (("grad_weight_norm", "‖∂L/∂W‖"), ("grad_input_norm", "‖∂L/∂x‖"),
         ("grad_to_weight", "‖∂W‖/‖W‖"), ("low_grad_fraction", "low act′"))


def _short(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _change(c: FigureChange | None) -> Text:
    """log10(B/A), yellow from one order of magnitude."""
    if c is None or c.log10_change is None:
        return Text("-" if c is None or c.a is None or c.b is None else "0")
    style = "green" if abs(c.log10_change) < 1 else "bold yellow"
    return Text(f"{c.log10_change:+.2f}", style=style)


def _fraction(c: FigureChange | None) -> str:
    if c is None or (c.a is None and c.b is None):
        return "-"
    return f"{'-' if c.a is None else f'{c.a:.0%}'}→{'-' if c.b is None else f'{c.b:.0%}'}"


def diff_renderable(d: ReportDiff) -> RenderableType:
    """One line per layer at 100 columns: ||dL/dW|| in A and B and log10(B/A); the log10
    change of ||dL/dx|| and ||dW||/||W||; the low-derivative fraction in A and B; how many
    findings appeared and went away. The findings themselves follow the table, in full."""
    head = Text()
    head.append("A ", style="bold")
    head.append(f"{plain(d.a)}\n")
    head.append("B ", style="bold")
    head.append(f"{plain(d.b)}\n")
    head.append(f"loss {fmt(d.loss.a)} → {fmt(d.loss.b)}")
    if d.loss_changed:
        head.append("  (different loss or reduction: figures are not comparable one to one)",
                    style="yellow")
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, expand=False,
                  caption="Δ = log10(B/A): orders of magnitude gained (+) or lost (−)")
    table.add_column("layer", overflow="fold", max_width=24)
    table.add_column("‖∂L/∂W‖ A", justify="right", no_wrap=True)
    table.add_column("B", justify="right", no_wrap=True)
    table.add_column("Δ", justify="right", no_wrap=True)
    table.add_column("‖∂L/∂x‖ Δ", justify="right", no_wrap=True)
    table.add_column("‖∂W‖/‖W‖ Δ", justify="right", no_wrap=True)
    table.add_column("low act′", justify="right", no_wrap=True)
    table.add_column("findings", no_wrap=True)
    for layer in d.layers:
        if layer.status != "both":
            mark = "only in B" if layer.status == "added" else "only in A"
            table.add_row(Text(plain(layer.path), style="dim"), *["-"] * 6,
                          Text(mark, style="yellow"))
            continue
        by_name = {c.name: c for c in layer.figures}
        weight = by_name.get("grad_weight_norm")
        changes = Text()
        if layer.findings_added:
            changes.append(f"+{len(layer.findings_added)} ", style="red")
        if layer.findings_removed:
            changes.append(f"−{len(layer.findings_removed)}", style="green")
        table.add_row(Text(plain(layer.path)),
                      _short(weight.a if weight else None), _short(weight.b if weight else None),
                      _change(weight), _change(by_name.get("grad_input_norm")),
                      _change(by_name.get("grad_to_weight")),
                      _fraction(by_name.get("low_grad_fraction")), changes or "")
    parts: list[RenderableType] = [head, table]
    changed = [ly for ly in d.layers if ly.status == "both"
               and (ly.findings_added or ly.findings_removed)]
    if changed:
        lines = Table.grid(padding=(0, 2))
        lines.add_column(no_wrap=True, max_width=40, overflow="ellipsis")
        lines.add_column()
        for layer in changed:
            codes = Text()
            for code in layer.findings_added:
                codes.append(f"+{plain(code)} ", style="red")
            for code in layer.findings_removed:
                codes.append(f"−{plain(code)} ", style="green")
            lines.add_row(Text(plain(layer.path)), codes)
        parts += [Text("findings that appeared (+) or went away (−) in B", style="bold"),
                  lines]
    if d.findings_added or d.findings_removed:
        model = Text("model: ")
        for code in d.findings_added:
            model.append(f"+{plain(code)} ", style="red")
        for code in d.findings_removed:
            model.append(f"−{plain(code)} ", style="green")
        parts.append(model)
    return Group(*parts)


def render_diff_json(d: ReportDiff) -> str:
    return json.dumps(d.to_dict(), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
