"""The samples: ``--per-sample`` figures over the whole model name the rows whose gradient
stands apart from the others' (a mislabelled image, a corrupt record).

``CODES``: the codes this family emits, with what each means (``diagnose.CODES`` joins them).
"""

from __future__ import annotations

from gradinspect.diagnose.figures import RunFigures
from gradinspect.diagnose.rules.common import fmt3
from gradinspect.records import Finding, Severity

CODES: dict[str, str] = {
    "gradient_outliers": "--per-sample: samples whose gradient over the whole model lies far "
    "above the others' (beyond median + 5 MAD): mislabelled or corrupt samples look like this",
}

READS: frozenset[str] = frozenset({"per_sample", "samples"})
"""The fields of ``LayerFigures`` and ``RunFigures`` this family reads (a test checks it)."""

SHOWN = 10
"""Rows named in the message (the figures hold up to 20)."""


def outliers_rule(run: RunFigures) -> list[Finding]:
    """Info: the samples are worth a look, which is not harm to the training by itself (the
    outliers are those of weight: ``Thresholds.outlier_weight_ratio``)."""
    p = run.per_sample
    if p is None or not p.outlier_count:
        return []
    rows = ", ".join(str(i) for i in p.outliers[:SHOWN])
    more = f" and {p.outlier_count - SHOWN} more" if p.outlier_count > SHOWN else ""
    one = p.outlier_count == 1
    return [Finding(
        "gradient_outliers",
        Severity.INFO,
        f"sample{'' if one else 's'} {rows}{more} ({p.outlier_count} of {run.samples}) "
        f"carr{'ies' if one else 'y'} a gradient far above the others' over the whole model "
        f"(largest ||dl_i/dtheta|| {fmt3(p.max)}, median {fmt3(p.median)})",
        "look at these rows' labels and inputs: a wrong label or a corrupt input gives one "
        "sample a gradient the others do not share",
        {"samples": ", ".join(str(i) for i in p.outliers), "count": p.outlier_count,
         "max": p.max, "median": p.median, "gsnr": p.gsnr},
    )]
