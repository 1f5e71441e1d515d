"""The instrumented pass: hook every entry the walker found, run tf.GradientTape, reduce.

How a hook works. Each entry's ``call`` is replaced, on the instance only, by a wrapper that
(1) passes its input, when that is a float tensor, through ``tf.identity`` and watches it, so
dL/dinput is this layer's own share even when the same tensor feeds several layers, and (2) for
kinds whose ``activation`` is their last, element-wise step (Dense, EinsumDense, convolutions),
swaps the activation for a function that records the pre-activation z and then applies the
original. The layer's own ``call`` still does all the arithmetic, so the model computes exactly
what it computed before. Everything is undone in ``finally``.

One step is one compiled ``tf.function`` (the batch axis left open): the tape watches only the
entries' variables and inputs (so with ``--kind``/``--layer`` the backward pass stops at the
earliest selected entry), the gradients of the loss with respect to every owned variable, layer
input and layer output (and pre-activation, when needed), and activation'(z) from a second
tape. Inside the step the variable gradients are added to float64 sums on the device and every
other gradient is reduced to a few figures, handed to the host as one small vector per batch;
full tensors only for ``--verify``/``--values``. Reports are made elsewhere.

Under a ``tf.distribute`` strategy the same step runs once per replica (``strategy.run``) on
that replica's rows of the batch, with a recorder of its own (hooks find it in a thread-local
slot: the replicas trace in threads of their own, and nothing they record is shared). The
variables' gradients are all-reduced, and each replica's vector of figures, per-sample rows and
full tensors are all-gathered; the host merges the vectors as each figure declares
(``engine.layout``), so what follows sees one batch, as from one device.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradinspect.distribute import first_replica, share
from gradinspect.engine.adapters.base import DenseView, children
from gradinspect.engine.layout import Figure, Layout, Merge, merge_counts, merge_rows
from gradinspect.engine.walk import (
    ActivationProfile,
    Follower,
    Site,
    find_dense_layers,
    find_sites,
    layer_classes,
    profile_activation,
    walk_model,
)
from gradinspect.errors import ModelLoadError, ProbeError
from gradinspect.io.data.rows import BUFFER_ALIGNMENT
from gradinspect.losses import Loss

__all__ = [
    "ActivationProfile", "BatchCapture", "CallCapture", "CallSummary", "Follower",
    "LayerCapture", "Probe", "Site", "find_dense_layers", "find_sites", "gradcheck",
    "layer_classes", "profile_activation", "require_entries", "seeded", "walk_model",
]


@dataclass(frozen=True)
class CallCapture:
    """Raw tensors of one call of a Dense layer, as (read-only) numpy arrays."""

    x: np.ndarray | None
    """Layer input (``None`` when it is not a float tensor, e.g. Embedding ids)."""
    z: np.ndarray | None
    """Pre-activation x @ W + b (``None`` if the layer never applied its activation)."""
    out: np.ndarray
    """Layer output, activation(z) (the first float output)."""
    g_out: np.ndarray
    """dL/doutput (the upstream gradient g)."""
    g_z: np.ndarray | None
    """dL/dz = delta."""
    g_x: np.ndarray | None
    """dL/dinput (``None`` without a float input)."""
    derivative64: np.ndarray | None = None
    """``verify`` only: activation'(z) by float64 central differences (``None`` when the
    activation is not element-wise or does not compute in float64)."""
    kink: np.ndarray | None = None
    """``verify`` only: entries where the left and right derivatives differ (relu at 0 ...)."""


SUMMARY_FIELDS = ("count", "sumsq", "sum_abs", "max_abs", "nan", "inf")
"""The figures of one gradient tensor: reductions computed inside the step, NaN/Inf counted
only when something is not finite."""


@dataclass(frozen=True)
class CallSummary:
    """One call of an entry, reduced inside the step: no full tensors cross to the host
    unless ``full`` was asked for (``--verify``, ``--values``)."""

    x_shape: tuple[int, ...] | None
    """Shape of the input (``None`` when it is not a float tensor)."""
    out_shape: tuple[int, ...]
    input_grad: np.ndarray | None
    """dL/dinput reduced to ``SUMMARY_FIELDS`` (``None`` without a float input)."""
    output_grad_sumsq: float
    """||dL/doutput||^2, for the backward gain."""
    full: CallCapture | None = None
    x_sumsq: float | None = None
    """Forward signal: sum of the squared input entries (``None`` without a float input)."""
    out_sumsq: float | None = None
    """Forward signal: sum of the squared entries of the first float output."""


@dataclass(frozen=True)
class LayerCapture:
    """One entry's results for one batch (variable gradients are summed on the device across
    batches: ``Probe.gradient_sums``)."""

    names: tuple[str, ...]
    """Short names of the entry's variables."""
    weights: tuple[np.ndarray, ...]
    """Their values, aligned with ``names``."""
    calls: tuple[CallSummary, ...]
    low_per_unit: np.ndarray | None = None
    """Per unit: entries whose measured activation'(z) is below the low threshold."""
    low_entries: int = 0
    activity_rows: int = 0
    """Rows (samples x positions x calls) the activation was measured on."""
    confident: int = 0
    """Softmax: rows whose top probability reaches the confidence threshold."""
    per_sample_sq: np.ndarray | None = None
    """``per_sample``: ||dl_i/dW||^2 + ||dl_i/db||^2 per sample (gradients of per-sample terms)."""
    confident_wrong: int | None = None
    """Softmax output with labels: confident rows whose top class is not the label's."""
    moving_moment: np.ndarray | None = None
    """BatchNormalization in inference: per channel, the sum over the batch (every call and
    position) of (x - moving_mean)^2; divided by those rows and moving_variance + epsilon, it
    says how well the moving statistics describe this data (1 when they do)."""

    def weight(self, name: str) -> np.ndarray | None:
        """The value of the variable with this short name, or ``None``."""
        return self.weights[self.names.index(name)] if name in self.names else None

    @property
    def kernel(self) -> np.ndarray:
        """Dense layout: the kernel."""
        kernel = self.weight("kernel")
        assert kernel is not None, "no kernel in this entry"
        return kernel

    @property
    def bias(self) -> np.ndarray | None:
        """Dense layout: the bias, or ``None``."""
        return self.weight("bias")


@dataclass(frozen=True)
class BatchCapture:
    """Everything one step produced."""

    loss: float
    samples: int
    layers: tuple[LayerCapture, ...]
    """Aligned with the probe's ``sites``."""
    nonfinite: int = 0
    """NaN/Inf entries in this batch's inputs and labels."""
    entries: int = 0
    """All entries of this batch's inputs and labels."""
    input_stats: tuple[np.ndarray | None, ...] = ()
    """Per model input: ``[min, max, sum, sum of squares]`` of a float input (``None`` for
    integer inputs)."""
    labels: tuple[np.ndarray, ...] | None = None
    """Under a strategy with full tensors (``--verify``/``--values``): the whole batch's
    labels, gathered from every replica in the order of the gathered tensors."""


# ---------------------------------------------------------------- hooks


@dataclass
class _CallRecord:
    x: Any = None
    x_source: Any = None
    """The input as the layer received it (before the tap): often another entry's output."""
    z: Any = None
    out: list[Any] = field(default_factory=list)
    gx: list[Any] | None = None
    """dL/dx reduced during the backward pass (``_reductions``; ``_counts`` when counting)."""
    gx_full: Any = None
    gout_sq: list[Any] = field(default_factory=list)
    """||dL/doutput||^2 of each float output that the loss reached."""
    gout_full: Any = None
    gz: Any = None
    """dL/dz (delta), when asked for."""


@dataclass
class _Recorder:
    """Collects the symbolic tensors of one trace, per site index, in call order, and the
    gradients that reach them during the backward pass (through ``tap``)."""

    tf: Any = None
    tape: Any = None
    calls: dict[int, list[_CallRecord]] = field(default_factory=dict)
    first_call: list[int] = field(default_factory=list)
    follower_calls: dict[int, list[_CallRecord]] = field(default_factory=dict)
    want_z: frozenset[int] = frozenset()
    """Sites whose dL/dz (delta) is kept: per-sample norms, --verify, --values."""
    full: bool = False
    counting: bool = False

    def new_call(self, index: int) -> _CallRecord:
        record = _CallRecord()
        if index not in self.calls:
            self.calls[index] = []
            self.first_call.append(index)
        self.calls[index].append(record)
        return record

    def tap(self, t: Any, record: _CallRecord, role: str) -> Any:
        """``t`` through an identity whose gradient hands dL/dt to ``record`` as the backward
        pass produces it: reduced on the spot (kept whole only when ``full``), so no layer's
        input or output gradient outlives its use, as in a plain tape."""
        tf = self.tf

        @tf.custom_gradient  # type: ignore[untyped-decorator]
        def identity(v: Any) -> Any:
            def grad(dy: Any) -> Any:
                self._receive(record, role, dy)
                return dy

            # custom_gradient wraps what it returns in an identity op of its own
            return v, grad

        return identity(t)

    def _receive(self, record: _CallRecord, role: str, dy: Any) -> None:
        tf = self.tf
        if role == "x":
            record.gx = _counts(tf, dy) if self.counting else _reductions(tf, dy)
            if self.full:
                record.gx_full = dy
        elif role == "z":
            record.gz = dy
        else:
            if self.full and role == "out0":
                record.gout_full = dy
            record.gout_sq.append(_half_sumsq(tf, dy))


def _replace_call(layer: Any, hooked: Any) -> Any:
    """Put ``hooked`` in place of ``layer.call`` on this instance only; return the undo."""
    had_instance_call = "call" in vars(layer)
    original_call = vars(layer).get("call")
    layer.call = hooked

    def undo() -> None:
        if had_instance_call:
            layer.call = original_call
        else:
            vars(layer).pop("call", None)

    return undo


KERAS_TENSOR_ATTRS = ("_keras_mask", "_keras_logits")
"""Attributes Keras sets on a layer's output that later layers and losses read."""


def _float_tensor(tf: Any, t: Any) -> bool:
    return isinstance(t, tf.Tensor) and t.dtype.is_floating


class _Slot(threading.local):
    """The recorder of the pass running in this thread. Under ``tf.distribute`` every replica
    traces the model in a thread of its own, each with its own recorder: hooks read the
    recorder from here, so no hook state is shared by replicas."""

    recorder: _Recorder | None = None


def _install(tf: Any, index: int, site: Site, slot: _Slot) -> Any:
    layer = site.layer
    original_call = layer.call
    hook_activation = site.profile is not None
    original_activation: Any = layer.activation if hook_activation else None

    @functools.wraps(original_call)
    def hooked_call(inputs: Any, *args: Any, **kwargs: Any) -> Any:
        recorder = slot.recorder
        if recorder is None or recorder.tape is None:  # outside the probe's pass: leave it
            return original_call(inputs, *args, **kwargs)
        record = recorder.new_call(index)
        x = inputs
        if _float_tensor(tf, inputs):
            recorder.tape.watch(inputs)  # the backward pass reaches this input, no further
            x = recorder.tap(inputs, record, "x")
            record.x = x
            record.x_source = inputs
        if not hook_activation:
            out = original_call(x, *args, **kwargs)
        else:
            def capture(z: Any) -> Any:
                record.z = z
                if index in recorder.want_z:
                    z = recorder.tap(z, record, "z")
                return original_activation(z)

            layer.activation = capture
            try:
                out = original_call(x, *args, **kwargs)
            finally:
                layer.activation = original_activation
        flat = tf.nest.flatten(out)
        tapped = []
        for t in flat:
            if _float_tensor(tf, t):
                new = recorder.tap(t, record, "out0" if not record.out else "out")
                # what Keras hangs on the tensor travels with it: the mask, and the logits a
                # softmax/sigmoid keeps (Keras 3 losses compute from them)
                for attr in KERAS_TENSOR_ATTRS:
                    value = getattr(t, attr, None)
                    if value is not None:
                        setattr(new, attr, value)
                record.out.append(new)
                tapped.append(new)
            else:
                tapped.append(t)
        return tf.nest.pack_sequence_as(out, tapped)

    restore_call = _replace_call(layer, hooked_call)

    def undo() -> None:
        if hook_activation:
            layer.activation = original_activation
        restore_call()

    return undo


def _install_follower(index: int, layer: Any, slot: _Slot) -> Any:
    original_call = layer.call

    @functools.wraps(original_call)
    def hooked_call(inputs: Any, *args: Any, **kwargs: Any) -> Any:
        out = original_call(inputs, *args, **kwargs)
        recorder = slot.recorder
        if recorder is not None and recorder.tape is not None:
            recorder.follower_calls.setdefault(index, []).append(
                _CallRecord(x=inputs, out=[out]))
        return out

    return _replace_call(layer, hooked_call)


@contextmanager
def instrumented(tf: Any, sites: Sequence[Site]) -> Iterator[_Slot]:
    """Hooks on every site for the duration of the block; always removed on exit. A pass
    records by putting a recorder in the slot for its thread."""
    slot = _Slot()
    undos = []
    try:
        for i, site in enumerate(sites):
            undos.append(_install(tf, i, site, slot))
            if site.follower is not None:
                undos.append(_install_follower(i, site.follower.layer, slot))
        yield slot
    finally:
        for undo in reversed(undos):
            undo()


# ---------------------------------------------------------------- the pass


class _Packer:
    """The small figures of one step, packed into one float64 vector: one transfer to the host
    per batch instead of one per figure, and few graph ops (scalars are stacked and vectors
    concatenated per dtype, then cast once). Each figure is added with its merge across
    replicas (``engine.layout``); ``packed`` returns the layout, which the trace fixes (every
    piece is a scalar or a vector of static length). An eager step (one small batch) joins the
    values on the host instead: there, every distinct op costs its first-use setup (about 2 ms
    each in a fresh process), which is most of what the step would add."""

    def __init__(self, tf: Any) -> None:
        self.tf = tf
        self.pieces: list[tuple[tuple[Any, ...], Any, Any]] = []

    def add(self, key: tuple[Any, ...], value: Any, merge: Merge | tuple[Merge, ...]) -> None:
        self.pieces.append((key, value, merge))

    def packed(self) -> tuple[Any, Layout]:
        tf = self.tf
        layout: Layout = {}
        if tf.executing_eagerly():  # values exist already: join them on the host, no ops to run
            parts, offset = [], 0
            for key, value, merge in self.pieces:
                part = np.asarray(value, dtype=np.float64).reshape(-1)
                layout[key] = Figure(slice(offset, offset + part.size), merge)
                offset += part.size
                parts.append(part)
            return np.concatenate(parts), layout
        groups: dict[tuple[str, int], list[tuple[tuple[Any, ...], Any, Any]]] = {}
        for key, value, merge in self.pieces:
            groups.setdefault((value.dtype.name, len(value.shape)), []).append(
                (key, value, merge))
        parts, offset = [], 0
        for (_, rank), members in groups.items():
            values = [v for _, v, _ in members]
            joined = tf.stack(values) if rank == 0 else tf.concat(values, axis=0)
            parts.append(tf.cast(joined, tf.float64))
            for key, value, merge in members:
                n = 1 if rank == 0 else int(value.shape[0])
                layout[key] = Figure(slice(offset, offset + n), merge)
                offset += n
        return tf.concat(parts, axis=0), layout


def batch_tensor(tf: Any, array: Any, fresh: bool = False) -> Any:
    """A batch as a tensor. ``fresh``: the array is a buffer allocated for this batch alone that
    nothing else will read or write (a slice read from a file, a dtype conversion): when it is
    C-contiguous and aligned as TensorFlow's kernels require, TensorFlow takes it over through
    DLPack instead of copying it (two copies of each batch otherwise: numpy's and its own). Any
    other array is copied, so a caller's array is never shared with a tensor."""
    if (fresh and isinstance(array, np.ndarray) and array.size and array.flags.c_contiguous
            and array.flags.writeable and array.dtype.isnative and array.dtype.kind in "biuf"
            and array.ctypes.data % BUFFER_ALIGNMENT == 0):
        return tf.experimental.dlpack.from_dlpack(array.__dlpack__())
    return tf.convert_to_tensor(array)


def _shape(tf: Any, t: Any) -> Any:
    """``tf.shape(t)``; in an eager step the shape is known, so no op is run for it."""
    if tf.executing_eagerly() and t.shape.is_fully_defined():
        return np.asarray(t.shape.as_list(), dtype=np.int64)
    return tf.shape(t)


def _widened(tf: Any, g: Any) -> Any:
    return tf.cast(g, tf.float32) if g.dtype in (tf.float16, tf.bfloat16) else g


def _half_sumsq(tf: Any, g: Any) -> Any:
    """sum(g^2) / 2 in one kernel (``l2_loss``), without a squared copy. The host doubles it
    (exact): an eager step pays for every op, and this runs a few times per entry."""
    return tf.nn.l2_loss(_widened(tf, g))


def _reductions(tf: Any, g: Any) -> list[Any]:
    """sum of squares, sum of |g|, max |g| of a gradient, in its own precision (tree-reduced
    sums: ~1e-7 relative error in float32; 16-bit floats are widened first). NaN poisons all
    three; NaN/Inf are counted by ``_counts`` only when the host sees something not finite."""
    wide = _widened(tf, g)
    absval = tf.abs(wide)
    return [_half_sumsq(tf, wide), tf.reduce_sum(absval), tf.reduce_max(absval)]


GX_MERGES: tuple[Merge, ...] = ("sum", "sum", "max")
"""How ``_reductions``' figures merge across replicas."""
COUNT_MERGES: tuple[Merge, ...] = ("max", "sum", "sum")
"""How ``_counts``' figures merge across replicas."""


def _counts(tf: Any, g: Any) -> list[Any]:
    """The rare path, for one gradient: max |g| over the entries that are not NaN, the NaN
    count and the Inf count."""
    absval = tf.abs(_widened(tf, g))
    nan = tf.math.is_nan(absval)
    top = tf.reduce_max(tf.where(nan, tf.zeros_like(absval), absval))
    return [top, tf.reduce_sum(tf.cast(nan, tf.float64)),
            tf.reduce_sum(tf.cast(tf.math.is_inf(absval), tf.float64))]


def _rows(tf: Any, t: Any, batch: Any, width: int) -> Any:
    """(batch, positions, width): calls and positions of one sample become its rows. The
    positions are counted, not inferred (-1): a replica's share of a batch may be empty."""
    positions = tf.reduce_prod(tf.shape(t)[1:]) // width
    return tf.reshape(tf.cast(t, tf.float64), tf.stack([batch, positions, width]))


def _per_sample_sq(tf: Any, xs: list[Any], deltas: list[Any], bias: DenseView | None,
                   n_in: int, n_out: int) -> Any:
    """||X_i^T Delta_i||_F^2 (+ ||dl_i/db||^2 when ``bias``) per sample, inside the step, on the
    layer's Dense view: x as rows of ``n_in``, delta as rows of ``n_out``.

    One rank-2 call: ||x_i||^2 ||delta_i||^2. Otherwise the Gram form <X_i X_i^T, D_i D_i^T>
    when a sample has few rows, or the per-sample product when that is smaller.
    """
    batch = tf.shape(xs[0])[0]
    full_bias = bias is None or len(bias.bias_axes) == len(bias.out_dims)
    if len(xs) == 1 and len(xs[0].shape) == 2 and len(deltas[0].shape) == 2 and full_bias:
        # row norms in the tensors' precision (one row is short) by one fused kernel (no
        # squared copy: x is the batch's largest tensor), squared and multiplied in float64
        xx, dd = (tf.square(tf.cast(tf.math.reduce_euclidean_norm(_widened(tf, t), axis=1),
                                    tf.float64)) for t in (xs[0], deltas[0]))
        return dd * (xx + (1.0 if bias is not None else 0.0))
    big_x = tf.concat([_rows(tf, x, batch, n_in) for x in xs], axis=1)
    big_d = tf.concat([_rows(tf, d, batch, n_out) for d in deltas], axis=1)
    rows = sum(int(np.prod(x.shape[1:], dtype=np.int64)) // n_in
               if all(v is not None for v in x.shape[1:]) else 10**9 for x in xs)
    if rows * rows <= n_in * n_out:
        gx = tf.einsum("bri,bsi->brs", big_x, big_x)
        gd = tf.einsum("bro,bso->brs", big_d, big_d)
        sq = tf.reduce_sum(gx * gd, axis=[1, 2])
    else:
        per = tf.einsum("bri,bro->bio", big_x, big_d)
        sq = tf.reduce_sum(per * per, axis=[1, 2])
    if bias is not None:
        s = tf.reduce_sum(big_d, axis=1)  # dl_i/db over every output entry
        other = [1 + k for k in range(len(bias.out_dims)) if k not in bias.bias_axes]
        if other:  # a bias over some output axes only: sum the others away
            s = tf.reduce_sum(tf.reshape(s, (batch, *bias.out_dims)), axis=other)
            s = tf.reshape(s, (batch, math.prod(
                d for k, d in enumerate(bias.out_dims) if k in bias.bias_axes)))
        sq = sq + tf.reduce_sum(s * s, axis=1)
    return sq


@dataclass
class _EagerSum:
    """The eager step's stand-in for a float64 ``tf.Variable``: the sum of what was added."""

    shape: tuple[int, ...]
    value: Any = None

    def assign_add(self, addend: Any) -> None:
        """Add a gradient in its own dtype: widened to float64 on the host, once, by ``numpy``
        (an eager step pays per op; it runs for a single batch, so there is no sum to keep)."""
        self.value = addend if self.value is None else (
            np.asarray(self.value, dtype=np.float64) + np.asarray(addend, dtype=np.float64))

    def numpy(self) -> np.ndarray:  # a writable float64 copy, as tf.Variable.numpy() gives
        if self.value is None:
            return np.zeros(self.shape)
        return np.array(self.value, dtype=np.float64)


class Probe:
    """A hooked forward/backward step over batches of one model, compiled with ``tf.function``
    (or run eagerly: cheaper for a single small batch than tracing).

    Use as a context manager: hooks are installed on enter and removed on exit, whatever
    happens in between. The step reduces everything it can on the device — gradient norms,
    maxima, NaN/Inf counts, saturated/dead unit counts, per-sample norms — and hands one small
    vector of figures to the host per batch; every owned variable's gradient is summed across
    batches on the device in float64 (``gradient_sums``, zeroed on enter and by ``reset``); full
    tensors cross only when ``full`` (``--verify``/``--values``). ``order`` is the forward order
    of the sites (by first call).
    """

    def __init__(
        self,
        model: Any,
        sites: Sequence[Site],
        loss: Loss,
        *,
        training: bool = False,
        compiled: bool = True,
        verify: bool = False,
        full: bool = False,
        per_sample: bool = False,
        strategy: Any = None,
        timeout: float | None = None,
    ) -> None:
        from gradinspect._tf import tf_modules

        self.tf, _ = tf_modules()
        self.model = model
        self.sites = list(sites)
        self.loss = loss
        self.training = training
        self.verify = verify
        self.full = full or verify
        self.per_sample = per_sample
        self.order: list[int] = []
        self._slot: _Slot | None = None
        self._cm: Any = None
        # Under a tf.distribute strategy every batch is split over the replicas: always one
        # compiled step (strategy.run), merged with the strategy's collectives
        self.strategy = strategy
        self._replicas = (len(strategy.extended.worker_devices) if strategy is not None
                          else 1)
        self._first_replica = first_replica(strategy)
        self._timeout = timeout
        self._compiled = compiled or strategy is not None
        self._steps: dict[bool, Any] = {}
        self._traces: dict[int, tuple[list[int], Layout]] = {}
        """Per tracing thread (one per replica under a strategy): the forward order of the
        sites and the figures' layout its trace fixed."""
        self._generators = seed_generators(model)
        self._layout: Layout = {}
        self._want_z = frozenset(i for i, s in enumerate(self.sites) if s.profile is not None
                                 and (self.full or (per_sample and s.adapter.per_sample
                                                    and s.dense_view is not None)))
        self._param_cache: tuple[tuple[float, ...], Any] | None = None
        self._weights: list[tuple[np.ndarray, ...]] | None = None
        self._sums: list[list[Any]] | None = None
        self._tf_vars = [[_tf_variable(self.tf, v.variable) for v in s.variables]
                         for s in self.sites]
        # Where activation'(z) is low exactly on two tails of z (relu, relu6, sigmoid, tanh,
        # elu ...), the step counts low entries by comparing z with the tails' bounds instead of
        # differentiating the activation again: one read of z instead of a second tape.
        self._bounded = [s.measured is not None and s.measured.kind not in ("softmax", "linear")
                         and s.measured.tails_only() for s in self.sites]
        # BatchNormalization in inference normalises with its moving statistics: the step
        # measures how well they describe the data it sees
        self._moving = [_moving_statistics(s.layer) if not training else None
                        for s in self.sites]

    def _label_ids(self, site: Site, labels: Any, units: int) -> Any:
        """The class id of each row of an output's labels (one-hot or sparse), or ``None``
        when the site is not an output with labels."""
        tf = self.tf
        k = site.output_index
        if labels is None or k is None or k >= len(labels):
            return None
        y = labels[k]
        if y.dtype.is_integer:
            return tf.reshape(tf.cast(y, tf.int64), (-1,))
        if units < 2 or y.shape[-1] != units:
            return None
        return tf.argmax(tf.reshape(y, (-1, units)), axis=1, output_type=tf.int64)

    def __enter__(self) -> Probe:
        self._weights = None
        self.reset()
        self._cm = instrumented(self.tf, self.sites)
        self._slot = self._cm.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        cm, self._cm = self._cm, None
        if cm is not None:
            cm.__exit__(*exc)

    def reset(self) -> None:
        """Zero the device-side gradient sums (float64 variables for the compiled step; an
        eager step keeps plain tensors and skips creating variables, which costs a single-batch
        run from the command line about 20 ms of first-use setup)."""
        tf = self.tf
        if self._sums is None:  # made at zero: nothing to reset yet
            self._sums = [[tf.Variable(tf.zeros(v.shape, tf.float64), trainable=False)
                           if self._compiled else _EagerSum(tuple(int(d) for d in v.shape))
                           for v in vs] for vs in self._tf_vars]
            return
        for total in (t for per in self._sums for t in per):
            if isinstance(total, _EagerSum):
                total.value = None
            else:
                total.assign(tf.zeros(total.shape, tf.float64))

    def gradient_sums(self) -> list[tuple[np.ndarray, ...]]:
        """Per site, the gradient of every owned variable (aligned with ``site.variables``)
        summed over the steps since the last reset, in float64."""
        assert self._sums is not None
        return [tuple(t.numpy() for t in per) for per in self._sums]

    def _measured(self, recorder: _Recorder,
                  calls: dict[int, list[_CallRecord]]) -> dict[int, list[Any]]:
        """Per site, per call, units on the last axis: the measured activation's input (sites
        whose low set is two tails, see ``_bounded``), its derivative there (the others), or
        its output probabilities (softmax). Derivatives come from one second tape for all
        sites (element-wise activations: the gradient of the summed outputs is the
        derivative)."""
        tf = self.tf
        found: dict[int, list[Any]] = {i: [] for i in range(len(self.sites))}
        watched: list[tuple[int, Any, Any]] = []
        for i, site in enumerate(self.sites):
            measured = site.measured
            if measured is None:
                continue
            if site.follower is not None:
                pairs = [(c.x, c.out[0]) for c in recorder.follower_calls.get(i, [])]
                fn = site.follower.layer.call
            else:
                pairs = [(c.z, c.out[0]) for c in calls[i] if c.z is not None and c.out]
                fn = site.layer.activation
            for x, out in pairs:
                if measured.kind == "softmax":
                    found[i].append(_units_last(tf, out, site.channel_axis))
                elif self._bounded[i]:
                    found[i].append(_units_last(tf, x, site.channel_axis))
                else:
                    watched.append((i, x, fn))
        if watched:
            with tf.GradientTape() as tape:
                outs = []
                for _, x, fn in watched:
                    tape.watch(x)
                    outs.append(fn(x))
            derivatives = tape.gradient(outs, [x for _, x, _ in watched],
                                        unconnected_gradients=tf.UnconnectedGradients.ZERO)
            for (i, _, _), d in zip(watched, derivatives, strict=True):
                found[i].append(_units_last(tf, d, self.sites[i].channel_axis))
        return found

    def _add_to_sums(self, grads: list[list[Any]]) -> None:
        tf = self.tf
        assert self._sums is not None
        for sums, gs in zip(self._sums, grads, strict=True):
            for total, g in zip(sums, gs, strict=True):
                if isinstance(total, _EagerSum):
                    total.assign_add(tf.convert_to_tensor(g))  # dense, float64 on the host
                elif isinstance(g, tf.IndexedSlices):  # Embedding: only the rows looked up
                    total.scatter_add(tf.IndexedSlices(tf.cast(g.values, tf.float64),
                                                       g.indices, g.dense_shape))
                else:
                    total.assign_add(tf.cast(g, tf.float64))

    def _traced(self, inputs: list[Any], labels: Any, params: Any,
                counting: bool = False) -> dict[str, Any]:
        """One step (of one replica, under a strategy), with a recorder of its own in this
        thread's slot."""
        slot = self._slot
        assert slot is not None, "Probe used outside its context"
        slot.recorder = _Recorder(tf=self.tf, want_z=self._want_z, full=self.full,
                                  counting=counting)
        try:
            return self._recorded(slot.recorder, inputs, labels, params, counting)
        finally:
            slot.recorder = None

    def _recorded(self, recorder: _Recorder, inputs: list[Any], labels: Any, params: Any,
                  counting: bool) -> dict[str, Any]:
        """One step. ``params`` is float32 ``[scale, confidence, low_0 ..., a_0 ..., b_0 ...]``
        (per site: the derivative threshold, and the z bounds of its low tails).
        ``counting``: the same pass, returning only the NaN/Inf counts (and adding nothing
        to the gradient sums). Under a strategy the variables' gradients are all-reduced and
        the figures, per-sample rows and full tensors gathered from every replica, each
        replica doing the same collectives in the same order."""
        tf = self.tf
        scale, confidence, *rest = tf.unstack(params)  # one op, not a slice per figure
        n_sites = len(self.sites)
        low, tail_a, tail_b = (rest[:n_sites], rest[n_sites:2 * n_sites],
                               rest[2 * n_sites:])
        # Only what is inspected is watched: the tape records no op upstream of the earliest
        # selected entry, so a filtered run's backward pass stops there.
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            for vs in self._tf_vars:
                for v in vs:
                    tape.watch(v)
            recorder.tape = tape
            try:
                model_in = inputs if len(inputs) > 1 else inputs[0]
                outputs = self.model(model_in, training=self.training)
            finally:
                recorder.tape = None
            terms = self.loss.terms(tf, tf.nest.flatten(outputs), labels)
            total = tf.reduce_sum(terms)
            total = total * tf.cast(scale, total.dtype)  # float64 and float16 models too
        # the input, output and pre-activation gradients reach the records through the taps
        # while this runs; only the variables' gradients are returned whole
        var_grads = tape.gradient(total, self._tf_vars,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
        calls = {i: recorder.calls.get(i, []) for i in range(len(self.sites))}
        has_xs = [bool(calls[i]) and all(c.x is not None for c in calls[i]) for i in calls]
        order = list(recorder.first_call)
        checked = [t for t in [*inputs, *(labels or [])] if t.dtype.is_floating]
        if counting:
            zero = tf.zeros((), tf.float64)
            fixed = [tf.add_n([zero] + [tf.reduce_sum(tf.cast(~tf.math.is_finite(t),
                                                              tf.float64)) for t in checked])]
            for i in range(len(self.sites)):
                if has_xs[i]:
                    for c in calls[i]:
                        fixed += [tf.cast(v, tf.float64) for v in (c.gx or [zero] * 3)]
            self._traces[threading.get_ident()] = (order, {})
            return {"counts": self._gathered(tf.stack(fixed)[None])}
        if self.strategy is None:
            self._add_to_sums(var_grads)
        else:  # every replica gets the sum of all replicas' gradients (the outer step adds it)
            var_grads = _replica_context(tf).all_reduce(
                tf.distribute.ReduceOp.SUM, [[tf.convert_to_tensor(g) for g in gs]
                                             for gs in var_grads], options=self._options())
        pack = _Packer(tf)
        pack.add(("loss",), total, "sum")
        for k, t in enumerate(checked):
            pack.add(("input_sum", k), tf.reduce_sum(t), "sum")
        # forward signal: an entry's input is often the previous entry's output (Conv -> BN)
        # or a model input, whose sum of squares is taken once
        out_sq: dict[int, Any] = {}
        for k, t in enumerate(inputs):
            if t.dtype.is_floating:
                wide = _widened(tf, t)
                out_sq[id(t)] = _half_sumsq(tf, wide)
                pack.add(("input_stats", k), tf.stack([
                    tf.reduce_min(wide), tf.reduce_max(wide), tf.reduce_sum(wide),
                    tf.cast(out_sq[id(t)], wide.dtype)]), ("min", "max", "sum", "sum"))
        measured = self._measured(recorder, calls)
        out_sq.update({id(c.out[0]): _half_sumsq(tf, c.out[0]) for i in range(len(self.sites))
                       for c in calls[i] if c.out})
        per_sample: dict[int, Any] = {}
        full: dict[int, Any] = {}
        for i, site in enumerate(self.sites):
            cs = calls[i]
            has_x = has_xs[i]
            for j, c in enumerate(cs):
                if has_x:
                    pack.add(("x_shape", i, j), _shape(tf, c.x), "rows")
                    shared = out_sq.get(id(c.x_source))
                    pack.add(("x_sq", i, j), shared if shared is not None
                             else _half_sumsq(tf, c.x), "sum")
                    g_x = c.gx or [tf.zeros((), c.x.dtype)] * 3  # the loss never reached it
                    for n, value in enumerate(g_x):
                        pack.add(("gx", i, j, n), value, GX_MERGES[n])
                if c.out:
                    pack.add(("out_shape", i, j), _shape(tf, c.out[0]), "rows")
                    pack.add(("out_sq", i, j), out_sq[id(c.out[0])], "sum")
                pack.add(("gout", i, j), tf.add_n(c.gout_sq) if c.gout_sq
                         else tf.zeros((), tf.float32), "sum")
            profile = site.measured
            units = site.units or 1
            if measured[i] and profile is not None and profile.kind == "softmax":
                probs = [tf.reshape(_widened(tf, p), (-1, units)) for p in measured[i]]
                confident_rows = [tf.reduce_max(p, axis=1) >= tf.cast(confidence, p.dtype)
                                  for p in probs]
                pack.add(("confident", i), tf.add_n([tf.reduce_sum(tf.cast(c, tf.int32))
                                                     for c in confident_rows]), "sum")
                pack.add(("rows", i), tf.add_n([tf.shape(p)[0] for p in probs]), "sum")
                ids = self._label_ids(site, labels, units)
                if ids is not None and len(probs) == 1:
                    wrong = tf.logical_and(confident_rows[0], tf.argmax(
                        probs[0], axis=1, output_type=tf.int64) != ids)
                    pack.add(("confident_wrong", i), tf.reduce_sum(tf.cast(wrong, tf.int32)),
                             "sum")
            elif measured[i] and self._bounded[i]:
                lows = [self._outside(z, tail_a[i], tail_b[i]) for z in measured[i]]
                pack.add(("low_per_unit", i), tf.add_n(
                    [tf.reduce_sum(tf.cast(m, tf.int32), axis=_leading_axes(m)) for m in lows]),
                    "sum")
                pack.add(("rows", i), _row_count(tf, lows), "sum")
            elif measured[i]:
                lows = [tf.abs(_widened(tf, d)) < tf.cast(low[i], _widened(tf, d).dtype)
                        for d in measured[i]]
                pack.add(("low_per_unit", i), tf.add_n(
                    [tf.reduce_sum(tf.cast(m, tf.int32), axis=_leading_axes(m)) for m in lows]),
                    "sum")
                pack.add(("rows", i), _row_count(tf, lows), "sum")
            moving = self._moving[i]
            if moving is not None and has_x:
                mean, _, axis = moving
                mean = _tf_variable(tf, mean)
                # two kernels per call (a fused squared difference, one reduction): an eager
                # step pays per op, and a MobileNet has 52 of these layers
                moments = []
                for c in cs:
                    x = _axis_last(tf, _widened(tf, c.x), axis)
                    m = mean if mean.dtype == x.dtype else tf.cast(mean, x.dtype)
                    moments.append(tf.reduce_sum(tf.math.squared_difference(x, m),
                                                 axis=list(range(len(x.shape) - 1))))
                pack.add(("moving_moment", i), tf.add_n(moments) if len(moments) > 1
                         else moments[0], "sum")
            has_z = bool(cs) and i in recorder.want_z and all(c.z is not None for c in cs)
            deltas = [c.gz if c.gz is not None else tf.zeros_like(c.z) for c in cs] if has_z \
                else []
            view = site.dense_view
            if self.per_sample and site.adapter.per_sample and view is not None and has_z \
                    and has_x:
                per_sample[i] = _per_sample_sq(
                    tf, [c.x for c in cs], [d / tf.cast(scale, d.dtype) for d in deltas],
                    view if site.use_bias else None, view.n_in, view.n_out)
            if self.full:
                empty = tf.zeros((0,))
                full[i] = {
                    "x": [c.x if has_x else empty for c in cs],
                    "z": [c.z if has_z else empty for c in cs],
                    "out": [c.out[0] if c.out else empty for c in cs],
                    "g_out": [(c.gout_full if c.gout_full is not None
                               else tf.zeros_like(c.out[0])) if c.out else empty for c in cs],
                    "g_z": deltas if has_z else [empty for _ in cs],
                    "g_x": [(c.gx_full if c.gx_full is not None else tf.zeros_like(c.x))
                            if has_x else empty for c in cs],
                }
        figures, layout = pack.packed()
        self._traces[threading.get_ident()] = (order, layout)
        if self.strategy is None:
            return {"figures": figures, "per_sample": per_sample, "full": full}
        return {"figures": self._gathered(figures[None]), "grads": var_grads,
                "per_sample": {i: self._gathered(v) for i, v in per_sample.items()},
                "full": tf.nest.map_structure(self._gathered_rows, full),
                "labels": ([self._gathered(y) for y in labels]
                           if labels is not None and self.full else None)}

    def _options(self) -> Any:
        """The collectives' options: a timeout, so a worker that died is an error, not a
        hang."""
        return (self.tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=self._timeout) if self._timeout else None)

    def _gathered(self, t: Any) -> Any:
        """``t`` of every replica (every worker's included), concatenated along axis 0 in
        replica order; ``t`` itself without a strategy."""
        if self.strategy is None:
            return t
        # an identity first: a tensor every replica shares (captured from outside the
        # replica function) would be gathered once instead of once per replica
        return _replica_context(self.tf).all_gather(self.tf.identity(t), axis=0,
                                                    options=self._options())

    def _gathered_rows(self, t: Any) -> Any:
        """A full tensor of every replica; the static empty stand-in for a tensor a call does
        not have stays as it is (all-gathering a tensor of static size 0 crashes TensorFlow
        2.21's local collectives)."""
        if t.shape.rank == 1 and t.shape[0] == 0:
            return t
        return self._gathered(t)

    def _outside(self, z: Any, a: Any, b: Any) -> Any:
        """``z <= a or z >= b``: the low set of an activation whose derivative is low on two
        tails. In an eager step the bounds are known, so an open tail (relu: b = +inf) costs
        no comparison."""
        tf = self.tf
        if tf.executing_eagerly():
            lo, hi = float(a), float(b)
            if math.isinf(hi):
                return z <= lo
            if math.isinf(lo):
                return z >= hi
            return tf.logical_or(z <= lo, z >= hi)
        return tf.logical_or(z <= tf.cast(a, z.dtype), z >= tf.cast(b, z.dtype))

    def _compile(self, tensors: list[Any], labels: list[Any] | None, params: Any,
                 counting: bool = False) -> Any:
        """One trace for every batch size: the batch axis is left open in the signature, so
        a last partial batch does not trace the graph again. The concrete function is called
        directly (no signature matching per batch)."""
        tf = self.tf

        def spec(t: Any) -> Any:
            return tf.TensorSpec((None, *t.shape[1:]), t.dtype)

        signature = [[spec(t) for t in tensors],
                     [spec(y) for y in labels] if labels is not None else None,
                     tf.TensorSpec(params.shape, params.dtype)]
        if self.strategy is not None:
            return self._compile_distributed(signature, counting)

        def traced(inputs: list[Any], labels: Any, params: Any) -> dict[str, Any]:
            return self._traced(inputs, labels, params, counting=counting)

        step = tf.function(traced, autograph=False).get_concrete_function(*signature)
        self._adopt_trace()
        return step

    def _compile_distributed(self, signature: list[Any], counting: bool) -> Any:
        """The step under ``self.strategy``: ``strategy.run`` gives each local replica its
        contiguous share of this worker's batch (rows ``bounds[r]:bounds[r + 1]``); every
        replica runs the same hooked pass and the same collectives, so each holds the merged
        results, and the step returns the first local replica's."""
        tf = self.tf
        strategy, first = self.strategy, self._first_replica

        def outer(inputs: list[Any], labels: Any, params: Any, bounds: Any) -> dict[str, Any]:
            def replica() -> dict[str, Any]:
                r = _replica_context(tf).replica_id_in_sync_group - first
                lo, hi = bounds[r], bounds[r + 1]
                return self._traced([t[lo:hi] for t in inputs],
                                    [y[lo:hi] for y in labels] if labels is not None else None,
                                    params, counting=counting)

            result: dict[str, Any] = strategy.experimental_local_results(strategy.run(replica))[0]
            if not counting:
                self._add_to_sums(result.pop("grads"))
            return result

        step = tf.function(outer, autograph=False).get_concrete_function(
            *signature, tf.TensorSpec((self._replicas + 1,), tf.int32))
        self._adopt_trace()
        return step

    def _adopt_trace(self) -> None:
        """The order and layout the trace fixed (every replica's must be the same)."""
        traces = list(self._traces.values())
        self._traces = {}
        if not traces:
            return
        order, layout = traces[0]
        if any(o != order or (lay and lay.keys() != layout.keys()) for o, lay in traces[1:]):
            raise ProbeError("the replicas traced different passes",
                             "run without --distribute, and report this as a bug")
        self.order = order
        if layout:
            self._layout = layout

    def _param_tensor(self, scale: float, lows: Sequence[float], confidence: float) -> Any:
        """``[scale, confidence, *lows, *tail_a, *tail_b]`` as one tensor, made again only
        when they change."""
        bounds = [self._tail_bounds(i, low) for i, low in enumerate(lows)]
        key = (float(scale), float(confidence), *(float(v) for v in lows),
               *(a for a, _ in bounds), *(b for _, b in bounds))
        if self._param_cache is None or self._param_cache[0] != key:
            self._param_cache = (key, self.tf.constant(key, self.tf.float32))
        return self._param_cache[1]

    def _tail_bounds(self, i: int, low: float) -> tuple[float, float]:
        """Site ``i``'s low tails for the derivative threshold ``low`` (unused: +-inf)."""
        measured = self.sites[i].measured
        if not self._bounded[i] or measured is None or not measured.peak:
            return -math.inf, math.inf
        fraction = low / measured.peak
        bounds = measured.tail_bounds(fraction) or measured.tail_bounds(fraction, strict=False)
        return bounds if bounds is not None else (-math.inf, math.inf)

    def _run(self, counting: bool, tensors: list[Any], labels: list[Any] | None,
             params: Any, bounds: Any = None) -> dict[str, Any]:
        tf = self.tf
        try:
            if not self._compiled:
                eager = self._traced(tensors, labels, params, counting=counting)
                self._adopt_trace()
                return eager
            if counting not in self._steps:  # tracing runs the model: its errors are the pass's
                self._steps[counting] = self._compile(tensors, labels, params, counting)
            args = (tensors, labels, params) + ((bounds,) if self.strategy is not None else ())
            result: dict[str, Any] = self._steps[counting](*args)
            return result
        except (tf.errors.DeadlineExceededError, tf.errors.UnavailableError,
                tf.errors.CancelledError) as exc:
            if self.strategy is None:
                raise self._failed(exc) from exc
            waited = (f"did not answer within {self._timeout:g} s" if self._timeout
                      and isinstance(exc, tf.errors.DeadlineExceededError) else "is gone")
            raise ProbeError(
                f"a replica or worker {waited} during the pass ({type(exc).__name__})",
                "check that every worker in TF_CONFIG is running and reachable "
                "(--traceback shows TensorFlow's message); --worker-timeout sets how long to "
                "wait",
            ) from exc
        except (tf.errors.OpError, ValueError, TypeError) as exc:
            raise self._failed(exc) from exc

    @staticmethod
    def _failed(exc: BaseException) -> ProbeError:
        return ProbeError(f"the forward/backward pass failed: {_first_line(exc)}",
                          "run with --traceback for details")

    def _bounds(self, rows: int) -> Any:
        """Contiguous shares of ``rows`` for the local replicas, as ``[0, ..., rows]`` (the
        later ones get the extra rows when they do not divide evenly, as ``distribute.share``;
        the first ones may get none)."""
        edges = np.array([share(0, rows, r, self._replicas)[0]
                          for r in range(self._replicas)] + [rows])
        return self.tf.constant(edges, self.tf.int32)

    def step(
        self,
        inputs: Sequence[Any],
        labels: Any = None,
        scale: float = 1.0,
        low_thresholds: Sequence[float] | None = None,
        confidence: float = 0.99,
        fresh: Sequence[bool] | None = None,
        global_rows: int | None = None,
    ) -> BatchCapture:
        """Run one batch (numpy arrays or tensors). ``scale`` multiplies the summed per-sample
        loss terms; ``low_thresholds`` (per site) and ``confidence`` are the activity thresholds.
        ``fresh`` (per input): see ``batch_tensor``. Under a multi-worker strategy the arrays
        are this worker's share of the batch and ``global_rows`` the whole batch's rows; the
        capture describes the whole batch."""
        tf = self.tf
        tensors = [batch_tensor(tf, a, bool(fresh and fresh[k])) for k, a in enumerate(inputs)]
        label_tensors = [tf.convert_to_tensor(y) for y in labels] if labels is not None else None
        params = self._param_tensor(scale, low_thresholds if low_thresholds is not None
                                    else [0.0] * len(self.sites), confidence)
        replay = _generator_states(self._generators) if self.training else None
        bounds = self._bounds(int(tensors[0].shape[0])) if self.strategy is not None else None
        result = self._run(False, tensors, label_tensors, params, bounds)
        if self._weights is None:  # the pass does not change them: read once per session
            self._weights = [tuple(v.numpy() for v in vs) for vs in self._tf_vars]
        layout = self._layout
        figures = merge_rows(np.asarray(result["figures"]), layout)

        def get(*key: Any) -> np.ndarray:
            part: np.ndarray = figures[layout[key].where]
            return part

        sums = [get(*key)[0] for key in layout if key[0] == "input_sum" or
                (key[0] == "gx" and key[3] == 0)]
        counts = None
        if not np.all(np.isfinite(sums)):  # something is NaN/Inf: the same pass, counting
            if replay is not None:
                _set_generator_states(self._generators, replay)
            gathered = np.asarray(self._run(True, tensors, label_tensors, params,
                                            bounds)["counts"])
            counts = merge_counts(gathered, ("sum", *COUNT_MERGES * (gathered.shape[-1] // 3)))
        layers = []
        k = 0
        for i, site in enumerate(self.sites):
            calls = []
            j = 0
            while ("gout", i, j) in layout:
                input_grad = x_shape = None
                if ("gx", i, j, 0) in layout:
                    x_shape = tuple(int(v) for v in get("x_shape", i, j))
                    half, sum_abs, max_abs = (float(get("gx", i, j, n)[0]) for n in range(3))
                    sumsq = 2.0 * half
                    nan = inf = 0.0
                    if counts is not None:
                        max_abs, nan, inf = (float(v) for v in counts[1 + 3 * k: 4 + 3 * k])
                    input_grad = np.array([float(np.prod(x_shape)), sumsq, sum_abs,
                                           max(max_abs, 0.0), nan, inf])
                    k += 1
                x_sq = 2.0 * float(get("x_sq", i, j)[0]) if ("x_sq", i, j) in layout else None
                out_sq = (2.0 * float(get("out_sq", i, j)[0]) if ("out_sq", i, j) in layout
                          else None)
                calls.append(CallSummary(
                    x_shape=x_shape,
                    out_shape=(tuple(int(v) for v in get("out_shape", i, j))
                               if ("out_shape", i, j) in layout else ()),
                    input_grad=input_grad,
                    output_grad_sumsq=2.0 * float(get("gout", i, j)[0]),
                    full=self._full_capture(site, result["full"][i], j) if self.full else None,
                    x_sumsq=x_sq, out_sumsq=out_sq,
                ))
                j += 1
            low_per_unit = (get("low_per_unit", i).astype(np.int64)
                            if ("low_per_unit", i) in layout else None)
            layers.append(LayerCapture(
                names=tuple(v.name for v in site.variables),
                weights=self._weights[i],
                calls=tuple(calls),
                low_per_unit=low_per_unit,
                low_entries=int(low_per_unit.sum()) if low_per_unit is not None else 0,
                activity_rows=int(get("rows", i)[0]) if ("rows", i) in layout else 0,
                confident=int(get("confident", i)[0]) if ("confident", i) in layout else 0,
                per_sample_sq=(result["per_sample"][i].numpy()
                               if i in result["per_sample"] else None),
                confident_wrong=(int(get("confident_wrong", i)[0])
                                 if ("confident_wrong", i) in layout else None),
                moving_moment=(get("moving_moment", i).copy()
                               if ("moving_moment", i) in layout else None),
            ))
        if not self.order:
            self.order = [i for i in range(len(self.sites)) if layers[i].calls]
        rows = int(inputs[0].shape[0]) if global_rows is None else global_rows
        kept_labels = result.get("labels")
        return BatchCapture(
            loss=float(get("loss")[0]),
            samples=rows,
            layers=tuple(layers),
            nonfinite=int(counts[0]) if counts is not None else 0,
            entries=rows * sum(math.prod(a.shape[1:]) for a in [*inputs, *(labels or [])]),
            input_stats=tuple(get("input_stats", k) * _DOUBLE_LAST if ("input_stats", k) in layout
                              else None for k in range(len(inputs))),
            labels=(tuple(np.asarray(y) for y in kept_labels) if kept_labels is not None
                    else None),
        )

    def _full_capture(self, site: Site, f: dict[str, Any], j: int) -> CallCapture:
        """``full``: call ``j``'s tensors as numpy arrays (and, for ``verify``, activation'(z)
        by float64 finite differences). The arrays are read-only views of the tensors
        (``np.asarray``), not copies: at batch 8192 the first layer's x and dL/dx are 25 MB each."""

        def present(t: Any) -> np.ndarray | None:
            return np.asarray(t) if int(np.size(t)) or len(t.shape) > 1 else None

        z = present(f["z"][j])
        derivative64 = kink = None
        if (self.verify and z is not None and site.profile is not None
                and site.profile.kind != "softmax"):
            derivative64, kink = fd_derivative(self.tf, site.layer.activation, f["z"][j])
        return CallCapture(
            x=present(f["x"][j]), z=z, out=np.asarray(f["out"][j]),
            g_out=np.asarray(f["g_out"][j]),
            g_z=present(f["g_z"][j]) if z is not None else None, g_x=present(f["g_x"][j]),
            derivative64=derivative64, kink=kink,
        )


_DOUBLE_LAST = np.array([1.0, 1.0, 1.0, 2.0])
"""``input_stats`` carries half the sum of squares (``_half_sumsq``)."""


def _leading_axes(t: Any) -> list[int]:
    """Every axis but the last (units): per-unit sums without a reshape."""
    return list(range(len(t.shape) - 1))


def _row_count(tf: Any, tensors: Sequence[Any]) -> Any:
    """Rows (entries per unit) of the tensors: from their shapes, with no op in an eager
    step."""
    if tf.executing_eagerly() and all(t.shape.is_fully_defined() for t in tensors):
        return np.int64(sum(math.prod(t.shape.as_list()[:-1]) for t in tensors))
    return tf.add_n([tf.reduce_prod(tf.shape(t)[:-1]) for t in tensors])


def _moving_statistics(layer: Any) -> tuple[Any, Any, int] | None:
    """A BatchNormalization's (moving_mean, moving_variance, axis) when it keeps one
    statistic per channel of one axis; else ``None``."""
    mean = getattr(layer, "moving_mean", None)
    variance = getattr(layer, "moving_variance", None)
    axis = getattr(layer, "axis", -1)
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            return None
        axis = axis[0]
    if mean is None or variance is None or len(mean.shape) != 1 or not isinstance(axis, int):
        return None
    return mean, variance, axis


def _axis_last(tf: Any, t: Any, axis: int) -> Any:
    """``t`` with ``axis`` moved last."""
    rank = len(t.shape)
    axis %= rank
    if axis == rank - 1:
        return t
    return tf.transpose(t, [*(a for a in range(rank) if a != axis), axis])


def _units_last(tf: Any, t: Any, axis: int) -> Any:
    """``t`` with its unit (channel) axis last: channels_first convolutions move axis 1."""
    if axis == -1 or len(t.shape) < 3:
        return t
    rank = len(t.shape)
    return tf.transpose(t, [0, *range(2, rank), 1])


def fd_derivative(tf: Any, fn: Any, z: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    """activation'(z) by float64 central differences, and where it has a kink.

    Independent of any gradient the activation registers. ``(None, None)`` when the activation
    does not compute in float64 (finite differences in float32 would be too coarse to judge).
    ``z`` is a tensor or an array; the arithmetic runs as TensorFlow float64 ops (element-wise
    IEEE operations, so the same numbers numpy would give, on both cores).
    """
    z64 = tf.cast(z, tf.float64)
    h = 1e-5 * tf.maximum(tf.constant(1.0, tf.float64), tf.abs(z64))
    try:
        minus, mid, plus = [fn(v) for v in (z64 - h, z64, z64 + h)]
    except Exception:  # an activation that refuses float64 input
        return None, None
    if any(getattr(o, "dtype", None) != tf.float64 for o in (minus, mid, plus)):
        return None, None
    left = (mid - minus) / h
    right = (plus - mid) / h
    kink = tf.abs(right - left) > 1e-3 * tf.maximum(
        tf.constant(1.0, tf.float64), tf.maximum(tf.abs(left), tf.abs(right)))
    return np.asarray((plus - minus) / (2 * h)), np.asarray(kink)


def seed_generators(model: Any) -> list[Any]:
    """Every Keras seed generator in the model (Dropout, GaussianNoise ...), each once."""
    generators: list[Any] = []
    seen: set[int] = set()
    flatten = getattr(model, "_flatten_layers", None)
    layers = list(flatten(include_self=True, recursive=True)) if flatten else [model]
    for layer in layers:
        for generator in getattr(layer, "_seed_generators", None) or []:
            if id(generator) not in seen:
                seen.add(id(generator))
                generators.append(generator)
    return generators


def _generator_states(generators: Sequence[Any]) -> list[np.ndarray]:
    return [np.asarray(g.state.numpy()) for g in generators]


def _set_generator_states(generators: Sequence[Any], states: Sequence[np.ndarray]) -> None:
    for g, state in zip(generators, states, strict=True):
        g.state.assign(state)


@contextmanager
def seeded(model: Any, seed: int) -> Iterator[int]:
    """Every Keras seed generator in the model set to a state derived from ``seed`` for the
    block, and restored afterwards. Yields how many were set."""
    generators = seed_generators(model)
    saved = _generator_states(generators)
    try:
        for i, g in enumerate(generators):
            g.state.assign(np.array([seed, i], dtype=saved[i].dtype))
        yield len(generators)
    finally:
        _set_generator_states(generators, saved)


def batch_interactions(model: Any, training: bool) -> list[str]:
    """Layers that make one sample's output depend on the others (BatchNormalization in
    training mode): per-sample gradients are not defined for them."""
    if not training:
        return []
    found: list[str] = []

    def walk(layer: Any, prefix: str) -> None:
        for child in children(layer):
            if type(child).__name__ in ("BatchNormalization", "SyncBatchNormalization"):
                found.append(f"{prefix}{child.name}")
            walk(child, f"{prefix}{child.name}/")

    walk(model, "")
    return found


def _float64_dtype(config: Any) -> Any:
    if isinstance(config, dict):
        if config.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
            return {**config, "config": {**config.get("config", {}), "name": "float64"}}
        return {
            k: "float64" if k == "dtype" and v in ("float32", "float16", "bfloat16",
                                                  "mixed_float16", "mixed_bfloat16")
            else _float64_dtype(v)
            for k, v in config.items()
        }
    if isinstance(config, list):
        return [_float64_dtype(v) for v in config]
    return config


@dataclass(frozen=True)
class GradcheckResult:
    """Per site (aligned with the sites given): coordinates tried, max errors."""

    coordinates: tuple[int, ...]
    max_rel_error: tuple[float, ...]
    max_abs_error: tuple[float, ...]
    samples: int


def gradcheck(
    model: Any,
    sites: Sequence[Site],
    loss: Loss,
    inputs: Sequence[np.ndarray],
    tape_grads: Sequence[Sequence[np.ndarray]],
    *,
    coordinates: int,
    seed: int,
    scale: float,
    labels: Sequence[np.ndarray] | None = None,
) -> GradcheckResult:
    """Central differences of the loss in float64 on sampled coordinates of every variable of
    every entry (any kind).

    The model is rebuilt from its config with a float64 dtype policy and the same weights, and
    run in inference mode (Dropout and other randomness off). ``tape_grads`` are the tape's
    gradients per site (aligned with ``site.variables``) on the same inputs; ``scale`` is the
    loss scale used for them.
    Raises ``ValueError`` when the model cannot be rebuilt in float64.
    """
    from gradinspect._tf import tf_modules

    tf, _keras = tf_modules()
    try:
        model64 = type(model).from_config(_float64_dtype(model.get_config()))
        model64.set_weights([np.asarray(w, dtype=np.float64) for w in model.get_weights()])
    except Exception as exc:
        raise ValueError(f"the model cannot be rebuilt in float64 ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    by_path = {s.path: s for s in find_sites(model64)}
    x64 = [tf.constant(np.asarray(a, dtype=np.float64)) for a in inputs]
    y64 = ([tf.constant(y if np.asarray(y).dtype.kind in "iu" else np.asarray(y, np.float64))
            for y in labels] if labels is not None else None)

    @tf.function(autograph=False)  # type: ignore[untyped-decorator]
    def total() -> Any:
        out = model64(x64 if len(x64) > 1 else x64[0], training=False)
        terms = loss.terms(tf, [tf.cast(o, tf.float64) for o in tf.nest.flatten(out)], y64)
        if terms.dtype != tf.float64:
            raise ValueError(f"the loss {loss.name!r} does not compute in float64")
        return tf.reduce_sum(terms) * tf.constant(scale, tf.float64)

    rng = np.random.default_rng(seed)
    counts, rels, abss = [], [], []
    for site, grads in zip(sites, tape_grads, strict=True):
        twin = by_path.get(site.path)
        if twin is None:
            raise ValueError(f"layer {site.path} not found in the float64 rebuild")
        twin_vars = {v.name: v.variable for v in twin.variables}
        if set(twin_vars) != {v.name for v in site.variables}:
            raise ValueError(f"layer {site.path} has other variables in the float64 rebuild")
        pairs = [(_tf_variable(tf, twin_vars[v.name]), g)
                 for v, g in zip(site.variables, grads, strict=True)]
        floor = 0.01 * max((float(np.max(np.abs(g))) for _, g in pairs if np.size(g)),
                           default=0.0)
        n, worst_rel, worst_abs = 0, 0.0, 0.0
        for variable, tape in pairs:
            flat_size = int(np.prod(variable.shape))
            picks = rng.choice(flat_size, size=min(coordinates, flat_size), replace=False)
            base = variable.numpy()
            for flat in picks:
                idx = np.unravel_index(int(flat), base.shape)
                h = 1e-5 * max(1.0, abs(float(base[idx])))
                values = []
                for sign in (1.0, -1.0):
                    bumped = base.copy()
                    bumped[idx] += sign * h
                    variable.assign(bumped)
                    values.append(float(total()))
                variable.assign(base)
                fd = (values[0] - values[1]) / (2 * h)
                t = float(np.asarray(tape, dtype=np.float64)[idx])
                err = abs(fd - t)
                worst_abs = max(worst_abs, err)
                worst_rel = max(worst_rel, err / max(abs(fd), abs(t), floor, 1e-12))
                n += 1
        counts.append(n)
        rels.append(worst_rel)
        abss.append(worst_abs)
    return GradcheckResult(tuple(counts), tuple(rels), tuple(abss), int(inputs[0].shape[0]))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _replica_context(tf: Any) -> Any:
    context = tf.distribute.get_replica_context()
    assert context is not None, "a collective outside strategy.run"
    return context


def _tf_variable(tf: Any, variable: Any) -> Any:
    """The ``tf.Variable`` behind a Keras 3 variable (the tape watches TF objects only)."""
    if isinstance(variable, tf.Variable):
        return variable
    return getattr(variable, "value", variable)


def require_entries(model: Any, sites: Sequence[Site], label: str) -> None:
    """Refuse a model without trainable variables, listing what it has instead."""
    if sites:
        return
    classes = sorted(set(layer_classes(model))) or ["no layers"]
    raise ModelLoadError(
        f"{label}: the model has no trainable variables (it has: {', '.join(classes)})",
        "gradinspect inspects layers with trainable weights; pass a model that has some "
        "(layers with trainable=False are not inspected)",
    )
