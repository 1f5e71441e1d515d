"""``normalization``: BatchNormalization, LayerNormalization, GroupNormalization (gamma, beta),
and any other normalization layer with trainable weights; with what each statistic is taken
over, so that a normalisation over a single entry (which outputs its offset whatever its
input) can be named."""

from __future__ import annotations

from typing import Any

from gradinspect.engine.adapters.base import Adapter, Normalized, keras_own_call
from gradinspect.engine.figures import widened
from gradinspect.engine.views import DenseView, PerSampleCall, PerSampleForm


def _axes(layer: Any, rank: int) -> tuple[int, ...] | None:
    """The layer's ``axis`` as positive axes of the batched input (rank counts the batch)."""
    axis = getattr(layer, "axis", None)
    found = [axis] if isinstance(axis, int) else list(axis) if isinstance(axis, (list, tuple)) \
        else None
    if found is None or not all(isinstance(a, int) for a in found):
        return None
    out = tuple(sorted({a % rank for a in found}))
    return out if all(0 < a < rank for a in out) else None


def normalized(layer: Any, input_shape: tuple[int | None, ...]) -> Normalized | None:
    """The axes (counted from the end, as ``axis=-1`` is written) and sizes one statistic
    averages over: the ``axis`` of LayerNormalization, UnitNormalization and RMSNormalization;
    a group's channels and every other non-batch axis for GroupNormalization.
    BatchNormalization averages over the batch (and inference uses moving statistics):
    ``None``."""
    rank = len(input_shape) + 1
    name = type(layer).__name__
    if name == "GroupNormalization" or hasattr(layer, "groups"):
        axes = _axes(layer, rank)
        groups = getattr(layer, "groups", None)
        if axes is None or len(axes) != 1 or not isinstance(groups, int) or groups <= 0:
            return None
        channels = input_shape[axes[0] - 1]
        if channels is None:
            return None
        others = tuple(a for a in range(1, rank) if a != axes[0])
        sizes = (channels // groups, *(input_shape[a - 1] for a in others))
        if any(s is None for s in sizes):
            return None
        return (tuple(a - rank for a in (axes[0], *others)),
                tuple(int(s) for s in sizes if s is not None))
    if "BatchNormalization" in name or not hasattr(layer, "axis"):
        return None
    axes = _axes(layer, rank)
    if axes is None:
        return None
    sizes = tuple(input_shape[a - 1] for a in axes)
    if any(s is None for s in sizes):
        return None
    return tuple(a - rank for a in axes), tuple(int(s) for s in sizes if s is not None)


def normalization_per_sample(layer: Any, view: DenseView | None,
                             training: bool) -> PerSampleForm | None:
    """The closed form for Keras' BatchNormalization in inference (its moving statistics)
    and LayerNormalization (without RMS scaling): per sample, dL/dgamma = sum of dL/dy x
    the normalised input over the positions, dL/dbeta = sum of dL/dy. In training mode
    BatchNormalization mixes samples and ``--per-sample`` is refused before the pass. Other
    normalisations take the exact fallback."""
    if not keras_own_call(layer):
        return None
    name = type(layer).call.__qualname__.split(".")[0]
    if name == "BatchNormalization" and not training and not getattr(layer, "renorm", False):
        return NORMALIZED
    if name == "LayerNormalization" and not getattr(layer, "rms_scaling", False):
        return NORMALIZED
    return None


def _gamma_part(tf: Any, layer: Any, x: Any, g: Any, axes: list[int]) -> Any:
    """Per sample, dL/dgamma: the normalised input times dL/dy (``g``), summed over the
    statistic ``axes``, in float32 or wider. BatchNormalization's statistics are per-channel
    constants (its moving ones): the centred input times dL/dy is summed first and scaled
    after, one product over the whole tensor fewer (the step pays per pass over it)."""
    x = tf.cast(widened(tf, x), g.dtype)
    rank = len(x.shape)
    if type(layer).call.__qualname__.startswith("BatchNormalization"):
        shape = [1] * rank
        shape[_own_axes(layer, rank)[0]] = -1
        mean = tf.reshape(tf.cast(layer.moving_mean, x.dtype), shape)
        inv = tf.math.rsqrt(tf.cast(layer.moving_variance, x.dtype) + layer.epsilon)
        summed = _summed(tf, (x - mean) * g, axes)
        return summed * tf.reshape(inv, [1] * (len(summed.shape) - 1) + [-1])
    mean, variance = tf.nn.moments(x, axes=_own_axes(layer, rank), keepdims=True)
    return _summed(tf, (x - mean) * tf.math.rsqrt(variance + layer.epsilon) * g, axes)


def _summed(tf: Any, t: Any, axes: list[int]) -> Any:
    """``t`` summed over ``axes`` (none: as it is)."""
    return tf.reduce_sum(t, axis=axes) if axes else t


def _own_axes(layer: Any, rank: int) -> list[int]:
    """The layer's ``axis`` as positive axes of a rank-``rank`` input: what gamma and beta
    span."""
    own = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    return [int(a) % rank for a in own]


def _statistic_axes(layer: Any, rank: int) -> list[int]:
    """The axes gamma and beta do not span (besides the batch): summed per sample."""
    kept = set(_own_axes(layer, rank))
    return [a for a in range(1, rank) if a not in kept]


def normalized_sq(tf: Any, call: PerSampleCall) -> tuple[Any, str]:
    """Per sample, gamma's and beta's gradients over every call (added before the norm)."""
    layer = call.layer
    totals: dict[str, Any] = {}
    for c, gouts in zip(call.calls, call.gouts, strict=True):
        g = widened(tf, gouts[0])
        axes = _statistic_axes(layer, len(g.shape))
        for name in ("gamma", "beta"):
            if name in call.names:
                # summed over positions in the tensors' precision, squared in float64
                part = (_gamma_part(tf, layer, c.x, g, axes) if name == "gamma"
                        else _summed(tf, g, axes))
                summed = tf.cast(part, tf.float64)
                totals[name] = totals[name] + summed if name in totals else summed
    batch = tf.shape(call.calls[0].x)[0]
    return tf.add_n([tf.reduce_sum(tf.reshape(t * t, tf.stack([batch, -1])), axis=1)
                     for t in totals.values()]), "normalised input"


NORMALIZED = PerSampleForm(method="normalised input", needs=frozenset({"gout"}),
                           compute=normalized_sq)


ADAPTER = Adapter(
    kind="normalization",
    classes=("BatchNormalization", "LayerNormalization", "GroupNormalization",
             "UnitNormalization", "RMSNormalization", "SpectralNormalization"),
    normalized=normalized,
    per_sample=normalization_per_sample,
    note="Batch/Layer/Group/RMS normalization (gamma, beta)",
)
