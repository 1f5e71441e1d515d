"""Report -> rich renderables: a header with the coverage line, one row per entry (a layer that
owns trainable variables), a gradient detail table and the findings with their hints. Readable
at 100 columns; colour is only decoration. Text from files (names, paths) is never markup."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from gradinspect.plaintext import plain
from gradinspect.records import (
    MODEL_LEVEL,
    Finding,
    GradStats,
    LayerReport,
    PerSampleStats,
    Severity,
    Shape,
)
from gradinspect.report import Report, reach_of

SEVERITY_STYLE = {Severity.INFO: "cyan", Severity.WARNING: "yellow", Severity.ERROR: "bold red"}
STATUS_LABEL = {Severity.INFO: "info", Severity.WARNING: "warn", Severity.ERROR: "ERROR"}


def fmt(value: float | None, digits: int = 4) -> str:
    """``digits`` significant digits; ``nan``/``inf`` spelled out; ``-`` for no value."""
    if value is None:
        return "-"
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "0"
    if digits < 4 and 1e-3 <= abs(value) < 1e5:  # short columns: 1778, 24.8, 0.00315
        return f"{value:.{max(0, digits - 1 - math.floor(math.log10(abs(value))))}f}"
    return f"{value:.{digits}g}"


def fmt_shape(shape: Shape) -> str:
    return "×".join("?" if d is None else str(d) for d in shape) or "scalar"


def _status(layer: LayerReport) -> Text:
    if not layer.warnings:
        return Text("ok", style="green")
    worst = max((f.severity for f in layer.warnings), key=lambda s: s.rank)
    return Text(STATUS_LABEL[worst], style=SEVERITY_STYLE[worst])


def _header(report: Report) -> Text:
    model = report.model
    data = report.data
    loss = report.loss
    arrays = plain(", ".join(f"{a.name} {fmt_shape(a.shape)} {a.dtype}" for a in data.arrays))
    reduction = "summed" if loss.reduction == "sum" else "averaged"
    text = Text()
    text.append(f"{report.tool.name} {report.tool.version}", style="bold")
    text.append(plain(f"  model {model.path or model.name} ({model.format}, '{model.name}')")
                + "\n")
    text.append(plain(f"data {data.path or '<in memory>'}: ") + arrays + "\n")
    for note in data.notes:
        text.append(f"note: {plain(note)}\n", style="yellow")
    text.append(f"loss {plain(loss.name)} = {fmt(loss.value)}, {reduction} over "
                f"{data.samples} samples; ")
    if loss.penalties is not None:
        text.append(f"model.losses (penalties, not inspected) = {fmt(loss.penalties)}; ")
    text.append("training mode" if report.training else "inference mode")
    execution = report.execution
    if execution.strategy != "none":
        devices = ", ".join(d.rpartition("device:")[2] or d for d in execution.devices)
        text.append(f"\nran on tf.distribute {execution.strategy}: {execution.replicas} "
                    f"replica{'' if execution.replicas == 1 else 's'}"
                    + (f" on {execution.workers} workers" if execution.workers > 1 else "")
                    + plain(f" ({devices})" if devices else ""))
        for note in execution.notes[1:]:  # the first says how figures merge: in the JSON
            text.append(f"\nnote: {plain(note)}", style="yellow")
    coverage = report.coverage
    if coverage is not None:
        text.append(f"\ninspected {coverage.inspected_params:,} of "
                    f"{coverage.trainable_params:,} trainable parameters in "
                    f"{coverage.entries} layer{'' if coverage.entries == 1 else 's'}")
        if coverage.skipped:
            reasons: dict[str, list[str]] = {}
            for s in coverage.skipped:
                reasons.setdefault(s.reason, []).append(s.path)
            for reason, paths in reasons.items():
                shown = ", ".join(paths[:6]) + (f" +{len(paths) - 6} more" if len(paths) > 6
                                                 else "")
                text.append(f"\nskipped ({plain(reason)}): {plain(shown)}", style="yellow")
    return text


KIND_LABEL = {"dense": "dense", "einsum_dense": "einsum", "conv": "conv", "embedding": "embed",
              "recurrent": "rnn", "normalization": "norm", "generic": "other"}
"""Short labels for the summary table's kind column (the JSON spells kinds out)."""


def main_shape(layer: LayerReport) -> str:
    """The shape of the entry's first non-offset variable (Dense: the kernel)."""
    from gradinspect.records import is_offset

    for name, w in layer.weights.variables.items():
        if w is not None and not is_offset(name):
            return fmt_shape(w.shape)
    first = next((w for w in layer.weights.variables.values() if w is not None), None)
    return fmt_shape(first.shape) if first is not None else "-"


def _grad_label(name: str) -> str:
    return {"kernel": "∂L/∂W", "bias": "∂L/∂b"}.get(name, f"∂L/∂{name}")


def _layer_label(layer: LayerReport) -> str:
    return f"{layer.path} ×{layer.calls}" if layer.calls > 1 else layer.path


def summary_table(report: Report) -> Table:
    """One row per entry, forward order. ‖∂L/∂W‖ is over the entry's variables but the offsets
    (bias, beta): a Dense layer's kernel."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, title=None, expand=False,
                  collapse_padding=True)
    table.add_column("#", justify="right", style="dim")
    table.add_column("layer", overflow="fold", min_width=16)
    table.add_column("kind")
    table.add_column("act", overflow="ellipsis", max_width=8, no_wrap=True)
    table.add_column("W", justify="right", overflow="ellipsis", max_width=11, no_wrap=True)
    table.add_column("‖∂L/∂W‖", justify="right", no_wrap=True)
    table.add_column("‖∂L/∂x‖", justify="right", no_wrap=True)
    table.add_column("‖∂W‖/‖W‖", justify="right", no_wrap=True)
    table.add_column("gain", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True, min_width=6)
    for i, layer in enumerate(report.layers):
        table.add_row(
            str(i),
            Text(plain(_layer_label(layer))),
            Text(plain(KIND_LABEL.get(layer.kind, layer.kind))),
            Text(plain(act_label(layer))),
            main_shape(layer),
            fmt(layer.weight_grad_norm, 3),
            fmt(layer.grads.input.norm, 3) if layer.grads.input is not None else "-",
            fmt(layer.grad_to_weight, 3),
            fmt(layer.backward_gain, 3),
            _status(layer),
        )
    return table


def act_label(layer: LayerReport) -> str:
    """The activation measured (a following activation layer's, marked →), else the layer's
    own; empty for kinds without one."""
    if layer.activity is not None and layer.activity.source != "layer":
        return f"→{layer.activity.name}"
    return layer.activation or ""


def detail_table(report: Report) -> Table:
    """Shape, norm, max |g|, mean |g|, NaN and Inf of every gradient of every layer."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("layer", overflow="fold")
    table.add_column("grad")
    table.add_column("shape", justify="right")
    table.add_column("norm", justify="right")
    table.add_column("max|g|", justify="right")
    table.add_column("mean|g|", justify="right")
    table.add_column("NaN", justify="right")
    table.add_column("Inf", justify="right")
    for layer in report.layers:
        rows: Sequence[tuple[str, GradStats | None]] = (
            *((_grad_label(name), g) for name, g in layer.grads.variables.items()),
            ("∂L/∂x", layer.grads.input),
        )
        first = True
        for label, g in rows:
            if g is None:
                continue
            table.add_row(
                Text(plain(layer.path)) if first else "",
                Text(plain(label)),
                fmt_shape(g.shape),
                fmt(g.norm),
                fmt(g.max_abs),
                fmt(g.mean_abs),
                Text(str(g.nan), style="bold red" if g.nan else ""),
                Text(str(g.inf), style="bold red" if g.inf else ""),
            )
            first = False
        table.add_section()
    return table


def checks_table(report: Report) -> Table | None:
    """``--verify`` / ``--gradcheck`` / ``--per-sample`` results, one row per layer."""
    checks = report.checks
    if not (checks.verify or checks.gradcheck or checks.per_sample):
        return None
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, title="checks", title_justify="left")
    table.add_column("layer", overflow="fold")
    if checks.verify:
        table.add_column("verify err", justify="right")
    if checks.gradcheck:
        table.add_column("gradcheck err", justify="right")
    if checks.per_sample:
        table.add_column("per-sample ‖g_i‖ min / median / max", justify="right")
        table.add_column("GSNR", justify="right")
        table.add_column("outliers", overflow="fold")
        table.add_column("method", overflow="fold")
    for layer in report.layers:
        row: list[Text | str] = [Text(plain(layer.path))]
        if checks.verify:
            v = layer.verify
            row.append(Text(fmt(v.worst_rel_error), style="" if v.ok else "bold red")
                       if v else "-")
        if checks.gradcheck:
            g = layer.gradcheck
            row.append(Text(f"{fmt(g.max_rel_error)} ({g.coordinates})",
                            style="" if g.ok else "bold red") if g else "-")
        if checks.per_sample:
            row += _per_sample_cells(layer.per_sample)
        table.add_row(*row)
    whole = checks.per_sample_model
    if checks.per_sample and whole is not None:
        table.add_row(Text("whole model", style="bold"),
                      *(["-"] * (bool(checks.verify) + bool(checks.gradcheck))),
                      *_per_sample_cells(whole))
    return table


def _per_sample_cells(p: PerSampleStats | None) -> list[Text | str]:
    if p is None:
        return ["-", "-", "-", "not available (see below)"]
    shown = ", ".join(str(i) for i in p.outliers[:5])
    more = f" +{p.outlier_count - 5}" if p.outlier_count > 5 else ""
    return [f"{fmt(p.min)} / {fmt(p.median)} / {fmt(p.max)}", fmt(p.gsnr),
            (shown + more) or "none", p.method]


def _check_notes(report: Report) -> Text | None:
    notes = []
    if report.checks.verify_note:
        notes.append(f"verify: {report.checks.verify_note}")
    if report.checks.gradcheck:
        notes.append(f"gradcheck: {report.checks.gradcheck}")
    if report.checks.per_sample:
        notes.append(f"per-sample: {report.checks.per_sample}")
    return Text("\n".join(plain(n) for n in notes), style="dim") if notes else None


@dataclass(frozen=True)
class _Row:
    """One printed finding, or a group of three or more of one code (shown by its most
    severe member): a chain of root causes on consecutive entries, or consequences of the
    same causes."""

    first: Finding
    layers: tuple[str, ...]
    explains: int


def _rows(findings: Sequence[Finding], positions: Mapping[str, int],
          explains: Callable[[Sequence[Finding]], int]) -> list[_Row]:
    """Findings in printing order (most severe first, then forward order). Three or more of
    one code print as one row with the layer range: root causes when they sit on consecutive
    entries (a chain), consequences when they follow from the same causes."""
    def pos(f: Finding) -> int:
        return positions.get(f.layer, -1) if f.layer is not None else -1

    runs: list[list[Finding]] = []
    for f in sorted(findings, key=lambda f: (f.code, f.root, f.caused_by, pos(f))):
        last = runs[-1][-1] if runs else None
        if (last is not None and f.layer is not None and last.layer is not None
                and last.code == f.code and last.root == f.root
                and (pos(f) == pos(last) + 1 if f.root else last.caused_by == f.caused_by)):
            runs[-1].append(f)
        else:
            runs.append([f])
    rows: list[_Row] = []
    for run in runs:
        if len(run) < 3:  # two print as two rows: a range would hide the second's figures
            rows += [_Row(f, (f.layer,) if f.layer is not None else (), explains([f]))
                     for f in run]
            continue
        worst = max(run, key=lambda f: f.severity.rank)  # the first of the most severe
        rows.append(_Row(worst, tuple(dict.fromkeys(f.layer or "" for f in run)),
                         explains(run)))
    rows.sort(key=lambda r: (-r.first.severity.rank, pos(r.first)))
    return rows


def _where(row: _Row) -> Text:
    if not row.layers:
        place = "model"
    elif len(row.layers) == 1:
        place = row.layers[0]
    else:
        place = f"{row.layers[0]} … {row.layers[-1]}"
    text = Text.assemble((plain(place), "bold"), "\n", (plain(row.first.code), ""))
    if len(row.layers) > 1:
        text.append(f"\n({len(row.layers)} layers)", style="dim")
    return text


def _findings_grid(rows: Sequence[_Row], diagnosis: bool) -> Table:
    table = Table.grid(padding=(0, 1))
    table.add_column(no_wrap=True)
    table.add_column(no_wrap=True, max_width=34, overflow="fold")
    table.add_column(ratio=1)
    for row in rows:
        f = row.first
        text = Text(plain(f.message))
        if len(row.layers) > 1:
            which = "consecutive layers" if f.root else "layers"
            text.append(plain(f" (figures of {f.layer}, the worst of {len(row.layers)} "
                              f"{which} with this finding)"), style="dim")
        if diagnosis and row.explains:
            n = row.explains
            text.append(f"\nexplains {n} other finding{'s' if n != 1 else ''}", style="bold")
        if f.caused_by:
            causes = ", ".join(c.replace("@", " at ", 1) if not c.endswith(f"@{MODEL_LEVEL}")
                               else f"{c.rpartition('@')[0]} (model level)"
                               for c in f.caused_by[:3])
            more = f" and {len(f.caused_by) - 3} more" if len(f.caused_by) > 3 else ""
            text.append("\n← " + plain(f"follows from {causes}{more}"), style="dim")
        else:
            text.append(f"\n→ {plain(f.hint)}", style="dim")
        table.add_row(Text(f.severity.value, style=SEVERITY_STYLE[f.severity]), _where(row),
                      text)
    return table


def findings_renderable(report: Report) -> RenderableType | None:
    """The diagnosis first — the root causes that are warnings or errors or explain other
    findings, each with its hint and how many findings follow from it — then the rest
    (consequences, with what they follow from, and information). The same finding on
    consecutive entries prints once, with the layer range."""
    found = report.findings()
    if not found:
        return None
    positions = {layer.path: k for k, layer in enumerate(report.layers)}
    reach = reach_of(found)
    per_id = Counter(f.id for f in found)

    def explains(group: Sequence[Finding]) -> int:
        """Findings that follow from any of ``group`` (each counted once)."""
        ids = {f.id for f in group}
        return sum(per_id[e] for e in set().union(*(reach[i] for i in ids)) - ids)

    rows = _rows(found, positions, explains)
    def leads(r: _Row) -> bool:
        return r.first.root and (r.first.severity is not Severity.INFO or r.explains > 0)

    roots = [r for r in rows if leads(r)]
    rest = [r for r in rows if not leads(r)]
    parts: list[RenderableType] = []
    if roots:
        parts.append(Text("diagnosis: fix these first", style="bold"))
        parts.append(_findings_grid(roots, diagnosis=True))
    if rest:
        parts.append(Text("other findings" if roots else "findings", style="bold"))
        parts.append(_findings_grid(rest, diagnosis=False))
    return Group(*parts)


def values_renderable(report: Report) -> RenderableType | None:
    """``--values``: the arrays, numpy-style, summarised when large."""
    import numpy as np

    parts: list[RenderableType] = []
    for layer in report.layers:
        v = layer.values
        if v is None:
            continue
        arrays = [*((_grad_label(n), a) for n, a in v.variables.items()), ("∂L/∂x", v.input)]
        for label, array in arrays:
            if array is None:
                continue
            a = np.asarray(array)
            note = f", first {v.input_samples} samples" if label == "∂L/∂x" else ""
            parts.append(Text(plain(f"{layer.path} {label} ({fmt_shape(a.shape)}{note})"),
                              style="bold"))
            parts.append(Text(np.array2string(a, precision=4, threshold=200, edgeitems=3,
                                              max_line_width=98)))
    return Group(*parts) if parts else None


DETAILS_UP_TO = 30
"""With more entries than this, the detail table is left out unless asked for (``--details``):
a 100-layer CNN would print 300 rows of it."""


def report_renderable(report: Report, details: bool | None = None) -> RenderableType:
    """Everything the table format prints, as one rich renderable. ``details``: the detail
    table; ``None`` = only for reports of at most ``DETAILS_UP_TO`` entries."""
    parts: list[RenderableType] = [_header(report), summary_table(report)]
    if details is None:
        details = len(report.layers) <= DETAILS_UP_TO
        if not details:
            parts.append(Text(f"(detail table left out for {len(report.layers)} entries: "
                              "--details shows it, --json has every figure)", style="dim"))
    if details:
        parts.append(detail_table(report))
    checks = checks_table(report)
    if checks is not None:
        parts.append(checks)
        notes = _check_notes(report)
        if notes is not None:
            parts.append(notes)
    values = values_renderable(report)
    if values is not None:
        parts.append(values)
    findings = findings_renderable(report)
    if findings is not None:
        parts.append(findings)
    else:
        parts.append(Text("no findings", style="green"))
    return Group(*parts)


def render_table(report: Report, width: int = 100, color: bool = False,
                 details: bool | None = None) -> str:
    """The table format as a string (fixed width, optionally without colour)."""
    console = Console(
        width=width, record=False, color_system="standard" if color else None,
        force_terminal=color, no_color=not color, highlight=False, legacy_windows=False,
    )
    with console.capture() as cap:
        console.print(report_renderable(report, details=details))
    return "".join(line.rstrip() + "\n" for line in cap.get().splitlines())
