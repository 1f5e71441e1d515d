"""``normalization``: BatchNormalization, LayerNormalization, GroupNormalization (gamma, beta),
and any other normalization layer with trainable weights; with what each statistic is taken
over, so that a normalisation over a single entry (which outputs its offset whatever its
input) can be named."""

from __future__ import annotations

from typing import Any

from gradinspect.engine.adapters.base import Adapter, Normalized


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


ADAPTER = Adapter(
    kind="normalization",
    classes=("BatchNormalization", "LayerNormalization", "GroupNormalization",
             "UnitNormalization", "RMSNormalization", "SpectralNormalization"),
    normalized=normalized,
    note="Batch/Layer/Group/RMS normalization (gamma, beta)",
)
