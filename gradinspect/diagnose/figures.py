"""What the rules read: per entry (``LayerFigures``) and per run (``RunFigures``), computed by
``measure.summary``. Frozen records; plain numbers."""

from __future__ import annotations

from dataclasses import dataclass

from gradinspect.records import (
    ActivationStats,
    ForwardStats,
    GradcheckStats,
    GradStats,
    LayerGrads,
    PerSampleStats,
    VerifyStats,
)
from gradinspect.report import ArrayStats


@dataclass(frozen=True)
class LayerFigures:
    """What diagnose needs to know about one layer."""

    path: str
    kind: str
    activation: str | None
    units: int | None
    grads: LayerGrads
    weight_grad: GradStats
    """dL/dW over the entry's variables but the offsets (Dense: the kernel)."""
    weight_norm: float
    """||W|| over the same variables."""
    weights_nonfinite: bool
    grad_to_weight: float
    backward_gain: float
    activity: ActivationStats | None
    constant_output: bool = False
    """The layer's output reaches the loss only as a sum of softmax probabilities (constant),
    so its gradients are mathematically zero and what the tape shows is rounding noise."""
    verify: VerifyStats | None = None
    gradcheck: GradcheckStats | None = None
    logits_mismatch: tuple[str, bool] | None = None
    """(loss name, its from_logits) when they contradict this output layer's activation."""
    single_unit_softmax: bool = False
    """A model output that is a softmax over one unit: always 1, whatever the input."""
    loss_activation: tuple[str, str, str] | None = None
    """(activation, loss, semantics) of an output whose crossentropy does not fit its
    activation, with the crossentropy rule (``keras2``/``keras3``) the loss follows."""
    kernel_zero: bool = False
    """Every weight of the layer but the offsets is exactly zero."""
    forward: ForwardStats | None = None
    """Input and output RMS (and, for BatchNormalization in inference, the fit of its moving
    statistics)."""
    moving_initial: bool = False
    """BatchNormalization whose moving statistics are still at their initial values."""
    affine_trained: bool = False
    """BatchNormalization: gamma or beta has left its initial value (the layer trained)."""
    is_output: bool = False
    """The entry produces a model output."""
    output_grad_norm: float = float("nan")
    """||dL/doutput|| over all calls: the backward signal that reaches the entry."""
    kernel_near_zero: bool = False
    """The weights but the offsets are (nearly) zero: their RMS is below
    ``Thresholds.near_zero_weight`` times their Glorot scale (a zero initialisation, and the
    few steps after it), so ratios to ||W|| say nothing."""
    normalized: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    """A normalisation layer's (axes, sizes): what one of its statistics is taken over
    (``None``: not a normalisation, or not known)."""


@dataclass(frozen=True)
class RunFigures:
    """What diagnose needs to know about the run."""

    samples: int
    loss_name: str
    loss_reduction: str
    loss_value: float
    data_nonfinite: int
    data_entries: int
    constant_loss: bool = False
    """Every model output is a softmax fed to ``sum``/``mean``: the loss is a constant."""
    arrays: tuple[tuple[str, ArrayStats | None], ...] = ()
    """Each model input's name and value statistics."""
    activations: frozenset[str] = frozenset()
    """Activation names used by the inspected entries (to keep hints to what is missing)."""
    layer_classes: frozenset[str] = frozenset()
    """Class names of every layer in the model."""
    constant_labels: tuple[tuple[str, float], ...] = ()
    """(output, class) of each crossentropy output whose labels are all one class."""
    optimizer: str | None = None
    """The optimizer the model was compiled with, lowercase class name (``adam``), if known."""
    per_sample: PerSampleStats | None = None
    """``--per-sample``: the per-sample gradient norms over every entry that has them."""

