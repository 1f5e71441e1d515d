"""Renderers: a ``Report`` in, text out. Nothing here computes a figure or touches TensorFlow."""

from __future__ import annotations

from enum import Enum


class OutputFormat(str, Enum):
    """Every output format. ``render`` matches on it exhaustively."""

    TABLE = "table"
    JSON = "json"
