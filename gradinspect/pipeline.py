"""One inspection, top to bottom: load (done by the caller: ``api``) -> the loss and labels
(``losses``, ``labels``) -> the engine's hooked pass over the batches (``engine``) -> the
measurements (``measure.accumulators``) -> the report (``measure.summary``, which runs the
diagnosis). Each stage is called once per inspection and data flows down."""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from gradinspect.config import InspectOptions
from gradinspect.distribute import describe, diverged_variables, effective, share
from gradinspect.io.data.rows import H5Rows, NpyRows, aligned_empty
from gradinspect.io.loaded import LoadedData, LoadedModel
from gradinspect.labels import LOGITS_CLOSED_FORMS, logits_spec, loss_semantics_for, prepare_labels
from gradinspect.measure.accumulators import (
    LayerAccumulators,
    Run,
    accumulate,
    keep_values,
    merge_input_stats,
)
from gradinspect.measure.summary import build_report
from gradinspect.measure.verify import VerifyAccumulator
from gradinspect.report import ExecutionInfo, Report

ProgressHook = Callable[[int, int], None]
"""Called as ``progress(samples_done, samples_total)`` after each batch."""


def iter_batches(arrays: Sequence[np.ndarray], size: int, worker: int = 0,
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


ACTIVATION_COPIES = 2
"""Bytes a step holds per byte of layer outputs: the forward activations the tape keeps and
their gradients while the backward pass runs. Measured per sample: 1.3x on ResNet50, 1.8x on
MobileNetV2 (the same as a plain tape over the model's variables)."""


def activation_bytes_per_sample(model: Any) -> int | None:
    """Bytes of every layer output for one sample (nested models included), from the symbolic
    shapes Keras recorded; ``None`` when a shape is unknown (subclassed models)."""
    from gradinspect.engine.views import children

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
        semantics=loss_semantics_for(loaded, options, label_notes),
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
                                             strategy=strategy, rows=batch_size)
    t = options.thresholds
    run = Run(
        loaded=loaded, data=data, options=options, sites=sites, loss=loss, walk=walk,
        skipped=skipped, label_prep=label_prep, notes=label_notes,
        scale=1.0 if loss.reduction == "sum" else 1.0 / data.samples,
        execution=dataclasses.replace(execution, notes=_execution_notes(
            execution, loaded.model, options.training)),
        accs=[
            LayerAccumulators(
                s, s.measured.peak * t.saturation_derivative if s.measured else 0.0,
                verify=(VerifyAccumulator(s.use_bias, bias_reduce=s.dense_view.reduce_bias)
                        if options.verify and _closed_form(s) else None),
                per_sample=[] if options.per_sample else None,
                input_values=[] if options.values else None,
                kept_logits=logits_spec(loss, s) if options.verify else None,
            )
            for s in sites
        ],
    )
    if options.verify:
        _verify_note(run)
    if options.per_sample:
        _per_sample_refused(run)
    _pass(run, probe, batch_size, progress)
    if options.per_sample and run.per_sample_note is None:
        _per_sample_note(run, probe)
    if options.gradcheck > 0 and execution.worker == 0:
        _run_gradcheck(run, _input_dtypes(loaded))
    return build_report(run)


def _verify_note(run: Run) -> None:
    """What ``--verify`` checks on which entries; an output whose crossentropy Keras takes
    from its kept logits is checked against that closed form, where there is one."""
    sites = run.sites
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


def _per_sample_refused(run: Run) -> None:
    """``--per-sample`` in training mode over batch statistics: not defined, and said so."""
    from gradinspect.engine.seeding import batch_interactions

    interacting = batch_interactions(run.loaded.model, run.options.training)
    if interacting:
        run.per_sample_note = (
            "not available: in training mode " + ", ".join(interacting) + " mixes samples "
            "(batch statistics), so per-sample gradients are not defined; run without "
            "--training"
        )
        for acc in run.accs:
            acc.per_sample = None


def _per_sample_note(run: Run, probe: Any) -> None:
    """What ``--per-sample`` measured, by which method, and where it could not (why)."""
    methods: dict[str, int] = {}
    for i, acc in enumerate(run.accs):
        method = probe.per_sample_methods.get(i)
        if acc.per_sample is not None and method is not None:
            acc.per_sample_method = method
            methods[method] = methods.get(method, 0) + 1
        else:
            acc.per_sample = None
    missing = [f"{acc.site.path} ({probe.per_sample_reasons.get(i, 'not computed')})"
               for i, acc in enumerate(run.accs) if acc.per_sample is None and acc.calls]
    run.per_sample_note = (
        "norms of the gradients of the per-sample loss terms l_i (the loss is "
        f"{'the sum' if run.loss.reduction == 'sum' else 'the mean'} of them), from the "
        "single pass; methods: " + (", ".join(f"{m} ({n})" for m, n in sorted(methods.items()))
                                    or "none")
        + (f"; not available for {'; '.join(missing)}" if missing else "")
    )


def seen_classes(run: Run, labels: list[np.ndarray]) -> None:
    """The classes the labels of each crossentropy output hold, up to two (enough to tell a
    constant column: every label one class, a broken join or a wrong column)."""
    if run.label_classes is None:
        run.label_classes = [set() for _ in labels]
    for k, (y, seen) in enumerate(zip(labels, run.label_classes, strict=True)):
        spec = run.loss.per_output[k] if hasattr(run.loss, "per_output") else None
        if spec is None or "crossentropy" not in spec.name or len(seen) > 1 or not y.size:
            continue
        ids = np.argmax(y, axis=-1) if y.ndim > 1 and y.shape[-1] > 1 else y
        seen.update(np.unique(np.asarray(ids).ravel()[:1 << 20])[:2].tolist())


def _pass(run: Run, probe: Any, batch_size: int, progress: ProgressHook | None) -> None:
    """The hooked step over every batch (this worker's rows of it), folded into the run."""
    from gradinspect.engine.seeding import seeded

    data, options, label_prep = run.data, run.options, run.label_prep
    t = options.thresholds
    lows = [acc.low_threshold for acc in run.accs]
    dtypes = _input_dtypes(run.loaded)
    done = 0
    worker, workers = run.execution.worker, run.execution.workers
    label_batches = (iter_batches(data.labels, batch_size, worker, workers)
                     if label_prep is not None and data.labels is not None else None)
    with probe, seeded(run.loaded.model, options.seed):
        for first, rows, raw in iter_batches(data.arrays, batch_size, worker, workers):
            batch = _as_model_dtype(raw, dtypes)
            labels = (label_prep(next(label_batches)[2], first) if label_prep is not None and
                      label_batches is not None else None)
            capture = probe.step(batch, labels, run.scale, low_thresholds=lows,
                                 confidence=t.softmax_confidence,
                                 fresh=_fresh(data.arrays, raw, batch), global_rows=rows)
            run.loss_value += capture.loss
            if labels is not None:
                seen_classes(run, labels)
            if capture.penalty is not None:
                run.penalty_sum = (run.penalty_sum or 0.0) + capture.penalty
            merge_input_stats(run, capture.input_stats, capture.samples, batch)
            run.nonfinite += capture.nonfinite
            run.entries += capture.entries
            for acc, cap in zip(run.accs, capture.layers, strict=True):
                accumulate(acc, cap, list(capture.labels) if capture.labels is not None
                            else labels, run.scale)
                keep_values(acc, cap, options.values_samples)
            done += capture.samples
            if progress is not None:
                progress(done, data.samples)
        run.order = list(probe.order) + [i for i in range(len(run.sites))
                                         if i not in probe.order]
        for acc, grads in zip(run.accs, probe.gradient_sums(), strict=True):
            acc.grads = grads


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


_PROBES: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], tuple[Any, ...]]] = (
    weakref.WeakKeyDictionary()
)


def _probe_for(loaded: LoadedModel, loss: Any, options: InspectOptions,
               compiled: bool, strategy: Any = None,
               rows: int = 1) -> tuple[Any, list[Any], list[Any], Any]:
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
           options.worker_timeout, rows if options.per_sample else 0, options.memory_budget)
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
                                per_sample_rows=rows, per_sample_budget=options.memory_budget,
                                strategy=strategy, timeout=options.worker_timeout))
    walk, sites, skipped, probe = per_model[key]
    return walk, sites, skipped, probe


def _input_dtypes(loaded: LoadedModel) -> list[str]:
    """What each input is fed as: the model's own float or integer dtype (token ids stay
    integers: float32 would round ids above 2**24), float32 for anything else."""
    return [s.dtype if s.dtype.startswith(("float", "bfloat", "int", "uint")) else "float32"
            for s in loaded.inputs]


def _run_gradcheck(run: Run, dtypes: Sequence[str]) -> None:
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
