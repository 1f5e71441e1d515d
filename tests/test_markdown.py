"""The Markdown renderer: golden files for the bundled samples (regenerate on purpose with
``pytest tests/test_markdown.py --update-golden`` and review the diff), and its escaping checked
by an independent parser, markdown-it-py (CommonMark with GitHub's table and strikethrough
extensions; rich depends on it), on reports whose names and paths are hostile."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from markdown_it import MarkdownIt
from markdown_it.token import Token

import gradinspect
from gradinspect.plaintext import plain
from gradinspect.records import Finding, LayerReport
from gradinspect.render.markdown import COLUMNS, md_text, render_markdown
from gradinspect.report import Report

ROOT = Path(__file__).resolve().parent.parent
GFM = MarkdownIt("commonmark").enable(["table", "strikethrough"])

HOSTILE = ("a|b <script>alert(1)</script> `tick` *star* _under_ [link](http://x) ~~s~~ &lt; "
           "$m$ \\ \n\x1b[2J\u202e |")
"""Every kind of Markdown syntax, HTML, a line break, a terminal escape and a bidi override.
Keras refuses such names (TensorFlow scope names), but a report also comes from files and
paths, and the renderer takes any record."""
SHOWN = plain(HOSTILE.replace("\n", " ")).strip()
"""What a reader must see for ``HOSTILE``: the text, line break as a space, controls escaped."""
INLINE_TYPES = {"text", "strong_open", "strong_close", "code_inline"}
"""Inline tokens the renderer may produce; a hostile name must add none (no emphasis, link,
HTML, strikethrough, line break)."""


@pytest.mark.parametrize("name", ["seed_a", "seed_b", "seed_c", "mnist_mlp", "cnn_small"])
def test_markdown_matches_golden(name: str, golden: Callable[[str, str], None],
                                 monkeypatch: pytest.MonkeyPatch, tfk: object) -> None:
    monkeypatch.chdir(ROOT)
    report = gradinspect.inspect_files(f"samples/{name}.h5", f"samples/{name}_x.npy")
    golden(f"markdown_{name}", render_markdown(report))


@pytest.fixture(scope="module")
def findings_report(tfk: Any) -> Report:
    """Unscaled input (a model-level root), a layer whose relu units are all dead (a root that
    zeroes what is before it), saturated tanh units, and the consequences."""
    _, keras = tfk
    keras.utils.set_random_seed(0)
    L = keras.layers
    model = keras.Sequential([keras.Input((6,)),
                              L.Dense(6, activation="tanh", name="l_first"),
                              L.Dense(16, activation="relu", name="l_dead"),
                              L.Dense(8, activation="sigmoid", name="l_sat"),
                              L.Dense(1, name="l_out")])
    dead = model.get_layer("l_dead")
    w, b = dead.get_weights()
    dead.set_weights([w, b - 3])
    x = (np.random.default_rng(0).standard_normal((32, 6)) * 300).astype(np.float32)
    report = gradinspect.inspect(model, x)
    assert len({f.code for f in report.findings()}) >= 5  # the tests below need variety
    assert any(f.layer is None for f in report.findings())
    assert any(f.caused_by for f in report.findings())
    return report


def renamed(report: Report, old: str, new: str) -> Report:
    """``report`` with the layer named ``old`` called ``new`` everywhere (name, path,
    findings, the causes naming it, messages quoting it), and ``new`` in every path and
    array name too."""
    def finding(f: Finding) -> Finding:
        causes = tuple(c.replace(f"@{old}", f"@{new}") for c in f.caused_by)
        return dataclasses.replace(
            f, layer=new if f.layer == old else f.layer, caused_by=causes,
            message=f.message.replace(old, new), hint=f.hint.replace(old, new))

    def layer(ly: LayerReport) -> LayerReport:
        return dataclasses.replace(
            ly, name=new if ly.name == old else ly.name, path=new if ly.path == old else ly.path,
            warnings=tuple(finding(f) for f in ly.warnings))

    data = dataclasses.replace(
        report.data, path=f"data/{new}.npy",
        arrays=tuple(dataclasses.replace(a, name=new) for a in report.data.arrays))
    return dataclasses.replace(
        report, model=dataclasses.replace(report.model, path=f"models/{new}.keras", name=new),
        data=data, layers=tuple(layer(ly) for ly in report.layers),
        warnings=tuple(finding(f) for f in report.warnings))


def unescaped_pipes(line: str) -> int:
    """``|`` that separate cells: not escaped by a backslash (an escaped backslash escapes
    nothing after it, as GitHub's table parser reads a row)."""
    count, escaped = 0, False
    for ch in line:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "|":
            count += 1
    return count


def _walk(tokens: list[Token]) -> Iterator[Token]:
    for t in tokens:
        yield t
        if t.children:
            yield from _walk(t.children)


def _text(inline: Token) -> str:
    return "".join(c.content for c in inline.children or [])


def table_cells(markdown: str) -> list[list[str]]:
    """The parsed per-layer table: the text of each cell, header row first."""
    rows: list[list[str]] = []
    tokens = GFM.parse(markdown)
    for i, t in enumerate(tokens):
        if t.type == "tr_open":
            rows.append([])
        elif t.type in ("th_open", "td_open"):
            rows[-1].append(_text(tokens[i + 1]))
    return rows


def test_hostile_names_stay_one_cell_and_plain_text(findings_report: Report) -> None:
    report = renamed(findings_report, "l_dead", HOSTILE)
    md = render_markdown(report)
    rows = [line for line in md.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + len(report.layers)
    separators = unescaped_pipes(rows[0])
    assert separators == len(COLUMNS) + 1
    assert [unescaped_pipes(r) for r in rows] == [separators] * len(rows)
    for raw in (HOSTILE, "a|b", "<script>", "`tick`", "*star*", "_under_", "[link]", "\x1b",
                "\u202e"):
        assert raw not in md, raw
    # a name's line break must not start a line: every line is one the renderer writes
    assert all(re.match(r"(### |#### |- |  - \S|\| |no findings$|$)", line)
               for line in md.splitlines())

    cells = table_cells(md)
    assert [len(r) for r in cells] == [len(COLUMNS)] * (1 + len(report.layers))
    layer_col = [name for name, _ in COLUMNS].index("layer")
    assert cells[2][layer_col] == SHOWN  # the dead layer's row (header, l_first, then it)
    tokens = list(_walk(GFM.parse(md)))
    assert not {t.type for t in tokens} & {"html_block", "code_block", "fence"}
    inline_types = {c.type for t in tokens if t.type == "inline" for c in t.children or []}
    assert inline_types <= INLINE_TYPES
    texts = [_text(t) for t in tokens if t.type == "inline"]
    assert f"model: models/{SHOWN}.keras (live, '{SHOWN}')" in texts
    assert sum(SHOWN in t for t in texts) > 5  # header, row, its findings and their causes


def test_every_finding_is_listed_once_with_its_cause(findings_report: Report) -> None:
    md = render_markdown(findings_report)
    found = findings_report.findings()
    items = [line for line in md.splitlines() if line.startswith("- **")
             and line.split("**")[1] in ("info", "warning", "error")]
    assert len(items) == len(found)
    heads = [re.match(r"- \*\*(\w+)\*\* `(\w+)` at (\S+):", i) for i in items]
    listed = sorted(m.groups() for m in heads if m is not None)
    assert listed == sorted((f.severity.value, f.code, md_text(f.layer or "model"))
                            for f in found)
    follows = [line for line in md.splitlines() if line.startswith("  - ← follows from ")]
    assert len(follows) == sum(bool(f.caused_by) for f in found)
    hints = [line for line in md.splitlines() if line.startswith("  - → ")]
    assert len(hints) == sum(not f.caused_by for f in found)
    assert "no findings" not in md
    # the diagnosis comes first and holds the roots
    diagnosis, _, rest = md.partition("#### Other findings")
    assert "#### Diagnosis: fix these first" in diagnosis
    assert "follows from" not in diagnosis
    assert "explains" not in rest


def test_every_code_of_the_report_appears(findings_report: Report) -> None:
    md = render_markdown(findings_report)
    codes = {f.code for f in findings_report.findings()}
    for code in codes:
        assert f"`{code}`" in md, code
    status_col = [name for name, _ in COLUMNS].index("status")
    assert {r[status_col] for r in table_cells(md)[1:]} >= {"ERROR", "ok"}


def test_no_findings_says_so(findings_report: Report) -> None:
    quiet = dataclasses.replace(
        findings_report, warnings=(),
        layers=tuple(dataclasses.replace(ly, warnings=()) for ly in findings_report.layers))
    md = render_markdown(quiet)
    assert md.rstrip().endswith("no findings")
    assert "Diagnosis" not in md
    for code in {f.code for f in findings_report.findings()}:
        assert code not in md
    status_col = [name for name, _ in COLUMNS].index("status")
    assert {r[status_col] for r in table_cells(md)[1:]} == {"ok"}


def test_non_finite_numbers_print_as_the_table_prints_them(findings_report: Report) -> None:
    first, *rest = findings_report.layers
    odd = dataclasses.replace(first, weight_grad_norm=math.inf, grad_to_weight=-math.inf,
                              backward_gain=math.nan)
    md = render_markdown(dataclasses.replace(findings_report, layers=(odd, *rest)))
    names = [name for name, _ in COLUMNS]
    row = table_cells(md)[1]
    assert row[names.index("‖∂L/∂W‖")] == "inf"
    assert row[names.index("‖∂W‖/‖W‖")] == "-inf"
    assert row[names.index("gain")] == "nan"
    assert "NaN" not in md
    assert "Infinity" not in md


@given(st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Zs", "Zl", "Zp"))
               | st.sampled_from(list("|\\`*_[]<>~&$#!\n\r\t -")), max_size=40))
def test_any_text_is_one_literal_cell(text: str) -> None:
    escaped = md_text(text)
    assert "\n" not in escaped
    assert "\r" not in escaped
    md = f"| a | b |\n| --- | --- |\n| {escaped} | end |\n"
    cells = table_cells(md)
    assert cells[1] == [plain(re.sub("\r\n|[\r\n\t]", " ", text)).strip(" "), "end"]
    inline = {c.type for t in _walk(GFM.parse(md)) if t.type == "inline"
              for c in t.children or []}
    assert inline <= {"text"}


def test_cli_markdown_prints_the_renderer_output(tfk: Any, monkeypatch: pytest.MonkeyPatch
                                                 ) -> None:
    """``--markdown`` on stdout is ``render_markdown`` of the same report; with ``--json`` too
    it is a usage error (exit 2), one line."""
    from typer.testing import CliRunner

    from gradinspect import cli

    monkeypatch.chdir(ROOT)
    args = ["samples/mnist_mlp.h5", "samples/mnist_mlp_x.npy"]
    result = CliRunner().invoke(cli.app, [*args, "--markdown"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == render_markdown(gradinspect.inspect_files(*args))
    both = CliRunner().invoke(cli.app, [*args, "--markdown", "--json"])
    assert both.exit_code == 2
    assert "--markdown" in both.stderr
    assert both.stdout == ""
