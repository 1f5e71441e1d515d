"""``gradinspect timeline``: the series of a recorded run, checked against the records
themselves; the table against a golden file; errors as one line with their exit code."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import relu_classifier
from typer.testing import CliRunner

import gradinspect
from gradinspect import cli
from gradinspect.diff import read_records
from gradinspect.errors import ExitStatus
from gradinspect.render.timeline import sparkline, timeline_renderable
from gradinspect.timeline import build_timeline

RNG = np.random.default_rng(21)


def _record(step: int, epoch: int, norms: dict[str, tuple[float | None, float | None, float]],
            findings: dict[str, list[tuple[str, str]]], model: list[tuple[str, str]]) -> str:
    layers = [{"path": path, "kind": "dense", "weight_grad_norm": w,
               "grads": {"input": None if x is None else {"norm": x}}, "backward_gain": g,
               "warnings": [{"code": c, "severity": s} for c, s in findings.get(path, [])]}
              for path, (w, x, g) in norms.items()]
    report = {"schema_version": 2, "layers": layers,
              "warnings": [{"code": c, "severity": s} for c, s in model]}
    return json.dumps({"epoch": epoch, "step": step, "batch": step, "report": report})


def _synthetic(path: Path) -> Path:
    """Five records of a two-layer run: the first layer's gradient falls four orders of
    magnitude, the head's NaN at step 40; dead units appear at step 20."""
    lines = []
    for k, step in enumerate((0, 10, 20, 30, 40)):
        head = (2.0 * (k + 1), 1.5, 0.9) if step < 40 else (None, None, 0.9)
        dead = [("dead_units", "warning")] if step >= 20 else []
        nan = [("nan_gradient", "error")] if step >= 40 else []
        lines.append(_record(step, k // 3, {"dense": (10.0 ** -k, None, 0.5), "head": head},
                             {"dense": dead, "head": nan},
                             [("signal_collapse", "warning")] if step >= 30 else []))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_sparkline_scale_zero_and_missing() -> None:
    assert sparkline([1.0, 10.0, 100.0, 1000.0]) == "▁▃▆█"
    assert sparkline([5.0, 0.0, None]) == "▁0×"
    long = sparkline([float(2 ** k) for k in range(64)], width=16)
    assert len(long) == 16
    assert long[0] == "▁"
    assert long[-1] == "█"


def test_timeline_table_matches_golden(tmp_path: Path,
                                       golden: Callable[[str, str], None]) -> None:
    from rich.console import Console

    path = _synthetic(tmp_path / "run.jsonl")
    result = build_timeline(read_records(path), "run.jsonl")
    console = Console(width=100, color_system=None, no_color=True, highlight=False,
                      force_terminal=False)
    with console.capture() as cap:
        console.print(timeline_renderable(result))
    text = "".join(line.rstrip() + "\n" for line in cap.get().splitlines())
    golden("timeline", text)
    assert max(len(line) for line in text.splitlines()) <= 100
    dense = result.entries[0]
    assert dense.path == "dense"
    assert [(f.code, f.step) for f in dense.findings] == [("dead_units", 20)]
    assert [(f.code, f.step) for f in result.findings] == [("signal_collapse", 30)]


def test_timeline_json_equals_the_records_of_a_real_fit(tfk: Any, tmp_path: Path) -> None:
    _, keras = tfk
    model = relu_classifier(keras, seed=3, bias_shift=-2.0)  # some units dead from the start
    x = RNG.standard_normal((256, 6)).astype(np.float32)
    y = RNG.integers(0, 3, 256)
    log = tmp_path / "g.jsonl"
    callback = gradinspect.GradInspectCallback(x[:32], y[:32], every_n_batches=2, path=log)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[callback])
    records = [json.loads(line) for line in log.read_text().splitlines()]
    result = CliRunner().invoke(cli.timeline_app, [str(log), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["steps"] == [r["step"] for r in records] == [0, 2, 4, 6]  # 8 batches
    assert [e["path"] for e in doc["entries"]] == ["hidden", "logits"]
    for e in doc["entries"]:
        layers = [next(ly for ly in r["report"]["layers"] if ly["path"] == e["path"])
                  for r in records]
        assert e["weight_grad_norm"] == [ly["weight_grad_norm"] for ly in layers]
        assert e["input_grad_norm"] == [ly["grads"]["input"]["norm"] for ly in layers]
        assert e["backward_gain"] == [ly["backward_gain"] for ly in layers]
        codes = {f["code"] for ly in layers for f in ly["warnings"]}
        assert {f["code"] for f in e["findings"]} == codes
        for f in e["findings"]:  # the first record that has it
            first = next(r["step"] for r, ly in zip(records, layers, strict=True)
                         if any(w["code"] == f["code"] for w in ly["warnings"]))
            assert f["step"] == first
    only = CliRunner().invoke(cli.timeline_app, [str(log), "--json", "--layer", "log*"])
    assert [e["path"] for e in json.loads(only.stdout)["entries"]] == ["logits"]
    table = CliRunner().invoke(cli.timeline_app, [str(log)])
    assert table.exit_code == 0
    assert "hidden" in table.stdout
    assert "Δlog10" in table.stdout


def test_timeline_plot(tmp_path: Path) -> None:
    path = _synthetic(tmp_path / "run.jsonl")
    png = tmp_path / "trend.png"
    result = CliRunner().invoke(cli.timeline_app, [str(path), "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("content", "args", "status", "words"), [
    (None, [], ExitStatus.DATA_ERROR, "not found"),
    ("not json\n", [], ExitStatus.DATA_ERROR, "not valid JSON"),
    ('{"a": 1}\n', [], ExitStatus.DATA_ERROR, "not a callback record"),
    ("", [], ExitStatus.DATA_ERROR, "no records"),
    ("synthetic", ["--layer", "nothing*"], ExitStatus.DATA_ERROR, "no entry matches"),
    ("synthetic", ["--kind", "nonsense"], ExitStatus.USAGE, "not a layer kind"),
])
def test_timeline_errors_are_one_line(tmp_path: Path, content: str | None, args: list[str],
                                      status: ExitStatus, words: str) -> None:
    path = tmp_path / "run.jsonl"
    if content == "synthetic":
        _synthetic(path)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    result = CliRunner().invoke(cli.timeline_app, [str(path), *args])
    assert result.exit_code == int(status), result.output
    assert words in result.output
    assert "Traceback" not in result.output
