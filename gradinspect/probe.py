"""The instrumented pass: find Dense layers, hook them, run tf.GradientTape, return raw arrays.

How a hook works. Each Dense layer's ``call`` is replaced, on the instance only, by a wrapper
that (1) passes its input through ``tf.identity`` and watches it, so dL/dinput is this layer's
own share even when the same tensor feeds several layers, and (2) swaps the layer's activation
for a function that records the pre-activation z and then applies the original activation. The
layer's own ``call`` still does all the arithmetic, so the model computes exactly what it
computed before. Everything is undone in ``finally``.

One step is one ``tf.function`` trace per input signature: the tape, the gradients of the loss
with respect to every kernel, bias, layer input, pre-activation and layer output, and
activation'(z) from a second tape. The step returns numpy arrays; numbers are made elsewhere.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradinspect.errors import ModelLoadError, ProbeError
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
    """Raw tensors of one call of a Dense layer, as numpy arrays."""

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
"""The reductions of one gradient tensor computed inside the step (float64)."""


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
    """One layer's results for one batch."""

    kernel: np.ndarray
    bias: np.ndarray | None
    kernel_grad: np.ndarray
    bias_grad: np.ndarray | None
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


def _summary(tf: Any, g: Any) -> Any:
    """``SUMMARY_FIELDS`` of a tensor: NaN poisons sumsq/sum_abs as it should, and max_abs is
    over the entries that are not NaN.

    The common case (every entry finite, which one look at the sum of squares tells) costs three
    passes in the tensor's own precision (tree-reduced sums: ~1e-7 relative error in float32);
    NaN/Inf counting runs only when something is not finite.
    """
    flat = tf.reshape(g, [-1])
    absval = tf.abs(flat)
    sumsq = tf.cast(tf.reduce_sum(tf.square(flat)), tf.float64)
    sum_abs = tf.cast(tf.reduce_sum(absval), tf.float64)
    size = tf.cast(tf.size(flat), tf.float64)

    def finite() -> Any:
        # max of an empty tensor is -inf; |g| >= 0, so clamping at 0 is exact otherwise
        top = tf.cast(tf.maximum(tf.reduce_max(absval), 0), tf.float64)
        zero = tf.zeros((), tf.float64)
        return tf.stack([size, sumsq, sum_abs, top, zero, zero])

    def broken() -> Any:
        nan = tf.math.is_nan(flat)
        top = tf.maximum(tf.reduce_max(tf.where(nan, tf.zeros_like(absval), absval)), 0)
        return tf.stack([size, sumsq, sum_abs, tf.cast(top, tf.float64),
                         tf.reduce_sum(tf.cast(nan, tf.float64)),
                         tf.reduce_sum(tf.cast(tf.math.is_inf(flat), tf.float64))])

    return tf.cond(tf.math.is_finite(sumsq), finite, broken)


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
        # row sums in the tensors' precision (one row is short), products in float64
        xx = tf.cast(tf.reduce_sum(tf.square(xs[0]), axis=1), tf.float64)
        dd = tf.cast(tf.reduce_sum(tf.square(deltas[0]), axis=1), tf.float64)
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


class Probe:
    """A hooked forward/backward step over batches of one model, compiled with ``tf.function``
    (or run eagerly: cheaper for a single small batch than tracing).

    Use as a context manager: hooks are installed on enter and removed on exit, whatever
    happens in between. The step reduces everything it can on the device — gradient norms,
    maxima, NaN/Inf counts, saturated/dead unit counts, per-sample norms — and hands small
    arrays to the host; full tensors only when ``full`` (``--verify``/``--values``).
    ``order`` is the forward order of the sites (by first call).
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
        self._step: Any = None

    def __enter__(self) -> Probe:
        self._weights: list[tuple[np.ndarray, np.ndarray | None]] | None = None
        self._cm = instrumented(self.tf, self.sites)
        self._recorder = self._cm.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        cm, self._cm = self._cm, None
        if cm is not None:
            cm.__exit__(*exc)

    def _variables(self, site: DenseSite) -> tuple[Any, Any]:
        layer = site.layer
        kernel = getattr(layer, "_kernel", None)
        if kernel is None:
            kernel = layer.kernel
        return _tf_variable(self.tf, kernel), (
            _tf_variable(self.tf, layer.bias) if layer.bias is not None else None
        )

    def _measured(self, i: int, site: DenseSite, calls: list[_CallRecord]) -> list[Any]:
        """Per call, the measured activation's derivative at its input (element-wise), or its
        output probabilities (softmax); from the tape, for any element-wise activation."""
        tf = self.tf
        recorder = self._recorder
        assert recorder is not None
        found = []
        if site.follower is not None:
            for c in recorder.follower_calls.get(i, []):
                if site.measured.kind == "softmax":
                    found.append(c.out)
                    continue
                with tf.GradientTape() as t2:
                    t2.watch(c.x)
                    a = site.follower.layer.call(c.x)
                found.append(t2.gradient(a, c.x))
            return found
        for c in calls:
            if c.z is None:
                continue
            if site.profile.kind == "softmax":
                found.append(c.out)
                continue
            with tf.GradientTape() as t2:
                t2.watch(c.z)
                a = site.layer.activation(c.z)
            found.append(t2.gradient(a, c.z))
        return found

    def _traced(self, inputs: list[Any], labels: Any, scale: Any, low: Any,
                confidence: Any) -> dict[str, Any]:
        tf = self.tf
        recorder = self._recorder
        assert recorder is not None, "Probe used outside its context"
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
            total = tf.reduce_sum(terms) * scale
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

        def nonfinite(t: Any) -> Any:
            return tf.cond(tf.reduce_all(tf.math.is_finite(t)),
                           lambda: tf.zeros((), tf.int64),
                           lambda: tf.reduce_sum(tf.cast(~tf.math.is_finite(t), tf.int64)))

        result: dict[str, Any] = {
            "loss": total,
            "nonfinite": tf.add_n([tf.zeros((), tf.int64)] + [nonfinite(t) for t in checked]),
            "entries": tf.add_n([tf.size(t, out_type=tf.int64)
                                 for t in [*inputs, *(labels or [])]]),
            "kernel_grad": grads["kernel"],
            "bias_grad": grads["bias"],
            "layers": [],
        }
        for i, site in enumerate(self.sites):
            cs = calls[i]
            layer: dict[str, Any] = {
                "x_shape": [tf.shape(c.x) for c in cs],
                "out_shape": [tf.shape(c.out) for c in cs],
                "gx": [_summary(tf, g) for g in grads["x"][i]],
                "gout": [tf.cast(tf.reduce_sum(tf.square(g)), tf.float64)
                         for g in grads["out"][i]],
            }
            measured = self._measured(i, site, cs)
            if measured and site.measured.kind == "softmax":
                probs = [tf.reshape(p, (-1, site.units)) for p in measured]
                layer["confident"] = tf.add_n([tf.reduce_sum(tf.cast(
                    tf.reduce_max(p, axis=1) >= confidence, tf.int64)) for p in probs])
                layer["rows"] = tf.add_n([tf.shape(p, out_type=tf.int64)[0] for p in probs])
            elif measured:
                lows = [tf.cast(tf.abs(tf.reshape(d, (-1, site.units))) < low[i], tf.int32)
                        for d in measured]
                layer["low_per_unit"] = tf.add_n([tf.reduce_sum(m, axis=0) for m in lows])
                layer["rows"] = tf.add_n([tf.shape(m, out_type=tf.int64)[0] for m in lows])
            if self.per_sample and cs and all(c.z is not None for c in cs):
                deltas = [g / tf.cast(scale, g.dtype) for g in grads["z"][i]]
                layer["per_sample_sq"] = _per_sample_sq(tf, [c.x for c in cs], deltas,
                                                        site.use_bias)
            if self.full:
                layer["full"] = {
                    "x": [c.x for c in cs],
                    "z": [c.z if c.z is not None else tf.zeros((0,)) for c in cs],
                    "out": [c.out for c in cs],
                    "g_out": grads["out"][i],
                    "g_z": grads["z"][i],
                    "g_x": grads["x"][i],
                }
            result["layers"].append(layer)
        return result

    def _compile(self, tensors: list[Any], labels: list[Any] | None) -> Any:
        """One trace for every batch size: the batch axis is left open in the signature, so
        a last partial batch does not trace the graph again."""
        tf = self.tf

        def spec(t: Any) -> Any:
            return tf.TensorSpec((None, *t.shape[1:]), t.dtype)

        scalars = [tf.TensorSpec((), tf.float32), tf.TensorSpec((len(self.sites),), tf.float32),
                   tf.TensorSpec((), tf.float32)]
        if labels is None:
            unlabelled = tf.function(
                lambda x, scale, low, confidence: self._traced(x, None, scale, low, confidence),
                input_signature=[[spec(t) for t in tensors], *scalars], autograph=False)
            return lambda x, _, scale, low, confidence: unlabelled(x, scale, low, confidence)
        return tf.function(self._traced, autograph=False, input_signature=[
            [spec(t) for t in tensors], [spec(y) for y in labels], *scalars])

    def step(
        self,
        inputs: Sequence[np.ndarray],
        labels: Any = None,
        scale: float = 1.0,
        low_thresholds: Sequence[float] | None = None,
        confidence: float = 0.99,
    ) -> BatchCapture:
        """Run one batch. ``scale`` multiplies the summed per-sample loss terms;
        ``low_thresholds`` (per site) and ``confidence`` are the activity thresholds."""
        tf = self.tf
        tensors = [tf.convert_to_tensor(a) for a in inputs]
        label_tensors = [tf.convert_to_tensor(y) for y in labels] if labels is not None else None
        low = tf.constant(low_thresholds if low_thresholds is not None
                          else [0.0] * len(self.sites), tf.float32, shape=(len(self.sites),))
        if self._step is None:
            self._step = self._compile(tensors, label_tensors) if self._compiled else \
                self._traced
        try:
            result = self._step(tensors, label_tensors, tf.constant(scale, tf.float32), low,
                                tf.constant(confidence, tf.float32))
        except (tf.errors.OpError, ValueError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ProbeError(
                f"the forward/backward pass failed: {first}",
                "run with --traceback for details",
            ) from exc
        if self._weights is None:  # the pass does not change them: read once per session
            self._weights = [(k.numpy(), b.numpy() if b is not None else None)
                             for k, b in (self._variables(s) for s in self.sites)]
        layers = []
        for i, site in enumerate(self.sites):
            lr = result["layers"][i]
            calls = []
            for j in range(len(lr["gx"])):
                full = None
                if "full" in lr:
                    f = lr["full"]
                    z = f["z"][j].numpy() if int(np.size(f["z"][j])) else None
                    derivative64 = kink = None
                    if self.verify and z is not None and site.profile.kind != "softmax":
                        derivative64, kink = fd_derivative(tf, site.layer.activation, z)
                    full = CallCapture(
                        x=f["x"][j].numpy(), z=z, out=f["out"][j].numpy(),
                        g_out=f["g_out"][j].numpy(),
                        g_z=f["g_z"][j].numpy() if z is not None else None,
                        g_x=f["g_x"][j].numpy(), derivative64=derivative64, kink=kink,
                    )
                calls.append(CallSummary(
                    x_shape=tuple(int(v) for v in lr["x_shape"][j].numpy()),
                    out_shape=tuple(int(v) for v in lr["out_shape"][j].numpy()),
                    input_grad=lr["gx"][j].numpy(),
                    output_grad_sumsq=float(lr["gout"][j].numpy()),
                    full=full,
                ))
            low_per_unit = lr["low_per_unit"].numpy() if "low_per_unit" in lr else None
            layers.append(LayerCapture(
                kernel=self._weights[i][0],
                bias=self._weights[i][1],
                kernel_grad=result["kernel_grad"][i].numpy(),
                bias_grad=result["bias_grad"][i].numpy() if site.use_bias else None,
                calls=tuple(calls),
                low_per_unit=low_per_unit,
                low_entries=int(low_per_unit.sum()) if low_per_unit is not None else 0,
                activity_rows=int(lr["rows"].numpy()) if "rows" in lr else 0,
                confident=int(lr["confident"].numpy()) if "confident" in lr else 0,
                per_sample_sq=lr["per_sample_sq"].numpy() if "per_sample_sq" in lr else None,
            ))
        if not self.order:
            self.order = [i for i in range(len(self.sites)) if layers[i].calls]
        return BatchCapture(
            loss=float(result["loss"].numpy()),
            samples=int(inputs[0].shape[0]),
            layers=tuple(layers),
            nonfinite=int(result["nonfinite"].numpy()),
            entries=int(result["entries"].numpy()),
        )


def fd_derivative(tf: Any, fn: Any, z: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """activation'(z) by float64 central differences, and where it has a kink.

    Independent of any gradient the activation registers. ``(None, None)`` when the activation
    does not compute in float64 (finite differences in float32 would be too coarse to judge).
    """
    z64 = np.asarray(z, dtype=np.float64)
    h = 1e-5 * np.maximum(1.0, np.abs(z64))
    try:
        outs = [fn(tf.constant(v)) for v in (z64 - h, z64, z64 + h)]
    except Exception:  # an activation that refuses float64 input
        return None, None
    if any(getattr(o, "dtype", None) != tf.float64 for o in outs):
        return None, None
    minus, mid, plus = (np.asarray(o, dtype=np.float64) for o in outs)
    left = (mid - minus) / h
    right = (plus - mid) / h
    kink = np.abs(right - left) > 1e-3 * np.maximum(1.0, np.maximum(np.abs(left),
                                                                    np.abs(right)))
    return (plus - minus) / (2 * h), kink


@contextmanager
def seeded(model: Any, seed: int) -> Iterator[int]:
    """Every Keras seed generator in the model (Dropout, GaussianNoise ...) set to a state
    derived from ``seed`` for the block, and restored afterwards. Yields how many were set."""
    generators: list[Any] = []
    seen: set[int] = set()
    flatten = getattr(model, "_flatten_layers", None)
    layers = list(flatten(include_self=True, recursive=True)) if flatten else [model]
    for layer in layers:
        for generator in getattr(layer, "_seed_generators", None) or []:
            if id(generator) not in seen:
                seen.add(id(generator))
                generators.append(generator)
    saved = [np.asarray(g.state.numpy()) for g in generators]
    try:
        for i, g in enumerate(generators):
            g.state.assign(np.array([seed, i], dtype=saved[i].dtype))
        yield len(generators)
    finally:
        for g, state in zip(generators, saved, strict=True):
            g.state.assign(state)


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
