"""The state of one inspection while it runs, and how each batch's captures fold into it.

Batches fold here the way replicas and workers already merged inside the step (sums add,
maxima take the maximum, shapes merge): ``accumulate`` takes one entry's capture of one batch,
``merge_input_stats`` the data's statistics. Plain numpy over the engine's captures."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradinspect.config import InspectOptions
from gradinspect.io.loaded import LoadedData, LoadedModel
from gradinspect.labels import LabelPrep
from gradinspect.measure.stats import (
    ActivityAccumulator,
    TensorAccumulator,
    merge_shapes,
)
from gradinspect.measure.verify import VerifyAccumulator, closed_form_delta, logits_delta
from gradinspect.records import GradValues
from gradinspect.report import ExecutionInfo


@dataclass
class LayerAccumulators:
    site: Any
    low_threshold: float
    verify: VerifyAccumulator | None = None
    per_sample: list[np.ndarray] | None = None
    per_sample_method: str | None = None
    """How the per-sample norms were computed (``engine.persample``)."""
    grads: tuple[np.ndarray, ...] | None = None
    """Each variable's gradient summed over the batches (on the device, read once at the end)."""
    input_grad: TensorAccumulator | None = None
    output_grad_sumsq: float = 0.0
    activity: ActivityAccumulator | None = None
    calls: int = 0
    input_shape: tuple[int | None, ...] | None = None
    output_shape: tuple[int | None, ...] | None = None
    weights: tuple[np.ndarray, ...] = ()
    input_values: list[np.ndarray] | None = None
    input_value_rows: int = 0
    x_sumsq: float = 0.0
    x_entries: int = 0
    out_sumsq: float = 0.0
    out_entries: int = 0
    confident_wrong: int | None = None
    delta_sumsq: float | None = None
    moving_moment: np.ndarray | None = None
    moving_rows: int = 0
    kept_logits: Any = None
    """``--verify`` on an output whose crossentropy Keras computes from the logits its
    softmax/sigmoid keeps: that output's loss spec (dL/dz is then checked against the
    crossentropy-of-logits closed form, the path the tape differentiates)."""

    def __post_init__(self) -> None:
        if self.site.measured is not None:
            self.activity = ActivityAccumulator(self.site.units or 1, self.low_threshold)


@dataclass
class Run:
    """State of one inspection while it runs."""

    loaded: LoadedModel
    data: LoadedData
    options: InspectOptions
    sites: list[Any]
    accs: list[LayerAccumulators]
    loss: Any
    scale: float
    walk: Any
    skipped: list[Any]
    loss_value: float = 0.0
    label_classes: list[set[Any]] | None = None
    """Per output in the loss with crossentropy labels: the classes seen, up to two."""
    penalty_sum: float | None = None
    """The model's ``losses`` summed over the batches, each times its rows (``None``: none)."""
    nonfinite: int = 0
    entries: int = 0
    order: list[int] = field(default_factory=list)
    gradcheck: Any = None
    gradcheck_note: str | None = None
    per_sample_note: str | None = None
    verify_note: str | None = None
    label_prep: LabelPrep | None = None
    notes: list[str] = field(default_factory=list)
    input_stats: list[np.ndarray | None] = field(default_factory=list)
    """Per model input: [min, max, sum, sum of squares, entries] over the batches so far."""
    execution: ExecutionInfo = field(default_factory=ExecutionInfo)


def keep_values(acc: LayerAccumulators, cap: Any, limit: int) -> None:
    """``--values``: the first ``limit`` samples' dL/dinput of the first call."""
    if acc.input_values is None or not cap.calls or acc.input_value_rows >= limit:
        return
    full = cap.calls[0].full
    if full is None or full.g_x is None:
        return
    rows = full.g_x[: limit - acc.input_value_rows]
    acc.input_values.append(np.array(rows))
    acc.input_value_rows += int(rows.shape[0])


def by_name(site: Any, values: Sequence[Any]) -> dict[str, Any]:
    """Per variable short name; a Dense entry without bias keeps ``bias: None`` (schema 1)."""
    named = {v.name: value for v, value in zip(site.variables, values, strict=True)}
    if site.kind == "dense" and "bias" not in named:
        named["bias"] = None
    return named


def grad_values(acc: LayerAccumulators, gradients: bool = False) -> GradValues | None:
    if acc.grads is None or (acc.input_values is None and not gradients):
        return None
    return GradValues(
        variables=by_name(acc.site, acc.grads),
        input=np.concatenate(acc.input_values) if acc.input_values else None,
        input_samples=acc.input_value_rows,
    )


def accumulate(acc: LayerAccumulators, cap: Any, labels: Sequence[np.ndarray] | None = None,
                scale: float = 1.0) -> None:
    site = acc.site
    acc.weights = cap.weights
    acc.calls = len(cap.calls)
    for call in cap.calls:
        if call.x_shape is not None:
            acc.input_shape = merge_shapes(acc.input_shape, call.x_shape[1:])
        acc.output_shape = merge_shapes(acc.output_shape, call.out_shape[1:])
        if call.input_grad is not None and call.x_shape is not None:
            acc.input_grad = acc.input_grad or TensorAccumulator()
            acc.input_grad.merge_summary(call.input_grad, call.x_shape)
        acc.output_grad_sumsq += call.output_grad_sumsq
        if call.x_sumsq is not None and call.x_shape is not None:
            acc.x_sumsq += call.x_sumsq
            acc.x_entries += math.prod(call.x_shape)
        if call.out_sumsq is not None:
            acc.out_sumsq += call.out_sumsq
            acc.out_entries += math.prod(call.out_shape)
        full = call.full
        if acc.verify is not None and full is not None and full.z is not None \
                and full.g_z is not None and full.x is not None and full.g_x is not None:
            view = site.dense_view
            spec = acc.kept_logits
            if spec is not None and labels is not None and site.output_index is not None:
                z = np.asarray(full.z)
                values_per_sample = math.prod(z.shape[1:-1])  # a sequence output: mean over T
                delta = logits_delta(
                    spec.name, z, labels[site.output_index],
                    spec.weight * scale / values_per_sample,
                    float(spec.kwargs.get("label_smoothing", 0.0) or 0.0))
            else:
                delta = closed_form_delta(site.profile.kind, site.profile.name, full.z,
                                          full.g_out, full.derivative64, full.kink, full.g_z)
            bias = cap.bias
            acc.verify.update_call(cap.kernel.reshape(view.n_in, view.n_out),
                                   view.full_bias(bias) if bias is not None else None,
                                   full.x, full.z, delta, full.g_z, full.g_x)
    if cap.confident_wrong is not None:
        acc.confident_wrong = (acc.confident_wrong or 0) + cap.confident_wrong
    if cap.delta_sumsq is not None:
        acc.delta_sumsq = (acc.delta_sumsq or 0.0) + cap.delta_sumsq
    if cap.moving_moment is not None:
        acc.moving_moment = (cap.moving_moment if acc.moving_moment is None
                             else acc.moving_moment + cap.moving_moment)
        acc.moving_rows += sum(math.prod(c.x_shape) for c in cap.calls
                               if c.x_shape is not None) // max(cap.moving_moment.size, 1)
    if acc.activity is not None:
        if cap.low_per_unit is not None:
            acc.activity.update_counts(cap.low_per_unit, cap.activity_rows)
        elif cap.activity_rows and site.measured is not None \
                and site.measured.kind == "softmax":
            acc.activity.update_confident(cap.confident, cap.activity_rows)
    if acc.per_sample is not None:
        if cap.per_sample_sq is not None:
            acc.per_sample.append(cap.per_sample_sq)
        else:
            acc.per_sample = None


def merge_input_stats(run: Run, stats: Sequence[np.ndarray | None], rows: int,
                       batch: Sequence[np.ndarray]) -> None:
    """Fold one batch's [min, max, sum, sum of squares] per input into the run's (``rows``:
    the whole batch's, of which ``batch`` may be this worker's share)."""
    if not run.input_stats:
        run.input_stats = [None] * len(stats)
    for k, (part, a) in enumerate(zip(stats, batch, strict=True)):
        if part is None:
            continue
        new = np.array([*part, float(rows * math.prod(a.shape[1:]))])
        old = run.input_stats[k]
        run.input_stats[k] = new if old is None else np.array([
            min(old[0], new[0]), max(old[1], new[1]), old[2] + new[2], old[3] + new[3],
            old[4] + new[4]])
