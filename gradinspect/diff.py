"""``gradinspect diff A B``: how two reports differ, layer by layer.

Reports are read as JSON (a ``--json``/``--output`` file, or one line of the callback's JSON
lines file, ``FILE.jsonl:STEP``), matched by layer path, and compared figure by figure: the ratio
B/A and its log10 (the number of orders of magnitude gained or lost), plus the findings that
appeared or went away. No TensorFlow.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradinspect.errors import DataError

FIGURES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("grad_weight_norm", ("weight_grad_norm",)),
    ("grad_kernel_norm", ("grads", "kernel", "norm")),
    ("grad_bias_norm", ("grads", "bias", "norm")),
    ("grad_input_norm", ("grads", "input", "norm")),
    ("grad_kernel_max_abs", ("grads", "kernel", "max_abs")),
    ("weight_kernel_norm", ("weights", "kernel", "norm")),
    ("grad_to_weight", ("grad_to_weight",)),
    ("backward_gain", ("backward_gain",)),
    ("low_grad_fraction", ("activity", "low_grad_fraction")),
)
"""(name, path into a layer's JSON) of every figure compared. ``grad_weight_norm`` is ||dL/dW||
over a layer's variables but the offsets (schema 2's ``weight_grad_norm``; in a schema-1 report,
the Dense kernel's norm); the kernel/bias figures exist for Dense layers."""

SCHEMAS = (1, 2)
"""Report schema versions ``diff`` reads."""


def _upgraded(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    """A schema-1 report (Dense only) with the schema-2 keys the comparison reads."""
    if doc.get("schema_version") != 1:
        return doc
    layers = [{"kind": "dense", "weight_grad_norm": _dig(layer, ("grads", "kernel", "norm")),
               **layer} if isinstance(layer, Mapping) else layer
              for layer in doc.get("layers") or []]
    return {**doc, "layers": layers}


@dataclass(frozen=True)
class FigureChange:
    """One figure in both reports."""

    name: str
    """Figure name, e.g. ``grad_kernel_norm``."""
    a: float | None
    """Value in A (``None`` when missing or non-finite)."""
    b: float | None
    """Value in B."""
    ratio: float | None
    """b / a (``None`` when undefined)."""
    log10_change: float | None
    """log10(b / a): +1 is ten times larger in B."""


@dataclass(frozen=True)
class LayerDiff:
    """One layer, matched by path."""

    path: str
    """Layer path."""
    status: str
    """``both``, ``added`` (only in B) or ``removed`` (only in A)."""
    figures: tuple[FigureChange, ...]
    """Figure changes (empty unless ``both``)."""
    findings_added: tuple[str, ...]
    """Finding codes present in B, not in A."""
    findings_removed: tuple[str, ...]
    """Finding codes present in A, not in B."""


@dataclass(frozen=True)
class ReportDiff:
    """Everything that changed from A to B."""

    a: str
    """Where report A came from."""
    b: str
    """Where report B came from."""
    loss: FigureChange
    """The loss value."""
    loss_changed: bool
    """The loss name or reduction differ: the figures are not comparable one to one."""
    layers: tuple[LayerDiff, ...]
    """Per layer: A's order first, then layers only in B."""
    findings_added: tuple[str, ...]
    """Model-level finding codes new in B."""
    findings_removed: tuple[str, ...]
    """Model-level finding codes gone in B."""

    def to_dict(self) -> dict[str, Any]:
        from gradinspect.report import to_plain

        out = to_plain(self)
        assert isinstance(out, dict)
        return {"diff_schema_version": 1, **out}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def change(name: str, a: Any, b: Any) -> FigureChange:
    """The change of one figure; ratio and log10 only where both are finite and positive."""
    fa, fb = _number(a), _number(b)
    ratio = log = None
    if fa is not None and fb is not None:
        if fa != 0:
            ratio = fb / fa
        if fa > 0 and fb > 0:
            log = math.log10(fb / fa)
        elif fa == fb:
            log = 0.0
    return FigureChange(name=name, a=fa, b=fb, ratio=ratio, log10_change=log)


def _dig(layer: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = layer
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def _codes(findings: Any) -> set[str]:
    return {f.get("code", "?") for f in findings or [] if isinstance(f, Mapping)}


def _check_layers(label: str, doc: Mapping[str, Any]) -> None:
    """A report's shape, as far as the comparison reads it: a malformed file is bad data
    (exit 4), never a crash."""
    layers = doc.get("layers")
    if not isinstance(layers, list) or not all(
            isinstance(ly, Mapping) and isinstance(ly.get("path"), str) for ly in layers):
        raise DataError(f"{label}: malformed report (layers must be objects with a path)",
                        "pass a file written by gradinspect --json or --output")
    if not isinstance(doc.get("loss", {}), Mapping) or not isinstance(doc.get("warnings", []),
                                                                       list):
        raise DataError(f"{label}: malformed report (loss or warnings)",
                        "pass a file written by gradinspect --json or --output")


def diff_reports(a: Mapping[str, Any], b: Mapping[str, Any], a_name: str = "A",
                 b_name: str = "B") -> ReportDiff:
    """Compare two reports (as JSON dicts)."""
    for label, doc in ((a_name, a), (b_name, b)):
        if not isinstance(doc, Mapping) or "layers" not in doc or "schema_version" not in doc:
            raise DataError(f"{label}: not a gradinspect report", "pass --json output files")
        if doc["schema_version"] not in SCHEMAS:
            raise DataError(f"{label}: report schema {doc['schema_version']} is not supported",
                            "compare reports written by this gradinspect version")
        _check_layers(label, doc)
    a, b = _upgraded(a), _upgraded(b)
    layers_a = {ly["path"]: ly for ly in a["layers"]}
    layers_b = {ly["path"]: ly for ly in b["layers"]}
    out = []
    for path, la in layers_a.items():
        lb = layers_b.get(path)
        if lb is None:
            removed = tuple(sorted(_codes(la.get("warnings"))))
            out.append(LayerDiff(path, "removed", (), (), removed))
            continue
        codes_a, codes_b = _codes(la.get("warnings")), _codes(lb.get("warnings"))
        out.append(LayerDiff(
            path=path,
            status="both",
            figures=tuple(change(n, _dig(la, p), _dig(lb, p)) for n, p in FIGURES),
            findings_added=tuple(sorted(codes_b - codes_a)),
            findings_removed=tuple(sorted(codes_a - codes_b)),
        ))
    for path, lb in layers_b.items():
        if path not in layers_a:
            out.append(LayerDiff(path, "added", (), tuple(sorted(_codes(lb.get("warnings")))),
                                 ()))
    loss_a, loss_b = a.get("loss", {}), b.get("loss", {})
    model_a, model_b = _codes(a.get("warnings")), _codes(b.get("warnings"))
    return ReportDiff(
        a=a_name,
        b=b_name,
        loss=change("loss", loss_a.get("value"), loss_b.get("value")),
        loss_changed=(loss_a.get("name"), loss_a.get("reduction"))
        != (loss_b.get("name"), loss_b.get("reduction")),
        layers=tuple(out),
        findings_added=tuple(sorted(model_b - model_a)),
        findings_removed=tuple(sorted(model_a - model_b)),
    )


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every record of a callback's JSON-lines file; a one-line error for anything else."""
    if not path.is_file():
        raise DataError(f"{path}: not found", "pass the JSON-lines file the callback wrote")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{path}:{number}: not valid JSON ({exc})") from exc
        if not (isinstance(record, dict) and isinstance(record.get("report"), dict)
                and isinstance(record.get("step"), int)):
            raise DataError(f"{path}:{number}: not a callback record (step, report)",
                            "pass the JSON-lines file GradInspectCallback wrote")
        records.append(record)
    if not records:
        raise DataError(f"{path}: no records", "was the callback run?")
    return records


def read_report(spec: str) -> tuple[str, dict[str, Any]]:
    """A report from ``report.json``, or ``grads.jsonl:STEP`` (``:first``/``:last`` too, or a
    record index ``:#0``, ``:#-1``) for one line of the callback's file. Returns (label,
    report dict)."""
    path, step = Path(spec), None
    if not path.exists() and ":" in spec:
        head, _, tail = spec.rpartition(":")
        if Path(head).exists():
            path, step = Path(head), tail
    if not path.is_file():
        raise DataError(f"report not found: {spec}", "pass a --json output or FILE.jsonl:STEP")
    if step is None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot read ({exc})") from exc
        try:
            doc = json.loads(text)
        except ValueError as exc:
            lines = [ln for ln in text.splitlines() if ln.strip()]
            if len(lines) > 1:
                raise DataError(f"{path}: a JSON-lines file holds many reports",
                                f"pick one: {path}:STEP (or :first, :last)") from exc
            raise DataError(f"{path}: not valid JSON ({exc})") from exc
        if isinstance(doc, dict) and "report" in doc and "step" in doc:
            return f"{path} (step {doc['step']})", doc["report"]
        return str(path), doc
    records = read_records(path)
    if step in ("first", "last"):
        record = records[0] if step == "first" else records[-1]
    elif step.startswith("#"):
        try:
            index = int(step[1:])
            record = records[index]
        except ValueError:
            raise DataError(f"{spec}: a record index is #N (#0 the first, #-1 the last)"
                            ) from None
        except IndexError:
            raise DataError(f"{spec}: no record #{step[1:]}",
                            f"{path} holds {len(records)} records (#0 … #{len(records) - 1})"
                            ) from None
    else:
        try:
            wanted = int(step)
        except ValueError:
            raise DataError(f"{spec}: STEP must be a number, first, last or #INDEX") from None
        matches = [r for r in records if r.get("step") == wanted]
        if not matches:
            steps = ", ".join(str(r.get("step")) for r in records[:20])
            raise DataError(f"{path}: no record for step {wanted}", f"steps recorded: {steps}")
        record = matches[-1]
    return f"{path}:{record.get('step')}", record["report"]
