"""Numbers -> findings: what is wrong, where, and what to try.

Input is the per-entry and per-run figures (``figures``, computed by ``measure.summary``);
output is ``Finding`` records with stable codes, linked cause -> consequence by ``roots``.
The rules live in ``rules`` (one module per family, each with the ``CODES`` it emits);
``CODES`` here joins them, and the README documents every code (a code is never renamed).
Nothing here touches arrays or TensorFlow; imports records, ``config`` and its own modules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from gradinspect.config import Thresholds
from gradinspect.diagnose.figures import LayerFigures, RunFigures
from gradinspect.diagnose.roots import link
from gradinspect.diagnose.rules import (
    activity,
    checks,
    flow,
    forward,
    magnitude,
    nonfinite,
    samples,
    structure,
)
from gradinspect.diagnose.rules.activity import activity_rule
from gradinspect.diagnose.rules.checks import checks_rule
from gradinspect.diagnose.rules.flow import collapse_rule
from gradinspect.diagnose.rules.forward import (
    batchnorm_rule,
    constant_labels_rule,
    unscaled_input_rule,
    vanishing_activations_rule,
)
from gradinspect.diagnose.rules.magnitude import explained_zero_gradients, magnitude_rule
from gradinspect.diagnose.rules.samples import outliers_rule
from gradinspect.diagnose.rules.structure import logits_rule, structure_rule
from gradinspect.records import Finding

__all__ = ["CODES", "LayerFigures", "RunFigures", "diagnose", "diagnose_layer"]

CODES: dict[str, str] = {
    **nonfinite.CODES,
    **magnitude.CODES,
    **flow.CODES,
    **activity.CODES,
    **structure.CODES,
    **forward.CODES,
    **checks.CODES,
    **samples.CODES,
}
"""Every finding code and what it means, joined from the rule families (a code is never
renamed; the README documents each)."""


def diagnose_layer(
    layer: LayerFigures, largest: float, run: RunFigures, t: Thresholds
) -> tuple[Finding, ...]:
    """All findings about one layer, most severe first (not yet linked to their causes)."""
    found = nonfinite.nonfinite(layer)
    if not found:
        found += magnitude_rule(layer, largest, run, t)
    found += structure_rule(layer)
    found += activity_rule(layer, run, t)
    found += batchnorm_rule(layer, run, t)
    found += logits_rule(layer)
    found += checks_rule(layer)
    found = [replace(f, layer=layer.path) for f in found]
    return tuple(sorted(found, key=lambda f: -f.severity.rank))


def diagnose(
    layers: Sequence[LayerFigures], run: RunFigures, t: Thresholds
) -> tuple[tuple[tuple[Finding, ...], ...], tuple[Finding, ...]]:
    """Per-layer findings (aligned with ``layers``, which are in forward order) and
    model-level findings, each linked to the findings it follows from."""
    finite = [ly.weight_grad.norm for ly in layers if math.isfinite(ly.weight_grad.norm)]
    largest = max(finite, default=0.0)
    per_layer = explained_zero_gradients(
        layers, tuple(diagnose_layer(ly, largest, run, t) for ly in layers))
    model: list[Finding] = []
    model += nonfinite.nonfinite_input(run)
    model += unscaled_input_rule(layers, run, t)
    model += constant_labels_rule(run, t)
    model += outliers_rule(run)
    model += flow.constant_loss(layers, per_layer, run)
    if not run.constant_loss:
        model += collapse_rule([ly for ly in layers if not ly.constant_output], run, t)
    extra = vanishing_activations_rule(layers, t)
    positions = {ly.path: k for k, ly in enumerate(layers)}
    flat = [*model, *(f for found in per_layer for f in found), *extra]
    linked = iter(link(flat, positions))
    model_out = tuple(next(linked) for _ in model)
    per_layer_out = [[next(linked) for _ in found] for found in per_layer]
    for f in linked:  # findings made across layers, filed under their entry
        per_layer_out[positions[f.layer or ""]].append(f)
    return (tuple(tuple(sorted(found, key=lambda f: -f.severity.rank))
                  for found in per_layer_out), model_out)
