"""Arrays -> numbers. numpy only, so every figure is testable without TensorFlow.

Accumulators merge: a figure over many batches equals the figure over their concatenation, which
is what lets the probe stream data batch by batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from gradinspect.records import GradStats, Shape, WeightStats

Array = npt.NDArray[np.floating]


def sum_of_squares(flat: npt.NDArray[np.float64]) -> float:
    """sum(x^2) of a 1-D float64 array, in numpy's own loop rather than BLAS.

    ``np.dot`` hands long vectors to OpenBLAS, whose worker threads then spin for a while
    waiting for more work: on a 2-core machine they take a core from TensorFlow's next step
    (measured: a 50 ms pass after a report became an 84 ms one; a training step after a
    callback's record slowed the same way).
    """
    return float(np.einsum("i,i->", flat, flat))


def concat_shapes(a: Shape | None, b: Shape) -> Shape:
    """Shape of the concatenation along axis 0; other differing dimensions become ``None``."""
    if a is None:
        return tuple(b)
    if not a or not b:
        return merge_shapes(a, b)
    lead = a[0] + b[0] if a[0] is not None and b[0] is not None else None
    return (lead, *merge_shapes(a[1:], b[1:]))


def merge_shapes(a: Shape | None, b: Shape) -> Shape:
    """Combine two shapes: equal dimensions stay, differing ones become ``None``."""
    if a is None:
        return tuple(b)
    if len(a) != len(b):
        return tuple(None for _ in b) if len(b) >= len(a) else tuple(None for _ in a)
    return tuple(x if x == y else None for x, y in zip(a, b, strict=True))


@dataclass
class TensorAccumulator:
    """Running L2 norm, max |x|, mean |x| and NaN/Inf counts over arrays concatenated on axis 0.

    Non-finite entries are counted, and they poison ``norm``/``mean_abs`` (NaN) as they would in
    an honest computation, so a reader never sees a finite norm of a broken tensor.
    """

    shape: Shape | None = None
    count: int = 0
    sumsq: float = 0.0
    sum_abs: float = 0.0
    max_abs: float = 0.0
    nan: int = 0
    inf: int = 0

    def update(self, array: npt.ArrayLike, shape: Shape | None = None) -> TensorAccumulator:
        a = np.asarray(array, dtype=np.float64)
        self.shape = concat_shapes(self.shape, tuple(shape if shape is not None else a.shape))
        self.count += a.size
        if a.size == 0:
            return self
        flat = a.ravel()
        sumsq = sum_of_squares(flat)
        # a finite sum of squares means every entry is finite: count NaN/Inf only otherwise
        nan = 0 if math.isfinite(sumsq) else int(np.count_nonzero(np.isnan(flat)))
        inf = 0 if math.isfinite(sumsq) else int(np.count_nonzero(np.isinf(flat)))
        self.nan += nan
        self.inf += inf
        absval = np.abs(flat)
        if nan:
            self.sumsq = math.nan
            self.sum_abs = math.nan
            finite_max = np.nanmax(absval) if nan < a.size else 0.0
            self.max_abs = max(self.max_abs, float(finite_max))
        else:
            self.sumsq += sumsq
            self.sum_abs += float(absval.sum())
            self.max_abs = max(self.max_abs, float(absval.max()))
        return self

    def merge(self, other: TensorAccumulator) -> TensorAccumulator:
        """Fold ``other`` into this accumulator (concatenation semantics)."""
        if other.shape is not None:
            self.shape = concat_shapes(self.shape, other.shape)
        self.count += other.count
        self.sumsq += other.sumsq
        self.sum_abs += other.sum_abs
        self.max_abs = max(self.max_abs, other.max_abs)
        self.nan += other.nan
        self.inf += other.inf
        return self

    def merge_summary(self, summary: npt.ArrayLike, shape: Shape) -> TensorAccumulator:
        """Fold in a tensor already reduced to (count, sumsq, sum_abs, max_abs, nan, inf), as
        the probe's step computes on the device."""
        count, sumsq, sum_abs, max_abs, nan, inf = (float(v) for v in np.asarray(summary))
        other = TensorAccumulator(
            shape=tuple(shape), count=int(count), sumsq=sumsq, sum_abs=sum_abs,
            max_abs=max_abs if int(count) else 0.0, nan=int(nan), inf=int(inf),
        )
        return self.merge(other)

    def result(self) -> GradStats:
        mean_abs = self.sum_abs / self.count if self.count else 0.0
        return GradStats(
            shape=self.shape if self.shape is not None else (),
            norm=math.sqrt(self.sumsq) if not math.isnan(self.sumsq) else math.nan,
            max_abs=self.max_abs if not self.nan or self.count > self.nan else math.nan,
            mean_abs=mean_abs,
            nan=self.nan,
            inf=self.inf,
        )


def grad_stats(array: npt.ArrayLike) -> GradStats:
    """Summary of a single array."""
    return TensorAccumulator().update(array).result()


def weight_stats(array: npt.ArrayLike, path: str = "") -> WeightStats:
    """Shape and L2 norm of a weight tensor."""
    a = np.asarray(array, dtype=np.float64)
    flat = a.ravel()
    return WeightStats(shape=tuple(a.shape), norm=math.sqrt(sum_of_squares(flat)), path=path)


def glorot_scale(shape: Sequence[int | None]) -> float:
    """sqrt(2 / (fan_in + fan_out)), the RMS a Glorot initialisation gives a kernel of this
    shape, with Keras' fans (a convolution's receptive field times its channels; a vector's
    length as both fans); ``nan`` for a scalar or an unknown size."""
    dims = [int(d) for d in shape if d is not None]
    if len(dims) != len(shape) or not dims:
        return math.nan
    if len(dims) == 1:
        fan_in = fan_out = dims[0]
    else:
        receptive = int(np.prod(dims[:-2], dtype=np.int64)) if len(dims) > 2 else 1
        fan_in, fan_out = dims[-2] * receptive, dims[-1] * receptive
    return math.sqrt(2.0 / (fan_in + fan_out)) if fan_in + fan_out > 0 else math.nan


def near_zero(weights: Sequence[WeightStats], fraction: float) -> bool:
    """Every one of ``weights`` has an RMS below ``fraction`` of its Glorot scale."""
    def small(w: WeightStats) -> bool:
        size = int(np.prod([d or 0 for d in w.shape], dtype=np.int64)) if w.shape else 1
        scale = glorot_scale(w.shape)
        return size > 0 and math.isfinite(scale) and w.norm / math.sqrt(size) < fraction * scale

    return bool(weights) and all(small(w) for w in weights)


def combined(stats: Sequence[GradStats]) -> GradStats:
    """The summary of several tensors taken as one flat vector (an entry's variables):
    norms add in squares, means weight by entry counts, NaN/Inf counts add."""
    counts = [int(np.prod([d or 0 for d in g.shape], dtype=np.int64)) if g.shape else 1
              for g in stats]
    total = sum(counts)
    nan = sum(g.nan for g in stats)
    sumsq = sum(g.norm ** 2 for g in stats)
    finite_max = [g.max_abs for g in stats if not math.isnan(g.max_abs)]
    return GradStats(
        shape=(total,),
        norm=math.nan if nan else math.sqrt(sumsq),
        max_abs=max(finite_max, default=math.nan if nan else 0.0),
        mean_abs=sum(g.mean_abs * n for g, n in zip(stats, counts, strict=True)) / total
        if total else 0.0,
        nan=nan,
        inf=sum(g.inf for g in stats),
    )


def safe_ratio(num: float, den: float) -> float:
    """num / den, with 0/0 = NaN and x/0 = inf, never raising."""
    if math.isnan(num) or math.isnan(den):
        return math.nan
    if den == 0.0:
        return math.nan if num == 0.0 else math.inf
    return num / den


@dataclass
class ActivityAccumulator:
    """Per-unit counts of entries whose activation'(z) is 'low' (saturated or dead), merged over
    batches. The probe's step does the counting on the device (a derivative below
    ``low_threshold``, the activation's largest derivative times a threshold fraction; every
    leading axis — samples, time steps, calls — counts as rows). Softmax is measured
    separately: ``confident`` counts rows whose top probability reached the threshold.
    """

    units: int
    low_threshold: float
    entries: int = 0
    rows_per_unit: int = 0
    low_entries: int = 0
    low_per_unit: npt.NDArray[np.int64] = field(init=False)
    rows: int = 0
    confident: int = 0

    def __post_init__(self) -> None:
        self.low_per_unit = np.zeros(self.units, dtype=np.int64)

    def update_counts(self, low_per_unit: npt.ArrayLike, rows: int) -> ActivityAccumulator:
        """Fold in per-unit low counts over ``rows`` rows, as the probe's step computes them."""
        counts = np.asarray(low_per_unit, dtype=np.int64)
        self.entries += rows * self.units
        self.rows_per_unit += rows
        self.low_entries += int(counts.sum())
        self.low_per_unit += counts
        return self

    def update_confident(self, confident: int, rows: int) -> ActivityAccumulator:
        """Fold in softmax rows counted as confident by the probe's step."""
        self.rows += rows
        self.confident += confident
        return self

    def merge(self, other: ActivityAccumulator) -> ActivityAccumulator:
        self.entries += other.entries
        self.rows_per_unit += other.rows_per_unit
        self.low_entries += other.low_entries
        self.low_per_unit += other.low_per_unit
        self.rows += other.rows
        self.confident += other.confident
        return self

    def low_fraction(self) -> float | None:
        return self.low_entries / self.entries if self.entries else None

    def units_always_low(self, nearly_all: float) -> int | None:
        """Units low for at least ``nearly_all`` (a fraction) of their rows."""
        if not self.rows_per_unit:
            return None
        frac = self.low_per_unit / self.rows_per_unit
        return int(np.count_nonzero(frac >= nearly_all))

    def confident_fraction(self) -> float | None:
        return self.confident / self.rows if self.rows else None
