"""Report -> JSON text (schema documented in the README). Never emits bare NaN/Infinity."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gradinspect.report import Report


def render_json(report: Report, indent: int | None = 2) -> str:
    """The report as JSON, keys in documented order, non-finite numbers as ``null``."""
    return report.to_json(indent=indent)
