"""Renderers: a ``Report`` in, text out. Nothing here computes a figure or touches TensorFlow."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from gradinspect.report import Report, install_forms


class OutputFormat(StrEnum):
    """Every output format. ``render`` matches on it exhaustively."""

    TABLE = "table"
    JSON = "json"
    MARKDOWN = "markdown"


def _text(report: Report) -> str:
    from gradinspect.render.table import render_table

    return render_table(report, width=100)


def _rich(report: Report) -> Any:
    from gradinspect.render.table import report_renderable

    return report_renderable(report)


def _html(report: Report) -> str:
    import io

    from rich.console import Console

    from gradinspect.render.table import report_renderable

    console = Console(record=True, width=110, file=io.StringIO())
    console.print(report_renderable(report))
    return console.export_html(inline_styles=True)


install_forms(text=_text, rich=_rich, html=_html)
