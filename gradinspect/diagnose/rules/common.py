"""Wording shared by the rules: numbers, percentages, gradient labels, per-sample scaling."""

from __future__ import annotations

import math

from gradinspect.diagnose.figures import LayerFigures, RunFigures

READS: frozenset[str] = frozenset({"forward", "weights_nonfinite", "loss_reduction", "samples"})
"""The fields of ``LayerFigures`` and ``RunFigures`` this family reads (a test checks it)."""


def fmt3(x: float) -> str:
    return f"{x:.3g}"


def scaled(norm: float, run: RunFigures) -> float:
    """Absolute thresholds are per sample, so verdicts do not flip with the batch size."""
    return norm / run.samples if run.loss_reduction == "sum" and run.samples else norm


def grad_label(name: str) -> str:
    """``dL/dW`` and ``dL/db`` for Dense's kernel and bias, ``dL/d<name>`` otherwise."""
    return {"kernel": "dL/dW", "bias": "dL/db"}.get(name, f"dL/d{name}")


def pct(fraction: float) -> str:
    """A fraction as a percentage that never rounds a non-zero value to ``0%`` or a value
    below one to ``100%``."""
    if fraction <= 0.0:
        return "0%"
    if fraction < 0.01:
        return f"{100 * fraction:.2g}%"
    if fraction < 0.995 or fraction >= 1.0:
        return f"{min(fraction, 1.0):.0%}"
    return f"{100 * fraction:.4g}%"


def meaningful(layer: LayerFigures) -> bool:
    """Unit verdicts need finite pre-activations: NaN/Inf weights or outputs make every
    derivative meaningless (a NaN is not a dead unit)."""
    out = layer.forward.output_rms if layer.forward is not None else None
    return not layer.weights_nonfinite and (out is None or math.isfinite(out))


def units_part(units: int, total: int | None, what: str) -> str:
    return f"; {units}/{total} units {what}" if units else ""
