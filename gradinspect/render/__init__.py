"""Renderers: a ``Report`` in, text out. Nothing here computes a figure or touches TensorFlow."""

from __future__ import annotations

from enum import StrEnum


class OutputFormat(StrEnum):
    """Every output format. ``render`` matches on it exhaustively."""

    TABLE = "table"
    JSON = "json"
