"""The instrumented pass: find Dense layers, hook them, run tf.GradientTape, return raw arrays.

How a hook works. Each Dense layer's ``call`` is replaced, on the instance only, by a wrapper
that (1) passes its input through ``tf.identity`` and watches it, so dL/dinput is this layer's
own share even when the same tensor feeds several layers, and (2) swaps the layer's activation
for a function that records the pre-activation z and then applies the original activation. The
layer's own ``call`` still does all the arithmetic, so the model computes exactly what it
computed before. Everything is undone in ``finally``.

One step is one compiled ``tf.function`` (the batch axis left open): the tape, the gradients of
the loss with respect to every kernel, bias, layer input, pre-activation and layer output, and
activation'(z) from a second tape. Inside the step dL/dW and dL/db are added to float64 sums on
the device and every other gradient is reduced to a few figures, handed to the host as one small
vector per batch; full tensors only for ``--verify``/``--values``. Reports are made elsewhere.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradinspect.errors import ModelLoadError, ProbeError
from gradinspect.loading import BUFFER_ALIGNMENT
from gradinspect.losses import Loss


@dataclass(frozen=True)
class ActivationProfile:
    """What an activation's derivative looks like, sampled on a grid of z values.

    ``kind``: ``linear`` (derivative never falls much below its peak: linear, leaky relu),
    ``saturating`` (derivative vanishes on both sides: sigmoid, tanh, hard_sigmoid, relu6 ...),
    ``rectifier`` (vanishes on one side: relu, elu, selu, gelu, swish, softplus ...),
    ``softmax`` (not element-wise; measured on the probabilities).
    """

    name: str
    kind: str
    peak: float


@dataclass(frozen=True)
class Follower:
    """An activation layer that acts on a linear Dense layer's output, found through the graph
    (``Dense(linear) -> [BatchNormalization | Dropout ...] -> Activation/ReLU/PReLU ...``)."""

    layer: Any
    path: str
    profile: ActivationProfile


@dataclass(frozen=True)
class DenseSite:
    """A Dense layer found in the model, with where it sits."""

    layer: Any
    name: str
    path: str
    class_name: str
    activation: str
    units: int
    use_bias: bool
    profile: ActivationProfile
    """The Dense layer's own activation."""
    follower: Follower | None = None
    """A following activation layer, measured instead of the (linear) own activation."""
    output_index: int | None = None
    """Index of the model output that is this layer's output (or its follower's), as is."""

    @property
    def is_output(self) -> bool:
        return self.output_index is not None

    @property
    def measured(self) -> ActivationProfile:
        """The activation whose saturation is measured for this layer."""
        return self.follower.profile if self.follower is not None else self.profile

    @property
    def measured_source(self) -> str:
        """``layer`` or the path of the following activation layer."""
        return self.follower.path if self.follower is not None else "layer"


@dataclass(frozen=True)
class CallCapture:
    """Raw tensors of one call of a Dense layer, as (read-only) numpy arrays."""

    x: np.ndarray
    """Layer input."""
    z: np.ndarray | None
    """Pre-activation x @ W + b (``None`` if the layer never applied its activation)."""
    out: np.ndarray
    """Layer output, activation(z)."""
    g_out: np.ndarray
    """dL/doutput (the upstream gradient g)."""
    g_z: np.ndarray | None
    """dL/dz = delta."""
    g_x: np.ndarray
    """dL/dinput."""
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
    """One call of a Dense layer, reduced inside the step: no full tensors cross to the host
    unless ``full`` was asked for (``--verify``, ``--values``)."""

    x_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    input_grad: np.ndarray
    """dL/dinput reduced to ``SUMMARY_FIELDS``."""
    output_grad_sumsq: float
    """||dL/doutput||^2, for the backward gain."""
    full: CallCapture | None = None


@dataclass(frozen=True)
class LayerCapture:
    """One layer's results for one batch (dL/dW and dL/db are summed on the device across
    batches: ``Probe.gradient_sums``)."""

    kernel: np.ndarray
    bias: np.ndarray | None
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


# ---------------------------------------------------------------- finding layers


def _children(layer: Any) -> list[Any]:
    flatten = getattr(layer, "_flatten_layers", None)
    if flatten is not None:
        return list(flatten(include_self=False, recursive=False))
    return list(getattr(layer, "layers", []))


def activation_name(fn: Any) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return "linear" if name in ("linear", "identity") else str(name)


def profile_activation(tf: Any, fn: Any) -> ActivationProfile:
    """Sample activation'(z) on [-30, 30] and classify its shape (no table of names)."""
    name = activation_name(fn)
    if name in ("softmax", "log_softmax"):
        return ActivationProfile(name=name, kind="softmax", peak=1.0)
    z = tf.constant(np.linspace(-30.0, 30.0, 6001, dtype=np.float32)[None, :])
    with tf.GradientTape() as tape:
        tape.watch(z)
        a = fn(z)
    d = tape.gradient(a, z)
    if d is None:
        return ActivationProfile(name=name, kind="linear", peak=1.0)
    d = np.abs(np.asarray(d, dtype=np.float64)).ravel()
    peak = float(d.max()) if d.size else 0.0
    if not np.isfinite(peak) or peak == 0.0:
        return ActivationProfile(name=name, kind="linear", peak=1.0)
    low = d < 0.01 * peak
    if not low.any():  # never falls far below its peak: linear, leaky relu
        return ActivationProfile(name=name, kind="linear", peak=peak)
    kind = "saturating" if low[0] and low[-1] else "rectifier"
    return ActivationProfile(name=name, kind=kind, peak=peak)


PASS_THROUGH = (
    "BatchNormalization", "LayerNormalization", "GroupNormalization", "UnitNormalization",
    "Dropout", "AlphaDropout", "GaussianDropout", "GaussianNoise", "ActivityRegularization",
)
ACTIVATION_LAYERS = ("Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax")


def _sole_consumer(layer: Any) -> Any | None:
    consumers = {id(n.operation): n.operation for n in getattr(layer, "_outbound_nodes", [])
                 if getattr(n, "operation", None) is not None}
    return next(iter(consumers.values())) if len(consumers) == 1 else None


def _layer_fn(tf: Any, layer: Any, units: int) -> Any:
    """An element-wise view of an activation layer for profiling: z -> mean over units."""

    def fn(z: Any) -> Any:
        tiled = tf.tile(tf.transpose(z), [1, units])
        return tf.reduce_mean(layer(tiled), axis=1)[None, :]

    fn.__name__ = _snake(type(layer).__name__)
    return fn


def _snake(name: str) -> str:
    return {"ReLU": "relu", "LeakyReLU": "leaky_relu", "PReLU": "prelu", "ELU": "elu",
            "Softmax": "softmax"}.get(name, name.lower())


def _find_follower(tf: Any, dense: Any, prefix: str) -> Follower | None:
    """Walk from a linear Dense layer through pass-through layers to an activation layer."""
    current = dense
    for _ in range(8):
        nxt = _sole_consumer(current)
        if nxt is None:
            return None
        kind = type(nxt).__name__
        if kind in ACTIVATION_LAYERS:
            path = f"{prefix}{nxt.name}"
            try:
                if kind == "Activation":
                    profile = profile_activation(tf, nxt.activation)
                elif kind == "Softmax":
                    profile = ActivationProfile(name="softmax", kind="softmax", peak=1.0)
                else:
                    profile = profile_activation(tf, _layer_fn(tf, nxt, int(dense.units)))
            except Exception:  # an exotic layer we cannot profile: measure nothing
                return None
            return Follower(layer=nxt, path=path, profile=profile)
        if kind not in PASS_THROUGH:
            return None
        current = nxt
    return None


def output_layers(model: Any) -> dict[int, int]:
    """id of each layer whose output tensor is a model output (into nested models) -> the
    index of that model output."""
    found: dict[int, int] = {}

    def walk(m: Any, index: int | None) -> None:
        for k, t in enumerate(getattr(m, "outputs", None) or []):
            history = getattr(t, "_keras_history", None)
            op = history[0] if history else None
            if op is None:
                continue
            position = k if index is None else index
            found.setdefault(id(op), position)
            if getattr(op, "outputs", None) and op is not m:
                walk(op, position)

    walk(model, None)
    return found


def find_dense_layers(model: Any) -> list[DenseSite]:
    """Every Dense layer (subclasses too), nested models included, each once, with its path."""
    from gradinspect._tf import tf_modules

    tf, keras = tf_modules()
    dense_type = keras.layers.Dense
    sites: list[DenseSite] = []
    seen: set[int] = set()
    outputs = output_layers(model)

    def walk(layer: Any, prefix: str) -> None:
        for child in _children(layer):
            path = f"{prefix}{child.name}"
            if isinstance(child, dense_type):
                if id(child) in seen:
                    continue
                seen.add(id(child))
                own = profile_activation(tf, child.activation)
                follower = _find_follower(tf, child, prefix) if own.kind == "linear" else None
                sites.append(
                    DenseSite(
                        layer=child,
                        name=child.name,
                        path=path,
                        class_name=type(child).__name__,
                        activation=activation_name(child.activation),
                        units=int(child.units),
                        use_bias=child.bias is not None,
                        profile=own,
                        follower=follower,
                        output_index=outputs.get(id(child))
                        if id(child) in outputs
                        else (outputs.get(id(follower.layer)) if follower is not None else None),
                    )
                )
            walk(child, f"{path}/")

    walk(model, "")
    return sites


def layer_classes(model: Any) -> list[str]:
    """Class names of all layers (nested too), for messages about models without Dense."""
    names: list[str] = []

    def walk(layer: Any) -> None:
        for child in _children(layer):
            names.append(type(child).__name__)
            walk(child)

    walk(model)
    return names


# ---------------------------------------------------------------- hooks


@dataclass
class _CallRecord:
    x: Any = None
    z: Any = None
    out: Any = None


@dataclass
class _Recorder:
    """Collects the symbolic tensors of one trace, per site index, in call order."""

    tape: Any = None
    calls: dict[int, list[_CallRecord]] = field(default_factory=dict)
    first_call: list[int] = field(default_factory=list)
    follower_calls: dict[int, list[_CallRecord]] = field(default_factory=dict)

    def reset(self) -> None:
        self.calls = {}
        self.first_call = []
        self.follower_calls = {}

    def new_call(self, index: int) -> _CallRecord:
        record = _CallRecord()
        if index not in self.calls:
            self.calls[index] = []
            self.first_call.append(index)
        self.calls[index].append(record)
        return record


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


def _install(tf: Any, index: int, site: DenseSite, recorder: _Recorder) -> Any:
    layer = site.layer
    original_call = layer.call
    original_activation = layer.activation

    @functools.wraps(original_call)
    def hooked_call(inputs: Any, *args: Any, **kwargs: Any) -> Any:
        if recorder.tape is None:  # a call outside the probe's pass: leave it alone
            return original_call(inputs, *args, **kwargs)
        x = tf.identity(inputs)
        recorder.tape.watch(x)
        record = recorder.new_call(index)
        record.x = x

        def capture(z: Any) -> Any:
            record.z = z
            return original_activation(z)

        layer.activation = capture
        try:
            out = original_call(x, *args, **kwargs)
        finally:
            layer.activation = original_activation
        record.out = out
        return out

    restore_call = _replace_call(layer, hooked_call)

    def undo() -> None:
        layer.activation = original_activation
        restore_call()

    return undo


def _install_follower(index: int, layer: Any, recorder: _Recorder) -> Any:
    original_call = layer.call

    @functools.wraps(original_call)
    def hooked_call(inputs: Any, *args: Any, **kwargs: Any) -> Any:
        out = original_call(inputs, *args, **kwargs)
        if recorder.tape is not None:
            recorder.follower_calls.setdefault(index, []).append(_CallRecord(x=inputs, out=out))
        return out

    return _replace_call(layer, hooked_call)


@contextmanager
def instrumented(tf: Any, sites: Sequence[DenseSite]) -> Iterator[_Recorder]:
    """Hooks on every site for the duration of the block; always removed on exit."""
    recorder = _Recorder()
    undos = []
    try:
        for i, site in enumerate(sites):
            undos.append(_install(tf, i, site, recorder))
            if site.follower is not None:
                undos.append(_install_follower(i, site.follower.layer, recorder))
        yield recorder
    finally:
        for undo in reversed(undos):
            undo()


# ---------------------------------------------------------------- the pass


class _Packer:
    """The small figures of one step, packed into one float64 vector: one transfer to the host
    per batch instead of one per figure, and few graph ops (scalars are stacked and vectors
    concatenated per dtype, then cast once). ``layout`` maps a key to its slice; the trace
    fixes it (every piece is a scalar or a vector of static length). An eager step (one small
    batch) joins the values on the host instead: there, every distinct op costs its first-use
    setup (about 2 ms each in a fresh process), which is most of what the step would add."""

    def __init__(self, tf: Any) -> None:
        self.tf = tf
        self.pieces: list[tuple[tuple[Any, ...], Any]] = []

    def add(self, key: tuple[Any, ...], value: Any) -> None:
        self.pieces.append((key, value))

    def packed(self) -> tuple[Any, dict[tuple[Any, ...], slice]]:
        tf = self.tf
        if tf.executing_eagerly():  # values exist already: join them on the host, no ops to run
            parts, layout, offset = [], {}, 0
            for key, value in self.pieces:
                part = np.asarray(value, dtype=np.float64).reshape(-1)
                layout[key] = slice(offset, offset + part.size)
                offset += part.size
                parts.append(part)
            return np.concatenate(parts), layout
        groups: dict[tuple[str, int], list[tuple[tuple[Any, ...], Any]]] = {}
        for key, value in self.pieces:
            groups.setdefault((value.dtype.name, len(value.shape)), []).append((key, value))
        parts, layout, offset = [], {}, 0
        for (_, rank), members in groups.items():
            values = [v for _, v in members]
            joined = tf.stack(values) if rank == 0 else tf.concat(values, axis=0)
            parts.append(tf.cast(joined, tf.float64))
            for key, value in members:
                n = 1 if rank == 0 else int(value.shape[0])
                layout[key] = slice(offset, offset + n)
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


def _sumsq(tf: Any, g: Any) -> Any:
    """sum(g^2) in one kernel (l2_loss is sum(g^2) / 2; doubling is exact): no squared copy."""
    return 2.0 * tf.nn.l2_loss(_widened(tf, g))


def _reductions(tf: Any, g: Any) -> list[Any]:
    """sum of squares, sum of |g|, max |g| of a gradient, in its own precision (tree-reduced
    sums: ~1e-7 relative error in float32; 16-bit floats are widened first). NaN poisons all
    three; NaN/Inf are counted by ``_recount`` only when the host sees something not finite."""
    wide = _widened(tf, g)
    absval = tf.abs(wide)
    return [_sumsq(tf, wide), tf.reduce_sum(absval), tf.reduce_max(absval)]


def _recount(tf: Any, grads: list[Any], checked: list[Any]) -> Any:
    """The rare path: NaN/Inf entries of the batch's inputs and labels, then per gradient
    (max |g| over the entries that are not NaN, NaN count, Inf count), as one float64 vector."""
    zero = tf.zeros((), tf.float64)
    fixed = [tf.add_n([zero] + [tf.reduce_sum(tf.cast(~tf.math.is_finite(t), tf.float64))
                                for t in checked])]
    for g in grads:
        absval = tf.abs(g)
        nan = tf.math.is_nan(g)
        top = tf.reduce_max(tf.where(nan, tf.zeros_like(absval), absval))
        fixed += [tf.cast(top, tf.float64), tf.reduce_sum(tf.cast(nan, tf.float64)),
                  tf.reduce_sum(tf.cast(tf.math.is_inf(g), tf.float64))]
    return tf.stack(fixed)


def _rows(tf: Any, t: Any, batch: Any) -> Any:
    """(batch, positions, features): calls and time steps of one sample become its rows."""
    return tf.reshape(tf.cast(t, tf.float64), (batch, -1, tf.shape(t)[-1]))


def _per_sample_sq(tf: Any, xs: list[Any], deltas: list[Any], with_bias: bool) -> Any:
    """||X_i^T Delta_i||_F^2 (+ ||sum Delta_i||^2) per sample, inside the step.

    One rank-2 call: ||x_i||^2 ||delta_i||^2. Otherwise the Gram form <X_i X_i^T, D_i D_i^T>
    when a sample has few rows, or the per-sample product when that is smaller.
    """
    batch = tf.shape(xs[0])[0]
    if len(xs) == 1 and len(xs[0].shape) == 2:
        # row norms in the tensors' precision (one row is short) by one fused kernel (no
        # squared copy: x is the batch's largest tensor), squared and multiplied in float64
        xx, dd = (tf.square(tf.cast(tf.math.reduce_euclidean_norm(_widened(tf, t), axis=1),
                                    tf.float64)) for t in (xs[0], deltas[0]))
        return dd * (xx + (1.0 if with_bias else 0.0))
    big_x = tf.concat([_rows(tf, x, batch) for x in xs], axis=1)
    big_d = tf.concat([_rows(tf, d, batch) for d in deltas], axis=1)
    n_in, n_out = int(xs[0].shape[-1]), int(deltas[0].shape[-1])
    rows = sum(int(np.prod(x.shape[1:-1])) if all(v is not None for v in x.shape[1:-1])
               else 10**9 for x in xs)
    if rows * rows <= n_in * n_out:
        gx = tf.einsum("bri,bsi->brs", big_x, big_x)
        gd = tf.einsum("bro,bso->brs", big_d, big_d)
        sq = tf.reduce_sum(gx * gd, axis=[1, 2])
    else:
        per = tf.einsum("bri,bro->bio", big_x, big_d)
        sq = tf.reduce_sum(per * per, axis=[1, 2])
    if with_bias:
        s = tf.reduce_sum(big_d, axis=1)
        sq = sq + tf.reduce_sum(s * s, axis=1)
    return sq


@dataclass
class _EagerSum:
    """The eager step's stand-in for a float64 ``tf.Variable``: the sum of what was added."""

    shape: tuple[int, ...]
    value: Any = None

    def assign_add(self, addend: Any) -> None:
        self.value = addend if self.value is None else self.value + addend

    def numpy(self) -> np.ndarray:  # a writable copy, as tf.Variable.numpy() gives
        return np.zeros(self.shape) if self.value is None else np.array(self.value)


class Probe:
    """A hooked forward/backward step over batches of one model, compiled with ``tf.function``
    (or run eagerly: cheaper for a single small batch than tracing).

    Use as a context manager: hooks are installed on enter and removed on exit, whatever
    happens in between. The step reduces everything it can on the device — gradient norms,
    maxima, NaN/Inf counts, saturated/dead unit counts, per-sample norms — and hands one small
    vector of figures to the host per batch; dL/dW and dL/db are summed across batches on the
    device in float64 (``gradient_sums``, zeroed on enter and by ``reset``); full tensors cross
    only when ``full`` (``--verify``/``--values``). ``order`` is the forward order of the sites
    (by first call).
    """

    def __init__(
        self,
        model: Any,
        sites: Sequence[DenseSite],
        loss: Loss,
        *,
        training: bool = False,
        compiled: bool = True,
        verify: bool = False,
        full: bool = False,
        per_sample: bool = False,
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
        self._recorder: _Recorder | None = None
        self._cm: Any = None
        self._compiled = compiled
        self._steps: dict[bool, Any] = {}
        self._generators = _seed_generators(model)
        self._layout: dict[tuple[Any, ...], slice] = {}
        self._param_cache: tuple[tuple[float, ...], Any] | None = None
        self._weights: list[tuple[np.ndarray, np.ndarray | None]] | None = None
        self._sums: list[tuple[Any, Any]] | None = None

    def __enter__(self) -> Probe:
        self._weights = None
        self.reset()
        self._cm = instrumented(self.tf, self.sites)
        self._recorder = self._cm.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        cm, self._cm = self._cm, None
        if cm is not None:
            cm.__exit__(*exc)

    def reset(self) -> None:
        """Zero the device-side sums of dL/dW and dL/db (float64 variables for the compiled
        step; an eager step keeps plain tensors and skips creating variables, which costs a
        single-batch run from the command line about 20 ms of first-use setup)."""
        tf = self.tf

        def zero_sum(like: Any) -> Any:
            if like is None:
                return None
            if self._compiled:
                return tf.Variable(tf.zeros(like.shape, tf.float64), trainable=False)
            return _EagerSum(tuple(int(d) for d in like.shape))

        if self._sums is None:  # made at zero: nothing to reset yet
            self._sums = []
            for site in self.sites:
                kernel, bias = self._variables(site)
                self._sums.append((zero_sum(kernel), zero_sum(bias)))
            return
        for total in (t for pair in self._sums for t in pair if t is not None):
            if isinstance(total, _EagerSum):
                total.value = None
            else:
                total.assign(tf.zeros(total.shape, tf.float64))

    def gradient_sums(self) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Per site, (dL/dW, dL/db) summed over the steps since the last reset, in float64."""
        assert self._sums is not None
        return [(k.numpy(), b.numpy() if b is not None else None) for k, b in self._sums]

    def _variables(self, site: DenseSite) -> tuple[Any, Any]:
        layer = site.layer
        kernel = getattr(layer, "_kernel", None)
        if kernel is None:
            kernel = layer.kernel
        return _tf_variable(self.tf, kernel), (
            _tf_variable(self.tf, layer.bias) if layer.bias is not None else None
        )

    def _measured(self, calls: dict[int, list[_CallRecord]]) -> dict[int, list[Any]]:
        """Per site, per call: the measured activation's derivative at its input, or its
        output probabilities (softmax). Derivatives come from one second tape for all sites
        (element-wise activations: the gradient of the summed outputs is the derivative)."""
        tf = self.tf
        recorder = self._recorder
        assert recorder is not None
        found: dict[int, list[Any]] = {i: [] for i in range(len(self.sites))}
        watched: list[tuple[int, Any, Any]] = []
        for i, site in enumerate(self.sites):
            if site.follower is not None:
                pairs = [(c.x, c.out) for c in recorder.follower_calls.get(i, [])]
                fn = site.follower.layer.call
            else:
                pairs = [(c.z, c.out) for c in calls[i] if c.z is not None]
                fn = site.layer.activation
            for x, out in pairs:
                if site.measured.kind == "softmax":
                    found[i].append(out)
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
                found[i].append(d)
        return found

    def _traced(self, inputs: list[Any], labels: Any, params: Any,
                counting: bool = False) -> dict[str, Any]:
        """One step. ``params`` is float32 ``[scale, confidence, low_0, low_1, ...]``.
        ``counting``: the same pass, returning only ``_recount``'s vector (and adding nothing
        to the gradient sums)."""
        tf = self.tf
        recorder = self._recorder
        assert recorder is not None, "Probe used outside its context"
        assert self._sums is not None
        scale, confidence, *low = tf.unstack(params)  # one op, not a slice per figure
        recorder.reset()
        variables = [self._variables(s) for s in self.sites]
        with tf.GradientTape() as tape:
            for kernel, bias in variables:
                tape.watch(kernel)
                if bias is not None:
                    tape.watch(bias)
            recorder.tape = tape
            try:
                model_in = inputs if len(inputs) > 1 else inputs[0]
                outputs = self.model(model_in, training=self.training)
            finally:
                recorder.tape = None
            terms = self.loss.terms(tf, tf.nest.flatten(outputs), labels)
            total = tf.reduce_sum(terms)
            total = total * tf.cast(scale, total.dtype)  # float64 and float16 models too
        calls = {i: recorder.calls.get(i, []) for i in range(len(self.sites))}
        targets = {
            "kernel": [k for k, _ in variables],
            "bias": [b if b is not None else k for k, b in variables],
            "x": [[c.x for c in calls[i]] for i in calls],
            "z": [[c.z if c.z is not None else c.out for c in calls[i]] for i in calls],
            "out": [[c.out for c in calls[i]] for i in calls],
        }
        grads = tape.gradient(total, targets, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        self.order = list(recorder.first_call)
        checked = [t for t in [*inputs, *(labels or [])] if t.dtype.is_floating]
        if counting:
            return {"counts": _recount(tf, [g for per in grads["x"] for g in per], checked)}
        for (kernel_sum, bias_sum), g_kernel, g_bias in zip(self._sums, grads["kernel"],
                                                            grads["bias"], strict=True):
            kernel_sum.assign_add(tf.cast(g_kernel, tf.float64))
            if bias_sum is not None:
                bias_sum.assign_add(tf.cast(g_bias, tf.float64))
        pack = _Packer(tf)
        pack.add(("loss",), total)
        for k, t in enumerate(checked):
            pack.add(("input_sum", k), tf.reduce_sum(t))
        measured = self._measured(calls)
        per_sample: dict[int, Any] = {}
        full: dict[int, Any] = {}
        for i, site in enumerate(self.sites):
            cs = calls[i]
            for j, (c, g_x, g_out) in enumerate(zip(cs, grads["x"][i], grads["out"][i],
                                                    strict=True)):
                pack.add(("x_shape", i, j), _shape(tf, c.x))
                pack.add(("out_shape", i, j), _shape(tf, c.out))
                for n, value in enumerate(_reductions(tf, g_x)):
                    pack.add(("gx", i, j, n), value)
                pack.add(("gout", i, j), _sumsq(tf, g_out))
            if measured[i] and site.measured.kind == "softmax":
                probs = [tf.reshape(_widened(tf, p), (-1, site.units)) for p in measured[i]]
                pack.add(("confident", i), tf.add_n([tf.reduce_sum(tf.cast(
                    tf.reduce_max(p, axis=1) >= tf.cast(confidence, p.dtype), tf.int32))
                    for p in probs]))
                pack.add(("rows", i), tf.add_n([tf.shape(p)[0] for p in probs]))
            elif measured[i]:
                derivatives = [tf.abs(tf.reshape(_widened(tf, d), (-1, site.units)))
                               for d in measured[i]]
                lows = [tf.cast(d < tf.cast(low[i], d.dtype), tf.int32) for d in derivatives]
                pack.add(("low_per_unit", i), tf.add_n([tf.reduce_sum(m, axis=0) for m in lows]))
                pack.add(("rows", i), tf.add_n([tf.shape(m)[0] for m in lows]))
            if self.per_sample and cs and all(c.z is not None for c in cs):
                deltas = [g / tf.cast(scale, g.dtype) for g in grads["z"][i]]
                per_sample[i] = _per_sample_sq(tf, [c.x for c in cs], deltas, site.use_bias)
            if self.full:
                full[i] = {
                    "x": [c.x for c in cs],
                    "z": [c.z if c.z is not None else tf.zeros((0,)) for c in cs],
                    "out": [c.out for c in cs],
                    "g_out": grads["out"][i],
                    "g_z": grads["z"][i],
                    "g_x": grads["x"][i],
                }
        figures, self._layout = pack.packed()
        return {"figures": figures, "per_sample": per_sample, "full": full}

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
        def traced(inputs: list[Any], labels: Any, params: Any) -> dict[str, Any]:
            return self._traced(inputs, labels, params, counting=counting)

        return tf.function(traced, autograph=False).get_concrete_function(*signature)

    def _param_tensor(self, scale: float, lows: Sequence[float], confidence: float) -> Any:
        """``[scale, confidence, *lows]`` as one tensor, made again only when they change."""
        key = (float(scale), float(confidence), *(float(v) for v in lows))
        if self._param_cache is None or self._param_cache[0] != key:
            self._param_cache = (key, self.tf.constant(key, self.tf.float32))
        return self._param_cache[1]

    def _run(self, counting: bool, tensors: list[Any], labels: list[Any] | None,
             params: Any) -> dict[str, Any]:
        tf = self.tf
        try:
            if not self._compiled:
                return self._traced(tensors, labels, params, counting=counting)
            if counting not in self._steps:  # tracing runs the model: its errors are the pass's
                self._steps[counting] = self._compile(tensors, labels, params, counting)
            result: dict[str, Any] = self._steps[counting](tensors, labels, params)
            return result
        except (tf.errors.OpError, ValueError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ProbeError(
                f"the forward/backward pass failed: {first}",
                "run with --traceback for details",
            ) from exc

    def step(
        self,
        inputs: Sequence[Any],
        labels: Any = None,
        scale: float = 1.0,
        low_thresholds: Sequence[float] | None = None,
        confidence: float = 0.99,
        fresh: Sequence[bool] | None = None,
    ) -> BatchCapture:
        """Run one batch (numpy arrays or tensors). ``scale`` multiplies the summed per-sample
        loss terms; ``low_thresholds`` (per site) and ``confidence`` are the activity thresholds.
        ``fresh`` (per input): see ``batch_tensor``."""
        tf = self.tf
        tensors = [batch_tensor(tf, a, bool(fresh and fresh[k])) for k, a in enumerate(inputs)]
        label_tensors = [tf.convert_to_tensor(y) for y in labels] if labels is not None else None
        params = self._param_tensor(scale, low_thresholds if low_thresholds is not None
                                    else [0.0] * len(self.sites), confidence)
        replay = _generator_states(self._generators) if self.training else None
        result = self._run(False, tensors, label_tensors, params)
        if self._weights is None:  # the pass does not change them: read once per session
            self._weights = [(k.numpy(), b.numpy() if b is not None else None)
                             for k, b in (self._variables(s) for s in self.sites)]
        figures = np.asarray(result["figures"])
        layout = self._layout

        def get(*key: Any) -> np.ndarray:
            part: np.ndarray = figures[layout[key]]
            return part

        sums = [get(*key)[0] for key in layout if key[0] == "input_sum" or
                (key[0] == "gx" and key[3] == 0)]
        counts = None
        if not np.all(np.isfinite(sums)):  # something is NaN/Inf: the same pass, counting
            if replay is not None:
                _set_generator_states(self._generators, replay)
            counts = self._run(True, tensors, label_tensors, params)["counts"].numpy()
        layers = []
        k = 0
        for i, site in enumerate(self.sites):
            calls = []
            j = 0
            while ("gx", i, j, 0) in layout:
                x_shape = tuple(int(v) for v in get("x_shape", i, j))
                sumsq, sum_abs, max_abs = (float(get("gx", i, j, n)[0]) for n in range(3))
                nan = inf = 0.0
                if counts is not None:
                    max_abs, nan, inf = (float(v) for v in counts[1 + 3 * k: 4 + 3 * k])
                calls.append(CallSummary(
                    x_shape=x_shape,
                    out_shape=tuple(int(v) for v in get("out_shape", i, j)),
                    input_grad=np.array([float(np.prod(x_shape)), sumsq, sum_abs,
                                         max(max_abs, 0.0), nan, inf]),
                    output_grad_sumsq=float(get("gout", i, j)[0]),
                    full=self._full_capture(site, result["full"][i], j) if self.full else None,
                ))
                j += 1
                k += 1
            low_per_unit = (get("low_per_unit", i).astype(np.int64)
                            if ("low_per_unit", i) in layout else None)
            layers.append(LayerCapture(
                kernel=self._weights[i][0],
                bias=self._weights[i][1],
                calls=tuple(calls),
                low_per_unit=low_per_unit,
                low_entries=int(low_per_unit.sum()) if low_per_unit is not None else 0,
                activity_rows=int(get("rows", i)[0]) if ("rows", i) in layout else 0,
                confident=int(get("confident", i)[0]) if ("confident", i) in layout else 0,
                per_sample_sq=(result["per_sample"][i].numpy()
                               if i in result["per_sample"] else None),
            ))
        if not self.order:
            self.order = [i for i in range(len(self.sites)) if layers[i].calls]
        return BatchCapture(
            loss=float(get("loss")[0]),
            samples=int(inputs[0].shape[0]),
            layers=tuple(layers),
            nonfinite=int(counts[0]) if counts is not None else 0,
            entries=sum(int(np.prod(a.shape)) for a in [*inputs, *(labels or [])]),
        )

    def _full_capture(self, site: DenseSite, f: dict[str, Any], j: int) -> CallCapture:
        """``full``: call ``j``'s tensors as numpy arrays (and, for ``verify``, activation'(z)
        by float64 finite differences). The arrays are read-only views of the tensors
        (``np.asarray``), not copies: at batch 8192 the first layer's x and dL/dx are 25 MB each."""
        z = np.asarray(f["z"][j]) if int(np.size(f["z"][j])) else None
        derivative64 = kink = None
        if self.verify and z is not None and site.profile.kind != "softmax":
            derivative64, kink = fd_derivative(self.tf, site.layer.activation, f["z"][j])
        return CallCapture(
            x=np.asarray(f["x"][j]), z=z, out=np.asarray(f["out"][j]),
            g_out=np.asarray(f["g_out"][j]),
            g_z=np.asarray(f["g_z"][j]) if z is not None else None, g_x=np.asarray(f["g_x"][j]),
            derivative64=derivative64, kink=kink,
        )


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


def _seed_generators(model: Any) -> list[Any]:
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
    generators = _seed_generators(model)
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
        for child in _children(layer):
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
    sites: Sequence[DenseSite],
    loss: Loss,
    inputs: Sequence[np.ndarray],
    tape_grads: Sequence[tuple[np.ndarray, np.ndarray | None]],
    *,
    coordinates: int,
    seed: int,
    scale: float,
    labels: Sequence[np.ndarray] | None = None,
) -> GradcheckResult:
    """Central differences of the loss in float64 on sampled coordinates of every W and b.

    The model is rebuilt from its config with a float64 dtype policy and the same weights, and
    run in inference mode (Dropout and other randomness off). ``tape_grads`` are the tape's
    (dL/dW, dL/db) per site on the same inputs; ``scale`` is the loss scale used for them.
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
    by_path = {s.path: s for s in find_dense_layers(model64)}
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
    for site, (kernel_grad, bias_grad) in zip(sites, tape_grads, strict=True):
        twin = by_path.get(site.path)
        if twin is None:
            raise ValueError(f"layer {site.path} not found in the float64 rebuild")
        pairs = [(_tf_variable(tf, twin.layer.kernel), kernel_grad)]
        if site.use_bias and bias_grad is not None:
            pairs.append((_tf_variable(tf, twin.layer.bias), bias_grad))
        floor = 0.01 * max(float(np.max(np.abs(g))) for _, g in pairs)
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


def _tf_variable(tf: Any, variable: Any) -> Any:
    """The ``tf.Variable`` behind a Keras 3 variable (the tape watches TF objects only)."""
    if isinstance(variable, tf.Variable):
        return variable
    return getattr(variable, "value", variable)


def require_dense(model: Any, sites: Sequence[DenseSite], label: str) -> None:
    """Refuse a model without Dense layers, listing what it has instead."""
    if sites:
        return
    classes = sorted(set(layer_classes(model))) or ["no layers"]
    raise ModelLoadError(
        f"{label}: the model has no Dense layer (it has: {', '.join(classes)})",
        "gradinspect inspects Dense layers; pass a model that contains at least one",
    )
