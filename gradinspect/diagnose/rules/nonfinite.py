"""NaN and Inf: in a gradient (each variable's and dL/dinput), in the weights, in the data. One
rule for every place a non-finite value can sit; a NaN is an error wherever it is.

``CODES``: the codes this family emits, with what each means (``diagnose.CODES`` joins them).
"""

from __future__ import annotations

from gradinspect.diagnose.figures import LayerFigures, RunFigures
from gradinspect.diagnose.rules.common import grad_label, pct
from gradinspect.records import Finding, GradStats, Severity

CODES: dict[str, str] = {
    "nan_gradient": "a gradient contains NaN",
    "inf_gradient": "a gradient contains +/-Inf",
    "nonfinite_weights": "a layer's weights contain NaN or Inf",
    "nonfinite_input": "the data contains NaN or Inf",
}

READS: frozenset[str] = frozenset({
    "grads", "weight_norm", "weights_nonfinite", "data_entries", "data_nonfinite"
})
"""The fields of ``LayerFigures`` and ``RunFigures`` this family reads (a test checks it)."""


NONFINITE_GRADIENT = (
    ("nan_gradient", "nan", "NaN entries",
     "look for NaN/Inf in the weights or data, log(0), 0/0 or overflow upstream"),
    ("inf_gradient", "inf", "infinite entries",
     "lower the learning rate, clip gradients, or scale the inputs"),
)
"""Per kind of non-finite value in a gradient: its code, the count's field, how the message
names it, and the hint."""


def nonfinite(layer: LayerFigures) -> list[Finding]:
    """NaN or Inf in any of the entry's gradients (each kind its own finding), and in its
    weights."""
    found = []
    parts: list[tuple[str, GradStats | None]] = [
        *((grad_label(name), g) for name, g in layer.grads.variables.items()),
        ("dL/dinput", layer.grads.input),
    ]
    for label, g in parts:
        if g is None:
            continue
        for code, field, what, hint in NONFINITE_GRADIENT:
            count = getattr(g, field)
            if count:
                found.append(Finding(code, Severity.ERROR, f"{label} has {count} {what}", hint,
                                     {"gradient": label, "nan": g.nan, "inf": g.inf}))
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


def nonfinite_input(run: RunFigures) -> list[Finding]:
    """NaN or Inf in the data (model level)."""
    if not run.data_nonfinite:
        return []
    return [Finding(
        "nonfinite_input",
        Severity.ERROR,
        f"the data holds {run.data_nonfinite} NaN/Inf values "
        f"({pct(run.data_nonfinite / max(run.data_entries, 1))} of entries)",
        "clean or impute the data: NaN inputs make every gradient NaN",
        {"nonfinite": run.data_nonfinite, "entries": run.data_entries},
    )]
