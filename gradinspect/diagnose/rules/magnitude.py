"""Gradient magnitudes: exactly zero, vanishing (absolutely per sample, or next to the largest
entry's) and exploding (absolutely, or next to the weights), with the hints that fit the
activations the model uses.

``CODES``: the codes this family emits, with what each means (``diagnose.CODES`` joins them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from gradinspect.config import Thresholds
from gradinspect.diagnose.figures import LayerFigures, RunFigures
from gradinspect.diagnose.rules.common import fmt3, scaled
from gradinspect.records import Finding, Severity

CODES: dict[str, str] = {
    "zero_gradient": "every entry of a layer's weight gradients (dL/dW, dL/db ...) is exactly "
    "zero",
    "vanishing_gradient": "a layer's gradient is tiny, absolutely or next to the largest layer's",
    "exploding_gradient": "a layer's gradient is huge, absolutely or next to its weights",
}

READS: frozenset[str] = frozenset({
    "constant_output", "grad_to_weight", "grads", "kernel_zero", "path", "single_unit_softmax",
    "weight_grad", "activations", "constant_loss", "layer_classes", "loss_name",
    "kernel_near_zero", "optimizer"
})
"""The fields of ``LayerFigures`` and ``RunFigures`` this family reads (a test checks it)."""


def magnitude_rule(
    layer: LayerFigures, largest: float, run: RunFigures, t: Thresholds
) -> list[Finding]:
    g = layer.weight_grad
    if not math.isfinite(g.norm):
        return []
    if run.constant_loss or layer.constant_output:
        return [
            Finding(
                "zero_gradient",
                Severity.ERROR,
                f"dL/dW is zero up to rounding (||dL/dW|| = {fmt3(g.norm)}): the loss takes "
                f"this layer's output as the {run.loss_name} of softmax probabilities, which "
                "is constant",
                "pass labels and a real loss (e.g. categorical_crossentropy) instead of "
                f"--loss {run.loss_name}",
                {"kernel_norm": g.norm, "loss": run.loss_name},
            )
        ]
    if all(v is None or v.norm == 0.0 for v in layer.grads.variables.values()):
        return [
            Finding(
                "zero_gradient",
                Severity.ERROR,
                "every weight gradient of this layer is exactly zero: it would not learn from "
                "this data",
                "see the model-level findings for the cause (constant loss, dead units, "
                "a layer not connected to the loss)",
                {"kernel_norm": g.norm},
            )
        ]
    per_sample_mean = scaled(g.mean_abs, run)
    rel = g.norm / largest if largest > 0 else 1.0
    adaptive = run.optimizer in ADAPTIVE
    found = []
    if per_sample_mean < t.vanishing_abs or rel < t.vanishing_rel:
        absolute = per_sample_mean < t.vanishing_abs
        found.append(
            Finding(
                "vanishing_gradient",
                # an adaptive optimizer divides each gradient by its running RMS: a gradient
                # small next to the others still moves its weights at the learning rate,
                # unless it is small absolutely (at the optimizer's epsilon)
                Severity.WARNING if absolute or not adaptive else Severity.INFO,
                f"||dL/dW|| = {fmt3(g.norm)} (mean |g| per sample {fmt3(per_sample_mean)}), "
                f"{fmt3(rel)} of the largest layer's"
                + ("" if absolute or not adaptive else
                   f"; {run.optimizer} scales each step by the gradient's own size, so this "
                   "layer still learns at the learning rate"),
                vanishing_hint(run),
                {"norm": g.norm, "mean_abs_per_sample": per_sample_mean, "relative": rel},
            )
        )
    per_sample_norm = scaled(g.norm, run)
    ratio = scaled(layer.grad_to_weight, run)
    huge = per_sample_norm > t.exploding_abs
    # ||W|| of a zero-initialised kernel (and of one a few steps later) is no yardstick
    steep = math.isfinite(ratio) and ratio > t.exploding_ratio and not layer.kernel_near_zero
    if huge or steep:
        found.append(
            Finding(
                "exploding_gradient",
                # the ratio matters for steps proportional to the gradient (SGD): an adaptive
                # optimizer's step is the learning rate whatever the gradient's size
                Severity.WARNING if huge or not adaptive else Severity.INFO,
                f"||dL/dW|| = {fmt3(g.norm)} ({fmt3(per_sample_norm)} per sample), "
                f"{fmt3(ratio)}x ||W|| per sample"
                + ("" if huge or not adaptive else
                   f"; {run.optimizer} steps by the learning rate whatever the gradient's "
                   "size, so no step is this large"),
                "clip gradients, lower the learning rate, scale the inputs or the loss",
                {
                    "norm": g.norm,
                    "norm_per_sample": per_sample_norm,
                    "grad_to_weight_per_sample": ratio,
                },
            )
        )
    return found


ADAPTIVE = frozenset({"adam", "adamw", "adamax", "nadam", "rmsprop", "adagrad", "adadelta",
                      "adafactor", "lion", "lamb", "muon"})
"""Optimizers whose step does not grow or shrink with the gradient's scale (each divides by a
running RMS, or takes its sign): relative vanishing and ||dL/dW|| / ||W|| are no harm under
them; absolute vanishing (at their epsilon) and absolute explosion still are."""


SATURATING = frozenset({"sigmoid", "tanh", "hard_sigmoid", "softsign", "hard_tanh"})


def vanishing_hint(run: RunFigures) -> str:
    """What to try, leaving out what the model already does."""
    tries = []
    if run.activations & SATURATING:
        tries.append("relu-family activations instead of "
                     + "/".join(sorted(run.activations & SATURATING)))
    tries.append("a larger initialisation scale (He for relu, Glorot for tanh)")
    if not run.layer_classes & {"Add", "Concatenate"}:
        tries.append("residual connections")
    if not run.layer_classes & {"BatchNormalization", "LayerNormalization",
                                "GroupNormalization"}:
        tries.append("BatchNormalization")
    return "try " + ", ".join(tries[:-1]) + (" or " if len(tries) > 1 else "") + tries[-1]


def explained_zero_gradients(layers: Sequence[LayerFigures],
                              per_layer: Sequence[tuple[Finding, ...]]
                              ) -> tuple[tuple[Finding, ...], ...]:
    """Zero gradients that a structural cause explains — a constant output anywhere, or a zero
    kernel later in the forward order — are mathematically expected: ``info``; so is the
    vanishing weight gradient of the layer right after a zero kernel (its input is 0). Only
    a zero kernel that leaves zero at its first update excuses them: one that is stuck
    (its own gradient zero too) is the error they follow from."""
    constant = next((ly.path for ly in layers if ly.single_unit_softmax), None)
    out = []
    for k, found in enumerate(per_layer):
        later_zero = next((ly.path for ly in layers[k + 1:] if ly.kernel_zero
                           and ly.weight_grad.norm > 0.0), None)
        before = layers[k - 1] if k else None
        fed_zero = before.path if before is not None and before.kernel_zero \
            and before.weight_grad.norm > 0.0 else None
        cause = (f"constant_output at {constant}" if constant is not None
                 else f"zero_kernel at {later_zero}" if later_zero is not None else None)
        codes = {"zero_gradient"}
        if cause is None and fed_zero is not None:
            cause, codes = f"zero_kernel at {fed_zero}", {"vanishing_gradient"}
        if cause is None:
            out.append(found)
            continue
        fixed = [replace(f, severity=Severity.INFO, message=f"{f.message} — follows from {cause}",
                         hint=f"fix {cause} first")
                 if f.code in codes else f for f in found]
        out.append(tuple(sorted(fixed, key=lambda f: -f.severity.rank)))
    return tuple(out)
