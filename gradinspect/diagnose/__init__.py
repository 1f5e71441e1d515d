"""Numbers -> findings: what is wrong, where, and what to try.

Input is the per-layer figures (already computed by ``stats``); output is ``Finding`` records
with stable codes, linked cause -> consequence by ``roots``. Nothing here touches arrays or
TensorFlow. The codes are listed in ``CODES`` and documented in the README; a code is never
renamed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from gradinspect.config import Thresholds
from gradinspect.diagnose.roots import link
from gradinspect.report import (
    ActivationStats,
    ArrayStats,
    Finding,
    ForwardStats,
    GradcheckStats,
    GradStats,
    LayerGrads,
    Severity,
    VerifyStats,
)

CODES: dict[str, str] = {
    "nan_gradient": "a gradient contains NaN",
    "inf_gradient": "a gradient contains +/-Inf",
    "nonfinite_weights": "a layer's weights contain NaN or Inf",
    "nonfinite_input": "the data contains NaN or Inf",
    "zero_gradient": "every entry of a layer's weight gradients (dL/dW, dL/db ...) is exactly "
    "zero",
    "constant_loss": "the loss does not depend on the weights (e.g. sum of softmax outputs)",
    "vanishing_gradient": "a layer's gradient is tiny, absolutely or next to the largest layer's",
    "exploding_gradient": "a layer's gradient is huge, absolutely or next to its weights",
    "saturated_units": "squashing units (sigmoid, tanh ...) sit where their derivative is ~0",
    "dead_units": "rectifier units (relu ...) have zero derivative on every sample",
    "softmax_saturated": "softmax outputs are so confident that their gradient collapses "
    "(an output with labels: confident and wrong)",
    "signal_collapse": "the backward signal shrinks by orders of magnitude at one layer",
    "logits_mismatch": "a crossentropy loss expects logits but the output is a probability, "
    "or the reverse",
    "constant_output": "an output that cannot vary with the input (a softmax over one unit)",
    "loss_activation_mismatch": "a sigmoid output under categorical crossentropy, or a "
    "softmax over several units under binary crossentropy",
    "zero_kernel": "a layer's kernel is exactly zero: the layers before it get no gradient "
    "until its first update",
    "unscaled_input": "an input array is far from standardised (e.g. 0..255 pixels) and the "
    "model does not scale it",
    "vanishing_activations": "the forward signal (an entry's input RMS) collapses by orders of "
    "magnitude relative to the layers before it",
    "untrained_batchnorm": "in inference mode, a BatchNormalization's moving statistics do not "
    "describe the data (never trained, or after one training call)",
    "gradient_mismatch": "--verify: the tape disagrees with the closed-form Dense formulas",
    "gradcheck_mismatch": "--gradcheck: the tape disagrees with float64 finite differences",
}


@dataclass(frozen=True)
class LayerFigures:
    """What diagnose needs to know about one layer."""

    path: str
    kind: str
    activation: str | None
    units: int | None
    grads: LayerGrads
    weight_grad: GradStats
    """dL/dW over the entry's variables but the offsets (Dense: the kernel)."""
    weight_norm: float
    """||W|| over the same variables."""
    weights_nonfinite: bool
    grad_to_weight: float
    backward_gain: float
    activity: ActivationStats | None
    constant_output: bool = False
    """The layer's output reaches the loss only as a sum of softmax probabilities (constant),
    so its gradients are mathematically zero and what the tape shows is rounding noise."""
    verify: VerifyStats | None = None
    gradcheck: GradcheckStats | None = None
    logits_mismatch: tuple[str, bool] | None = None
    """(loss name, its from_logits) when they contradict this output layer's activation."""
    single_unit_softmax: bool = False
    """A model output that is a softmax over one unit: always 1, whatever the input."""
    loss_activation: tuple[str, str] | None = None
    """(activation, loss) of an output whose crossentropy does not fit its activation."""
    kernel_zero: bool = False
    """Every weight of the layer but the offsets is exactly zero."""
    forward: ForwardStats | None = None
    """Input and output RMS (and, for BatchNormalization in inference, the fit of its moving
    statistics)."""
    moving_initial: bool = False
    """BatchNormalization whose moving statistics are still at their initial values."""
    is_output: bool = False
    """The entry produces a model output."""


@dataclass(frozen=True)
class RunFigures:
    """What diagnose needs to know about the run."""

    samples: int
    loss_name: str
    loss_reduction: str
    loss_value: float
    data_nonfinite: int
    data_entries: int
    constant_loss: bool = False
    """Every model output is a softmax fed to ``sum``/``mean``: the loss is a constant."""
    arrays: tuple[tuple[str, ArrayStats | None], ...] = ()
    """Each model input's name and value statistics."""
    activations: frozenset[str] = frozenset()
    """Activation names used by the inspected entries (to keep hints to what is missing)."""
    layer_classes: frozenset[str] = frozenset()
    """Class names of every layer in the model."""


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _per_sample(norm: float, run: RunFigures) -> float:
    """Absolute thresholds are per sample, so verdicts do not flip with the batch size."""
    return norm / run.samples if run.loss_reduction == "sum" and run.samples else norm


def _grad_label(name: str) -> str:
    """``dL/dW`` and ``dL/db`` for Dense's kernel and bias, ``dL/d<name>`` otherwise."""
    return {"kernel": "dL/dW", "bias": "dL/db"}.get(name, f"dL/d{name}")


def _nonfinite(layer: LayerFigures) -> list[Finding]:
    found = []
    parts: list[tuple[str, GradStats | None]] = [
        *((_grad_label(name), g) for name, g in layer.grads.variables.items()),
        ("dL/dinput", layer.grads.input),
    ]
    for label, g in parts:
        if g is None:
            continue
        if g.nan:
            found.append(
                Finding(
                    "nan_gradient",
                    Severity.ERROR,
                    f"{label} has {g.nan} NaN entries",
                    "look for NaN/Inf in the weights or data, log(0), 0/0 or overflow upstream",
                    {"gradient": label, "nan": g.nan, "inf": g.inf},
                )
            )
        if g.inf:
            found.append(
                Finding(
                    "inf_gradient",
                    Severity.ERROR,
                    f"{label} has {g.inf} infinite entries",
                    "lower the learning rate, clip gradients, or scale the inputs",
                    {"gradient": label, "nan": g.nan, "inf": g.inf},
                )
            )
    if layer.weights_nonfinite:
        found.append(
            Finding(
                "nonfinite_weights",
                Severity.ERROR,
                "the layer's weights hold NaN or Inf values",
                "the weights were corrupted (diverged training?): restore an earlier checkpoint",
                {"weight_norm": layer.weight_norm},
            )
        )
    return found


def _pct(fraction: float) -> str:
    """A fraction as a percentage that never rounds a non-zero value to ``0%`` or a value
    below one to ``100%``."""
    if fraction <= 0.0:
        return "0%"
    if fraction < 0.01:
        return f"{100 * fraction:.2g}%"
    if fraction < 0.995 or fraction >= 1.0:
        return f"{min(fraction, 1.0):.0%}"
    return f"{100 * fraction:.4g}%"


def _meaningful(layer: LayerFigures) -> bool:
    """Unit verdicts need finite pre-activations: NaN/Inf weights or outputs make every
    derivative meaningless (a NaN is not a dead unit)."""
    out = layer.forward.output_rms if layer.forward is not None else None
    return not layer.weights_nonfinite and (out is None or math.isfinite(out))


def _units_part(units: int, total: int | None, what: str) -> str:
    return f"; {units}/{total} units {what}" if units else ""


def _activity(layer: LayerFigures, run: RunFigures, t: Thresholds) -> list[Finding]:
    act = layer.activity
    if act is None or not _meaningful(layer):
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
        return _softmax(layer, act, run, t, where)
    entries = act.low_grad_fraction or 0.0
    units = act.units_always_low or 0
    units_frac = act.units_always_low_fraction or 0.0
    if act.kind == "saturating":
        if entries < t.saturated_info and units == 0:
            return []
        bad = entries >= t.saturated_entries or units_frac >= t.saturated_units
        severity = Severity.WARNING if bad and not few else Severity.INFO
        bn = "" if "BatchNormalization" in run.layer_classes else \
            ", or add BatchNormalization before the activation"
        return [
            Finding(
                "saturated_units",
                severity,
                f"{_pct(entries)} of {act.name} entries saturated"
                f"{_units_part(units, layer.units, 'saturated on (nearly) every sample')}"
                f"{where}",
                f"scale the inputs (standardise), use a smaller initialisation{bn}",
                figures,
            )
        ]
    if act.kind == "rectifier":
        if units == 0 and entries < t.dead_entries:
            return []
        bad = units_frac >= t.dead_units or entries >= t.dead_entries
        severity = Severity.WARNING if bad and not few else Severity.INFO
        lead = (f"{units}/{layer.units} {act.name} units dead on every sample; "
                f"{_pct(entries)} of entries have zero derivative" if units else
                f"{_pct(entries)} of {act.name} entries have zero derivative (no unit dead on "
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


def _softmax(layer: LayerFigures, act: ActivationStats, run: RunFigures, t: Thresholds,
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
            severity = (Severity.WARNING if wrong >= t.softmax_wrong and not few
                        else Severity.INFO)
            return [Finding(
                "softmax_saturated", severity,
                f"{_pct(wrong)} of samples are confidently wrong: top probability >= "
                f"{t.softmax_confidence} on a class other than their label{where}",
                "these samples dominate the loss and the gradient: check their labels, then "
                "the logit scale (label smoothing, a lower learning rate)",
                figures)]
        if frac < t.softmax_saturated:
            return []
        return [Finding(
            "softmax_saturated", Severity.INFO,
            f"{_pct(frac)} of samples are confidently right (top probability >= "
            f"{t.softmax_confidence}): they add almost nothing to the gradient{where}",
            "expected for a trained model; the remaining samples carry the update",
            figures)]
    if frac <= 0.0 or (layer.is_output and frac < t.softmax_saturated):
        return []
    severity = (Severity.WARNING if frac >= t.softmax_saturated and not few
                and not layer.is_output else Severity.INFO)
    return [Finding(
        "softmax_saturated", severity,
        f"{_pct(frac)} of samples have a top softmax probability >= "
        f"{t.softmax_confidence}{where}",
        ("pass labels to tell confident-and-right from confident-and-wrong"
         if layer.is_output else
         "the gradient through softmax collapses; check the logit scale (a temperature, "
         "smaller weights) in front of it"),
        figures)]


def _magnitude(
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
                f"dL/dW is zero up to rounding (||dL/dW|| = {_fmt(g.norm)}): the loss takes "
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
    per_sample_mean = _per_sample(g.mean_abs, run)
    rel = g.norm / largest if largest > 0 else 1.0
    found = []
    if per_sample_mean < t.vanishing_abs or rel < t.vanishing_rel:
        found.append(
            Finding(
                "vanishing_gradient",
                Severity.WARNING,
                f"||dL/dW|| = {_fmt(g.norm)} (mean |g| per sample {_fmt(per_sample_mean)}), "
                f"{_fmt(rel)} of the largest layer's",
                _vanishing_hint(run),
                {"norm": g.norm, "mean_abs_per_sample": per_sample_mean, "relative": rel},
            )
        )
    per_sample_norm = _per_sample(g.norm, run)
    ratio = _per_sample(layer.grad_to_weight, run)
    if per_sample_norm > t.exploding_abs or (math.isfinite(ratio) and ratio > t.exploding_ratio):
        found.append(
            Finding(
                "exploding_gradient",
                Severity.WARNING,
                f"||dL/dW|| = {_fmt(g.norm)} ({_fmt(per_sample_norm)} per sample), "
                f"{_fmt(ratio)}x ||W|| per sample",
                "clip gradients, lower the learning rate, scale the inputs or the loss",
                {
                    "norm": g.norm,
                    "norm_per_sample": per_sample_norm,
                    "grad_to_weight_per_sample": ratio,
                },
            )
        )
    return found


SATURATING = frozenset({"sigmoid", "tanh", "hard_sigmoid", "softsign", "hard_tanh"})


def _vanishing_hint(run: RunFigures) -> str:
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


def _logits(layer: LayerFigures) -> list[Finding]:
    if layer.logits_mismatch is None:
        return []
    loss, from_logits = layer.logits_mismatch
    act = layer.activity.name if layer.activity is not None else (layer.activation or "linear")
    if from_logits:
        # Keras 3 notices a softmax/sigmoid-produced tensor and uses its logits (with a
        # warning); Keras 2 and hand-written losses squash the probabilities a second time.
        severity = Severity.INFO
        message = (f"{loss} is set to take logits (from_logits=True) but this output applies "
                   f"{act}; Keras 3 falls back to the logits it kept, Keras 2 would squash twice")
        hint = "make it explicit: drop the output activation, or set from_logits=False"
    else:
        severity = Severity.WARNING
        message = (f"{loss} expects probabilities (from_logits=False) but this output is "
                   "linear (logits): the loss clips them to [eps, 1-eps] and gradients vanish")
        hint = "add a softmax/sigmoid to the output, or use --from-logits / from_logits=True"
    return [Finding("logits_mismatch", severity, message, hint,
                    {"loss": loss, "from_logits": from_logits, "activation": act})]


def _checks(layer: LayerFigures) -> list[Finding]:
    found = []
    v = layer.verify
    if v is not None and not v.ok:
        parts = {"z": v.forward, "dL/dW": v.kernel, "dL/db": v.bias, "dL/dinput": v.input}
        bad = [name for name, e in parts.items()
               if e is not None and not (e.max_rel_error <= v.tolerance)]
        found.append(
            Finding(
                "gradient_mismatch",
                Severity.ERROR,
                f"the tape disagrees with the closed-form Dense formulas on {', '.join(bad)} "
                f"(worst relative error {_fmt(v.worst_rel_error)} > {v.tolerance:g})",
                "a custom Dense subclass, a custom gradient or activation, or a precision "
                "problem: compare this layer's call with x @ W + b and its activation",
                {"worst_rel_error": v.worst_rel_error, "tolerance": v.tolerance,
                 "parts": ", ".join(bad)},
            )
        )
    g = layer.gradcheck
    if g is not None and not g.ok:
        found.append(
            Finding(
                "gradcheck_mismatch",
                Severity.ERROR,
                f"finite differences disagree with the tape (max relative error "
                f"{_fmt(g.max_rel_error)} over {g.coordinates} coordinates)",
                "a custom gradient or a non-differentiable operation sits in or after this "
                "layer; check the activation and any custom layers downstream",
                {"max_rel_error": g.max_rel_error, "coordinates": g.coordinates},
            )
        )
    return found


def _structure(layer: LayerFigures) -> list[Finding]:
    """Causes visible in the model's structure: an output that cannot vary, a crossentropy
    that does not fit its activation, a kernel of zeros."""
    found = []
    if layer.single_unit_softmax:
        found.append(Finding(
            "constant_output", Severity.ERROR,
            "this output is a softmax over one unit: it is 1 for every input, so no loss of it "
            "can train the model (every gradient behind it is zero, or rounding noise)",
            "use one sigmoid unit for a binary output (with binary_crossentropy), or a softmax "
            "over one unit per class",
            {"activation": "softmax", "units": 1}))
    if layer.loss_activation is not None:
        act, loss = layer.loss_activation
        fix = ("categorical_crossentropy takes a softmax over the classes (one label per "
               "sample); independent sigmoid outputs take binary_crossentropy"
               if loss == "categorical_crossentropy" else
               "binary_crossentropy takes independent sigmoid outputs; a softmax over the "
               "classes takes categorical_crossentropy")
        found.append(Finding(
            "loss_activation_mismatch", Severity.WARNING,
            f"a {act} output under {loss}: Keras 2 and Keras 3 compute this loss differently "
            "(clipped probabilities vs the cached logits), and neither is the loss you meant",
            f"match them: {fix}",
            {"activation": act, "loss": loss}))
    if layer.kernel_zero:
        found.append(Finding(
            "zero_kernel", Severity.INFO,
            "the kernel is exactly zero: the layers before this one get zero gradient until "
            "its first update (after which the model trains normally)",
            "expected right after a zero initialisation; otherwise check the initializer and "
            "how the weights were loaded",
            {"weight_norm": layer.weight_norm}))
    return found


def diagnose_layer(
    layer: LayerFigures, largest: float, run: RunFigures, t: Thresholds
) -> tuple[Finding, ...]:
    """All findings about one layer, most severe first (not yet linked to their causes)."""
    found = _nonfinite(layer)
    if not found:
        found += _magnitude(layer, largest, run, t)
    found += _structure(layer)
    found += _activity(layer, run, t)
    found += _batchnorm(layer, run, t)
    found += _logits(layer)
    found += _checks(layer)
    found = [replace(f, layer=layer.path) for f in found]
    return tuple(sorted(found, key=lambda f: -f.severity.rank))


def _batchnorm(layer: LayerFigures, run: RunFigures, t: Thresholds) -> list[Finding]:
    """BatchNormalization in inference whose moving statistics do not describe the data: it
    scales the signal by their misfit instead of normalising it."""
    fit = layer.forward.moving_stats_rms if layer.forward is not None else None
    if fit is None or not math.isfinite(fit) or 1 / t.batchnorm_mismatch <= fit \
            <= t.batchnorm_mismatch:
        return []
    state = ("are still at their initial values (mean 0, variance 1): it was never trained"
             if layer.moving_initial else "were not computed on data like this")
    return [Finding(
        "untrained_batchnorm", Severity.WARNING,
        f"in inference mode this layer normalises with its moving statistics, which {state}; "
        f"(x - moving_mean) / sqrt(moving_variance) has RMS {_fmt(fit)} on this data "
        f"(1 when they fit), so it {'shrinks' if fit < 1 else 'inflates'} the signal by that "
        "factor",
        "load the trained weights (or train first); to inspect an untrained model, run with "
        "--training (BatchNormalization then uses the batch's statistics)",
        {"moving_stats_rms": fit, "initial_values": layer.moving_initial})]


def _vanishing_activations(layers: Sequence[LayerFigures], t: Thresholds) -> list[Finding]:
    """The first entry whose input RMS is below ``activation_collapse`` times the largest
    output RMS of the entries before it: one finding where the collapse is first seen, with
    how far it goes."""
    reference, where = 0.0, ""
    for k, layer in enumerate(layers):
        fwd = layer.forward
        if fwd is None:
            continue
        x = fwd.input_rms
        if x is not None and math.isfinite(x) and reference > 0 \
                and x < t.activation_collapse * reference:
            later = [ly.forward.input_rms for ly in layers[k:] if ly.forward is not None
                     and ly.forward.input_rms is not None and math.isfinite(ly.forward.input_rms)]
            lowest = min(later, default=x)
            return [Finding(
                "vanishing_activations", Severity.WARNING,
                f"the forward signal collapses: this entry's input RMS is {_fmt(x)}, "
                f"{_fmt(x / reference)} of the {_fmt(reference)} output by {where}"
                + (f"; it falls to {_fmt(lowest)} further on" if lowest < x else ""),
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


def _unscaled_input(layers: Sequence[LayerFigures], run: RunFigures,
                    t: Thresholds) -> list[Finding]:
    """Float inputs far from standardised that reach the first entry as they are (a model
    with Rescaling/Normalization in front scales them itself: its first entry's input RMS
    says so)."""
    first = next((ly.forward.input_rms for ly in layers if ly.forward is not None
                  and ly.forward.input_rms is not None), None)
    if first is not None and math.isfinite(first) and first <= t.unscaled_input:
        return []
    found = []
    for name, stats in run.arrays:
        if stats is None or not all(map(math.isfinite, (stats.min, stats.max, stats.mean,
                                                          stats.std))):
            continue
        rms = math.hypot(stats.mean, stats.std)
        if rms <= t.unscaled_input:
            continue
        pixels = stats.min >= 0 and 1 < stats.max <= 255 and float(stats.max).is_integer()
        hint = ("these look like 0..255 pixel values: divide by 255 (or put "
                "keras.layers.Rescaling(1/255) first in the model)" if pixels else
                "standardise per feature, (x - mean) / std with the training set's statistics, "
                "or put an adapted keras.layers.Normalization first in the model")
        found.append(Finding(
            "unscaled_input", Severity.WARNING,
            f"input '{name}' is far from standardised: values {_fmt(stats.min)}..."
            f"{_fmt(stats.max)}, mean {_fmt(stats.mean)}, std {_fmt(stats.std)} "
            "(a standardised input has mean 0 and std 1), and the model does not scale it",
            hint,
            {"input": name, "min": stats.min, "max": stats.max, "mean": stats.mean,
             "std": stats.std, "rms": rms}))
    return found


def _explained_zero_gradients(layers: Sequence[LayerFigures],
                              per_layer: Sequence[tuple[Finding, ...]]
                              ) -> tuple[tuple[Finding, ...], ...]:
    """Zero gradients that a structural cause explains — a constant output anywhere, or a zero
    kernel later in the forward order — are mathematically expected: ``info``."""
    constant = next((ly.path for ly in layers if ly.single_unit_softmax), None)
    out = []
    for k, found in enumerate(per_layer):
        later_zero = next((ly.path for ly in layers[k + 1:] if ly.kernel_zero), None)
        cause = (f"constant_output at {constant}" if constant is not None
                 else f"zero_kernel at {later_zero}" if later_zero is not None else None)
        if cause is None:
            out.append(found)
            continue
        fixed = [replace(f, severity=Severity.INFO, message=f"{f.message} — follows from {cause}",
                         hint=f"fix {cause} first")
                 if f.code == "zero_gradient" else f for f in found]
        out.append(tuple(sorted(fixed, key=lambda f: -f.severity.rank)))
    return tuple(out)


def diagnose(
    layers: Sequence[LayerFigures], run: RunFigures, t: Thresholds
) -> tuple[tuple[tuple[Finding, ...], ...], tuple[Finding, ...]]:
    """Per-layer findings (aligned with ``layers``, which are in forward order) and
    model-level findings, each linked to the findings it follows from."""
    finite = [ly.weight_grad.norm for ly in layers if math.isfinite(ly.weight_grad.norm)]
    largest = max(finite, default=0.0)
    per_layer = _explained_zero_gradients(
        layers, tuple(diagnose_layer(ly, largest, run, t) for ly in layers))
    model: list[Finding] = []
    if run.data_nonfinite:
        model.append(
            Finding(
                "nonfinite_input",
                Severity.ERROR,
                f"the data holds {run.data_nonfinite} NaN/Inf values "
                f"({_pct(run.data_nonfinite / max(run.data_entries, 1))} of entries)",
                "clean or impute the data: NaN inputs make every gradient NaN",
                {"nonfinite": run.data_nonfinite, "entries": run.data_entries},
            )
        )
    model += _unscaled_input(layers, run, t)
    all_zero = bool(layers) and all(
        any(f.code == "zero_gradient" and f.severity is Severity.ERROR for f in found)
        for found in per_layer
    )
    if run.constant_loss:
        model.append(
            Finding(
                "constant_loss",
                Severity.ERROR,
                f"the loss is the {run.loss_name} of softmax outputs, which is constant "
                "(probabilities sum to 1), so every gradient is zero",
                "pass labels and a real loss (e.g. categorical_crossentropy) instead of "
                f"--loss {run.loss_name}",
                {"loss": run.loss_name, "value": run.loss_value},
            )
        )
    elif all_zero:
        model.append(
            Finding(
                "constant_loss",
                Severity.ERROR,
                "every weight gradient is exactly zero: the loss does not change with the "
                "weights on this data",
                "check for dead units in the last layers, a saturated output, or a loss that "
                "ignores the model output",
                {"loss": run.loss_name, "value": run.loss_value},
            )
        )
    if not run.constant_loss:
        model += _collapse([ly for ly in layers if not ly.constant_output], t)
    extra = _vanishing_activations(layers, t)
    positions = {ly.path: k for k, ly in enumerate(layers)}
    flat = [*model, *(f for found in per_layer for f in found), *extra]
    linked = iter(link(flat, positions))
    model_out = tuple(next(linked) for _ in model)
    per_layer_out = [[next(linked) for _ in found] for found in per_layer]
    for f in linked:  # findings made across layers, filed under their entry
        per_layer_out[positions[f.layer or ""]].append(f)
    return (tuple(tuple(sorted(found, key=lambda f: -f.severity.rank))
                  for found in per_layer_out), model_out)


def _collapse(layers: Sequence[LayerFigures], t: Thresholds) -> list[Finding]:
    """The first layer, walking backwards from the output, whose backward gain is tiny."""
    for layer in reversed(layers):
        gain = layer.backward_gain
        if math.isfinite(gain) and 0.0 <= gain < t.collapse_gain:
            return [
                Finding(
                    "signal_collapse",
                    # a zero kernel passes nothing back until its first update: expected
                    Severity.INFO if layer.kernel_zero else Severity.WARNING,
                    (f"the backward signal shrinks {1 / gain:.3g}x through {layer.path} "
                     if gain > 0 else f"the backward signal stops at {layer.path} ")
                    + f"(||dL/dinput|| / ||dL/doutput|| = {_fmt(gain)})",
                    "layers before this one barely learn: look at this layer's activation "
                    "(saturation, dead units) and its weight scale",
                    {"layer": layer.path, "backward_gain": gain},
                    layer=layer.path,
                )
            ]
    return []
