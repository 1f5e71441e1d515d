"""gradinspect: per-layer gradients of every Keras layer with trainable weights, with verdicts.

Importing this package is cheap: TensorFlow loads only when an inspection runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gradinspect.version import __version__

__all__ = [
    "Finding",
    "GradInspectCallback",
    "InspectOptions",
    "LayerReport",
    "LoadOptions",
    "Report",
    "Severity",
    "Thresholds",
    "__version__",
    "inspect",
    "inspect_files",
]

if TYPE_CHECKING:
    from gradinspect.api import inspect, inspect_files
    from gradinspect.callback import GradInspectCallback
    from gradinspect.config import InspectOptions, LoadOptions, Thresholds
    from gradinspect.records import Finding, LayerReport, Severity
    from gradinspect.report import Report

_LAZY = {
    "GradInspectCallback": "gradinspect.callback",
    "inspect": "gradinspect.api",
    "inspect_files": "gradinspect.api",
    "InspectOptions": "gradinspect.config",
    "LoadOptions": "gradinspect.config",
    "Thresholds": "gradinspect.config",
    "Finding": "gradinspect.report",
    "LayerReport": "gradinspect.report",
    "Report": "gradinspect.report",
    "Severity": "gradinspect.report",
}


import gradinspect.render  # noqa: E402, F401  (installs how a Report prints; imports no renderer yet)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gradinspect' has no attribute {name!r}")
