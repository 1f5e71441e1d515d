"""What one step hands to the host: per call, per entry and per batch, as numpy arrays.

Frozen records; the measurement stage reads them, nothing here touches TensorFlow."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
    delta_sumsq: float | None = None
    """A saturating activation inside the entry: sum of (dL/dz)^2 over its calls, beside
    their (dL/doutput)^2 (the activation-derivative factor the layer applies)."""
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
    penalty: float | None = None
    """The model's ``losses`` (regularisation penalties) times this batch's rows; ``None``
    when it has none."""
    labels: tuple[np.ndarray, ...] | None = None
    """Under a strategy with full tensors (``--verify``/``--values``): the whole batch's
    labels, gathered from every replica in the order of the gathered tensors."""
