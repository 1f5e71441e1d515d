"""The public Python API, and the pipeline the CLI runs: load -> probe -> stats -> diagnose.

``inspect(model, x)`` works on a live model in a notebook or at a breakpoint; ``inspect_files``
is what ``gradinspect MODEL DATA`` calls. Both return a ``Report``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradinspect import __version__
from gradinspect.checks import (
    VerifyAccumulator,
    closed_form_delta,
    logits_delta,
    per_sample_stats,
)
from gradinspect.config import InspectOptions, LoadOptions, Thresholds
from gradinspect.diagnose import LayerFigures, RunFigures, diagnose
from gradinspect.distribute import describe, diverged_variables, effective, share
from gradinspect.errors import DataError
from gradinspect.io.data.rows import H5Rows, NpyRows, aligned_empty
from gradinspect.io.data.select import load_data
from gradinspect.io.loaded import LoadedData, LoadedModel
from gradinspect.io.models import import_custom_objects, live_model, load_model
from gradinspect.report import (
    ActivationStats,
    ArrayInfo,
    ArrayStats,
    ChecksInfo,
    Coverage,
    DataInfo,
    ExecutionInfo,
    ForwardStats,
    GradcheckStats,
    GradValues,
    LayerGrads,
    LayerReport,
    LayerWeights,
    LossInfo,
    ModelInfo,
    PerSampleStats,
    Report,
    SkippedInfo,
    ToolInfo,
    is_offset,
)
from gradinspect.stats import (
    ActivityAccumulator,
    TensorAccumulator,
    combined,
    grad_stats,
    merge_shapes,
    safe_ratio,
    weight_stats,
)

ProgressHook = Callable[[int, int], None]
"""Called as ``progress(samples_done, samples_total)`` after each batch."""


@dataclass
class _LayerAccumulators:
    site: Any
    low_threshold: float
    verify: VerifyAccumulator | None = None
    per_sample: list[np.ndarray] | None = None
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
class _Run:
    """State of one inspection while it runs."""

    loaded: LoadedModel
    data: LoadedData
    options: InspectOptions
    sites: list[Any]
    accs: list[_LayerAccumulators]
    loss: Any
    scale: float
    walk: Any
    skipped: list[Any]
    loss_value: float = 0.0
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


def _batches(arrays: Sequence[np.ndarray], size: int, worker: int = 0,
             workers: int = 1) -> Iterator[tuple[int, int, list[np.ndarray]]]:
    """Per batch of ``size`` rows: its first row, its row count, and the rows of it that this
    worker reads (all of them on one worker; else its contiguous share, ``distribute.share``:
    no worker reads another's rows)."""
    total = int(arrays[0].shape[0])
    for start in range(0, total, size):
        stop = min(start + size, total)
        lo, hi = share(start, stop, worker, workers)
        yield lo, stop - start, [a[lo:hi] for a in arrays]


def _as_model_dtype(batch: Sequence[np.ndarray], dtypes: Sequence[str]) -> list[np.ndarray]:
    return [_converted(a, d) for a, d in zip(batch, dtypes, strict=True)]


def _converted(a: np.ndarray, dtype: str) -> np.ndarray:
    """``a`` as a C-contiguous array of ``dtype``: itself when it already is one, else a new
    aligned buffer (``aligned_empty``) holding the conversion."""
    a = np.asarray(a)
    if a.dtype == np.dtype(dtype) and a.flags.c_contiguous:
        return a
    out = aligned_empty(a.shape, np.dtype(dtype))
    np.copyto(out, a, casting="unsafe")
    return out


def _fresh(sources: Sequence[Any], raw: Sequence[np.ndarray],
           batch: Sequence[np.ndarray]) -> list[bool]:
    """Per input, whether the batch array is a buffer this run allocated for this batch alone:
    a slice read from a .npy or HDF5 file, or a conversion. Arrays held in memory — the caller's
    included — are slices of something still in use, so TensorFlow gets a copy of them."""
    return [isinstance(src, (NpyRows, H5Rows)) or not np.may_share_memory(b, r)
            for src, r, b in zip(sources, raw, batch, strict=True)]


def _batched(shape: Sequence[int | None] | None, samples: int) -> tuple[int | None, ...]:
    """A per-sample shape with the run's sample count as the batch axis."""
    return (samples, *shape) if shape is not None else ()


ACTIVATION_COPIES = 2
"""Bytes a step holds per byte of layer outputs: the forward activations the tape keeps and
their gradients while the backward pass runs. Measured per sample: 1.3x on ResNet50, 1.8x on
MobileNetV2 (the same as a plain tape over the model's variables)."""


def activation_bytes_per_sample(model: Any) -> int | None:
    """Bytes of every layer output for one sample (nested models included), from the symbolic
    shapes Keras recorded; ``None`` when a shape is unknown (subclassed models)."""
    from gradinspect.engine.adapters.base import children

    total = 0
    seen: set[int] = set()

    def visit(layer: Any) -> bool:
        for child in children(layer):
            if id(child) in seen:
                continue
            seen.add(id(child))
            for node in getattr(child, "_inbound_nodes", None) or []:
                for t in getattr(node, "outputs", None) or []:
                    shape = tuple(getattr(t, "shape", ()) or ())[1:]
                    if any(d is None for d in shape):
                        return False
                    itemsize = np.dtype(str(getattr(t, "dtype", "float32"))).itemsize
                    nonlocal total
                    total += int(np.prod(shape, dtype=np.int64)) * itemsize
            if not visit(child):
                return False
        return True

    return total * ACTIVATION_COPIES if visit(model) and total else None


def _auto_batch_size(loaded: LoadedModel, data: LoadedData, options: InspectOptions,
                     notes: list[str]) -> int:
    """``--batch-size``, or the largest batch whose activations fit ``memory_budget``."""
    if options.batch_size:
        return options.batch_size
    per_sample = activation_bytes_per_sample(loaded.model)
    if per_sample is None:
        return data.samples
    fit = max(1, options.memory_budget // per_sample)
    if fit >= data.samples:
        return data.samples
    notes.append(f"batches of {fit} samples: about {per_sample / 2**20:.1f} MiB of activations "
                 f"per sample, memory budget {options.memory_budget / 2**20:.0f} MiB "
                 "(--batch-size or --memory-budget overrides; the result is the same)")
    return fit


def run_inspection(
    loaded: LoadedModel,
    data: LoadedData,
    options: InspectOptions,
    progress: ProgressHook | None = None,
    strategy: Any = None,
) -> Report:
    """Run the hooked pass over the data (and the requested checks) and build the report.
    ``strategy``: a ``tf.distribute`` strategy to run the pass on (see ``distribute``)."""
    from gradinspect._tf import tf_modules
    from gradinspect.engine.seeding import batch_interactions, seeded
    from gradinspect.losses import LossRequest, resolve_loss

    tf_modules()
    strategy = effective(strategy)
    execution = describe(strategy)
    label_notes: list[str] = []
    loss = resolve_loss(
        LossRequest(options.loss, options.reduction, options.from_logits),
        loaded.compile_config,
        [o.name for o in loaded.outputs],
        has_labels=data.labels is not None,
        custom_objects=loaded.custom_objects,
        semantics=_loss_semantics(loaded, options, label_notes),
    )
    label_prep = prepare_labels(loss, loaded, data, label_notes)
    if data.labels is not None and not loss.needs_labels:
        label_notes.append(f"labels are not used by the loss {loss.name!r}; pass --loss NAME "
                           "to use them")
    batch_size = _auto_batch_size(loaded, data, options, label_notes)
    # One small batch from a file: running eagerly beats tracing a graph used once. Several
    # batches, or a live model inspected again and again, pay the trace once.
    batches = -(-data.samples // batch_size)
    walk, sites, skipped, probe = _probe_for(loaded, loss, options,
                                             compiled=batches > 1 or loaded.format == "live",
                                             strategy=strategy)
    t = options.thresholds
    run = _Run(
        loaded=loaded, data=data, options=options, sites=sites, loss=loss, walk=walk,
        skipped=skipped, label_prep=label_prep, notes=label_notes,
        scale=1.0 if loss.reduction == "sum" else 1.0 / data.samples,
        execution=dataclasses.replace(execution, notes=_execution_notes(
            execution, loaded.model, options.training)),
        accs=[
            _LayerAccumulators(
                s, s.measured.peak * t.saturation_derivative if s.measured else 0.0,
                verify=(VerifyAccumulator(s.use_bias, bias_reduce=s.dense_view.reduce_bias)
                        if options.verify and _closed_form(s) else None),
                per_sample=[] if options.per_sample and _per_sample_form(s) else None,
                input_values=[] if options.values else None,
                kept_logits=_kept_logits(loss, s) if options.verify else None,
            )
            for s in sites
        ],
    )
    if options.verify:
        others = sorted({s.kind for s in sites if not _closed_form(s)})
        run.verify_note = (
            "closed forms in float64 for " + ", ".join(sorted(
                {s.kind for s in sites if _closed_form(s)}) or ["no entry"])
            + ("; not available for " + ", ".join(others) + " (use --gradcheck)" if others
               else "")
        )
        for acc in run.accs:
            spec = acc.kept_logits
            if spec is None or acc.verify is None:
                continue
            if spec.name in LOGITS_CLOSED_FORMS and int(spec.kwargs.get("axis", -1)) == -1:
                run.verify_note += (f"; {acc.site.path}: dL/dz checked against the "
                                    f"{spec.name} of its kept logits (what Keras differentiates)")
            else:
                acc.verify = None
                run.verify_note += (f"; not available for {acc.site.path} ({spec.name} "
                                    "computed from its kept logits)")
    if options.per_sample:
        interacting = batch_interactions(loaded.model, options.training)
        if interacting:
            run.per_sample_note = (
                "not available: in training mode " + ", ".join(interacting) + " mixes samples "
                "(batch statistics), so per-sample gradients are not defined; run without "
                "--training"
            )
            for acc in run.accs:
                acc.per_sample = None
        else:
            others = sorted({s.kind for s in sites if not _per_sample_form(s)})
            run.per_sample_note = (
                "norms of the gradients of the per-sample loss terms l_i (the loss is "
                f"{'the sum' if loss.reduction == 'sum' else 'the mean'} of them), from the "
                "single backward pass"
                + (f"; not available for {', '.join(others)}" if others else "")
            )
    lows = [acc.low_threshold for acc in run.accs]
    dtypes = _input_dtypes(loaded)
    done = 0
    worker, workers = execution.worker, execution.workers
    label_batches = (_batches(data.labels, batch_size, worker, workers)
                     if label_prep is not None and data.labels is not None else None)
    with probe, seeded(loaded.model, options.seed):
        for first, rows, raw in _batches(data.arrays, batch_size, worker, workers):
            batch = _as_model_dtype(raw, dtypes)
            labels = (label_prep(next(label_batches)[2], first) if label_prep is not None and
                      label_batches is not None else None)
            capture = probe.step(batch, labels, run.scale, low_thresholds=lows,
                                 confidence=t.softmax_confidence,
                                 fresh=_fresh(data.arrays, raw, batch), global_rows=rows)
            run.loss_value += capture.loss
            _merge_input_stats(run, capture.input_stats, capture.samples, batch)
            run.nonfinite += capture.nonfinite
            run.entries += capture.entries
            for acc, cap in zip(run.accs, capture.layers, strict=True):
                _accumulate(acc, cap, list(capture.labels) if capture.labels is not None
                            else labels, run.scale)
                _keep_values(acc, cap, options.values_samples)
            done += capture.samples
            if progress is not None:
                progress(done, data.samples)
        run.order = list(probe.order) + [i for i in range(len(sites)) if i not in probe.order]
        for acc, grads in zip(run.accs, probe.gradient_sums(), strict=True):
            acc.grads = grads
    if options.gradcheck > 0 and execution.worker == 0:
        _run_gradcheck(run, dtypes)
    return _build_report(run)


def _execution_notes(execution: ExecutionInfo, model: Any, training: bool) -> tuple[str, ...]:
    """What a distributed pass computes differently from one device, said rather than
    approximated."""
    if execution.strategy == "none":
        return ()
    from gradinspect.engine.seeding import batch_interactions

    notes = [f"each batch split over {execution.replicas} replicas"
             + (f" on {execution.workers} workers" if execution.workers > 1 else "")
             + "; sums merged in float64 (equal to one device's up to float32 summation "
             "order), maxima, minima and counts exactly, per-sample rows in row order"]
    interacting = batch_interactions(model, training)
    if interacting:
        notes.append("BatchNormalization in training mode (" + ", ".join(interacting) + ") "
                     "normalises each replica's share of the batch with that share's "
                     "statistics, as Keras does when training under a strategy: figures at "
                     "and after these layers differ from a single-device run")
    diverged = diverged_variables(model)
    if diverged:
        shown = ", ".join(f"{path} (max |difference| {worst:.3g})" for path, worst in diverged[:6])
        notes.append(f"{len(diverged)} non-trainable variable(s) differ between the replicas' "
                     f"copies: {shown}{' ...' if len(diverged) > 6 else ''} (Keras updated "
                     "them on each replica from its own batches); each replica computed with "
                     "its own copy, a single-device run reads the first")
    if training and _has_randomness(model):
        notes.append("in training mode each replica draws its own random numbers (Dropout, "
                     "noise): the figures differ from a single-device run by that randomness")
    return tuple(notes)


def _has_randomness(model: Any) -> bool:
    from gradinspect.engine.seeding import seed_generators

    return bool(seed_generators(model))


def _closed_form(site: Any) -> bool:
    """``--verify`` applies: the Dense identities, through the layer's Dense view."""
    return bool(site.adapter.closed_form == "dense" and site.dense_view is not None)


def _per_sample_form(site: Any) -> bool:
    """``--per-sample`` applies: the Dense per-sample norms, through the layer's Dense view."""
    return bool(site.adapter.per_sample and site.dense_view is not None)


_PROBES: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], tuple[Any, ...]]] = (
    weakref.WeakKeyDictionary()
)


def _probe_for(loaded: LoadedModel, loss: Any, options: InspectOptions,
               compiled: bool, strategy: Any = None) -> tuple[Any, list[Any], list[Any], Any]:
    """The model's walk, the selected entries, the ones filtered out, and the compiled,
    hookable step for this model and loss.

    Kept per live model (weakly), so repeated inspections of the same model — a notebook, a
    training callback — trace the step once instead of every time.
    """
    from gradinspect.engine.runners import Probe, require_entries
    from gradinspect.engine.walk import select, walk_model
    from gradinspect.errors import UsageError

    full = options.verify or options.values
    key = (type(loss).__name__, loss.name, loss.reduction,
           repr(getattr(loss, "per_output", None)), options.training, full,
           options.per_sample, compiled, options.kinds, options.layers, id(strategy),
           options.worker_timeout)
    try:
        per_model = _PROBES.setdefault(loaded.model, {})
    except TypeError:  # not weak-referenceable: no caching
        per_model = {}
    if key not in per_model:
        walk = walk_model(loaded.model)
        require_entries(loaded.model, walk.sites, loaded.path or "model")
        sites, skipped = select(walk.sites, options.kinds, options.layers)
        if not sites:
            asked = " ".join([*(f"--kind {k}" for k in options.kinds),
                              *(f"--layer {p}" for p in options.layers)])
            raise UsageError(f"{asked} matches no entry",
                             "entries: " + ", ".join(f"{s.path} ({s.kind})"
                                                     for s in walk.sites[:40])
                             + (" ..." if len(walk.sites) > 40 else ""))
        per_model[key] = (walk, sites, skipped,
                          Probe(loaded.model, sites, loss, training=options.training,
                                verify=options.verify, full=full,
                                per_sample=options.per_sample, compiled=compiled,
                                strategy=strategy, timeout=options.worker_timeout))
    walk, sites, skipped, probe = per_model[key]
    return walk, sites, skipped, probe


def _input_dtypes(loaded: LoadedModel) -> list[str]:
    """What each input is fed as: the model's own float or integer dtype (token ids stay
    integers: float32 would round ids above 2**24), float32 for anything else."""
    return [s.dtype if s.dtype.startswith(("float", "bfloat", "int", "uint")) else "float32"
            for s in loaded.inputs]


def _run_gradcheck(run: _Run, dtypes: Sequence[str]) -> None:
    """Finite differences on the first samples, against a tape pass on the same samples."""
    from gradinspect.engine.gradcheck import gradcheck
    from gradinspect.engine.runners import Probe

    options = run.options
    n = min(run.data.samples, options.gradcheck_samples)
    inputs = _as_model_dtype([a[:n] for a in run.data.arrays], dtypes)
    labels = (run.label_prep([y[:n] for y in run.data.labels], 0)
              if run.label_prep is not None and run.data.labels is not None else None)
    scale = 1.0 if run.loss.reduction == "sum" else 1.0 / n
    with Probe(run.loaded.model, run.sites, run.loss, training=False) as probe:
        probe.step(inputs, labels, scale)
        tape = probe.gradient_sums()
    try:
        run.gradcheck = gradcheck(run.loaded.model, run.sites, run.loss, inputs, tape,
                                  coordinates=options.gradcheck, seed=options.seed,
                                  scale=scale, labels=labels)
    except ValueError as exc:
        run.gradcheck_note = f"not possible: {exc}"
        return
    run.gradcheck_note = (
        f"central differences in float64 on up to {options.gradcheck} coordinates of every "
        f"variable of every entry, first {n} samples, seed {options.seed}, inference mode "
        "(Dropout and other randomness off), against a float32 tape pass on the same samples"
    )


def _keep_values(acc: _LayerAccumulators, cap: Any, limit: int) -> None:
    """``--values``: the first ``limit`` samples' dL/dinput of the first call."""
    if acc.input_values is None or not cap.calls or acc.input_value_rows >= limit:
        return
    full = cap.calls[0].full
    if full is None or full.g_x is None:
        return
    rows = full.g_x[: limit - acc.input_value_rows]
    acc.input_values.append(np.array(rows))
    acc.input_value_rows += int(rows.shape[0])


def _by_name(site: Any, values: Sequence[Any]) -> dict[str, Any]:
    """Per variable short name; a Dense entry without bias keeps ``bias: None`` (schema 1)."""
    named = {v.name: value for v, value in zip(site.variables, values, strict=True)}
    if site.kind == "dense" and "bias" not in named:
        named["bias"] = None
    return named


def _values(acc: _LayerAccumulators, gradients: bool = False) -> GradValues | None:
    if acc.grads is None or (acc.input_values is None and not gradients):
        return None
    return GradValues(
        variables=_by_name(acc.site, acc.grads),
        input=np.concatenate(acc.input_values) if acc.input_values else None,
        input_samples=acc.input_value_rows,
    )


def _accumulate(acc: _LayerAccumulators, cap: Any, labels: Sequence[np.ndarray] | None = None,
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


def _merge_input_stats(run: _Run, stats: Sequence[np.ndarray | None], rows: int,
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


def _array_stats(run: _Run, k: int) -> ArrayStats | None:
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


def _rms(sumsq: float, entries: int) -> float | None:
    return math.sqrt(sumsq / entries) if entries else None


def _forward_stats(acc: _LayerAccumulators) -> ForwardStats:
    moving = None
    if acc.moving_moment is not None and acc.moving_rows:
        layer = acc.site.layer
        variance = np.asarray(layer.moving_variance, dtype=np.float64).reshape(-1)
        epsilon = float(getattr(layer, "epsilon", 1e-3))
        m2 = acc.moving_moment / acc.moving_rows / (variance + epsilon)
        moving = math.sqrt(float(np.median(m2))) if np.all(np.isfinite(m2)) else math.nan
    return ForwardStats(input_rms=_rms(acc.x_sumsq, acc.x_entries),
                        output_rms=_rms(acc.out_sumsq, acc.out_entries),
                        moving_stats_rms=moving)


def _activity_stats(acc: _LayerAccumulators, t: Thresholds) -> ActivationStats | None:
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
    )


def _constant_softmax_outputs(run: _Run) -> tuple[set[int], bool]:
    """Sites whose softmax output enters a ``sum``/``mean`` loss (a constant), and whether every
    model output is one of them."""
    if run.loss.name not in ("sum", "mean"):
        return set(), False
    constant = {i for i, s in enumerate(run.sites)
                if s.is_output and s.measured is not None and s.measured.kind == "softmax"}
    n_outputs = len(getattr(run.loaded.model, "outputs", None) or [])
    return constant, bool(constant) and len(constant) >= n_outputs


def _per_sample(run: _Run, acc: _LayerAccumulators, grads: LayerGrads) -> PerSampleStats | None:
    if acc.per_sample is None or not acc.per_sample:
        return None
    n = run.data.samples
    total_sq = sum(g.norm ** 2 for g in grads.variables.values() if g is not None)
    mean_grad_sq = total_sq / (run.scale * n) ** 2
    return per_sample_stats(np.concatenate(acc.per_sample), mean_grad_sq)


def _gradcheck_stats(run: _Run, i: int) -> GradcheckStats | None:
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


def _coverage(run: _Run, reported: Sequence[Any]) -> Coverage:
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


def _build_report(run: _Run) -> Report:
    from gradinspect.engine.walk import layer_classes

    t = run.options.thresholds
    data = run.data
    constant, constant_loss = _constant_softmax_outputs(run)
    figures = []
    partial = []
    for i in run.order:
        site, acc = run.sites[i], run.accs[i]
        if acc.calls == 0:
            continue
        assert acc.grads is not None
        paths = [v.path for v in site.variables]
        weight_list = [weight_stats(w, p) for w, p in zip(acc.weights, paths, strict=True)]
        grad_list = [grad_stats(g) for g in acc.grads]
        grads = LayerGrads(
            variables=_by_name(site, grad_list),
            input=(_with_batch(acc.input_grad.result(), data.samples)
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
        forward = _forward_stats(acc)
        figures.append(
            LayerFigures(
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
                constant_output=i in constant,
                verify=verify,
                gradcheck=_gradcheck_stats(run, i),
                logits_mismatch=_logits_mismatch(run.loss, site),
                single_unit_softmax=bool(site.is_output and site.measured is not None
                                         and site.measured.kind == "softmax"
                                         and site.units == 1),
                loss_activation=_loss_activation_mismatch(run.loss, site),
                kernel_zero=bool(kernel_like)
                and all(weight_list[k].norm == 0.0 for k in kernel_like),
                forward=forward,
                moving_initial=_moving_initial(site.layer) if acc.moving_rows else False,
                is_output=site.is_output,
            )
        )
        partial.append((site, acc, LayerWeights(variables=_by_name(site, weight_list)),
                        combined(grad_list).norm))
    array_stats = [_array_stats(run, k) for k in range(len(data.names))]
    figures_run = RunFigures(
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
    )
    per_layer, model_findings = diagnose(figures, figures_run, t)
    layers = tuple(
        LayerReport(
            name=site.name,
            path=site.path,
            kind=site.kind,
            class_name=site.class_name,
            activation=site.activation,
            units=site.units,
            use_bias=site.use_bias,
            params=site.params,
            calls=acc.calls,
            input_shape=_batched(acc.input_shape, data.samples),
            output_shape=_batched(acc.output_shape, data.samples),
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
            values=_values(acc, run.options.gradients),
            warnings=found,
        )
        for (site, acc, weights, grad_norm), fig, found in zip(partial, figures, per_layer,
                                                               strict=True)
    )
    model_name = str(getattr(run.loaded.model, "name", "model"))
    return Report(
        tool=ToolInfo(name="gradinspect", version=__version__),
        model=ModelInfo(path=run.loaded.path, format=run.loaded.format, name=model_name),
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
            from_logits=_from_logits(run.loss),
            labels=run.data.label_source if run.loss.needs_labels else None,
            semantics=getattr(run.loss, "semantics", None),
        ),
        training=run.options.training,
        layers=layers,
        warnings=model_findings,
        checks=ChecksInfo(
            verify=run.options.verify,
            gradcheck=run.gradcheck_note,
            per_sample=run.per_sample_note,
            verify_note=run.verify_note,
        ),
        coverage=_coverage(run, [site for site, _, _, _ in partial]),
        execution=run.execution,
    )


LabelPrep = Callable[[Sequence[Any], int], list[np.ndarray]]
"""Turns one batch of stored labels (and its first row's index) into what the loss takes."""


def _loss_semantics(loaded: LoadedModel, options: InspectOptions, notes: list[str]) -> str:
    """``--loss-semantics``, else the rules of the Keras version that saved the file; when
    the file does not say, ``keras3``, with a note."""
    if options.loss_semantics is not None:
        return options.loss_semantics
    version = loaded.keras_version
    if version is None:
        notes.append("the model file does not record the Keras version that saved it: "
                     "crossentropy losses follow Keras 3 rules (--loss-semantics keras2 for a "
                     "Keras 2 file)")
        return "keras3"
    return "keras2" if version.startswith("2.") else "keras3"


def _loss_source(run: _Run) -> str:
    source = getattr(run.loss, "source", None)
    if source is not None:
        return str(source)
    return "flag" if run.options.loss is not None else "default"


PROBABILITY_ACTIVATIONS = ("softmax", "sigmoid", "hard_sigmoid")


def _logits_mismatch(loss: Any, site: Any) -> tuple[str, bool] | None:
    """(loss name, from_logits) when a crossentropy loss and the output activation disagree."""
    from gradinspect.losses import CROSSENTROPY

    per_output = getattr(loss, "per_output", ())
    if site.output_index is None or site.output_index >= len(per_output):
        return None
    spec = per_output[site.output_index]
    if spec.name not in CROSSENTROPY:
        return None
    from_logits = bool(spec.from_logits)
    measured = site.measured
    if measured is None:
        return None
    probabilities = measured.kind == "softmax" or measured.name in PROBABILITY_ACTIVATIONS
    if from_logits and probabilities:
        return spec.name, True
    if not from_logits and measured.kind == "linear":
        return spec.name, False
    return None


KEPT_LOGITS = ("softmax", "sigmoid")
"""Activations whose output keeps its logits for a crossentropy (Keras 2.13+ and 3)."""
LOGITS_CLOSED_FORMS = ("categorical_crossentropy", "sparse_categorical_crossentropy",
                       "binary_crossentropy")


def _kept_logits(loss: Any, site: Any) -> Any:
    """The output loss spec when this output's crossentropy is computed from the logits its
    softmax/sigmoid keeps rather than from the probabilities: Keras 3 does that for every
    crossentropy (``from_logits`` or not), the ``keras2`` rule only for ``from_logits=True``
    (see ``losses.SEMANTICS``). ``None`` otherwise."""
    from gradinspect.losses import CROSSENTROPY, KERAS2_RULES

    per_output = getattr(loss, "per_output", ())
    profile = site.profile
    if (site.output_index is None or site.output_index >= len(per_output) or profile is None
            or profile.name not in KEPT_LOGITS or site.follower is not None):
        return None
    spec = per_output[site.output_index]
    if spec.name not in CROSSENTROPY:
        return None
    if getattr(loss, "semantics", "keras3") == "keras2" and spec.name in KERAS2_RULES \
            and not spec.from_logits:
        return None
    return spec


def _loss_activation_mismatch(loss: Any, site: Any) -> tuple[str, str] | None:
    """(activation, loss) for a sigmoid output under categorical crossentropy, or a softmax
    over several units under binary crossentropy (probabilities taken as such)."""
    per_output = getattr(loss, "per_output", ())
    measured = site.measured
    if site.output_index is None or site.output_index >= len(per_output) or measured is None:
        return None
    spec = per_output[site.output_index]
    if spec.from_logits:
        return None
    if spec.name == "categorical_crossentropy" and measured.name == "sigmoid":
        return "sigmoid", spec.name
    if spec.name == "binary_crossentropy" and measured.kind == "softmax" \
            and (site.units or 0) > 1:
        return "softmax", spec.name
    return None


def _from_logits(loss: Any) -> bool | None:
    values = {p.from_logits for p in getattr(loss, "per_output", ())} - {None}
    return values.pop() if len(values) == 1 else None


def prepare_labels(loss: Any, loaded: LoadedModel, data: LoadedData,
                   notes: list[str]) -> LabelPrep | None:
    """Check the labels against the loss and the outputs once, and return the per-batch
    conversion (sparse class ids to one-hot for categorical losses, dtype casts, range checks).
    Conversions are described in ``notes``.
    """
    if not loss.needs_labels:
        return None
    where = data.label_source or "labels"
    if data.labels is None:
        raise DataError(
            f"the loss {loss.name!r} needs labels",
            "pass --labels FILE, or put a 'y' array in the .npz/HDF5 data file",
        )
    if len(data.labels) != len(loaded.outputs):
        raise DataError(f"{where}: {len(data.labels)} label arrays for "
                        f"{len(loaded.outputs)} model outputs", "one label array per output")
    steps = []
    for y, out, spec in zip(data.labels, loaded.outputs, loss.per_output, strict=True):
        step, note = _label_step(where, y, out, spec.name)
        steps.append(step)
        if note:
            notes.append(note)
    return lambda batch, start: [step(np.asarray(y), start) for step, y in zip(steps, batch,
                                                                                strict=True)]


def _label_step(where: str, y: Any, out: Any, loss_name: str) -> tuple[
    Callable[[np.ndarray, int], np.ndarray], str | None
]:
    out_shape = tuple(out.shape[1:])
    classes = out_shape[-1] if out_shape else None
    y_shape = tuple(y.shape[1:])
    kind = np.dtype(y.dtype).kind
    integral = kind in ("i", "u", "b")
    label = f"{where}: labels for output '{out.name}'"

    def in_range(ids: np.ndarray, start: int) -> np.ndarray:
        if classes is None:
            return ids
        bad = (ids < 0) | (ids >= classes) | (ids != np.floor(ids))
        if bad.any():
            row = start + int(np.argwhere(bad.reshape(bad.shape[0], -1).any(axis=1))[0][0])
            value = float(ids.ravel()[bad.ravel()][0])
            raise DataError(f"{label}: sample {row} has class id {value:g}"
                            f", outside 0..{classes - 1}",
                            "check the labels belong to this model's classes")
        return ids

    if loss_name.startswith("sparse_"):
        if y_shape not in ((), (1,), out_shape[:-1], (*out_shape[:-1], 1)):
            raise DataError(f"{label} have shape {tuple(y.shape)}; "
                            f"{loss_name} takes class ids of shape (N,) for output "
                            f"{tuple(out.shape)}",
                            "pass integer class ids, or use categorical_crossentropy for "
                            "one-hot labels")
        return (lambda b, start: in_range(b.astype(np.float64), start).astype(np.int32)), None
    if (loss_name == "categorical_crossentropy" and y_shape in ((), (1,)) and classes
            and classes > 1 and integral):
        def one_hot(b: np.ndarray, start: int) -> np.ndarray:
            ids = in_range(b.reshape(-1).astype(np.float64), start).astype(np.int64)
            return np.eye(int(classes), dtype=np.float32)[ids]
        return one_hot, (f"labels for output '{out.name}': integer class ids one-hot encoded "
                         f"({classes} classes) for categorical_crossentropy")
    if y_shape != out_shape and out_shape and out_shape[-1] == 1 and y_shape == out_shape[:-1]:
        # (N,) labels for an (N, 1) output: Keras trains with them (it expands the last axis)
        return (lambda b, start: np.asarray(b, dtype=np.float32)[..., None]), None
    if y_shape != out_shape:
        hint = "labels need the output's shape"
        if loss_name == "categorical_crossentropy" and y_shape in ((), (1,)):
            hint = "integer class ids are one-hot encoded automatically; these are not integers"
        raise DataError(f"{label} have shape {tuple(y.shape)}, the output is "
                        f"{tuple(out.shape)}", hint)
    return (lambda b, start: np.asarray(b, dtype=np.float32)), None


def _with_batch(stats: Any, samples: int) -> Any:
    from dataclasses import replace

    return replace(stats, shape=_batched(stats.shape[1:], samples))


def inspect_files(
    model_path: str | os.PathLike[str],
    data_path: str | os.PathLike[str],
    options: InspectOptions | None = None,
    progress: ProgressHook | None = None,
    labels_path: str | os.PathLike[str] | None = None,
    load: LoadOptions | None = None,
    strategy: Any = None,
) -> Report:
    """Load a model file, a data file (and labels) and inspect them (what the CLI runs).
    With a ``tf.distribute`` ``strategy`` the model is loaded in its scope (its variables
    mirrored on the replicas, as in training under the strategy) and the pass runs on it;
    of each batch, a worker reads only its share of the rows."""
    options = options or InspectOptions()
    load = load or LoadOptions()
    custom = import_custom_objects(load.custom_objects) if load.custom_objects else None
    with _scope(effective(strategy)):
        loaded = load_model(model_path, unsafe=load.unsafe, custom_objects=custom,
                            weights=load.weights, max_model_bytes=load.max_model_bytes)
    data = load_data(data_path, loaded.inputs, options.samples, labels_path=labels_path,
                     outputs=loaded.outputs)
    try:
        return run_inspection(loaded, data, options, progress, strategy=strategy)
    finally:
        data.close()


def _scope(strategy: Any) -> Any:
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def _arrays_by_name(value: Any, names: Sequence[str], what: str, kind: str, *,
                    split: bool) -> list[np.ndarray]:
    """Arrays for the model's inputs or outputs: a dict by name, a list/tuple in order (when
    ``split``), or one array."""
    if isinstance(value, Mapping):
        missing = [n for n in names if n not in value]
        if missing:
            raise DataError(f"no {what} for model {kind}(s) {missing}",
                            f"pass keys {list(names)}")
        return [np.asarray(value[n]) for n in names]
    if split and isinstance(value, (list, tuple)):
        return [np.asarray(a) for a in value]
    return [np.asarray(value)]


def inspect(
    model: Any,
    x: Any,
    y: Any = None,
    *,
    loss: str | None = None,
    reduction: str | None = None,
    from_logits: bool | None = None,
    batch_size: int | None = None,
    samples: int | None = None,
    training: bool = False,
    thresholds: Thresholds | None = None,
    verify: bool = False,
    gradcheck: int = 0,
    per_sample: bool = False,
    seed: int = 0,
    layers: Sequence[str] = (),
    kinds: Sequence[str] = (),
    values: bool = False,
    memory_budget: int | None = None,
    loss_semantics: str | None = None,
    gradients: bool = False,
    strategy: Any = None,
    worker_timeout: float | None = None,
) -> Report:
    """Inspect a live Keras model on in-memory data.

    ``x`` is an array (single-input model), a list of arrays in model-input order, or a dict
    keyed by input name. Returns the same ``Report`` as the CLI.

    ``strategy``: a ``tf.distribute.MirroredStrategy`` or ``MultiWorkerMirroredStrategy``
    (typically the one the model was built and trained under): each batch is split over its
    replicas and merged; the report is the single-device one up to float32 summation order.
    Under ``MultiWorkerMirroredStrategy`` every worker calls ``inspect`` with the whole ``x``
    (arrays in memory) and gets the whole report; ``worker_timeout`` bounds each merge.
    """
    from gradinspect.io.data.select import validate_arrays

    loaded = live_model(model)
    names = [s.name for s in loaded.inputs]
    arrays = _arrays_by_name(x, names, "array", "input", split=True)
    labels = None
    if y is not None:
        labels = _arrays_by_name(y, [o.name for o in loaded.outputs], "labels", "output",
                                 split=len(loaded.outputs) > 1)
    data = validate_arrays(None, names, arrays, loaded.inputs, samples, labels=labels,
                           label_source="<labels>" if labels is not None else None)
    options = InspectOptions(
        loss=loss,
        reduction=reduction,
        from_logits=from_logits,
        batch_size=batch_size,
        samples=samples,
        training=training,
        thresholds=thresholds or Thresholds(),
        verify=verify,
        gradcheck=gradcheck,
        per_sample=per_sample,
        seed=seed,
        layers=tuple(layers),
        kinds=tuple(kinds),
        values=values,
        gradients=gradients,
        loss_semantics=loss_semantics,
        worker_timeout=worker_timeout,
        **({"memory_budget": memory_budget} if memory_budget is not None else {}),
    )
    return run_inspection(loaded, data, options, strategy=strategy)
