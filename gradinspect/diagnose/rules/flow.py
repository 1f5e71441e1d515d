"""The backward signal across the model: where it collapses (walking back from the output), and
a loss that does not depend on the weights at all.

``CODES``: the codes this family emits, with what each means (``diagnose.CODES`` joins them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gradinspect.config import Thresholds
from gradinspect.diagnose.figures import LayerFigures, RunFigures
from gradinspect.diagnose.rules.common import fmt3
from gradinspect.records import Finding, Severity

CODES: dict[str, str] = {
    "signal_collapse": "the backward signal shrinks by orders of magnitude at one layer",
    "constant_loss": "the loss does not depend on the weights (e.g. sum of softmax outputs)",
}

READS: frozenset[str] = frozenset({
    "backward_gain", "kernel_zero", "path", "constant_loss", "loss_name", "loss_value",
    "output_grad_norm", "is_output", "activity", "kind"
})
"""The fields of ``LayerFigures`` and ``RunFigures`` this family reads (a test checks it)."""


def collapse_rule(layers: Sequence[LayerFigures], run: RunFigures,
                  t: Thresholds) -> list[Finding]:
    """The first layer, walking backwards from the output, whose backward gain is tiny and
    past which no other path carries the signal: every entry before it receives less than
    ``collapse_below`` of what reaches it. A layer that reads only its input's shape (a
    position embedding added to its input) passes nothing back by construction, and the add
    carries the signal on: no collapse. Nor is a softmax or sigmoid output under a
    crossentropy: the loss cancels the activation's derivative (dL/dz = p - y), so the
    shrink from dL/dp to dL/dinput of a confident, right output is the loss reaching its
    minimum, not a lost signal."""
    for k in range(len(layers) - 1, -1, -1):
        layer = layers[k]
        if _cancelled_by_the_loss(layer, run):
            continue
        gain = layer.backward_gain
        if not (math.isfinite(gain) and 0.0 <= gain < t.collapse_gain):
            continue
        below = [ly.output_grad_norm for ly in layers[:k] if math.isfinite(ly.output_grad_norm)]
        if not below or max(below) >= t.collapse_below * layer.output_grad_norm:
            continue
        return [
            Finding(
                "signal_collapse",
                # a zero kernel passes nothing back until its first update: expected
                Severity.INFO if layer.kernel_zero else Severity.WARNING,
                (f"the backward signal shrinks {1 / gain:.3g}x through {layer.path} "
                 if gain > 0 else f"the backward signal stops at {layer.path} ")
                + f"(||dL/dinput|| / ||dL/doutput|| = {fmt3(gain)})",
                "layers before this one barely learn: look at this layer's activation "
                "(saturation, dead units) and its weight scale",
                {"layer": layer.path, "backward_gain": gain},
                layer=layer.path,
            )
        ]
    return []


def _cancelled_by_the_loss(layer: LayerFigures, run: RunFigures) -> bool:
    act = layer.activity
    squashing = act is not None and (act.kind == "softmax" or act.name == "sigmoid")
    return layer.is_output and squashing and "crossentropy" in run.loss_name


def constant_loss(layers: Sequence[LayerFigures], per_layer: Sequence[Sequence[Finding]],
                  run: RunFigures) -> list[Finding]:
    """A loss that does not depend on the weights: the sum/mean of softmax outputs (known from
    the loss), or every entry's weight gradient exactly zero on this data."""
    if run.constant_loss:
        return [Finding(
            "constant_loss",
            Severity.ERROR,
            f"the loss is the {run.loss_name} of softmax outputs, which is constant "
            "(probabilities sum to 1), so every gradient is zero",
            "pass labels and a real loss (e.g. categorical_crossentropy) instead of "
            f"--loss {run.loss_name}",
            {"loss": run.loss_name, "value": run.loss_value},
        )]
    all_zero = bool(layers) and all(
        any(f.code == "zero_gradient" and f.severity is Severity.ERROR for f in found)
        for found in per_layer
    )
    if not all_zero:
        return []
    return [Finding(
        "constant_loss",
        Severity.ERROR,
        "every weight gradient is exactly zero: the loss does not change with the weights on "
        "this data",
        "check for dead units in the last layers, a saturated output, or a loss that ignores "
        "the model output",
        {"loss": run.loss_name, "value": run.loss_value},
    )]
