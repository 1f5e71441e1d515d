"""``gradinspect timeline FILE.jsonl``: how each entry's gradients evolve over a recorded run.

Takes the callback's records (``diff.read_records``: one report per record, schema 1 or 2)
and returns per entry, in forward order, the series of ||dL/dW||, ||dL/dinput|| and the
backward gain over the recorded steps, with the step at which each finding first appeared.
No TensorFlow: records in, records out; ``render/timeline.py`` draws them.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gradinspect.errors import DataError

SERIES = ("weight_grad_norm", "input_grad_norm", "backward_gain")
"""The figures followed per entry (names as in ``--json``)."""


@dataclass(frozen=True)
class FirstSeen:
    """A finding's first appearance in the run."""

    code: str
    """Finding code."""
    severity: str
    """Its severity at that record."""
    step: int
    """The first recorded step that has it."""


@dataclass(frozen=True)
class EntrySeries:
    """One entry over the run. Values are ``None`` where the entry is missing from a record or
    the figure is not finite (JSON ``null``)."""

    path: str
    """Entry path."""
    kind: str
    """Layer kind (``dense`` for schema-1 records)."""
    weight_grad_norm: tuple[float | None, ...]
    """||dL/dW|| (the variables but the offsets) at each recorded step."""
    input_grad_norm: tuple[float | None, ...]
    """||dL/dinput|| at each recorded step."""
    backward_gain: tuple[float | None, ...]
    """||dL/dinput|| / ||dL/doutput|| at each recorded step."""
    findings: tuple[FirstSeen, ...]
    """Findings about this entry, at the step they first appear."""


@dataclass(frozen=True)
class Timeline:
    """A recorded run, entry by entry."""

    source: str
    """The file read."""
    steps: tuple[int, ...]
    """The recorded training steps, in file order."""
    epochs: tuple[int, ...]
    """The epoch of each record."""
    entries: tuple[EntrySeries, ...]
    """Per entry, in forward order (the last record's order; entries absent from it follow)."""
    findings: tuple[FirstSeen, ...]
    """Model-level findings at the step they first appear."""


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _dig(doc: Any, keys: Sequence[str]) -> Any:
    for key in keys:
        if not isinstance(doc, Mapping):
            return None
        doc = doc.get(key)
    return doc


def _figures(layer: Mapping[str, Any]) -> tuple[float | None, float | None, float | None]:
    weight = layer.get("weight_grad_norm", _dig(layer, ("grads", "kernel", "norm")))
    return (_number(weight), _number(_dig(layer, ("grads", "input", "norm"))),
            _number(layer.get("backward_gain")))


def _wanted(path: str, kind: str, layers: Sequence[str], kinds: Sequence[str]) -> bool:
    if kinds and kind not in kinds:
        return False
    return not layers or any(fnmatch.fnmatchcase(path, p) for p in layers)


def _layers(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [ly for ly in report.get("layers") or [] if isinstance(ly, Mapping)
            and isinstance(ly.get("path"), str)]


def _first_seen(found: dict[str, FirstSeen], warnings: Any, step: int) -> None:
    for f in warnings or []:
        if isinstance(f, Mapping) and isinstance(f.get("code"), str) and f["code"] not in found:
            found[f["code"]] = FirstSeen(f["code"], str(f.get("severity", "?")), step)


def build_timeline(records: Sequence[Mapping[str, Any]], source: str,
                   layers: Sequence[str] = (), kinds: Sequence[str] = ()) -> Timeline:
    """The series of every entry (filtered by path patterns and kinds) over ``records``."""
    # the last record's forward order, then entries only older records have
    order = list(dict.fromkeys(
        [ly["path"] for ly in _layers(records[-1]["report"])]
        + [ly["path"] for r in records for ly in _layers(r["report"])]))
    values: dict[str, list[tuple[float | None, float | None, float | None]]] = {
        p: [] for p in order}
    kind_of: dict[str, str] = {}
    seen: dict[str, dict[str, FirstSeen]] = {p: {} for p in order}
    model_seen: dict[str, FirstSeen] = {}
    for record in records:
        step = int(record["step"])
        by_path = {ly["path"]: ly for ly in _layers(record["report"])}
        for path in order:
            layer = by_path.get(path)
            values[path].append(_figures(layer) if layer is not None else (None, None, None))
            if layer is not None:
                kind_of.setdefault(path, str(layer.get("kind", "dense")))
                _first_seen(seen[path], layer.get("warnings"), step)
        _first_seen(model_seen, record["report"].get("warnings"), step)
    entries = tuple(
        EntrySeries(path=p, kind=kind_of.get(p, "?"),
                    weight_grad_norm=tuple(v[0] for v in values[p]),
                    input_grad_norm=tuple(v[1] for v in values[p]),
                    backward_gain=tuple(v[2] for v in values[p]),
                    findings=tuple(sorted(seen[p].values(), key=lambda f: (f.step, f.code))))
        for p in order if _wanted(p, kind_of.get(p, "?"), layers, kinds))
    if not entries:
        raise DataError(f"{source}: no entry matches --layer/--kind",
                        "entries recorded: " + ", ".join(order[:20]))
    return Timeline(source=source, steps=tuple(int(r["step"]) for r in records),
                    epochs=tuple(int(r.get("epoch", 0) or 0) for r in records),
                    entries=entries,
                    findings=tuple(sorted(model_seen.values(), key=lambda f: (f.step, f.code))))


def log10_change(series: Sequence[float | None]) -> float | None:
    """log10(last / first) over the finite, positive values of a series."""
    finite = [v for v in series if v is not None and v > 0]
    if len(finite) < 2:
        return None
    return math.log10(finite[-1] / finite[0])


def timeline_dict(timeline: Timeline) -> dict[str, Any]:
    """Plain data for ``--json``: per entry its series over ``steps`` (``null`` = missing or
    not finite) and the first appearance of each finding."""
    return {
        "source": timeline.source,
        "steps": list(timeline.steps),
        "epochs": list(timeline.epochs),
        "entries": [
            {"path": e.path, "kind": e.kind,
             **{name: list(getattr(e, name)) for name in SERIES},
             "findings": [vars(f) for f in e.findings]}
            for e in timeline.entries],
        "findings": [vars(f) for f in timeline.findings],
    }
