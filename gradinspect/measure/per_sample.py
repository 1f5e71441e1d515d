"""Per-sample gradient norms: the distribution of ||dl_i/dW|| over the samples, its outliers and
the gradient signal-to-noise ratio, from the squared norms the step computed per sample.
Plain numpy, testable without TensorFlow."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from gradinspect.records import PerSampleStats, SampleNorm

SHARE = 0.01
"""An outlier also carries at least this share of the samples' summed squared norms: when a
trained model is confident on nearly every sample (norms ~1e-6), a sample at 1e-5 is far from
the median in MADs and still of no weight."""


def per_sample_stats(sq_norms: npt.ArrayLike, mean_grad_sq_norm: float, top: int = 5,
                     outlier_mad: float = 5.0, min_norm: float = 0.0) -> PerSampleStats:
    """Summary of per-sample gradient norms: spread, the samples that dominate (outliers:
    beyond median + ``outlier_mad`` MADs, at least ``SHARE`` of the summed squares and at
    least ``min_norm``), and the gradient signal-to-noise ratio ||mean g||^2 / mean
    ||g_i||^2."""
    sq = np.asarray(sq_norms, dtype=np.float64)
    norms = np.sqrt(np.maximum(sq, 0.0))
    median = float(np.median(norms))
    mad = float(np.median(np.abs(norms - median))) * 1.4826
    ranked = np.argsort(-norms, kind="stable")  # largest first; one sort for both lists
    if mad == 0:
        # Most samples share one norm (often exactly zero: confident and right), so the MAD is
        # 0; the mean absolute deviation still sees the few samples that carry the gradient.
        mad = float(np.mean(np.abs(norms - median))) * 1.2533
    cut = median + outlier_mad * mad
    weighty = (sq[ranked] >= SHARE * float(sq.sum())) & (norms[ranked] >= min_norm)
    outliers = ranked[(norms[ranked] > cut) & weighty] if mad > 0 else ranked[:0]
    mean_sq = float(sq.mean())
    return PerSampleStats(
        min=float(norms.min()),
        median=median,
        max=float(norms.max()),
        top=tuple(SampleNorm(index=int(i), norm=float(norms[i])) for i in ranked[:top]),
        outliers=tuple(int(i) for i in outliers[:20]),
        outlier_count=int(outliers.size),
        gsnr=mean_grad_sq_norm / mean_sq if mean_sq > 0 else math.nan,
    )
