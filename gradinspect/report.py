"""The report: frozen records that every renderer and every script consumes.

Nothing here computes or prints, and nothing above the records is imported: ``to_dict`` turns a
report into plain JSON-ready data in the documented key order (schema version
``SCHEMA_VERSION``), non-finite floats becoming ``None``; how a report prints as a table is
installed from ``gradinspect.render`` (``install_forms``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any

SCHEMA_VERSION = 2
"""Bumped only on a breaking change of the JSON layout. Added keys do not bump it."""

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
    """The findings this one follows from, as ``code@layer`` (``code`` alone for a
    model-level finding): fixing those is expected to fix this one."""

    @property
    def id(self) -> str:
        """``code@layer``, or ``code`` for a model-level finding: how ``caused_by`` names it."""
        return f"{self.code}@{self.layer}" if self.layer is not None else self.code


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


@dataclass(frozen=True)
class SkippedInfo:
    """Trainable parameters that were not inspected."""

    path: str
    """Layer path (or variable path when no layer owns it)."""
    class_name: str
    """Layer class (``?`` when unknown)."""
    params: int
    """Trainable parameters left out."""
    reason: str
    """Why (a filter, or no layer owning the variable)."""


@dataclass(frozen=True)
class Coverage:
    """How much of the model's trainable parameters the report covers."""

    trainable_params: int
    """The model's trainable parameters (``model.trainable_variables``)."""
    inspected_params: int
    """Parameters owned by the entries in this report."""
    entries: int
    """Entries (layers) in this report."""
    skipped: tuple[SkippedInfo, ...] = ()
    """Everything not inspected, with the reason."""


@dataclass(frozen=True)
class ArrayInfo:
    """One input array as read from the data file."""

    name: str
    """Model input name (or the key in the file)."""
    shape: Shape
    """Shape as used (after ``--samples``)."""
    dtype: str
    """dtype as stored in the file."""
    stats: ArrayStats | None = None
    """Value statistics over every sample (``None`` for integer inputs)."""


@dataclass(frozen=True)
class ArrayStats:
    """Summary of the values of one float input array."""

    min: float
    """Smallest entry."""
    max: float
    """Largest entry."""
    mean: float
    """Mean of the entries."""
    std: float
    """Standard deviation of the entries."""


@dataclass(frozen=True)
class ModelInfo:
    """Which model was inspected."""

    path: str | None
    """File path, or ``None`` for a live model passed to the Python API."""
    format: str
    """``keras`` (Keras 3 zip), ``h5`` (HDF5 full model, Keras 2 or 3) or ``live``."""
    name: str
    """The model's name."""


@dataclass(frozen=True)
class DataInfo:
    """Which data was fed."""

    path: str | None
    """File path, or ``None`` for arrays passed to the Python API."""
    arrays: tuple[ArrayInfo, ...]
    """Inputs in model input order."""
    samples: int
    """Number of samples in the pass."""
    notes: tuple[str, ...] = ()
    """Conversions applied to the data (e.g. integers cast to float32)."""


@dataclass(frozen=True)
class LossInfo:
    """Which scalar was differentiated."""

    name: str
    """``sum``, ``mean`` (of all model outputs) or a Keras loss name."""
    reduction: str
    """How per-sample terms become the scalar: ``sum`` or ``mean`` over samples."""
    value: float
    """The loss value on the data."""
    source: str = "default"
    """Where the loss came from: ``default``, ``flag`` (``--loss``) or ``compiled``."""
    from_logits: bool | None = None
    """For crossentropy losses: whether the loss takes logits; ``None`` otherwise."""
    labels: str | None = None
    """Where the labels came from (file path), or ``None`` for losses without labels."""
    semantics: str | None = None
    """Crossentropy rules: ``keras2`` (clipped, renormalised probabilities, as Keras 2.x
    trained its files) or ``keras3`` (the logits a softmax/sigmoid output keeps); ``None`` for
    losses without labels."""


@dataclass(frozen=True)
class ToolInfo:
    """Who wrote the report."""

    name: str
    """Always ``gradinspect``."""
    version: str
    """gradinspect version."""


@dataclass(frozen=True)
class ChecksInfo:
    """Which self-checks ran, and how."""

    verify: bool
    """``--verify`` ran (closed form vs tape)."""
    gradcheck: str | None
    """How ``--gradcheck`` ran (samples, coordinates, seed, mode), why it could not, or ``None``
    when not requested."""
    per_sample: str | None
    """What the per-sample norms are (gradients of the per-sample loss terms), why they are not
    available (samples interact), or ``None`` when not requested."""
    verify_note: str | None = None
    """``--verify``: which kinds have a closed-form check and which do not (``None`` when not
    requested)."""


@dataclass(frozen=True)
class ExecutionInfo:
    """Where the pass ran: one device, or a ``tf.distribute`` strategy."""

    strategy: str = "none"
    """``none`` (one device), ``mirrored`` (``MirroredStrategy``) or ``multiworker``
    (``MultiWorkerMirroredStrategy``)."""
    replicas: int = 1
    """Replicas in sync across every worker; each step's batch is split over them."""
    workers: int = 1
    """Worker processes; each read only its share of every batch's rows."""
    worker: int = 0
    """The worker that wrote this report (0, the chief)."""
    devices: tuple[str, ...] = ()
    """This worker's replica devices (empty for ``none``: TensorFlow's default device)."""
    notes: tuple[str, ...] = ()
    """What a distributed pass computes differently from one device (BatchNormalization in
    training mode, randomness), and how figures were merged."""


@dataclass(frozen=True)
class Report:
    """The whole report. ``report["dense_1"]`` gives a layer by name or path."""

    tool: ToolInfo
    """Tool name and version."""
    model: ModelInfo
    """The model."""
    data: DataInfo
    """The data."""
    loss: LossInfo
    """The loss and its reduction."""
    training: bool
    """Whether the pass ran in training mode (Dropout active, BatchNorm on batch statistics)."""
    layers: tuple[LayerReport, ...]
    """One entry per layer that owns trainable variables, forward order."""
    warnings: tuple[Finding, ...] = ()
    """Model-level findings."""
    checks: ChecksInfo = ChecksInfo(verify=False, gradcheck=None, per_sample=None)
    """Self-checks requested for this report."""
    coverage: Coverage | None = None
    """Trainable parameters inspected and skipped."""
    execution: ExecutionInfo = ExecutionInfo()
    """Where the pass ran (strategy, replicas, workers)."""
    schema_version: int = SCHEMA_VERSION
    """JSON layout version."""

    def __getitem__(self, key: str) -> LayerReport:
        for layer in self.layers:
            if key in (layer.path, layer.name):
                return layer
        known = ", ".join(layer.path for layer in self.layers)
        raise KeyError(f"no entry named {key!r}; entries: {known}")

    def __iter__(self) -> Iterator[LayerReport]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def findings(self) -> tuple[Finding, ...]:
        """Model-level and per-layer findings together."""
        return self.warnings + tuple(f for layer in self.layers for f in layer.warnings)

    def worst_severity(self) -> Severity | None:
        """The highest severity among all findings, or ``None`` when there are none."""
        found = self.findings()
        return max((f.severity for f in found), key=lambda s: s.rank) if found else None

    def to_dict(self) -> dict[str, Any]:
        """Plain data in the documented JSON layout (``schema_version`` first)."""
        return {
            "schema_version": self.schema_version,
            "tool": to_plain(self.tool),
            "model": to_plain(self.model),
            "data": to_plain(self.data),
            "loss": to_plain(self.loss),
            "training": self.training,
            "coverage": to_plain(self.coverage),
            "execution": to_plain(self.execution),
            "layers": [_layer_dict(layer) for layer in self.layers],
            "warnings": [to_plain(f) for f in self.warnings],
            "checks": to_plain(self.checks),
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON text (same as ``gradinspect --json``): ``to_dict`` in documented
        key order, non-finite numbers as ``null``, never bare ``NaN``/``Infinity``."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False,
                          ensure_ascii=False) + "\n"

    def __str__(self) -> str:
        """The table format as plain text, 100 columns (``print(report)``)."""
        return str(_form("text")(self))

    def without_values(self) -> Report:
        """The same report without the gradient arrays (``values``)."""
        return dataclasses.replace(self, layers=tuple(
            dataclasses.replace(layer, values=None) for layer in self.layers))

    def summary(self) -> str:
        """One line: the model, what was inspected, the findings and the first root cause."""
        found = self.findings()
        counts = {s: sum(f.severity is s for f in found) for s in Severity}
        parts = [f"{counts[s]} {s.value}" for s in reversed(Severity) if counts[s]]
        roots = sorted((f for f in found if f.root and f.severity is not Severity.INFO),
                       key=lambda f: -f.severity.rank)
        lead = (f"; fix first: {roots[0].code}" + (f" at {roots[0].layer}" if roots[0].layer
                                                    else "") if roots else "")
        return (f"{self.model.name}: {len(self.layers)} entries, loss {self.loss.value:.4g}; "
                + (", ".join(parts) if parts else "no findings") + lead)

    def __rich__(self) -> Any:
        """rich: the tables, as the terminal shows them."""
        return _form("rich")(self)

    def _repr_html_(self) -> str:
        """Jupyter: the same tables as the terminal, as HTML."""
        return str(_form("html")(self))


_FORMS: dict[str, Callable[[Report], Any]] = {}


def install_forms(**forms: Callable[[Report], Any]) -> None:
    """How a report prints (``text``, ``rich``, ``html``): installed by ``gradinspect.render``
    when it is imported (``import gradinspect`` does), so that records import no renderer."""
    _FORMS.update(forms)


def _form(name: str) -> Callable[[Report], Any]:
    try:
        return _FORMS[name]
    except KeyError:
        raise RuntimeError(f"no {name} form installed: import gradinspect.render first") from None


def reach_of(findings: Sequence[Finding]) -> dict[str, set[str]]:
    """Per finding id, the ids of the findings that follow from it (through ``caused_by``,
    directly or not)."""
    children: dict[str, list[str]] = {}
    for f in findings:
        for cause in f.caused_by:
            children.setdefault(cause, []).append(f.id)

    def walk(fid: str, seen: set[str]) -> set[str]:
        for child in children.get(fid, []):
            if child not in seen:
                seen.add(child)
                walk(child, seen)
        return seen

    return {f.id: walk(f.id, set()) for f in findings}


_RENAMED = {"class_name": "class"}


def _layer_dict(layer: LayerReport) -> dict[str, Any]:
    out = to_plain(layer)
    assert isinstance(out, dict)
    # flat, keyed by variable short name: Dense keeps schema 1's kernel/bias/input keys
    out["weights"] = to_plain(layer.weights.variables)
    out["grads"] = {**to_plain(layer.grads.variables), "input": to_plain(layer.grads.input)}
    if layer.values is None:
        del out["values"]  # present only when asked for: arrays can be large
    else:
        v = layer.values
        out["values"] = {**to_plain(v.variables), "input": to_plain(v.input),
                         "input_samples": v.input_samples}
    return out


def to_plain(value: Any) -> Any:
    """Dataclasses -> dicts (field order kept), tuples -> lists, non-finite floats -> None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            _RENAMED.get(f.name, f.name): to_plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
        }
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [to_plain(v) for v in value]
    if hasattr(value, "tolist") and hasattr(value, "dtype"):  # numpy arrays and scalars
        return to_plain(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value
