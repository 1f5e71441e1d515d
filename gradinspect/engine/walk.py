"""The one walker over a model: every layer that owns trainable variables becomes a ``Site``.

Each layer, nested models included, is offered to the adapters in order (``adapters.ADAPTERS``);
the first whose kind it is decides which variables the entry owns. A layer that owns none is
not an entry, but the walker descends into it (MultiHeadAttention's projections, a nested model,
Bidirectional's two directions). Every trainable variable of the model is owned by exactly one
entry, or listed in ``Walk.unowned`` with the reason: nothing is skipped silently.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradinspect.engine.adapters import ADAPTERS, Adapter
from gradinspect.engine.adapters.base import channel_axis
from gradinspect.engine.views import DenseView, children
from gradinspect.report import SkippedInfo


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
    samples: np.ndarray | None = field(default=None, compare=False, repr=False)
    """|activation'(z)| on ``GRID`` (``None`` when not sampled: softmax, linear)."""

    def tail_bounds(self, fraction: float, strict: bool = True) -> tuple[float, float] | None:
        """(a, b) such that activation'(z) < ``fraction`` x peak exactly where z <= a or
        z >= b, on the sampling grid (steps of 0.01); ``None`` when the low set is not two
        tails (a low region in the middle: the step then measures activation'(z) itself).
        ``strict=False``: the two outer tails, whatever lies between them."""
        if self.samples is None:
            return None
        low = self.samples < fraction * self.peak
        n = low.size
        left = int(np.argmin(low)) if not low.all() else n
        right = int(np.argmin(low[::-1])) if not low.all() else 0
        if strict and low[left:n - right].any():
            return None
        a = float(GRID[left - 1]) if left > 0 else -math.inf
        b = float(GRID[n - right]) if right > 0 else math.inf
        return a, b

    def tails_only(self) -> bool:
        """Whether the low set is two tails at every usual threshold fraction."""
        return all(self.tail_bounds(f) is not None for f in (1e-4, 1e-3, 1e-2, 0.05, 0.1))


GRID = np.linspace(-30.0, 30.0, 6001)
"""Where activation'(z) is sampled to profile an activation (steps of 0.01)."""


@dataclass(frozen=True)
class Follower:
    """An activation layer that acts on a linear layer's output, found through the graph
    (``Dense/Conv(linear) -> [BatchNormalization | Dropout ...] -> Activation/ReLU ...``)."""

    layer: Any
    path: str
    profile: ActivationProfile


@dataclass(frozen=True)
class VariableRef:
    """One trainable variable an entry owns."""

    name: str
    """Short name within the entry (``kernel``, ``bias``, ``gamma`` ...): the report's key."""
    variable: Any
    """The Keras variable."""
    path: str
    """Keras variable path (``variable.path``), as in ``model.trainable_variables``."""
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


@dataclass(frozen=True)
class Site:
    """A layer that owns trainable variables, with where it sits and how it is hooked."""

    layer: Any
    name: str
    path: str
    class_name: str
    kind: str
    adapter: Adapter
    variables: tuple[VariableRef, ...]
    activation: str | None
    """The layer's own activation (``linear`` when none), ``None`` for kinds without one."""
    units: int | None
    """Units (channels) the activation acts on; ``None`` when not measured."""
    profile: ActivationProfile | None
    """The layer's own activation, profiled (``None`` for kinds without one)."""
    follower: Follower | None = None
    """A following activation layer, measured instead of the (linear) own activation."""
    output_index: int | None = None
    """Index of the model output that is this layer's output (or its follower's), as is."""
    channel_axis: int = -1
    """Axis of the units in the layer's output (1 for channels_first convolutions)."""
    dense_view: DenseView | None = None
    """How the layer is a Dense layer (Dense itself, an EinsumDense of the form P C, C O -> P O):
    ``--verify`` and ``--per-sample`` apply where this is set."""

    @property
    def is_output(self) -> bool:
        return self.output_index is not None

    @property
    def use_bias(self) -> bool:
        return any(v.name == "bias" for v in self.variables)

    @property
    def params(self) -> int:
        return sum(v.size for v in self.variables)

    @property
    def measured(self) -> ActivationProfile | None:
        """The activation whose saturation is measured for this layer (``None``: nothing)."""
        if self.follower is not None:
            return self.follower.profile
        if self.profile is not None and self.units:
            return self.profile
        return None

    @property
    def saturating_inside(self) -> bool:
        """A saturating activation applied by the entry itself: its dL/dz is tapped, to
        measure how much the activation shrinks the backward signal."""
        return self.follower is None and self.profile is not None \
            and self.profile.kind == "saturating"

    @property
    def measured_source(self) -> str:
        """``layer`` or the path of the following activation layer."""
        return self.follower.path if self.follower is not None else "layer"


@dataclass(frozen=True)
class Walk:
    """Every entry of a model, and the trainable parameters no entry owns."""

    sites: tuple[Site, ...]
    trainable_params: int
    unowned: tuple[SkippedInfo, ...] = ()


# ---------------------------------------------------------------- activations


def activation_name(fn: Any) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return "linear" if name in ("linear", "identity") else str(name)


_PROFILES: dict[Any, ActivationProfile] = {}
"""Profiles of activation functions and activation-layer configurations already sampled: a
CNN has a hundred layers but two or three activations (each profile is a 6001-point tape)."""


def profile_activation(tf: Any, fn: Any, key: Any = None) -> ActivationProfile:
    """Sample activation'(z) on [-30, 30] and classify its shape (no table of names).
    ``key``: what identifies ``fn`` for the cache (default: ``fn`` itself, when hashable)."""
    try:
        key = fn if key is None else key
        cached = _PROFILES.get(key)
    except TypeError:  # an unhashable callable: profile it every time
        key, cached = None, None
    if cached is not None:
        return cached
    profile = _profile(tf, fn)
    if key is not None:
        _PROFILES[key] = profile
    return profile


def _layer_key(layer: Any) -> Any:
    """An activation layer's class and configuration (without its name), or ``None`` when the
    configuration does not decide the function (PReLU's slopes are weights)."""
    if getattr(layer, "weights", None):
        return None
    try:
        config = {k: v for k, v in layer.get_config().items() if k not in ("name", "trainable")}
        return (type(layer).__module__, type(layer).__qualname__, repr(sorted(config.items())))
    except Exception:  # a layer without a usable config: do not cache it
        return None


def _profile(tf: Any, fn: Any) -> ActivationProfile:
    name = activation_name(fn)
    if name in ("softmax", "log_softmax"):
        return ActivationProfile(name=name, kind="softmax", peak=1.0)
    z = tf.constant(GRID.astype(np.float32)[None, :])
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
    # Low on both tails is saturating (sigmoid, tanh, hard_sigmoid) unless the left low region
    # reaches z = 0: relu6 is a rectifier with a cap, and its z < 0 half is the ordinary
    # rectifier zero, not saturation.
    left_edge = float(GRID[int(np.argmin(low))]) if low[0] else -math.inf
    saturating = bool(low[0] and low[-1]) and left_edge < -0.5
    return ActivationProfile(name=name, kind="saturating" if saturating else "rectifier",
                             peak=peak, samples=d)


PASS_THROUGH = (
    "BatchNormalization", "LayerNormalization", "GroupNormalization", "UnitNormalization",
    "Dropout", "AlphaDropout", "GaussianDropout", "GaussianNoise", "ActivityRegularization",
    "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
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
    if type(layer).__name__ == "ReLU" and getattr(layer, "max_value", None) is not None:
        fn.__name__ = f"relu{float(layer.max_value):g}"
    return fn


def _snake(name: str) -> str:
    return {"ReLU": "relu", "LeakyReLU": "leaky_relu", "PReLU": "prelu", "ELU": "elu",
            "Softmax": "softmax"}.get(name, name.lower())


def _find_follower(tf: Any, start: Any, prefix: str, units: int) -> Follower | None:
    """Walk from a linear layer through pass-through layers to an activation layer."""
    current = start
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
                    # a weightless layer is the same function whatever its width: one
                    # profile, on one unit, for all (a MobileNetV2 has 35 ReLU6 at 8 widths)
                    key = _layer_key(nxt)
                    profile = profile_activation(
                        tf, _layer_fn(tf, nxt, units if key is None else 1), key=key)
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


# ---------------------------------------------------------------- the walk


def _adapter_for(layer: Any, keras: Any) -> Adapter:
    return next(a for a in ADAPTERS if a.matches(layer, keras))


def _site(tf: Any, keras: Any, layer: Any, adapter: Adapter, prefix: str,
          owned: list[tuple[str, Any]], outputs: dict[int, int]) -> Site:
    refs = tuple(VariableRef(name=n, variable=v, path=str(getattr(v, "path", n)),
                             shape=tuple(int(d) for d in v.shape)) for n, v in owned)
    profile = activation = None
    units = follower = None
    if adapter.activation_hook and getattr(layer, "activation", None) is not None:
        activation = activation_name(layer.activation)
        units = adapter.units(layer)
        profile = profile_activation(tf, layer.activation)
        if profile.kind == "linear" and units:
            follower = _find_follower(tf, layer, prefix, units)
    index = outputs.get(id(layer))
    if index is None and follower is not None:
        index = outputs.get(id(follower.layer))
    return Site(
        layer=layer, name=layer.name, path=f"{prefix}{layer.name}",
        class_name=type(layer).__name__, kind=adapter.kind, adapter=adapter, variables=refs,
        activation=activation, units=units, profile=profile, follower=follower,
        output_index=index, channel_axis=channel_axis(layer),
        dense_view=adapter.dense_view(layer),
    )


def walk_model(model: Any) -> Walk:
    """Every layer that owns trainable variables (nested models too), each once, in the
    order the layers are tracked (the probe reorders them by first call), and the trainable
    parameters no entry owns."""
    from gradinspect._tf import tf_modules

    tf, keras = tf_modules()
    sites: list[Site] = []
    seen_layers: set[int] = set()
    seen_vars: set[int] = set()
    outputs = output_layers(model)

    def visit(layer: Any, prefix: str) -> None:
        if id(layer) in seen_layers:
            return
        seen_layers.add(id(layer))
        adapter = _adapter_for(layer, keras)
        # a layer created and never called (keras.io's GatedResidualNetwork keeps a projection
        # it uses only when widths differ) owns no variables, and its adapter's attributes
        # (``kernel`` ...) raise until it is built: nothing to inspect, nothing skipped
        owned = [(n, v) for n, v in adapter.variables(layer) if id(v) not in seen_vars] \
            if getattr(layer, "weights", None) else []
        if owned:
            seen_vars.update(id(v) for _, v in owned)
            sites.append(_site(tf, keras, layer, adapter, prefix, owned, outputs))
        if adapter.owns_subtree and owned:
            return
        for child in children(layer):
            visit(child, f"{prefix}{layer.name}/" if layer is not model else prefix)

    visit(model, "")
    trainable = list(getattr(model, "trainable_variables", None) or [])
    unowned = tuple(
        SkippedInfo(path=str(getattr(v, "path", getattr(v, "name", "?"))), class_name="?",
                params=int(np.prod(v.shape, dtype=np.int64)),
                reason="not owned by any layer the walker reached")
        for v in trainable if id(v) not in seen_vars
    )
    total = sum(int(np.prod(v.shape, dtype=np.int64)) for v in trainable)
    return Walk(sites=tuple(sites), trainable_params=total, unowned=unowned)


def select(sites: Sequence[Site], kinds: Sequence[str], patterns: Sequence[str]
           ) -> tuple[list[Site], list[SkippedInfo]]:
    """``--kind`` and ``--layer``: the entries that match every given filter, and the rest as
    skipped (with the filter that left them out)."""
    chosen: list[Site] = []
    skipped: list[SkippedInfo] = []
    for site in sites:
        reason = None
        if kinds and site.kind not in kinds:
            reason = f"filtered out by --kind {','.join(kinds)}"
        elif patterns and not any(fnmatch.fnmatchcase(site.name, p) or
                                  fnmatch.fnmatchcase(site.path, p) for p in patterns):
            reason = f"filtered out by --layer {' '.join(patterns)}"
        if reason is None:
            chosen.append(site)
        else:
            skipped.append(SkippedInfo(site.path, site.class_name, site.params, reason))
    return chosen, skipped


def find_sites(model: Any) -> list[Site]:
    """Every entry of the model (see ``walk_model``)."""
    return list(walk_model(model).sites)


def find_dense_layers(model: Any) -> list[Site]:
    """The ``dense`` entries only (Dense and subclasses)."""
    return [s for s in find_sites(model) if s.kind == "dense"]


def layer_classes(model: Any) -> list[str]:
    """Class names of all layers (nested too), for messages about models without entries."""
    names: list[str] = []

    def walk(layer: Any) -> None:
        for child in children(layer):
            names.append(type(child).__name__)
            walk(child)

    walk(model)
    return names
