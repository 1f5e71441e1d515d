"""TensorBoard events, read back with TensorFlow's own event reader and checked against the JSON
lines of the same run."""

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
from gradinspect.errors import ExitStatus, UsageError

RNG = np.random.default_rng(31)


def _events(tf: Any, log_dir: Path) -> dict[tuple[int, str], Any]:
    """(step, tag) -> the event's value as an array (scalars, histograms) or text."""
    out: dict[tuple[int, str], Any] = {}
    files = sorted(log_dir.glob("events.out.tfevents.*"))
    assert files, f"no event file in {log_dir}"
    for path in files:
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                out[(event.step, value.tag)] = tf.make_ndarray(value.tensor)
    return out


def _expected(layer: dict[str, Any]) -> dict[str, float]:
    base = f"gradinspect/{layer['path']}"
    tags = {}
    for name, grad in layer["grads"].items():
        if name == "input" or grad is None:
            continue
        tags[f"{base}/{name}/grad_norm"] = grad["norm"]
        weight = layer["weights"][name]
        if weight["norm"]:
            tags[f"{base}/{name}/grad_to_weight"] = grad["norm"] / weight["norm"]
    if layer["grads"]["input"] is not None:
        tags[f"{base}/input_grad_norm"] = layer["grads"]["input"]["norm"]
    tags[f"{base}/backward_gain"] = layer["backward_gain"]
    return tags


def test_callback_writes_what_the_json_lines_hold(tfk: Any, tmp_path: Path) -> None:
    tf, keras = tfk
    model = relu_classifier(keras, seed=2, bias_shift=-1.5)
    x = RNG.standard_normal((192, 6)).astype(np.float32)
    y = RNG.integers(0, 3, 192)
    log = tmp_path / "g.jsonl"
    callback = gradinspect.GradInspectCallback(x[:32], y[:32], every_n_batches=2, path=log,
                                               log_dir=tmp_path / "tb")
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[callback])
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 2, 4]
    assert all("values" not in ly for r in records for ly in r["report"]["layers"])
    events = _events(tf, tmp_path / "tb")
    written = {tag for _, tag in events}
    for record in records:
        step, report = record["step"], record["report"]
        for layer in report["layers"]:
            for tag, value in _expected(layer).items():
                assert float(events[(step, tag)]) == pytest.approx(value, rel=1e-6), tag
            for name, weight in layer["weights"].items():
                if weight is None:
                    continue
                histogram = events[(step, f"gradinspect/{layer['path']}/{name}/grad")]
                assert histogram.shape[1] == 3  # left edge, right edge, count
                assert histogram[:, 2].sum() == pytest.approx(np.prod(weight["shape"]))
        found = [f for ly in report["layers"] for f in ly["warnings"]] + report["warnings"]
        for severity in ("info", "warning", "error"):
            count = sum(f["severity"] == severity for f in found)
            assert float(events[(step, f"gradinspect/findings/{severity}")]) == count
    # every scalar tag is one the JSON explains; the text appears where a finding is new
    expected_tags = {tag for r in records for ly in r["report"]["layers"]
                     for tag in _expected(ly)}
    scalar_tags = {t for t in written if not t.endswith("/grad")
                   and not t.startswith("gradinspect/findings/")}
    assert scalar_tags == expected_tags
    text = events[(0, "gradinspect/findings/text")].item().decode()
    assert "dead_units" in text
    assert (2, "gradinspect/findings/text") not in events or "dead_units" not in events[
        (2, "gradinspect/findings/text")].item().decode()


def test_cli_tensorboard_and_step(tfk: Any, tmp_path: Path, samples_dir: Path) -> None:
    tf, _ = tfk
    result = CliRunner().invoke(cli.app, [str(samples_dir / "seed_c.h5"),
                                          str(samples_dir / "seed_c_x.npy"), "--json",
                                          "--tensorboard", str(tmp_path / "tb"), "--step", "7"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert all("values" not in layer for layer in doc["layers"])  # only for the histograms
    events = _events(tf, tmp_path / "tb")
    assert {step for step, _ in events} == {7}
    for layer in doc["layers"]:
        for tag, value in _expected(layer).items():
            assert float(events[(7, tag)]) == pytest.approx(value, rel=1e-6)


def test_missing_tensorboard_names_the_extra(tmp_path: Path, samples_dir: Path,
                                            hide_module: Callable[[str], None]) -> None:
    from gradinspect.tensorboard import require_tensorboard

    hide_module("tensorboard")
    with pytest.raises(UsageError) as caught:
        require_tensorboard()
    assert "pip install 'gradinspect[tensorboard]'" in caught.value.one_line()
    result = CliRunner().invoke(cli.app, [str(samples_dir / "seed_a.h5"),
                                          str(samples_dir / "seed_a_x.npy"),
                                          "--tensorboard", str(tmp_path / "tb")])
    assert result.exit_code == int(ExitStatus.USAGE)
    assert "gradinspect[tensorboard]" in result.output
    assert not (tmp_path / "tb").exists()
