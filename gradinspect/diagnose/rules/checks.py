"""The self-checks: the tape against the closed-form Dense formulas (``--verify``) and against
float64 finite differences (``--gradcheck``).

``CODES``: the codes this family emits, with what each means (``diagnose.CODES`` joins them).
"""

from __future__ import annotations

from gradinspect.diagnose.figures import LayerFigures
from gradinspect.diagnose.rules.common import fmt3
from gradinspect.records import Finding, Severity

CODES: dict[str, str] = {
    "gradient_mismatch": "--verify: the tape disagrees with the closed-form Dense formulas",
    "gradcheck_mismatch": "--gradcheck: the tape disagrees with float64 finite differences",
}

READS: frozenset[str] = frozenset({"forward", "gradcheck", "verify"})
"""The fields of ``LayerFigures`` and ``RunFigures`` this family reads (a test checks it)."""


def checks_rule(layer: LayerFigures) -> list[Finding]:
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
                f"(worst relative error {fmt3(v.worst_rel_error)} > {v.tolerance:g})",
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
                f"{fmt3(g.max_rel_error)} over {g.coordinates} coordinates)",
                "a custom gradient or a non-differentiable operation sits in or after this "
                "layer; check the activation and any custom layers downstream",
                {"max_rel_error": g.max_rel_error, "coordinates": g.coordinates},
            )
        )
    return found
