"""``conv``: Conv1D/2D/3D, their Transpose forms, DepthwiseConv1D/2D and SeparableConv1D/2D.
Their activation (when set) is element-wise and last; saturation is measured per channel over
every position of every sample."""

from __future__ import annotations

from typing import Any

from gradinspect.engine.adapters.base import Adapter, last_axis_units


def conv_units(layer: Any) -> int | None:
    """Output channels: ``filters``, or input channels x depth multiplier for depthwise."""
    filters = getattr(layer, "filters", None)
    if filters:
        return int(filters)
    kernel = getattr(layer, "depthwise_kernel", None)
    if kernel is None:
        kernel = getattr(layer, "kernel", None)
    if kernel is not None and len(kernel.shape) >= 2:
        return int(kernel.shape[-2]) * int(kernel.shape[-1])
    return last_axis_units(layer)


ADAPTER = Adapter(
    kind="conv",
    classes=("Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose",
             "Conv3DTranspose", "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D",
             "SeparableConv2D"),
    units=conv_units,
    activation_hook=True,
    note="convolutions (1D/2D/3D, transpose, depthwise, separable)",
)
