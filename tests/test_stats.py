"""stats: numpy-only accumulators, checked against direct numpy computations."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gradinspect.measure.stats import (
    ActivityAccumulator,
    TensorAccumulator,
    concat_shapes,
    grad_stats,
    merge_shapes,
    safe_ratio,
    weight_stats,
)

finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@given(arrays(np.float32, st.tuples(st.integers(1, 20), st.integers(1, 5)), elements=finite),
       st.integers(1, 19))
def test_accumulator_over_batches_equals_one_pass(a: np.ndarray, cut: int) -> None:
    cut = min(cut, a.shape[0])
    whole = grad_stats(a)
    parts = TensorAccumulator().update(a[:cut]).merge(TensorAccumulator().update(a[cut:]))
    merged = parts.result()
    a64 = a.astype(np.float64)
    assert whole.norm == pytest.approx(float(np.linalg.norm(a64)), rel=1e-12, abs=1e-300)
    assert merged.norm == pytest.approx(whole.norm, rel=1e-12, abs=1e-300)
    assert merged.max_abs == whole.max_abs == float(np.abs(a64).max())
    assert merged.mean_abs == pytest.approx(float(np.abs(a64).mean()), rel=1e-9, abs=1e-300)
    assert merged.shape == whole.shape == a.shape


def test_nan_and_inf_are_counted_and_poison_the_norm() -> None:
    a = np.array([1.0, np.nan, np.inf, -np.inf, 2.0])
    s = grad_stats(a)
    assert (s.nan, s.inf) == (1, 2)
    assert math.isnan(s.norm)
    assert math.isnan(s.mean_abs)
    inf_only = grad_stats(np.array([1.0, np.inf]))
    assert inf_only.norm == math.inf
    assert inf_only.max_abs == math.inf


def test_all_nan_max_is_nan() -> None:
    assert math.isnan(grad_stats(np.array([np.nan, np.nan])).max_abs)


def test_merge_shapes_marks_differing_dims() -> None:
    assert merge_shapes(None, (2, 3)) == (2, 3)
    assert merge_shapes((2, 3), (2, 4)) == (2, None)
    assert concat_shapes((2, 3), (5, 3)) == (7, 3)
    assert concat_shapes((2, 3, 4), (5, 3, 1)) == (7, 3, None)


def test_weight_stats_and_ratio() -> None:
    w = weight_stats(np.array([[3.0, 4.0]]))
    assert (w.shape, w.norm) == ((1, 2), 5.0)
    assert safe_ratio(1.0, 0.0) == math.inf
    assert math.isnan(safe_ratio(0.0, 0.0))
    assert safe_ratio(1.0, 4.0) == 0.25


def test_activity_counts_merge_over_batches() -> None:
    # 3 rows x 3 units; units 0 and 2 low on some rows
    low_a = np.array([3, 0, 1])  # unit 0 low on all 3 rows of batch a
    acc = ActivityAccumulator(units=3, low_threshold=0.01).update_counts(low_a, rows=3)
    assert acc.low_fraction() == pytest.approx(4 / 9)
    assert acc.units_always_low(0.99) == 1
    assert acc.units_always_low(0.3) == 2
    other = ActivityAccumulator(units=3, low_threshold=0.01).update_counts(np.array([1, 0, 0]),
                                                                           rows=1)
    merged = acc.merge(other)
    assert merged.units_always_low(0.99) == 1
    assert merged.low_fraction() == pytest.approx(5 / 12)


def test_activity_softmax_confidence() -> None:
    acc = ActivityAccumulator(units=2, low_threshold=0.0).update_confident(1, rows=2)
    assert acc.confident_fraction() == 0.5
    assert ActivityAccumulator(units=2, low_threshold=0.0).confident_fraction() is None


def test_summary_merge_equals_direct_update() -> None:
    a = np.array([[1.0, -2.0], [3.0, np.inf]])
    direct = TensorAccumulator().update(a).result()
    summary = np.array([a.size, np.sum(a * a), np.abs(a).sum(), np.inf, 0, 1])
    merged = TensorAccumulator().merge_summary(summary, a.shape).result()
    assert merged == direct


@given(shape=st.lists(st.integers(1, 40), min_size=2, max_size=4), seed=st.integers(0, 99),
       low=st.sampled_from([0.0, 0.3, 1.0]))
def test_unit_counts_and_below_equal_numpy(tfk: Any, shape: list[int], seed: int,
                                           low: float) -> None:
    """The step's per-unit count of low entries (bytes summed in blocks where the rows
    allow, int32 otherwise) and its ``|d| < low`` by two comparisons, against numpy, NaN
    included."""
    from gradinspect.engine.figures import below, unit_counts

    tf, _ = tfk
    rng = np.random.default_rng(seed)
    d = rng.standard_normal(shape).astype(np.float32)
    d.flat[rng.integers(0, d.size)] = np.nan
    mask = below(tf, tf.constant(d), tf.constant(low))
    with np.errstate(invalid="ignore"):
        want_mask = np.abs(d) < low
    np.testing.assert_array_equal(mask.numpy(), want_mask)
    counts = unit_counts(tf, mask)
    np.testing.assert_array_equal(counts.numpy(), want_mask.reshape(-1, shape[-1]).sum(axis=0))
    assert counts.dtype == tf.int32
