"""From the accumulated measurements to the records: per entry the gradient, weight, activity,
forward and check statistics (``LayerFigures`` for the diagnosis), then the diagnosis, then the
frozen ``Report``. Reads the run's state once, top to bottom; renders nothing."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from gradinspect.config import Thresholds
from gradinspect.diagnose import diagnose
from gradinspect.diagnose.figures import LayerFigures, RunFigures
from gradinspect.labels import (
    crossentropy_from_logits,
    find_logits_mismatch,
    find_loss_activation_mismatch,
)
from gradinspect.measure.accumulators import LayerAccumulators, Run, by_name, grad_values
from gradinspect.measure.per_sample import per_sample_stats
from gradinspect.measure.stats import (
    combined,
    grad_stats,
    near_zero,
    safe_ratio,
    weight_stats,
)
from gradinspect.records import (
    ActivationStats,
    ForwardStats,
    GradcheckStats,
    LayerGrads,
    LayerReport,
    LayerWeights,
    PerSampleStats,
    is_offset,
)
from gradinspect.report import (
    ArrayInfo,
    ArrayStats,
    ChecksInfo,
    Coverage,
    DataInfo,
    LossInfo,
    ModelInfo,
    Report,
    SkippedInfo,
    ToolInfo,
)
from gradinspect.version import __version__


def _batched(shape: Sequence[int | None] | None, samples: int) -> tuple[int | None, ...]:
    """A per-sample shape with the run's sample count as the batch axis."""
    return (samples, *shape) if shape is not None else ()


def _array_stats(run: Run, k: int) -> ArrayStats | None:
    s = run.input_stats[k] if k < len(run.input_stats) else None
    if s is None or not s[4]:
        return None
    mean = s[2] / s[4]
    spread = s[3] / s[4] - mean * mean if np.all(np.isfinite(s)) else math.nan
    return ArrayStats(min=float(s[0]), max=float(s[1]), mean=float(mean),
                      std=math.sqrt(max(spread, 0.0)) if math.isfinite(spread) else math.nan)


def _moving_initial(layer: Any) -> bool:
    """A BatchNormalization's moving statistics are still at their initial values."""
    mean = np.asarray(layer.moving_mean)
    variance = np.asarray(layer.moving_variance)
    return bool(np.all(mean == 0.0) and np.all(variance == 1.0))


def _affine_trained(layer: Any) -> bool:
    """A BatchNormalization's gamma or beta has left its initial value (1, 0): the layer was
    trained, whatever its moving statistics say."""
    gamma, beta = getattr(layer, "gamma", None), getattr(layer, "beta", None)
    return bool((gamma is not None and np.any(np.asarray(gamma) != 1.0))
                or (beta is not None and np.any(np.asarray(beta) != 0.0)))


def _rms(sumsq: float, entries: int) -> float | None:
    return math.sqrt(sumsq / entries) if entries else None


def _forward_stats(acc: LayerAccumulators) -> ForwardStats:
    moving = None
    if acc.moving_moment is not None and acc.moving_rows:
        layer = acc.site.layer
        variance = np.asarray(layer.moving_variance, dtype=np.float64).reshape(-1)
        epsilon = float(getattr(layer, "epsilon", 1e-3))
        m2 = acc.moving_moment / acc.moving_rows / (variance + epsilon)
        # a channel constant at its moving mean (a one-hot column that never fires in this
        # data) says nothing about how the statistics fit: left out of the median
        informative = m2[acc.moving_moment != 0]
        if not np.all(np.isfinite(m2)):
            moving = math.nan
        elif informative.size:
            moving = math.sqrt(float(np.median(informative)))
    return ForwardStats(input_rms=_rms(acc.x_sumsq, acc.x_entries),
                        output_rms=_rms(acc.out_sumsq, acc.out_entries),
                        moving_stats_rms=moving)


def _activity_stats(acc: LayerAccumulators, t: Thresholds) -> ActivationStats | None:
    site = acc.site
    act = acc.activity
    measured = site.measured
    if act is None or measured is None:
        return None
    kind = measured.kind
    if kind == "linear" or (kind != "softmax" and not act.entries):
        return None
    always = act.units_always_low(t.unit_always) if kind != "softmax" else None
    return ActivationStats(
        name=measured.name,
        source=site.measured_source,
        kind=kind,
        low_grad_fraction=act.low_fraction() if kind != "softmax" else None,
        units_always_low=always,
        units_always_low_fraction=(always / site.units)
        if always is not None and site.units else None,
        softmax_confident_fraction=act.confident_fraction() if kind == "softmax" else None,
        softmax_confident_wrong_fraction=(acc.confident_wrong / act.rows
                                          if kind == "softmax" and act.rows
                                          and acc.confident_wrong is not None else None),
        softmax_confident_wrong=(int(acc.confident_wrong) if kind == "softmax"
                                 and acc.confident_wrong is not None else None),
        derivative_gain=_derivative_gain(acc),
    )


def _derivative_gain(acc: LayerAccumulators) -> float | None:
    """||dL/dz|| / ||dL/doutput|| over the peak of activation': the factor by which a
    saturating activation shrinks the backward signal, relative to its linear region (1: no
    entry saturated; sigmoid's peak is 1/4, so a sigmoid in its linear region is 1, not 1/4).
    ``None`` where the activation is a separate layer or nothing reached the output."""
    measured = acc.site.measured
    if acc.delta_sumsq is None or measured is None or not measured.peak \
            or not acc.output_grad_sumsq > 0:
        return None
    return math.sqrt(acc.delta_sumsq / acc.output_grad_sumsq) / float(measured.peak)


def _constant_softmax_outputs(run: Run) -> tuple[set[int], bool]:
    """Sites whose softmax output enters a ``sum``/``mean`` loss (a constant), and whether every
    model output is one of them."""
    if run.loss.name not in ("sum", "mean"):
        return set(), False
    constant = {i for i, s in enumerate(run.sites)
                if s.is_output and s.measured is not None and s.measured.kind == "softmax"}
    n_outputs = len(getattr(run.loaded.model, "outputs", None) or [])
    return constant, bool(constant) and len(constant) >= n_outputs


def _per_sample(run: Run, acc: LayerAccumulators, grads: LayerGrads) -> PerSampleStats | None:
    if acc.per_sample is None or not acc.per_sample:
        return None
    n = run.data.samples
    total_sq = sum(g.norm ** 2 for g in grads.variables.values() if g is not None)
    mean_grad_sq = total_sq / (run.scale * n) ** 2
    stats = per_sample_stats(np.concatenate(acc.per_sample), mean_grad_sq,
                             min_norm=_outlier_floor(run, [acc]))
    return dataclasses.replace(stats, method=acc.per_sample_method or "")


def _model_per_sample(run: Run) -> PerSampleStats | None:
    """||dl_i/dtheta|| per sample over every entry with per-sample figures: their squared
    norms added (the entries own disjoint variables)."""
    called = [acc for acc in run.accs if acc.calls]
    covered = [acc for acc in called if acc.per_sample and acc.grads is not None]
    if not covered:
        return None
    sq = np.sum([np.concatenate(acc.per_sample) for acc in covered if acc.per_sample], axis=0)
    total = sum(float(np.sum(np.square(g))) for acc in covered for g in acc.grads or ())
    stats = per_sample_stats(sq, total / (run.scale * run.data.samples) ** 2,
                             min_norm=_outlier_floor(run, covered))
    return dataclasses.replace(
        stats, method=f"whole model ({len(covered)} of {len(called)} entries)")


def _outlier_floor(run: Run, accs: list[LayerAccumulators]) -> float:
    """The smallest per-sample norm an outlier may have: ``outlier_weight_ratio`` x ||theta||
    over the entries' variables."""
    weights = math.sqrt(sum(float(np.sum(np.square(np.asarray(w, np.float64))))
                            for acc in accs for w in acc.weights))
    return run.options.thresholds.outlier_weight_ratio * weights


def _gradcheck_stats(run: Run, i: int) -> GradcheckStats | None:
    result = run.gradcheck
    if result is None:
        return None
    rel = result.max_rel_error[i]
    return GradcheckStats(
        coordinates=result.coordinates[i],
        max_rel_error=rel,
        max_abs_error=result.max_abs_error[i],
        ok=bool(rel <= run.options.thresholds.gradcheck_tolerance),
    )


def _coverage(run: Run, reported: Sequence[Any]) -> Coverage:
    skipped = [*run.walk.unowned, *run.skipped]
    skipped += [SkippedInfo(s.path, s.class_name, s.params,
                            "not called in the forward pass (not connected to the outputs)")
                for s, acc in zip(run.sites, run.accs, strict=True) if acc.calls == 0]
    return Coverage(
        trainable_params=run.walk.trainable_params,
        inspected_params=sum(s.params for s in reported),
        entries=len(reported),
        skipped=tuple(skipped),
    )


def build_report(run: Run) -> Report:
    """The report of a finished run: per entry its figures, the diagnosis of all of them,
    then the records."""
    data = run.data
    constant, constant_loss = _constant_softmax_outputs(run)
    figures = []
    partial = []
    for i in run.order:
        site, acc = run.sites[i], run.accs[i]
        if acc.calls == 0:
            continue
        fig, weights, grad_norm = _layer_figures(run, i, i in constant)
        figures.append(fig)
        partial.append((site, acc, weights, grad_norm))
    array_stats = [_array_stats(run, k) for k in range(len(data.names))]
    whole = _model_per_sample(run)
    per_layer, model_findings = diagnose(
        figures, dataclasses.replace(_run_figures(run, array_stats, constant_loss),
                                     per_sample=whole), run.options.thresholds)
    layers = tuple(
        _layer_report(run, site, acc, weights, grad_norm, fig, found)
        for (site, acc, weights, grad_norm), fig, found in zip(partial, figures, per_layer,
                                                               strict=True)
    )
    return Report(
        tool=ToolInfo(name="gradinspect", version=__version__),
        model=ModelInfo(path=run.loaded.path, format=run.loaded.format,
                        name=str(getattr(run.loaded.model, "name", "model"))),
        data=DataInfo(
            path=data.path,
            arrays=tuple(
                ArrayInfo(name=n, shape=tuple(a.shape), dtype=d, stats=stats)
                for n, a, d, stats in zip(data.names, data.arrays, data.stored_dtypes,
                                          array_stats, strict=True)
            ),
            samples=data.samples,
            notes=(*data.notes, *run.notes),
        ),
        loss=LossInfo(
            name=run.loss.name,
            reduction=run.loss.reduction,
            value=run.loss_value,
            source=_loss_source(run),
            from_logits=crossentropy_from_logits(run.loss),
            labels=run.data.label_source if run.loss.needs_labels else None,
            semantics=getattr(run.loss, "semantics", None),
            penalties=(run.penalty_sum / run.data.samples if run.penalty_sum is not None
                       and run.data.samples else None),
        ),
        training=run.options.training,
        layers=layers,
        warnings=model_findings,
        checks=ChecksInfo(
            verify=run.options.verify,
            gradcheck=run.gradcheck_note,
            per_sample=run.per_sample_note,
            verify_note=run.verify_note,
            per_sample_model=whole,
        ),
        coverage=_coverage(run, [site for site, _, _, _ in partial]),
        execution=run.execution,
    )


def _layer_figures(run: Run, i: int, constant_output: bool
                   ) -> tuple[LayerFigures, LayerWeights, float]:
    """Entry ``i``'s figures for the diagnosis, its weights' statistics and the norm of all
    its variables' gradients together."""
    t = run.options.thresholds
    site, acc = run.sites[i], run.accs[i]
    assert acc.grads is not None
    paths = [v.path for v in site.variables]
    weight_list = [weight_stats(w, p) for w, p in zip(acc.weights, paths, strict=True)]
    grad_list = [grad_stats(g) for g in acc.grads]
    grads = LayerGrads(
        variables=by_name(site, grad_list),
        input=(_with_batch(acc.input_grad.result(), run.data.samples)
               if acc.input_grad is not None else None),
    )
    kernel_like = [k for k, v in enumerate(site.variables) if not is_offset(v.name)]
    main = kernel_like or list(range(len(site.variables)))
    weight_grad = combined([grad_list[k] for k in main])
    weight_norm = math.sqrt(sum(weight_list[k].norm ** 2 for k in main))
    verify = (acc.verify.result(acc.grads[0], acc.grads[1] if site.use_bias else None,
                                t.verify_tolerance)
              if acc.verify is not None and acc.verify.kernel_sum is not None else None)
    output_grad_norm = math.sqrt(acc.output_grad_sumsq)
    fig = LayerFigures(
        path=site.path,
        kind=site.kind,
        activation=site.activation,
        units=site.units,
        grads=grads,
        weight_grad=weight_grad,
        weight_norm=weight_norm,
        weights_nonfinite=not all(math.isfinite(w.norm) for w in weight_list),
        grad_to_weight=safe_ratio(weight_grad.norm, weight_norm),
        backward_gain=(safe_ratio(grads.input.norm, output_grad_norm)
                       if grads.input is not None else math.nan),
        activity=_activity_stats(acc, t),
        constant_output=constant_output,
        verify=verify,
        gradcheck=_gradcheck_stats(run, i),
        logits_mismatch=find_logits_mismatch(run.loss, site),
        single_unit_softmax=bool(site.is_output and site.measured is not None
                                 and site.measured.kind == "softmax" and site.units == 1),
        loss_activation=find_loss_activation_mismatch(run.loss, site),
        kernel_zero=bool(kernel_like) and all(weight_list[k].norm == 0.0 for k in kernel_like),
        forward=_forward_stats(acc),
        moving_initial=_moving_initial(site.layer) if acc.moving_rows else False,
        affine_trained=_affine_trained(site.layer) if acc.moving_rows else False,
        is_output=site.is_output,
        output_grad_norm=output_grad_norm,
        kernel_near_zero=near_zero([weight_list[k] for k in kernel_like], t.near_zero_weight),
        normalized=(site.adapter.normalized(site.layer, acc.input_shape)
                    if acc.input_shape is not None else None),
    )
    return fig, LayerWeights(variables=by_name(site, weight_list)), combined(grad_list).norm


def _run_figures(run: Run, array_stats: list[ArrayStats | None],
                 constant_loss: bool) -> RunFigures:
    """The model-level figures for the diagnosis: the loss, the data, what the model holds."""
    from gradinspect.engine.walk import layer_classes

    data = run.data
    return RunFigures(
        samples=data.samples,
        loss_name=run.loss.name,
        loss_reduction=run.loss.reduction,
        loss_value=run.loss_value,
        data_nonfinite=run.nonfinite,
        data_entries=run.entries,
        constant_loss=constant_loss,
        arrays=tuple(zip(data.names, array_stats, strict=True)),
        activations=frozenset(s.measured.name for s in run.sites if s.measured is not None),
        layer_classes=frozenset(layer_classes(run.loaded.model)),
        optimizer=run.loaded.optimizer,
        constant_labels=_constant_labels(run),
    )


def _constant_labels(run: Run) -> tuple[tuple[str, float], ...]:
    """(output name, class) of each crossentropy output whose labels are all one class."""
    if run.label_classes is None or not hasattr(run.loss, "output_indices"):
        return ()
    names = [run.loaded.outputs[k].name for k in run.loss.output_indices()]
    return tuple((name, float(next(iter(seen)))) for name, seen
                 in zip(names, run.label_classes, strict=True) if len(seen) == 1)


def _layer_report(run: Run, site: Any, acc: LayerAccumulators, weights: LayerWeights,
                  grad_norm: float, fig: LayerFigures, found: Any) -> LayerReport:
    """One entry's record."""
    samples = run.data.samples
    return LayerReport(
        name=site.name,
        path=site.path,
        kind=site.kind,
        class_name=site.class_name,
        activation=site.activation,
        units=site.units,
        use_bias=site.use_bias,
        params=site.params,
        calls=acc.calls,
        input_shape=_batched(acc.input_shape, samples),
        output_shape=_batched(acc.output_shape, samples),
        weights=weights,
        grads=fig.grads,
        grad_norm=grad_norm,
        weight_grad_norm=fig.weight_grad.norm,
        grad_to_weight=fig.grad_to_weight,
        backward_gain=fig.backward_gain,
        activity=fig.activity,
        forward=fig.forward,
        verify=fig.verify,
        gradcheck=fig.gradcheck,
        per_sample=_per_sample(run, acc, fig.grads),
        values=grad_values(acc, run.options.gradients),
        warnings=found,
    )


def _loss_source(run: Run) -> str:
    source = getattr(run.loss, "source", None)
    if source is not None:
        return str(source)
    return "flag" if run.options.loss is not None else "default"


def _with_batch(stats: Any, samples: int) -> Any:
    from dataclasses import replace

    return replace(stats, shape=_batched(stats.shape[1:], samples))
