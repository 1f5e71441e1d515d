"""``conv``: Conv1D/2D/3D, their Transpose forms, DepthwiseConv1D/2D and SeparableConv1D/2D.
Their activation (when set) is element-wise and last; saturation is measured per channel over
every position of every sample."""

from __future__ import annotations

from typing import Any

import numpy as np

from gradinspect.engine.adapters.base import Adapter, keras_own_call, last_axis_units
from gradinspect.engine.figures import widened
from gradinspect.engine.persample import gram_is_cheaper
from gradinspect.engine.views import DenseView, PerSampleCall, PerSampleForm


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



_WINDOWED = ("Conv1D", "Conv2D", "Conv3D", "DepthwiseConv1D", "DepthwiseConv2D")
"""The convolutions with a per-sample closed form: their kernel's gradient is, for each kernel
offset, the input seen through that offset (one strided window per output position) against
dL/dz. The transpose and separable forms take the exact fallback."""


def conv_per_sample(layer: Any, view: DenseView | None, training: bool) -> PerSampleForm | None:
    """Windows for Conv1D/2D/3D (groups 1) and DepthwiseConv1D/2D; the fallback otherwise."""
    names = {c.__name__ for c in type(layer).__mro__}
    if (not names & set(_WINDOWED) or int(getattr(layer, "groups", 1) or 1) != 1
            or not keras_own_call(layer) or any(n.endswith("Transpose") for n in names)):
        return None
    return DEPTHWISE if names & {"DepthwiseConv1D", "DepthwiseConv2D"} else WINDOWS


def _channels_last(tf: Any, layer: Any, t: Any) -> Any:
    if getattr(layer, "data_format", None) != "channels_first":
        return t
    rank = len(t.shape)
    return tf.transpose(t, [0, *range(2, rank), 1])


def _windows(tf: Any, layer: Any, x: Any, out_sizes: tuple[int, ...]) -> list[Any]:
    """x (channels last) seen through each kernel offset, in the kernel's order: per offset a
    tensor (batch, *output positions, channels) whose entry at an output position is the input
    entry that offset of the kernel multiplies there (zero in the padding)."""
    kernel = tuple(int(k) for k in layer.kernel_size)
    strides = tuple(int(k) for k in layer.strides)
    rates = tuple(int(k) for k in layer.dilation_rate)
    padding = str(layer.padding).lower()
    sizes = tuple(int(d) for d in x.shape[1:-1])
    pads = []
    for n, o, k, s, d in zip(sizes, out_sizes, kernel, strides, rates, strict=True):
        total = max((o - 1) * s + (k - 1) * d + 1 - n, 0)
        if padding == "causal":  # Conv1D: (kernel - 1) x dilation zeros before the sequence
            pads.append([(k - 1) * d, 0])
        elif padding == "same":
            pads.append([total // 2, total - total // 2])
        else:
            pads.append([0, 0])
    x = tf.pad(x, [[0, 0], *pads, [0, 0]]) if any(p != [0, 0] for p in pads) else x
    views = []
    for offset in np.ndindex(*kernel):
        begin = [0, *(i * d for i, d in zip(offset, rates, strict=True)), 0]
        end = [0, *(b + (o - 1) * s + 1 for b, o, s in zip(begin[1:-1], out_sizes, strides,
                                                              strict=True)), 0]
        views.append(tf.strided_slice(x, begin, end, [1, *strides, 1],
                                      begin_mask=1 | (1 << (len(kernel) + 1)),
                                      end_mask=1 | (1 << (len(kernel) + 1))))
    return views


def _calls_windows(tf: Any, call: PerSampleCall) -> tuple[list[Any], Any, int]:
    """Per kernel offset, the windows of every call as rows (batch, positions, channels),
    the calls' positions one after another; dL/dz as rows (batch, positions, outputs); and
    the positions of a sample."""
    layer = call.layer
    batch = tf.shape(call.calls[0].x)[0]
    per_offset: list[list[Any]] = []
    deltas = []
    rows = 0
    for c, delta in zip(call.calls, call.deltas, strict=True):
        d = _channels_last(tf, layer, delta)
        out_sizes = tuple(int(v) for v in d.shape[1:-1])
        rows += int(np.prod(out_sizes, dtype=np.int64))
        views = _windows(tf, layer, _channels_last(tf, layer, c.x), out_sizes)
        for k, v in enumerate(views):
            if len(per_offset) <= k:
                per_offset.append([])
            per_offset[k].append(tf.reshape(v, tf.stack([batch, -1, v.shape[-1]])))
        deltas.append(tf.reshape(d, tf.stack([batch, -1, d.shape[-1]])))
    return ([tf.concat(v, axis=1) if len(v) > 1 else v[0] for v in per_offset],
            tf.concat(deltas, axis=1) if len(deltas) > 1 else deltas[0], rows)


def _sq(tf: Any, t: Any, axes: list[int]) -> Any:
    wide = tf.cast(t, tf.float64)
    return tf.reduce_sum(wide * wide, axis=axes)


def windows_sq(tf: Any, call: PerSampleCall) -> tuple[Any, str]:
    """Conv1D/2D/3D: per sample, ||sum over positions of window x dL/dz||^2 over every
    kernel offset, as the Gram form <sum_k W_k W_k^T, D D^T> when ``gram_is_cheaper``, else
    offset by offset."""
    views, d, rows = _calls_windows(tf, call)
    n_in = len(views) * int(views[0].shape[-1])
    n_out = int(d.shape[-1])
    if gram_is_cheaper(rows, n_in, n_out):
        gx = tf.add_n([tf.einsum("bri,bsi->brs", tf.cast(v, tf.float64), tf.cast(v, tf.float64))
                       for v in views])
        wide = tf.cast(d, tf.float64)
        sq, how = tf.reduce_sum(gx * tf.einsum("bro,bso->brs", wide, wide), axis=[1, 2]), "gram"
    else:
        sq = tf.add_n([_sq(tf, tf.einsum("bri,bro->bio", v, d), [1, 2]) for v in views])
        how = "product"
    if call.use_bias:
        sq = sq + _sq(tf, tf.reduce_sum(d, axis=1), [1])
    return sq, f"windows, {how}"


def _samples_as_channels(tf: Any, t: Any) -> Any:
    """(batch, *positions, channels) -> (1, *positions as 2D, batch x channels): each sample's
    channels become channels of one image (1D positions get a height of 1)."""
    if len(t.shape) == 3:
        t = t[:, None]
    shape = tf.shape(t)
    return tf.reshape(tf.transpose(t, [1, 2, 0, 3]), tf.stack([1, shape[1], shape[2], -1]))


def _native_depthwise(layer: Any) -> bool:
    """TensorFlow's own filter gradient takes the layer: no dilation, and a 2D layer's two
    strides equal (its kernel's requirement)."""
    return (all(int(r) == 1 for r in layer.dilation_rate)
            and len({int(s) for s in layer.strides}) == 1)


def _depthwise_by_filter_gradient(tf: Any, call: PerSampleCall) -> tuple[Any, str]:
    """Every sample's depthwise kernel gradient at once, by TensorFlow's own depthwise filter
    gradient with the samples as channels (sample b's channel c is channel b x C + c of one
    image, so each of its kernels sees that sample alone): one kernel instead of a strided
    window and a product per kernel offset. Exact (it is the gradient Keras' own backward
    pass computes, split by sample)."""
    layer = call.layer
    kernel = [int(k) for k in layer.kernel_size]
    stride = int(layer.strides[0])
    padding = str(layer.padding).lower()
    if len(kernel) == 1:
        kernel = [1, *kernel]
    mult = int(layer.depth_multiplier)
    total = biases = None
    batch = tf.shape(call.calls[0].x)[0]
    for c, delta in zip(call.calls, call.deltas, strict=True):
        x = widened(tf, _channels_last(tf, layer, c.x))
        d = widened(tf, _channels_last(tf, layer, delta))
        channels = int(x.shape[-1])
        g = tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(
            input=_samples_as_channels(tf, x),
            filter_sizes=tf.stack([kernel[0], kernel[1], batch * channels, mult]),
            out_backprop=_samples_as_channels(tf, d), strides=[1, stride, stride, 1],
            padding="SAME" if padding == "same" else "VALID")
        total = g if total is None else total + g
        if call.use_bias:
            b = tf.reduce_sum(d, axis=list(range(1, len(d.shape) - 1)))
            biases = b if biases is None else biases + b
    assert total is not None
    per = tf.reshape(tf.cast(total, tf.float64), tf.stack([-1, batch, channels * mult]))
    sq = tf.reduce_sum(per * per, axis=[0, 2])
    if biases is not None:
        sq = sq + _sq(tf, biases, [1])
    return sq, "depthwise, samples as channels"


def depthwise_sq(tf: Any, call: PerSampleCall) -> tuple[Any, str]:
    """DepthwiseConv1D/2D: TensorFlow's filter gradient with the samples as channels where it
    takes the layer (``_native_depthwise``); else per sample, kernel offset and channel c,
    the sum over positions of the window's channel c times dL/dz of c's
    ``depth_multiplier`` outputs."""
    if _native_depthwise(call.layer):
        return _depthwise_by_filter_gradient(tf, call)
    views, d, _ = _calls_windows(tf, call)
    channels = int(views[0].shape[-1])
    mult = int(d.shape[-1]) // channels
    d = tf.reshape(d, tf.stack([tf.shape(d)[0], tf.shape(d)[1], channels, mult]))
    sq = tf.add_n([_sq(tf, tf.reduce_sum(v[..., None] * d, axis=1), [1, 2]) for v in views])
    if call.use_bias:
        sq = sq + _sq(tf, tf.reduce_sum(d, axis=1), [1, 2])
    return sq, "depthwise windows"


WINDOWS = PerSampleForm(method="windows", needs=frozenset({"z"}), compute=windows_sq)
DEPTHWISE = PerSampleForm(method="depthwise windows", needs=frozenset({"z"}),
                          compute=depthwise_sq)


ADAPTER = Adapter(
    kind="conv",
    classes=("Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose",
             "Conv3DTranspose", "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D",
             "SeparableConv2D"),
    units=conv_units,
    activation_hook=True,
    per_sample=conv_per_sample,
    note="convolutions (1D/2D/3D, transpose, depthwise, separable); per-sample by kernel windows",
)
