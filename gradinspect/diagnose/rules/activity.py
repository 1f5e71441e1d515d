"""Units that pass no gradient: squashing units saturated, rectifiers dead on every sample, and
softmax outputs so confident (or confidently wrong) that their gradient collapses.

``CODES``: the codes this family emits, with what each means (``diagnose.CODES`` joins them).
"""

from __future__ import annotations

import math

from gradinspect.config import Thresholds
from gradinspect.diagnose.figures import LayerFigures, RunFigures
from gradinspect.diagnose.rules.common import meaningful, pct, units_part
from gradinspect.records import ActivationStats, Finding, Severity

CODES: dict[str, str] = {
    "saturated_units": "squashing units (sigmoid, tanh ...) sit where their derivative is ~0",
    "dead_units": "rectifier units (relu ...) have zero derivative on every sample",
    "softmax_saturated": "softmax outputs are so confident that their gradient collapses "
    "(an output with labels: confident and wrong)",
}

READS: frozenset[str] = frozenset({
    "activity", "is_output", "kind", "units", "activations", "layer_classes", "samples",
    "loss_name"
})
"""The fields of ``LayerFigures`` and ``RunFigures`` this family reads (a test checks it)."""


def activity_rule(layer: LayerFigures, run: RunFigures, t: Thresholds) -> list[Finding]:
    act = layer.activity
    if act is None or not meaningful(layer):
        return []
    few = run.samples < t.min_samples
    where = "" if act.source == "layer" else f" (after the layer, at {act.source})"
    figures = {
        "activation": act.name,
        "source": act.source,
        "entries_fraction": act.low_grad_fraction,
        "units": act.units_always_low,
        "units_fraction": act.units_always_low_fraction,
        "samples": run.samples,
    }
    if act.kind == "softmax" and act.softmax_confident_fraction is not None:
        return softmax_rule(layer, act, run, t, where)
    entries = act.low_grad_fraction or 0.0
    units = act.units_always_low or 0
    units_frac = act.units_always_low_fraction or 0.0
    if act.kind == "saturating":
        if entries < t.saturated_info and units == 0:
            return []
        bad = (entries >= t.saturated_entries or units_frac >= t.saturated_units) \
            and _cuts_the_signal(layer, act, run, t)
        severity = Severity.WARNING if bad and not few else Severity.INFO
        bn = "" if "BatchNormalization" in run.layer_classes else \
            ", or add BatchNormalization before the activation"
        return [
            Finding(
                "saturated_units",
                severity,
                f"{pct(entries)} of {act.name} entries saturated"
                f"{units_part(units, layer.units, 'saturated on (nearly) every sample')}"
                f"{where}",
                f"scale the inputs (standardise), use a smaller initialisation{bn}",
                figures,
            )
        ]
    if act.kind == "rectifier":
        if units == 0 and entries < t.dead_entries:
            return []
        # a unit dead on every sample can never learn from this data; a share of zero
        # derivatives alone is relu at work (relu MLPs at 71% on iris train to 0.92-0.97)
        bad = units_frac >= t.dead_units
        severity = Severity.WARNING if bad and not few else Severity.INFO
        lead = (f"{units}/{layer.units} {act.name} units dead on every sample; "
                f"{pct(entries)} of entries have zero derivative" if units else
                f"{pct(entries)} of {act.name} entries have zero derivative (no unit dead on "
                "every sample)")
        leaky = "" if run.activations & {"leaky_relu", "elu", "selu", "gelu", "silu"} else \
            "; try LeakyReLU/ELU or He initialisation"
        return [
            Finding(
                "dead_units",
                severity,
                lead + where,
                "check for large negative biases or a too-high learning rate" + leaky,
                figures,
            )
        ]
    return []


def _cuts_the_signal(layer: LayerFigures, act: ActivationStats, run: RunFigures,
                     t: Thresholds) -> bool:
    """Whether a saturated activation harms training: it shrinks the backward signal below
    ``saturation_gain`` of its linear region (``derivative_gain``, where measured). A
    sigmoid output under binary crossentropy never does: the loss cancels its derivative
    (dL/dz = p - y), and a confident output is what training aims at."""
    if layer.is_output and act.name == "sigmoid" and "binary" in run.loss_name:
        return False
    gain = act.derivative_gain
    return gain is None or not math.isfinite(gain) or gain < t.saturation_gain


def softmax_rule(layer: LayerFigures, act: ActivationStats, run: RunFigures, t: Thresholds,
             where: str) -> list[Finding]:
    """Inside the model a saturated softmax blocks the gradient (warning). At an output, being
    confident is what training aims at: with labels, only confident *and wrong* samples are a
    problem; without labels it is information."""
    frac = act.softmax_confident_fraction or 0.0
    wrong = act.softmax_confident_wrong_fraction
    figures: dict[str, float | int | str | bool | None] = {
        "activation": act.name, "source": act.source, "confident_fraction": frac,
        "confident_wrong_fraction": wrong, "confidence": t.softmax_confidence,
        "samples": run.samples}
    few = run.samples < t.min_samples
    if layer.is_output and wrong is not None:
        if wrong > 0.0:
            # one confidently wrong row is an anecdote (its label is the first suspect), not
            # a harmed training: a warning takes at least two
            rows = act.softmax_confident_wrong
            severity = (Severity.WARNING if wrong >= t.softmax_wrong and not few
                        and (rows is None or rows >= 2) else Severity.INFO)
            return [Finding(
                "softmax_saturated", severity,
                f"{pct(wrong)} of samples are confidently wrong: top probability >= "
                f"{t.softmax_confidence} on a class other than their label{where}",
                "these samples dominate the loss and the gradient: check their labels, then "
                "the logit scale (label smoothing, a lower learning rate)",
                figures)]
        if frac < t.softmax_saturated:
            return []
        return [Finding(
            "softmax_saturated", Severity.INFO,
            f"{pct(frac)} of samples are confidently right (top probability >= "
            f"{t.softmax_confidence}): they add almost nothing to the gradient{where}",
            "expected for a trained model; the remaining samples carry the update",
            figures)]
    if frac <= 0.0 or (layer.is_output and frac < t.softmax_saturated):
        return []
    severity = (Severity.WARNING if frac >= t.softmax_saturated and not few
                and not layer.is_output else Severity.INFO)
    return [Finding(
        "softmax_saturated", severity,
        f"{pct(frac)} of samples have a top softmax probability >= "
        f"{t.softmax_confidence}{where}",
        ("pass labels to tell confident-and-right from confident-and-wrong"
         if layer.is_output else
         "the gradient through softmax collapses; check the logit scale (a temperature, "
         "smaller weights) in front of it"),
        figures)]
