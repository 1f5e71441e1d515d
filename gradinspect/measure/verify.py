"""Self-checks from the Dense identities, in float64 numpy: closed-form verification of the tape
(``--verify``).

No TensorFlow here: the step hands over the captured x, z, g and a float64 finite-difference
derivative of the activation; everything else is arithmetic on arrays."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from gradinspect.records import ErrorStats, VerifyStats

F64 = npt.NDArray[np.float64]


def _rows(a: npt.ArrayLike) -> F64:
    arr = np.asarray(a, dtype=np.float64)
    return arr.reshape(-1, arr.shape[-1])


def _rows_as_is(a: npt.ArrayLike, width: int) -> npt.NDArray[Any]:
    """Rows of ``width`` entries, in the array's own dtype (no float64 copy of a whole tensor:
    the checks widen one block of rows at a time)."""
    return np.asarray(a).reshape(-1, width)


def closed_form_delta(
    activation_kind: str,
    activation_name: str,
    z: npt.ArrayLike,
    g_out: npt.ArrayLike,
    derivative: npt.ArrayLike | None,
    kink: npt.ArrayLike | None,
    tape_delta: npt.ArrayLike,
) -> F64:
    """delta = g * activation'(z), in float64.

    Softmax and log-softmax use their closed-form Jacobian products. Element-wise activations
    use the finite-difference derivative; at kinks (relu at 0 ...), where the derivative is not
    defined, the framework's choice (the tape's delta) is taken as is.
    """
    if activation_kind == "softmax":
        g = _rows(g_out)
        zz = _rows(z)
        shifted = zz - zz.max(axis=1, keepdims=True)
        s = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        if activation_name == "log_softmax":
            return np.asarray(g - s * g.sum(axis=1, keepdims=True), dtype=np.float64)
        return np.asarray(s * (g - (g * s).sum(axis=1, keepdims=True)), dtype=np.float64)
    if derivative is None:
        return _rows(tape_delta)
    g_rows = _rows_as_is(g_out, np.shape(g_out)[-1])
    delta: F64 = np.multiply(g_rows, np.asarray(derivative).reshape(g_rows.shape),
                             dtype=np.float64)
    if kink is not None:
        mask = np.asarray(kink, dtype=bool).reshape(delta.shape)
        delta[mask] = np.asarray(tape_delta).reshape(delta.shape)[mask]
    return delta


def logits_delta(loss_name: str, z: npt.ArrayLike, y: npt.ArrayLike, factor: float,
                 label_smoothing: float = 0.0) -> F64:
    """dL/dz where a crossentropy is computed from the logits ``z`` a softmax/sigmoid output
    keeps (Keras 3), in float64: ``factor * (softmax(z) - y)`` for categorical losses (``y``
    one-hot or class ids), ``factor * (sigmoid(z) - y) / K`` for binary crossentropy (the mean
    over the last axis of K entries). ``factor`` is the output's loss weight times the
    reduction's scale divided by the loss values per sample. Rows are ``z``'s last axis."""
    zz = _rows(z)
    k = zz.shape[1]
    if loss_name == "sparse_categorical_crossentropy":
        ids = np.asarray(y).reshape(-1).astype(np.int64)
        target = np.zeros_like(zz)
        target[np.arange(zz.shape[0]), ids] = 1.0
    else:
        target = _rows(y)
    if loss_name == "binary_crossentropy":
        if label_smoothing:
            target = target * (1.0 - label_smoothing) + 0.5 * label_smoothing
        p = 0.5 * (1.0 + np.tanh(0.5 * zz))  # sigmoid without overflow
        return np.asarray(factor * (p - target) / k, dtype=np.float64)
    if label_smoothing:
        target = target * (1.0 - label_smoothing) + label_smoothing / k
    shifted = zz - zz.max(axis=1, keepdims=True)
    s = np.exp(shifted)
    s /= s.sum(axis=1, keepdims=True)
    return np.asarray(factor * (s - target), dtype=np.float64)


@dataclass
class _ErrorAcc:
    max_abs: float = 0.0
    scale: float = 0.0

    def update(self, expected: F64, actual: npt.ArrayLike) -> None:
        """Fold in one block: the largest |expected - actual| and the largest |expected|.
        ``actual`` keeps its dtype; the difference is taken in float64."""
        if expected.size == 0:
            return
        diff = np.subtract(expected, np.asarray(actual).reshape(expected.shape))
        np.abs(diff, out=diff)
        worst = float(diff.max())
        self.max_abs = max(self.max_abs, worst) if math.isfinite(worst) else math.nan
        self.scale = max(self.scale, float(expected.max()), -float(expected.min()))

    def result(self) -> ErrorStats:
        if math.isnan(self.max_abs):
            return ErrorStats(max_abs_error=math.nan, max_rel_error=math.nan)
        rel = self.max_abs / self.scale if self.scale > 0 else (0.0 if not self.max_abs else
                                                                math.inf)
        return ErrorStats(max_abs_error=self.max_abs, max_rel_error=rel)


@dataclass
class VerifyAccumulator:
    """Closed-form dL/dW, dL/db summed over calls and batches; per-entry errors of z and
    dL/dinput tracked as they stream by.

    Everything is float64, taken ``block_rows`` rows at a time: a block's x @ W + b and
    delta W^T are compared and dropped before the next, so no float64 copy of a whole
    (batch x features) tensor is ever made (at batch 8192 x 784 one is 51 MB).
    """

    use_bias: bool
    bias_reduce: Any = None
    """Maps the closed-form dL/db over every output entry to the bias's own axes (an
    EinsumDense whose bias covers some output axes); ``None``: the same shape."""
    block_rows: int = 1024
    kernel_sum: F64 | None = None
    bias_sum: F64 | None = None
    bias_abs_sum: F64 | None = None
    """Sum of |delta|: the scale of dL/db's rounding error when the terms of sum(delta)
    cancel (a key bias in attention has gradient exactly zero, computed as noise)."""
    forward: _ErrorAcc = field(default_factory=_ErrorAcc)
    delta: _ErrorAcc = field(default_factory=_ErrorAcc)
    input: _ErrorAcc = field(default_factory=_ErrorAcc)

    def update_call(
        self,
        kernel: npt.ArrayLike,
        bias: npt.ArrayLike | None,
        x: npt.ArrayLike,
        z: npt.ArrayLike,
        delta: F64,
        tape_delta: npt.ArrayLike,
        tape_input_grad: npt.ArrayLike,
    ) -> None:
        w = np.asarray(kernel, dtype=np.float64)
        b = np.asarray(bias, dtype=np.float64) if bias is not None else None
        n_in, n_out = w.shape
        delta = delta.reshape(-1, n_out)
        xs = _rows_as_is(x, n_in)
        zs = _rows_as_is(z, n_out)
        gxs = _rows_as_is(tape_input_grad, n_in)
        self.delta.update(delta, tape_delta)
        dw = np.zeros_like(w)
        for start in range(0, xs.shape[0], self.block_rows):
            rows = slice(start, start + self.block_rows)
            xb = xs[rows].astype(np.float64)
            z_expected = xb @ w
            if b is not None:
                z_expected += b
            self.forward.update(z_expected, zs[rows])
            self.input.update(delta[rows] @ w.T, gxs[rows])
            dw += xb.T @ delta[rows]
        self.kernel_sum = dw if self.kernel_sum is None else self.kernel_sum + dw
        if self.use_bias:
            db = delta.sum(axis=0)
            self.bias_sum = db if self.bias_sum is None else self.bias_sum + db
            da = np.abs(delta).sum(axis=0)
            self.bias_abs_sum = da if self.bias_abs_sum is None else self.bias_abs_sum + da

    def result(self, tape_kernel: npt.ArrayLike, tape_bias: npt.ArrayLike | None,
               tolerance: float) -> VerifyStats:
        kernel = _ErrorAcc()
        if self.kernel_sum is not None:
            kernel.update(self.kernel_sum, tape_kernel)
        bias = None
        if self.use_bias and self.bias_sum is not None and tape_bias is not None:
            b = _ErrorAcc()
            expected = self.bias_sum if self.bias_reduce is None else np.asarray(
                self.bias_reduce(self.bias_sum), dtype=np.float64)
            b.update(expected, tape_bias)
            if self.bias_abs_sum is not None and self.bias_abs_sum.size:
                # relative to sum |delta| where that is larger: the float32 tape's error bound
                # for a sum whose terms cancel
                b.scale = max(b.scale, float(self.bias_abs_sum.max()))
            bias = b.result()
        parts = [self.forward.result(), kernel.result(), self.input.result()]
        if bias is not None:
            parts.append(bias)
        worst = max((p.max_rel_error for p in parts), key=lambda v: (math.isnan(v), v))
        return VerifyStats(
            forward=parts[0],
            kernel=parts[1],
            bias=bias,
            input=parts[2],
            worst_rel_error=worst,
            tolerance=tolerance,
            ok=bool(worst <= tolerance),
        )
