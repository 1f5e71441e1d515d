"""The forward signal: unscaled input data, activations that collapse through the layers, and
BatchNormalization moving statistics that do not describe the data.

``CODES``: the codes this family emits, with what each means (``diagnose.CODES`` joins them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gradinspect.config import Thresholds
from gradinspect.diagnose.figures import LayerFigures, RunFigures
from gradinspect.diagnose.rules.common import fmt3
from gradinspect.records import Finding, Severity
from gradinspect.report import ArrayStats

CODES: dict[str, str] = {
    "unscaled_input": "an input array is far from standardised (e.g. 0..255 pixels) and the "
    "model does not scale it",
    "vanishing_activations": "the forward signal (an entry's input RMS) collapses by orders of "
    "magnitude relative to the layers before it",
    "untrained_batchnorm": "in inference mode, a BatchNormalization's moving statistics do not "
    "describe the data (never trained, or after one training call)",
    "constant_labels": "every label of a classification output is the same class: the loss "
    "rewards answering that class whatever the input",
}

READS: frozenset[str] = frozenset({"forward", "moving_initial", "affine_trained", "path",
                                   "arrays", "kind",
                                   "kernel_zero", "weight_grad", "constant_labels", "samples"})
"""The fields of ``LayerFigures`` and ``RunFigures`` this family reads (a test checks it)."""


def batchnorm_rule(layer: LayerFigures, run: RunFigures, t: Thresholds) -> list[Finding]:
    """BatchNormalization in inference whose moving statistics do not describe the data: it
    scales the signal by their misfit instead of normalising it."""
    fit = layer.forward.moving_stats_rms if layer.forward is not None else None
    if fit is None or not math.isfinite(fit):
        return []
    if layer.moving_initial and layer.affine_trained \
            and not 1 / t.batchnorm_copied_mismatch <= fit <= t.batchnorm_copied_mismatch:
        return [Finding(
            "untrained_batchnorm", Severity.WARNING,
            "this layer's gamma and beta are trained but its moving statistics are still at "
            "their initial values (mean 0, variance 1): they were never computed (weights "
            "copied through trainable_variables, an EMA export), so in inference "
            f"(x - moving_mean) / sqrt(moving_variance) has RMS {fmt3(fit)} on this data "
            f"(1 when they fit) and the layer {'shrinks' if fit < 1 else 'inflates'} the "
            "signal by that factor",
            "copy every weight (model.weights or get_weights/set_weights, the moving "
            "statistics are non-trainable), or recompute them with training-mode passes",
            {"moving_stats_rms": fit, "initial_values": True, "affine_trained": True})]
    if 1 / t.batchnorm_mismatch <= fit <= t.batchnorm_mismatch:
        return []
    state = ("are still at their initial values (mean 0, variance 1): it was never trained"
             if layer.moving_initial else "were not computed on data like this")
    return [Finding(
        "untrained_batchnorm", Severity.WARNING,
        f"in inference mode this layer normalises with its moving statistics, which {state}; "
        f"(x - moving_mean) / sqrt(moving_variance) has RMS {fmt3(fit)} on this data "
        f"(1 when they fit), so it {'shrinks' if fit < 1 else 'inflates'} the signal by that "
        "factor",
        "load the trained weights (or train first); to inspect an untrained model, run with "
        "--training (BatchNormalization then uses the batch's statistics)",
        {"moving_stats_rms": fit, "initial_values": layer.moving_initial})]


def vanishing_activations_rule(layers: Sequence[LayerFigures], t: Thresholds) -> list[Finding]:
    """The first entry whose input RMS is below ``activation_collapse`` times the largest
    output RMS of the entries before it, capped at 1: one finding where the collapse is
    first seen, with how far it goes. An input at unit scale is healthy whatever came before
    (keras.io's deep & cross network: a cross layer outputs RMS ~800 from raw features, and a
    parallel, normalised branch feeds the next Dense at 0.7)."""
    reference, where = 0.0, ""
    for k, layer in enumerate(layers):
        fwd = layer.forward
        if fwd is None:
            continue
        x = fwd.input_rms
        if x is not None and math.isfinite(x) and reference > 0 \
                and x < t.activation_collapse * min(reference, 1.0):
            later = [ly.forward.input_rms for ly in layers[k:] if ly.forward is not None
                     and ly.forward.input_rms is not None and math.isfinite(ly.forward.input_rms)]
            lowest = min(later, default=x)
            # right after a zero kernel that leaves zero at its first update: expected
            before = layers[k - 1] if k else None
            transient = before is not None and before.kernel_zero \
                and before.weight_grad.norm > 0.0
            return [Finding(
                "vanishing_activations", Severity.INFO if transient else Severity.WARNING,
                f"the forward signal collapses: this entry's input RMS is {fmt3(x)}, "
                f"{fmt3(x / reference)} of the {fmt3(reference)} output by {where}"
                + (f"; it falls to {fmt3(lowest)} further on" if lowest < x else ""),
                "the layers after this one get inputs near zero, so their weight gradients "
                "(input x delta) vanish: look at the layers in between (normalization "
                "statistics, dead units, tiny weights)",
                {"input_rms": x, "reference_rms": reference, "reference_layer": where,
                 "lowest_rms": lowest},
                layer=layer.path)]
        y = fwd.output_rms
        if y is not None and math.isfinite(y) and y > reference:
            reference, where = y, layer.path
    return []


def unscaled_input_rule(layers: Sequence[LayerFigures], run: RunFigures,
                    t: Thresholds) -> list[Finding]:
    """Float inputs far from standardised that reach the first entry as they are (a model
    with Rescaling/Normalization in front scales them itself: its first entry's input RMS
    says so). Information by itself (a BatchNormalization or an adaptive optimizer often
    copes: keras.io's wide & deep and deep & cross networks feed raw numeric features and
    train well); a warning where it harms, through the findings it explains (saturated or
    dead units, an exploding gradient at the first entry), which raise it as their root."""
    first = next((ly.forward.input_rms for ly in layers if ly.forward is not None
                  and ly.forward.input_rms is not None and ly.kind != "embedding"), None)
    if first is not None and math.isfinite(first) and first <= t.unscaled_input:
        return []
    ids = [ly.forward.input_rms for ly in layers if ly.kind == "embedding"
           and ly.forward is not None and ly.forward.input_rms is not None]
    found = []
    for name, stats in run.arrays:
        if stats is None or not all(map(math.isfinite, (stats.min, stats.max, stats.mean,
                                                          stats.std))):
            continue
        rms = math.hypot(stats.mean, stats.std)
        if rms <= t.unscaled_input or _read_as_ids(stats, rms, ids):
            continue
        pixels = stats.min >= 0 and 1 < stats.max <= 255 and float(stats.max).is_integer()
        hint = ("these look like 0..255 pixel values: divide by 255 (or put "
                "keras.layers.Rescaling(1/255) first in the model)" if pixels else
                "standardise per feature, (x - mean) / std with the training set's statistics, "
                "or put an adapted keras.layers.Normalization first in the model")
        found.append(Finding(
            "unscaled_input", Severity.INFO,
            f"input '{name}' is far from standardised: values {fmt3(stats.min)}..."
            f"{fmt3(stats.max)}, mean {fmt3(stats.mean)}, std {fmt3(stats.std)} "
            "(a standardised input has mean 0 and std 1), and the model does not scale it",
            hint,
            {"input": name, "min": stats.min, "max": stats.max, "mean": stats.mean,
             "std": stats.std, "rms": rms}))
    return found


def _read_as_ids(stats: ArrayStats, rms: float, embedding_inputs: Sequence[float]) -> bool:
    """Whether an array is token or category ids that an Embedding reads as they are (a float
    ``Input`` of ids, as keras.io's text Transformer declares it): whole non-negative values,
    the RMS of an Embedding's input. Ids index a table: their scale means nothing."""
    whole = stats.min >= 0 and float(stats.min).is_integer() and float(stats.max).is_integer()
    return whole and any(math.isclose(rms, x, rel_tol=1e-5) for x in embedding_inputs)


def constant_labels_rule(run: RunFigures, t: Thresholds) -> list[Finding]:
    """Labels of one class only, over every sample of a classification output (a broken
    join, a wrong column, a filter that kept one class): whatever the model does, training
    on them teaches it to answer that class."""
    if run.samples < t.min_samples:
        return []
    return [Finding(
        "constant_labels", Severity.WARNING,
        f"every label of output '{output}' is class {value:g} ({run.samples} samples): the "
        "loss rewards answering that class whatever the input, so training learns nothing else",
        "check the labels: the column, the join with the inputs, a filter that kept one class",
        {"output": output, "class": value, "samples": run.samples})
        for output, value in run.constant_labels]
