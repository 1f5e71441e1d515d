"""Report -> GitHub-flavoured Markdown, for pasting into an issue or a pull request.

This module owns the Markdown layout: a header (model, data, loss, mode, coverage: the facts
the terminal table's header shows), one table row per entry with the summary table's columns
plus the class, the shapes and ‖∂L/∂b‖, and the findings as a list, causes first. It imports
only the report records and the table renderer's helpers (``fmt``, ``fmt_shape``, the kind
and status labels), never TensorFlow or Keras, and computes no figure the report does not hold
(‖∂L/∂b‖ is the offsets' gradient norms combined).

Text that came from a file (names, paths, dtypes, notes, and the messages that quote them) is
escaped for Markdown: line breaks become spaces, control characters are shown as escapes as
``gradinspect.plaintext.plain`` does, and every character Markdown or GitHub would read as
syntax (``|``, backticks, ``*``, ``_``, ``[``, ``]``, ``<``, ``>`` ...) is backslash-escaped, so a
layer named ``a|b`` stays one table cell and ``<script>`` stays text.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence

from gradinspect.plaintext import plain
from gradinspect.records import MODEL_LEVEL, Finding, LayerReport, Severity, is_offset
from gradinspect.render.table import (
    KIND_LABEL,
    STATUS_LABEL,
    act_label,
    fmt,
    fmt_shape,
    main_shape,
)
from gradinspect.report import Report, reach_of

_BREAKS = re.compile("\r\n|[\r\n\t\u2028\u2029]")
# CommonMark lets any ASCII punctuation be backslash-escaped; these are the ones that could
# start syntax mid-line: code spans, emphasis, links, HTML, table cells, strikethrough, entities,
# GitHub's math. The backslash itself first, so an escape from the file is not taken for ours.
_SYNTAX = re.compile(r"([\\`*_\[\]<>|~&$])")
_CODE = re.compile(r"[A-Za-z0-9_]+")


def md_text(text: object) -> str:
    """``text`` as literal Markdown inline text, safe in a table cell: line breaks and tabs as
    spaces, control characters as ``\\xNN`` escapes (``plain``), Markdown syntax escaped."""
    return _SYNTAX.sub(r"\\\1", plain(_BREAKS.sub(" ", str(text))))


def _code(code: str) -> str:
    """A finding code as a code span (codes are identifiers; anything else is escaped text,
    since a backslash escape does not work inside a code span)."""
    return f"`{code}`" if _CODE.fullmatch(code) else md_text(code)


def _header(report: Report) -> list[str]:
    model = report.model
    data = report.data
    loss = report.loss
    arrays = ", ".join(f"{a.name} {fmt_shape(a.shape)} {a.dtype}" for a in data.arrays)
    reduction = "summed" if loss.reduction == "sum" else "averaged"
    lines = [
        f"### {md_text(report.tool.name)} {md_text(report.tool.version)}",
        "",
        f"- **model**: {md_text(model.path or model.name)} ({md_text(model.format)}, "
        f"'{md_text(model.name)}')",
        f"- **data**: {md_text(data.path or '<in memory>')}: {md_text(arrays)}",
        *(f"- **note**: {md_text(note)}" for note in data.notes),
        f"- **loss**: {md_text(loss.name)} = {fmt(loss.value)}, {reduction} over "
        f"{data.samples} samples",
        *([f"- **model.losses** (penalties, not inspected): {fmt(loss.penalties)}"]
          if loss.penalties is not None else []),
        f"- **mode**: {'training' if report.training else 'inference'}",
    ]
    execution = report.execution
    if execution.strategy != "none":
        devices = ", ".join(d.rpartition("device:")[2] or d for d in execution.devices)
        lines.append(
            f"- **ran on**: tf.distribute {md_text(execution.strategy)}: {execution.replicas} "
            f"replica{'' if execution.replicas == 1 else 's'}"
            + (f" on {execution.workers} workers" if execution.workers > 1 else "")
            + (f" ({md_text(devices)})" if devices else ""))
        # the first note says how figures merge: it is in the JSON, as in the table
        lines += [f"- **note**: {md_text(note)}" for note in execution.notes[1:]]
    coverage = report.coverage
    if coverage is not None:
        lines.append(f"- **coverage**: inspected {coverage.inspected_params:,} of "
                     f"{coverage.trainable_params:,} trainable parameters in "
                     f"{coverage.entries} layer{'' if coverage.entries == 1 else 's'}")
        reasons: dict[str, list[str]] = {}
        for s in coverage.skipped:
            reasons.setdefault(s.reason, []).append(s.path)
        lines += [f"- **skipped** ({md_text(reason)}): {md_text(', '.join(paths))}"
                  for reason, paths in reasons.items()]
    return lines


COLUMNS: tuple[tuple[str, bool], ...] = (
    ("#", True), ("layer", False), ("class", False), ("kind", False), ("act", False),
    ("W", True), ("input → output", True), ("‖∂L/∂W‖", True), ("‖∂L/∂b‖", True),
    ("‖∂L/∂x‖", True), ("‖∂W‖/‖W‖", True), ("gain", True), ("status", False),
)
"""The per-layer table's columns and whether each is right-aligned (numbers, shapes)."""


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _offset_norm(layer: LayerReport) -> float | None:
    """‖∂L/∂b‖ over the offsets (bias, beta, ``*_bias``); ``None`` when the entry has none.
    NaN when one of them is NaN."""
    norms = [g.norm for name, g in layer.grads.variables.items()
             if g is not None and is_offset(name)]
    return math.sqrt(sum(n * n for n in norms)) if norms else None


def _status(layer: LayerReport) -> str:
    if not layer.warnings:
        return "ok"
    return STATUS_LABEL[max((f.severity for f in layer.warnings), key=lambda s: s.rank)]


def _shapes(layer: LayerReport) -> str:
    # an input that is not a float tensor (Embedding ids) has no recorded shape
    inp = fmt_shape(layer.input_shape) if layer.input_shape else "-"
    return f"{inp} → {fmt_shape(layer.output_shape)}"


def layer_table(report: Report) -> list[str]:
    """One Markdown table row per entry, forward order."""
    lines = [_row([name for name, _ in COLUMNS]),
             _row(["---:" if right else "---" for _, right in COLUMNS])]
    for i, layer in enumerate(report.layers):
        label = f"{layer.path} ×{layer.calls}" if layer.calls > 1 else layer.path
        grad_input = layer.grads.input
        lines.append(_row([
            str(i),
            md_text(label),
            md_text(layer.class_name),
            md_text(KIND_LABEL.get(layer.kind, layer.kind)),
            md_text(act_label(layer)),
            md_text(main_shape(layer)),
            md_text(_shapes(layer)),
            fmt(layer.weight_grad_norm, 3),
            fmt(_offset_norm(layer), 3),
            fmt(grad_input.norm, 3) if grad_input is not None else "-",
            fmt(layer.grad_to_weight, 3),
            fmt(layer.backward_gain, 3),
            _status(layer),
        ]))
    return lines


def _place(layer: str | None) -> str:
    return md_text(layer) if layer is not None else "model"


def _item(f: Finding, explains: int) -> list[str]:
    lines = [f"- **{f.severity.value}** {_code(f.code)} at {_place(f.layer)}: "
             f"{md_text(f.message)}"]
    if explains:
        lines.append(f"  - explains {explains} other finding{'s' if explains != 1 else ''}")
    if f.caused_by:
        causes = []
        for cause in f.caused_by:
            code, _, layer = cause.partition("@")
            causes.append(f"{_code(code)} at {md_text(layer)}" if layer != MODEL_LEVEL
                          else f"{_code(code)} (model level)")
        lines.append(f"  - ← follows from {', '.join(causes)}")
    else:
        lines.append(f"  - → {md_text(f.hint)}")
    return lines


def findings_list(report: Report) -> list[str]:
    """Every finding, one list item each: first the diagnosis (the root causes that are
    warnings or errors or explain other findings, with their hints and how many findings
    follow from them), then the rest with what they follow from. Within each, most severe
    first, then forward order (model-level findings first), as the table orders them."""
    found = report.findings()
    if not found:
        return ["#### Findings", "", "no findings"]
    positions: Mapping[str, int] = {layer.path: k for k, layer in enumerate(report.layers)}
    reach = reach_of(found)
    per_id = Counter(f.id for f in found)

    def explains(f: Finding) -> int:
        return sum(per_id[e] for e in reach[f.id] - {f.id})

    def order(f: Finding) -> tuple[int, int, str, tuple[str, ...]]:
        # ties as the table breaks them: by code, then by cause
        return (-f.severity.rank, positions.get(f.layer, -1) if f.layer is not None else -1,
                f.code, f.caused_by)

    def leads(f: Finding) -> bool:
        return f.root and (f.severity is not Severity.INFO or explains(f) > 0)

    roots = sorted((f for f in found if leads(f)), key=order)
    rest = sorted((f for f in found if not leads(f)), key=order)
    lines: list[str] = []
    if roots:
        lines += ["#### Diagnosis: fix these first", ""]
        for f in roots:
            lines += _item(f, explains(f))
        lines.append("")
    if rest:
        lines += ["#### Other findings" if roots else "#### Findings", ""]
        for f in rest:
            lines += _item(f, 0)
        lines.append("")
    return lines[:-1]


def render_markdown(report: Report) -> str:
    """The report as GitHub-flavoured Markdown: header, per-layer table, findings."""
    lines = [*_header(report), "", *layer_table(report), "", *findings_list(report)]
    return "\n".join(lines) + "\n"
