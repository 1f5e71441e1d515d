"""The figures one step hands to the host, each with how it merges across replicas and workers.

A step reduces every gradient and activation on the device to a few figures, packed into one
vector (``engine.figures._Packer``). Each figure is declared with its merge where it is
computed: the vector of one replica's share of a batch and the vector of the whole batch
differ only by these merges, so a step split over replicas (``tf.distribute``) gives the host
the same vector as a single device, up to float summation order.

- ``sum``: sums of squares, sums of |g|, the loss, counts of entries, per-unit counts;
- ``max`` / ``min``: maxima of |g|, the data's extremes;
- ``rows``: a shape whose first entry is the batch (the rows add up, the other entries are
  the same on every replica).

Figures that are rows per sample (per-sample norms) and full tensors (``--verify``,
``--values``) are not in the vector: the strategy concatenates them along the batch axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Merge = Literal["sum", "max", "min", "rows"]
MERGES: tuple[Merge, ...] = ("sum", "max", "min", "rows")


@dataclass(frozen=True)
class Figure:
    """Where one named figure sits in the packed vector, and how it merges."""

    where: slice
    merge: Merge | tuple[Merge, ...]
    """One merge for every element, or one per element (a figure that packs several)."""


Layout = dict[tuple[object, ...], Figure]
"""Figure key -> its place and merge; fixed by the step's trace."""


def merge_rows(vectors: np.ndarray, layout: Layout) -> np.ndarray:
    """One vector from the per-replica vectors (rows of ``vectors``), each figure merged as
    declared. Sums add in float64 in replica order."""
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim == 1:
        return vectors
    out = np.empty(vectors.shape[1], dtype=np.float64)
    for figure in layout.values():
        part = vectors[:, figure.where]
        merges = (figure.merge if isinstance(figure.merge, tuple)
                  else (figure.merge,) * part.shape[1])
        for k, merge in enumerate(merges):
            out[figure.where.start + k] = _merge_column(part[:, k], merge, k)
    return out


def _merge_column(column: np.ndarray, merge: Merge, k: int) -> float:
    if merge == "sum":
        return float(np.sum(column))
    if merge == "max":
        return float(np.max(column))
    if merge == "min":
        return float(np.min(column))
    # rows: the batch axis adds up; every other axis is the replicas' common extent
    return float(np.sum(column)) if k == 0 else float(np.max(column))


def merge_counts(vectors: np.ndarray, merges: Sequence[Merge]) -> np.ndarray:
    """The NaN/Inf counting vector of several replicas, merged element by element."""
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim == 1:
        return vectors
    return np.array([_merge_column(vectors[:, k], m, 1) for k, m in enumerate(merges)])
