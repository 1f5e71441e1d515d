"""The per-entry records: severities and findings, gradient and weight statistics, the
activity, forward, check and per-sample figures, and ``LayerReport`` that holds them.

Frozen dataclasses with a docstring per field; nothing here computes or prints, and nothing
above the records is imported (``gradinspect.report`` adds the run-level records and
``Report``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

Shape = tuple[int | None, ...]


Figure = float | int | str | bool | None


class Severity(StrEnum):
    """How bad a finding is. Ordered: ``info`` < ``warning`` < ``error``."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        """Position in the order info < warning < error."""
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.ERROR: 2}


MODEL_LEVEL = "model"
"""Where a model-level finding is, in its ``id`` (``unscaled_input@model``)."""


@dataclass(frozen=True)
class Finding:
    """One verdict about a layer or the whole model."""

    code: str
    """Stable machine-readable identifier, e.g. ``saturated_units`` (listed in the README)."""
    severity: Severity
    """``info``, ``warning`` or ``error``."""
    message: str
    """What was seen, with the numbers."""
    hint: str
    """One line: what to try."""
    figures: Mapping[str, Figure] = field(default_factory=dict)
    """The measurements behind the verdict (threshold used, fractions, norms ...)."""
    layer: str | None = None
    """Path of the entry the finding is about; ``None`` for a model-level finding."""
    root: bool = True
    """No other finding explains this one: a cause to fix first."""
    caused_by: tuple[str, ...] = ()
    """The findings this one follows from, as ``code@layer`` (``code@model`` for a
    model-level finding): fixing those is expected to fix this one."""

    @property
    def id(self) -> str:
        """``code@layer``, or ``code@model`` for a model-level finding: how ``caused_by``
        names it (one form everywhere)."""
        return f"{self.code}@{self.layer if self.layer is not None else MODEL_LEVEL}"


@dataclass(frozen=True)
class GradStats:
    """Summary of one gradient tensor (or of all calls' tensors, for a shared layer's input)."""

    shape: Shape
    """Shape of the gradient; a dimension that differs between calls is ``None``."""
    norm: float
    """L2 (Frobenius) norm over all entries; NaN if any entry is NaN."""
    max_abs: float
    """Largest absolute entry."""
    mean_abs: float
    """Mean absolute entry."""
    nan: int
    """Number of NaN entries."""
    inf: int
    """Number of +/-Inf entries."""


@dataclass(frozen=True)
class WeightStats:
    """Shape and L2 norm of a weight tensor."""

    shape: Shape
    """Shape of the variable."""
    norm: float
    """L2 (Frobenius) norm."""
    path: str = ""
    """Keras variable path (``variable.path``), as in ``model.trainable_variables``."""


OFFSET_NAMES = ("bias", "beta")
"""Variables that shift rather than scale (``bias``, ``beta``, ``*_bias``): left out of W in
||dL/dW|| and ||dL/dW|| / ||W||."""


def is_offset(name: str) -> bool:
    """Whether a variable's short name is an additive offset (see ``OFFSET_NAMES``)."""
    return name in OFFSET_NAMES or name.endswith("_bias")


@dataclass(frozen=True)
class LayerWeights:
    """The entry's trainable variables by short name (Dense: ``kernel``, ``bias``)."""

    variables: Mapping[str, WeightStats | None]
    """Shape, norm and Keras path of each variable; a Dense layer without bias has
    ``bias: None``."""

    @property
    def kernel(self) -> WeightStats | None:
        """The ``kernel`` variable, if the entry has one."""
        return self.variables.get("kernel")

    @property
    def bias(self) -> WeightStats | None:
        """The ``bias`` variable, if the entry has one."""
        return self.variables.get("bias")

    def __getitem__(self, name: str) -> WeightStats | None:
        return self.variables[name]


@dataclass(frozen=True)
class LayerGrads:
    """The gradients of the loss the tool makes visible: one per owned variable, and the
    input's."""

    variables: Mapping[str, GradStats | None]
    """dL/dvariable by short name, summed over all calls (Dense: ``kernel`` = x^T delta,
    ``bias`` = sum of delta, ``None`` without bias)."""
    input: GradStats | None
    """dL/dinput over all calls (Dense: delta W^T); ``None`` when the input is not a float
    tensor (Embedding ids)."""

    @property
    def kernel(self) -> GradStats | None:
        """dL/dkernel, if the entry has a kernel."""
        return self.variables.get("kernel")

    @property
    def bias(self) -> GradStats | None:
        """dL/dbias, if the entry has a bias."""
        return self.variables.get("bias")

    def __getitem__(self, name: str) -> GradStats | None:
        return self.input if name == "input" else self.variables[name]


@dataclass(frozen=True)
class ActivationStats:
    """How the activation behaves on this data (measured on activation'(z) from the tape)."""

    name: str
    """Activation name, e.g. ``sigmoid``."""
    source: str
    """Where the activation lives: ``layer`` (the entry itself) or the path of a following
    layer."""
    kind: str
    """``saturating``, ``rectifier``, ``softmax``, ``linear`` or ``other``: what is measured."""
    low_grad_fraction: float | None
    """Fraction of (sample, unit) entries where activation'(z) is below the threshold fraction of
    its maximum (saturated for squashing activations, zero for rectifiers)."""
    units_always_low: int | None
    """Units whose activation'(z) is low for (nearly) all samples: saturated or dead units."""
    units_always_low_fraction: float | None
    """``units_always_low`` divided by the number of units."""
    softmax_confident_fraction: float | None
    """For softmax: fraction of samples whose largest probability is at least the threshold."""
    softmax_confident_wrong_fraction: float | None = None
    """For a softmax output with labels: fraction of samples that are confident (as above) on
    a class that is not their label's; ``None`` without labels."""
    softmax_confident_wrong: int | None = None
    """How many rows (samples, or positions of a sequence or image) that fraction counts."""
    derivative_gain: float | None = None
    """A saturating activation inside the entry: ||dL/dz|| / ||dL/doutput|| divided by the
    peak of activation' — how much the activation shrinks the backward signal against its
    linear region (1: not at all; 0.1: tenfold). ``None`` otherwise."""


@dataclass(frozen=True)
class ForwardStats:
    """The forward signal through an entry on this data."""

    input_rms: float | None
    """Root mean square of the entry's input entries (``None`` when it is not a float tensor,
    e.g. Embedding ids)."""
    output_rms: float | None
    """Root mean square of the entry's (first float) output."""
    moving_stats_rms: float | None = None
    """BatchNormalization in inference mode: the RMS of (x - moving_mean) / sqrt(moving_variance
    + epsilon) over the batch (median over channels): 1 when the moving statistics describe the
    data, far from 1 when they do not (e.g. never trained). ``None`` for other entries and in
    training mode."""


@dataclass(frozen=True)
class ErrorStats:
    """How far the tape is from an independent computation."""

    max_abs_error: float
    """Largest absolute difference over all entries."""
    max_rel_error: float
    """``max_abs_error`` divided by the largest absolute entry of the reference."""


@dataclass(frozen=True)
class VerifyStats:
    """``--verify``: the tape against the closed-form Dense formulas in float64."""

    forward: ErrorStats
    """z (pre-activation) against x @ W + b."""
    kernel: ErrorStats
    """dL/dW against sum over calls of x^T delta, delta = g * activation'(z)."""
    bias: ErrorStats | None
    """dL/db against sum of delta; ``None`` without bias."""
    input: ErrorStats
    """dL/dinput against delta W^T."""
    worst_rel_error: float
    """The largest of the relative errors above."""
    tolerance: float
    """Relative error above which the layer gets a ``gradient_mismatch`` finding."""
    ok: bool
    """``worst_rel_error <= tolerance``."""


@dataclass(frozen=True)
class GradcheckStats:
    """``--gradcheck``: central finite differences in float64 against the tape."""

    coordinates: int
    """How many coordinates of W and b were perturbed."""
    max_rel_error: float
    """Largest |fd - tape| / max(|fd|, |tape|, 1% of the layer's largest |tape| entry)."""
    max_abs_error: float
    """Largest |fd - tape|."""
    ok: bool
    """``max_rel_error`` within the ``gradcheck_tolerance`` threshold."""


@dataclass(frozen=True)
class SampleNorm:
    """One sample's gradient norm."""

    index: int
    """Sample index in the data (after ``--samples``)."""
    norm: float
    """||dl_i/dW, dl_i/db|| for that sample's loss term."""


@dataclass(frozen=True)
class PerSampleStats:
    """``--per-sample``: norms of the per-sample gradients of this layer's W and b together."""

    min: float
    """Smallest per-sample gradient norm."""
    median: float
    """Median per-sample gradient norm."""
    max: float
    """Largest per-sample gradient norm."""
    top: tuple[SampleNorm, ...]
    """The samples with the largest gradient norms, largest first."""
    outliers: tuple[int, ...]
    """Samples whose norm exceeds median + 5 x MAD (robust), largest first (at most 20)."""
    outlier_count: int
    """How many samples are outliers."""
    gsnr: float
    """Gradient signal-to-noise ratio ||mean g_i||^2 / mean ||g_i||^2, in [0, 1]: near 1, the
    samples agree; near 0, the batch gradient is mostly noise."""
    method: str = ""
    """How the norms were computed: ``row norms``, ``gram``, ``product`` (the Dense closed
    form), ``patches, gram`` / ``patches, product`` (convolutions), ``depthwise patches``,
    ``rows`` (Embedding), ``vectorized`` (the layer called again on each sample), or
    ``whole model`` (the model-level figure)."""


@dataclass(frozen=True)
class GradValues:
    """``--values``: the gradient arrays themselves (numpy arrays; lists in JSON)."""

    variables: Mapping[str, Any]
    """dL/dvariable by short name (Dense: ``kernel``, ``bias`` or ``None``)."""
    input: Any
    """dL/dinput of the first call for the first ``values_samples`` samples (``None`` without
    a float input)."""
    input_samples: int
    """How many samples ``input`` covers."""

    @property
    def kernel(self) -> Any:
        return self.variables.get("kernel")

    @property
    def bias(self) -> Any:
        return self.variables.get("bias")


@dataclass(frozen=True)
class LayerReport:
    """Everything gradinspect knows about one entry: a layer that owns trainable variables."""

    name: str
    """Layer name."""
    path: str
    """Nesting path from the top model, e.g. ``encoder/dense_1``."""
    kind: str
    """Layer kind: ``dense``, ``einsum_dense``, ``conv``, ``embedding``, ``recurrent``,
    ``normalization`` or ``generic``."""
    class_name: str
    """Python class name (``Dense``, ``Conv2D``, a subclass or a custom class)."""
    activation: str | None
    """The layer's own activation (``linear`` when none); ``None`` for kinds without one."""
    units: int | None
    """Units (output features or channels) the activation acts on; ``None`` when the kind has
    no element-wise activation."""
    use_bias: bool
    """Whether the entry owns a ``bias`` variable."""
    params: int
    """Trainable parameters the entry owns."""
    calls: int
    """How many times the layer was called in one forward pass (shared layers: > 1)."""
    input_shape: Shape
    """Input shape of (the first) call; dimensions that differ between calls are ``None``."""
    output_shape: Shape
    """Output shape, same convention."""
    weights: LayerWeights
    """Each variable's shape, norm and Keras path."""
    grads: LayerGrads
    """dL/dvariable for each variable, and dL/dinput."""
    grad_norm: float
    """||dL/dθ|| over every variable of the entry."""
    weight_grad_norm: float
    """||dL/dW||, W = the entry's variables but the offsets (bias, beta): Dense's kernel."""
    grad_to_weight: float
    """||dL/dW|| / ||W||, W as in ``weight_grad_norm``: the relative size of one gradient step
    at learning rate 1."""
    backward_gain: float
    """||dL/dinput|| / ||dL/doutput||: how much the backward signal grows (>1) or shrinks (<1)."""
    activity: ActivationStats | None
    """Saturation / dead-unit measurements; ``None`` when not measurable."""
    forward: ForwardStats | None = None
    """The forward signal: input and output RMS."""
    verify: VerifyStats | None = None
    """``--verify`` results; ``None`` when not requested."""
    gradcheck: GradcheckStats | None = None
    """``--gradcheck`` results; ``None`` when not requested or not possible."""
    per_sample: PerSampleStats | None = None
    """``--per-sample`` results; ``None`` when not requested or not well defined."""
    values: GradValues | None = None
    """``--values``: the gradient arrays; ``None`` when not requested."""
    warnings: tuple[Finding, ...] = ()
    """Findings about this layer."""
