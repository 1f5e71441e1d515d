"""The report: frozen records that every renderer and every script consumes.

Nothing here computes or prints, and nothing above the records is imported: ``to_dict`` turns a
report into plain JSON-ready data in the documented key order (schema version
``SCHEMA_VERSION``), non-finite floats becoming ``None``; how a report prints as a table is
installed from ``gradinspect.render`` (``install_forms``). The per-entry records live in
``gradinspect.records`` and are importable from here too."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from gradinspect.records import (
    ActivationStats,
    ErrorStats,
    Figure,
    Finding,
    ForwardStats,
    GradcheckStats,
    GradStats,
    GradValues,
    LayerGrads,
    LayerReport,
    LayerWeights,
    PerSampleStats,
    SampleNorm,
    Severity,
    Shape,
    VerifyStats,
    WeightStats,
    is_offset,
)

__all__ = [
    "SCHEMA_VERSION",
    "ActivationStats",
    "ArrayInfo",
    "ArrayStats",
    "ChecksInfo",
    "Coverage",
    "DataInfo",
    "ErrorStats",
    "ExecutionInfo",
    "Figure",
    "Finding",
    "ForwardStats",
    "GradStats",
    "GradValues",
    "GradcheckStats",
    "LayerGrads",
    "LayerReport",
    "LayerWeights",
    "LossInfo",
    "ModelInfo",
    "PerSampleStats",
    "Report",
    "SampleNorm",
    "Severity",
    "Shape",
    "SkippedInfo",
    "ToolInfo",
    "VerifyStats",
    "WeightStats",
    "install_forms",
    "is_offset",
    "reach_of",
    "to_plain",
]

SCHEMA_VERSION = 2
"""Bumped only on a breaking change of the JSON layout. Added keys do not bump it."""


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
    penalties: float | None = None
    """The model's ``losses`` (weight and activity regularisation penalties, ``add_loss``
    terms), which Keras adds to the training loss, averaged over the batches: they are not
    part of the inspected loss ``value`` (its gradients are the data loss'); ``None`` when the
    model has none."""
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
    per_sample_model: PerSampleStats | None = None
    """``--per-sample``: the per-sample norms of the whole model's gradient, ||dl_i/dtheta||
    over every entry that has a figure (``method`` says how many of them)."""


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
