"""Report -> JSON text (schema documented in the README). Never emits bare NaN/Infinity."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gradinspect.report import Report


def render_json(report: Report, indent: int | None = 2) -> str:
    """The report as JSON, keys in documented order, non-finite numbers as ``null``."""
    return json.dumps(report.to_dict(), indent=indent, allow_nan=False, ensure_ascii=False) + "\n"
