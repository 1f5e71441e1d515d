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


def _cell(c: FigureChange) -> Text:
    text = Text(f"{fmt(c.a)} → {fmt(c.b)}")
    if c.log10_change is not None and c.log10_change != 0:
        style = "green" if abs(c.log10_change) < 1 else "bold yellow"
        text.append(f" ({c.log10_change:+.2f})", style=style)
    return text


def diff_renderable(d: ReportDiff) -> RenderableType:
    head = Text()
    head.append("A ", style="bold")
    head.append(f"{plain(d.a)}\n")
    head.append("B ", style="bold")
    head.append(f"{plain(d.b)}\n")
    head.append(f"loss {fmt(d.loss.a)} → {fmt(d.loss.b)}")
    if d.loss_changed:
        head.append("  (different loss or reduction: figures are not comparable one to one)",
                    style="yellow")
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False,
                  caption="(+n) = log10(B/A): orders of magnitude gained or lost")
    table.add_column("layer", overflow="fold")
    for _, label in SHOWN:
        table.add_column(label, justify="right")
    table.add_column("findings")
    for layer in d.layers:
        if layer.status != "both":
            mark = "only in B" if layer.status == "added" else "only in A"
            table.add_row(Text(plain(layer.path), style="dim"), *["-"] * len(SHOWN),
                          Text(mark, style="yellow"))
            continue
        by_name = {c.name: c for c in layer.figures}
        changes = Text()
        for code in layer.findings_added:
            changes.append(f"+{plain(code)} ", style="red")
        for code in layer.findings_removed:
            changes.append(f"-{plain(code)} ", style="green")
        table.add_row(Text(plain(layer.path)), *[_cell(by_name[n]) for n, _ in SHOWN],
                      changes or "")
    parts: list[RenderableType] = [head, table]
    if d.findings_added or d.findings_removed:
        model = Text("model: ")
        for code in d.findings_added:
            model.append(f"+{plain(code)} ", style="red")
        for code in d.findings_removed:
            model.append(f"-{plain(code)} ", style="green")
        parts.append(model)
    return Group(*parts)


def render_diff_json(d: ReportDiff) -> str:
    return json.dumps(d.to_dict(), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
