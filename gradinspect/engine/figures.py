"""The small figures a step computes on the device, and how they travel: reductions of one
gradient, NaN/Inf counts, per-sample squared norms on a Dense view, the packer that joins every
figure into one float64 vector per batch, and the tensor helpers these need."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradinspect.engine.layout import Figure, Layout, Merge
from gradinspect.io.data.rows import BUFFER_ALIGNMENT


class Packer:
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


def shape_of(tf: Any, t: Any) -> Any:
    """``tf.shape(t)``; in an eager step the shape is known, so no op is run for it."""
    if tf.executing_eagerly() and t.shape.is_fully_defined():
        return np.asarray(t.shape.as_list(), dtype=np.int64)
    return tf.shape(t)


def widened(tf: Any, g: Any) -> Any:
    return tf.cast(g, tf.float32) if g.dtype in (tf.float16, tf.bfloat16) else g


def half_sumsq(tf: Any, g: Any) -> Any:
    """sum(g^2) / 2 in one kernel (``l2_loss``), without a squared copy. The host doubles it
    (exact): an eager step pays for every op, and this runs a few times per entry."""
    return tf.nn.l2_loss(widened(tf, g))


def reductions(tf: Any, g: Any) -> list[Any]:
    """sum of squares, sum of |g|, max |g| of a gradient, in its own precision (tree-reduced
    sums: ~1e-7 relative error in float32; 16-bit floats are widened first). NaN poisons all
    three; NaN/Inf are counted by ``nonfinite_counts`` only when the host sees something not
    finite."""
    wide = widened(tf, g)
    absval = tf.abs(wide)
    return [half_sumsq(tf, wide), tf.reduce_sum(absval), tf.reduce_max(absval)]


GX_MERGES: tuple[Merge, ...] = ("sum", "sum", "max")
"""How ``reductions``' figures merge across replicas."""


COUNT_MERGES: tuple[Merge, ...] = ("max", "sum", "sum")
"""How ``nonfinite_counts``' figures merge across replicas."""


def nonfinite_counts(tf: Any, g: Any) -> list[Any]:
    """The rare path, for one gradient: max |g| over the entries that are not NaN, the NaN
    count and the Inf count."""
    absval = tf.abs(widened(tf, g))
    nan = tf.math.is_nan(absval)
    top = tf.reduce_max(tf.where(nan, tf.zeros_like(absval), absval))
    return [top, tf.reduce_sum(tf.cast(nan, tf.float64)),
            tf.reduce_sum(tf.cast(tf.math.is_inf(absval), tf.float64))]


@dataclass
class EagerSum:
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


DOUBLE_LAST = np.array([1.0, 1.0, 1.0, 2.0])
"""``input_stats`` carries half the sum of squares (``half_sumsq``)."""


def leading_axes(t: Any) -> list[int]:
    """Every axis but the last (units): per-unit sums without a reshape."""
    return list(range(len(t.shape) - 1))


def unit_counts(tf: Any, mask: Any) -> Any:
    """Per unit (last axis), the true entries of a boolean mask, in int32. In an eager step
    (static shapes) the mask is summed as bytes in blocks of up to 255 rows and the block
    sums in int32: the one full-size write is a byte per entry, where a cast to int32 writes
    four (which was most of this figure's cost on MobileNetV2's 35 ReLU6 layers)."""
    shape = mask.shape
    if tf.executing_eagerly() and shape.is_fully_defined() and len(shape) >= 2:
        units, rows = int(shape[-1]), math.prod(shape.as_list()[:-1])
        block = _byte_block(rows)
        if block:
            partial = tf.reduce_sum(tf.reshape(tf.cast(mask, tf.uint8),
                                               (rows // block, block, units)), axis=1)
            return tf.reduce_sum(tf.cast(partial, tf.int32), axis=0)
    return tf.reduce_sum(tf.cast(mask, tf.int32), axis=leading_axes(mask))


@functools.lru_cache(maxsize=256)
def _byte_block(rows: int) -> int:
    """The largest divisor of ``rows`` that a byte can count to (255), or 0 when it is below
    16 (the blocks would not pay for themselves)."""
    return next((d for d in range(min(rows, 255), 15, -1) if rows % d == 0), 0)


def row_count(tf: Any, tensors: Sequence[Any]) -> Any:
    """Rows (entries per unit) of the tensors: from their shapes, with no op in an eager
    step."""
    if tf.executing_eagerly() and all(t.shape.is_fully_defined() for t in tensors):
        return np.int64(sum(math.prod(t.shape.as_list()[:-1]) for t in tensors))
    return tf.add_n([tf.reduce_prod(tf.shape(t)[:-1]) for t in tensors])


def moving_statistics(layer: Any) -> tuple[Any, Any, int] | None:
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


def axis_last(tf: Any, t: Any, axis: int) -> Any:
    """``t`` with ``axis`` moved last."""
    rank = len(t.shape)
    axis %= rank
    if axis == rank - 1:
        return t
    return tf.transpose(t, [*(a for a in range(rank) if a != axis), axis])


def units_last(tf: Any, t: Any, axis: int) -> Any:
    """``t`` with its unit (channel) axis last: channels_first convolutions move axis 1."""
    if axis == -1 or len(t.shape) < 3:
        return t
    rank = len(t.shape)
    return tf.transpose(t, [0, *range(2, rank), 1])


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_KERAS_CALL = re.compile(r"Exception encountered when calling (?:layer )?(.+?)\.?$")
MAX_SAID = 400
"""Characters of Keras' explanation kept in the one-line message (``--traceback`` has all)."""


def what_keras_said(exc: BaseException) -> str:
    """The cause of a failure inside ``call()`` on one line. Keras puts "Exception encountered
    when calling X.call()." first and the cause (a structure mismatch, an incompatible shape)
    after it, then the arguments it received; this returns ``X.call(): <the cause>``, colour
    codes removed. Other errors give their first line."""
    text = _ANSI.sub("", str(exc)).strip()
    if not text:
        return type(exc).__name__
    lines = [line.strip() for line in text.splitlines()]
    if lines[0].startswith("Graph execution error"):
        return _graph_error(lines)
    found = _KERAS_CALL.match(lines[0])
    if found is None:
        return lines[0]
    said: list[str] = []
    for line in lines[1:]:
        if line.startswith("Arguments received by"):
            break
        if line:
            said.append(line)
    if not said:
        return lines[0]
    return f"{found.group(1)}: {_clipped(' '.join(said))}"


def _graph_error(lines: list[str]) -> str:
    """TensorFlow's "Graph execution error:" text: the operation's own message after the
    Python stack where it was defined, and the node it names."""
    node = ""
    for line in lines[1:]:
        if line.startswith("Detected at node "):
            node = line.removeprefix("Detected at node ").split(" defined at", 1)[0]
        elif line and not line.startswith(("File ", "[[", "Detected at")):
            return _clipped(line) + (f" (at node {node})" if node else "")
    return lines[0]


def _clipped(text: str) -> str:
    return text if len(text) <= MAX_SAID else text[:MAX_SAID] + " ..."


def replica_context(tf: Any) -> Any:
    context = tf.distribute.get_replica_context()
    assert context is not None, "a collective outside strategy.run"
    return context


def tf_variable(tf: Any, variable: Any) -> Any:
    """The ``tf.Variable`` behind a Keras 3 variable (the tape watches TF objects only)."""
    if isinstance(variable, tf.Variable):
        return variable
    return getattr(variable, "value", variable)


def below(tf: Any, d: Any, low: Any) -> Any:
    """``|d| < low`` as ``-low < d < low``: two byte-wide comparisons instead of a full-size
    float copy (``abs``) and one (the same set: NaN is in neither)."""
    bound = tf.cast(low, d.dtype)
    return tf.logical_and(d < bound, d > -bound)


def outside(tf: Any, z: Any, a: Any, b: Any) -> Any:
    """``z <= a or z >= b``: the low set of an activation whose derivative is low on two
    tails. In an eager step the bounds are known, so an open tail (relu: b = +inf) costs
    no comparison."""
    if tf.executing_eagerly():
        lo, hi = float(a), float(b)
        if math.isinf(hi):
            return z <= lo
        if math.isinf(lo):
            return z >= hi
        return tf.logical_or(z <= lo, z >= hi)
    return tf.logical_or(z <= tf.cast(a, z.dtype), z >= tf.cast(b, z.dtype))
