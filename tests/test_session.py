"""For debugging sessions: the Python API on live models, the Keras callback in a real fit,
report diffs, the gradient-flow view and plot, --layer and --values."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

import gradinspect
from gradinspect import cli
from gradinspect.diff import diff_reports, read_report
from gradinspect.errors import DataError, ExitStatus, UsageError
from gradinspect.render.flow import flow_renderable, write_plot

runner = CliRunner()
RNG = np.random.default_rng(9)
X = RNG.standard_normal((32, 6)).astype(np.float32)
Y = RNG.integers(0, 3, 32)


def assert_close_tree(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict)
        assert list(a) == list(b), where
        for key in a:
            assert_close_tree(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list)
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close_tree(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and not isinstance(a, bool):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-7), where
    else:
        assert a == b, where


def mlp(keras: Any, dead_bias: float | None = None) -> Any:
    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((6,), name="x"),
                              keras.layers.Dense(16, activation="relu", name="hidden"),
                              keras.layers.Dense(8, activation="tanh", name="mid"),
                              keras.layers.Dense(3, name="logits")], name="mlp")
    if dead_bias is not None:
        w, b = model.get_layer("hidden").get_weights()
        b[:8] = dead_bias
        model.get_layer("hidden").set_weights([w, b])
    return model


def test_api_on_a_live_model_matches_the_cli(tfk: Any, tmp_path: Path) -> None:
    tf, keras = tfk
    model = mlp(keras)
    report = gradinspect.inspect(model, X)
    assert isinstance(report, gradinspect.Report)
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(model(X))
    grad = tape.gradient(total, model.get_layer("mid").kernel)
    assert report["mid"].grads.kernel.norm == pytest.approx(float(np.linalg.norm(grad)),
                                                           rel=1e-5)
    assert [ly.path for ly in report] == ["hidden", "mid", "logits"]
    with pytest.raises(KeyError, match="no entry named 'nope'"):
        report["nope"]
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", X)
    cli_doc = json.loads(runner.invoke(cli.app, [str(tmp_path / "m.keras"),
                                                 str(tmp_path / "x.npy"), "--json"]).stdout)
    api_doc = json.loads(report.to_json())
    assert api_doc == report.to_dict()
    # the CLI runs one small batch eagerly, the API a compiled step: same figures up to float
    # rounding of a different op order. Keras names an in-process model's variables after the
    # model (mlp/hidden/kernel), the loaded copy's without it (hidden/kernel).
    for layer in api_doc["layers"]:
        for w in layer["weights"].values():
            if w is not None:
                assert w["path"] == f"mlp/{layer['path']}/{w['path'].rsplit('/', 1)[-1]}"
                w["path"] = w["path"].removeprefix("mlp/")
    assert_close_tree(api_doc["layers"], cli_doc["layers"])
    assert api_doc["model"]["format"] == "live"
    text = io.StringIO()
    Console(file=text, width=100).print(report)
    assert "‖∂L/∂W‖" in text.getvalue()
    assert "<pre" in report._repr_html_() or "<code" in report._repr_html_()


def test_api_takes_dict_inputs_and_labels(tfk: Any) -> None:
    _, keras = tfk
    model = mlp(keras)
    a = gradinspect.inspect(model, {"x": X}, Y, loss="sparse_categorical_crossentropy",
                            from_logits=True)
    b = gradinspect.inspect(model, X, Y, loss="sparse_categorical_crossentropy",
                            from_logits=True)
    assert a.to_dict()["layers"] == b.to_dict()["layers"]
    with pytest.raises(DataError, match="no array for model input"):
        gradinspect.inspect(model, {"other": X})


def test_callback_records_during_a_real_fit(tfk: Any, tmp_path: Path) -> None:
    _, keras = tfk
    model = mlp(keras, dead_bias=-50.0)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = RNG.standard_normal((640, 6)).astype(np.float32)
    y = RNG.integers(0, 3, 640)
    stream = io.StringIO()
    callback = gradinspect.GradInspectCallback(x[:32], y[:32], every_n_batches=7,
                                               path=tmp_path / "g.jsonl", stream=stream)
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[callback])
    lines = [json.loads(line) for line in (tmp_path / "g.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in lines]
    assert steps == [0, 7, 14, 21, 28, 35]  # 40 batches in all, every 7, plus the start
    assert [r["epoch"] for r in lines] == [0, 0, 0, 1, 1, 1]
    assert all(r["report"]["schema_version"] == 2 for r in lines)
    assert lines[0]["report"]["loss"]["source"] == "compiled"
    first = [ln for ln in stream.getvalue().splitlines() if "dead_units" in ln]
    assert len(first) == 1, stream.getvalue()
    assert "step 0" in first[0]
    assert len(callback.reports) == 6
    # the weights moved between records, and a second fit appends to the file
    assert lines[0]["report"]["layers"][2]["weights"]["kernel"]["norm"] != \
        lines[-1]["report"]["layers"][2]["weights"]["kernel"]["norm"]
    model.fit(x[:224], y[:224], batch_size=32, epochs=1, verbose=0, callbacks=[callback])
    more = (tmp_path / "g.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in more][-1] == 42


def test_diff_of_two_reports(tfk: Any, tmp_path: Path) -> None:
    _, keras = tfk
    model = mlp(keras)
    a = gradinspect.inspect(model, X)
    b = gradinspect.inspect(model, X * 10)
    d = diff_reports(a.to_dict(), b.to_dict())
    layer = next(ly for ly in d.layers if ly.path == "logits")
    change = next(c for c in layer.figures if c.name == "grad_kernel_norm")
    assert change.ratio == pytest.approx(b["logits"].grads.kernel.norm /
                                         a["logits"].grads.kernel.norm)
    assert change.log10_change == pytest.approx(np.log10(change.ratio))
    other = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="hidden"),
                              keras.layers.Dense(2, name="new")])
    c = diff_reports(a.to_dict(), gradinspect.inspect(other, X).to_dict())
    status = {ly.path: ly.status for ly in c.layers}
    assert status == {"hidden": "both", "mid": "removed", "logits": "removed", "new": "added"}
    (tmp_path / "a.json").write_text(a.to_json())
    (tmp_path / "b.json").write_text(b.to_json())
    table = runner.invoke(cli.diff_app, [str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    assert table.exit_code == 0


def test_diff_cli_reads_jsonl_steps_and_fails_cleanly(tfk: Any, tmp_path: Path) -> None:
    import subprocess
    import sys

    _, keras = tfk
    model = mlp(keras)
    lines = [json.dumps({"epoch": 0, "step": s, "batch": 0,
                         "report": gradinspect.inspect(model, X * (1 + s)).to_dict()})
             for s in (0, 100)]
    (tmp_path / "g.jsonl").write_text("\n".join(lines) + "\n")
    base = [sys.executable, "-m", "gradinspect", "diff"]
    ok = subprocess.run([*base, f"{tmp_path}/g.jsonl:0", f"{tmp_path}/g.jsonl:last", "--json"],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["diff_schema_version"] == 1
    assert doc["a"].endswith(":0")
    assert doc["b"].endswith(":100")
    assert {ly["path"] for ly in doc["layers"]} == {"hidden", "mid", "logits"}
    missing = subprocess.run([*base, f"{tmp_path}/g.jsonl:5", f"{tmp_path}/g.jsonl:0"],
                             capture_output=True, text=True, check=False)
    assert missing.returncode == ExitStatus.DATA_ERROR
    assert "steps recorded: 0, 100" in missing.stderr
    with pytest.raises(DataError, match="many reports"):
        read_report(str(tmp_path / "g.jsonl"))
    (tmp_path / "bad.json").write_text('{"hello": 1}')
    with pytest.raises(DataError, match="not a gradinspect report"):
        diff_reports(json.loads((tmp_path / "bad.json").read_text()), {})


def test_flow_view_and_plot(tfk: Any, tmp_path: Path,
                            hide_module: Callable[[str], None]) -> None:
    _, keras = tfk
    model = mlp(keras, dead_bias=-50.0)
    report = gradinspect.inspect(model, X)
    text = io.StringIO()
    Console(file=text, width=100).print(flow_renderable(report))
    out = text.getvalue()
    for layer in ("hidden", "mid", "logits"):
        assert layer in out
    assert "·" in out or "!" in out  # the dead units are marked
    write_plot(report, tmp_path / "flow.png")
    assert (tmp_path / "flow.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    hide_module("matplotlib")
    with pytest.raises(UsageError, match="needs matplotlib") as caught:
        write_plot(report, tmp_path / "nope.png")
    assert "pip install 'gradinspect[plot]'" in caught.value.one_line()


def test_layer_focus_and_values(tfk: Any, tmp_path: Path) -> None:
    tf, keras = tfk
    model = mlp(keras)
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", X)
    args = [str(tmp_path / "m.keras"), str(tmp_path / "x.npy")]
    result = runner.invoke(cli.app, [*args, "--layer", "m*", "--values", "--json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [ly["path"] for ly in doc["layers"]] == ["mid"]
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(model(X))
    kernel = model.get_layer("mid").kernel
    np.testing.assert_allclose(np.array(doc["layers"][0]["values"]["kernel"]),
                               tape.gradient(total, kernel).numpy(), rtol=1e-5, atol=1e-6)
    assert np.array(doc["layers"][0]["values"]["input"]).shape == (32, 16)
    plain = json.loads(runner.invoke(cli.app, [*args, "--json"]).stdout)
    assert "values" not in plain["layers"][0]
    table = runner.invoke(cli.app, [*args, "--layer", "logits", "--values", "--flow"])
    assert "logits ∂L/∂W (8×3)" in table.stdout
    assert "gradient flow" in table.stdout
    none = runner.invoke(cli.app, [*args, "--layer", "conv*"])
    assert none.exit_code == ExitStatus.USAGE
    assert "hidden (dense), mid (dense), logits (dense)" in none.stderr


def _as_schema_1(doc: dict[str, Any]) -> dict[str, Any]:
    """A schema-2 report of a Dense-only model written back in schema 1's layout, as 0.1
    wrote it (no kind, params, coverage, variable paths or grad_norm keys)."""
    old = {k: v for k, v in doc.items() if k != "coverage"}
    old["schema_version"] = 1
    old["layers"] = []
    for layer in doc["layers"]:
        assert layer["kind"] == "dense"
        entry = {k: v for k, v in layer.items()
                 if k not in ("kind", "params", "grad_norm", "weight_grad_norm")}
        entry["weights"] = {k: None if w is None else {"shape": w["shape"], "norm": w["norm"]}
                            for k, w in layer["weights"].items()}
        old["layers"].append(entry)
    return old


def test_diff_reads_schema_1_and_schema_2_reports(tfk: Any) -> None:
    _, keras = tfk
    model = mlp(keras)
    before = gradinspect.inspect(model, X).to_dict()
    after = gradinspect.inspect(model, X * 3).to_dict()
    mixed = diff_reports(_as_schema_1(before), after)
    same = diff_reports(before, after)
    assert mixed.layers == same.layers
    for layer in same.layers:
        figures = {f.name: f for f in layer.figures}
        kernel, weight = figures["grad_kernel_norm"], figures["grad_weight_norm"]
        assert weight.a == kernel.a  # Dense: ||dL/dW|| is the kernel's
        assert weight.b == kernel.b
        assert weight.a is not None
    with pytest.raises(DataError, match="schema 3 is not supported"):
        diff_reports({**before, "schema_version": 3}, after)


def test_diff_reads_record_indices(tfk: Any, tmp_path: Path) -> None:
    _, keras = tfk
    model = mlp(keras)
    lines = [json.dumps({"epoch": 0, "step": s, "batch": 0,
                         "report": gradinspect.inspect(model, X * (1 + s)).to_dict()})
             for s in (0, 50, 100)]
    (tmp_path / "g.jsonl").write_text("\n".join(lines) + "\n")
    assert read_report(f"{tmp_path}/g.jsonl:#0")[0].endswith(":0")
    assert read_report(f"{tmp_path}/g.jsonl:#1")[0].endswith(":50")
    assert read_report(f"{tmp_path}/g.jsonl:#-1")[0].endswith(":100")
    with pytest.raises(DataError, match=r"no record #3") as caught:
        read_report(f"{tmp_path}/g.jsonl:#3")
    assert "3 records" in caught.value.one_line()
    with pytest.raises(DataError, match="record index is #N"):
        read_report(f"{tmp_path}/g.jsonl:#x")


def test_callback_never_truncates_silently(tfk: Any, tmp_path: Path) -> None:
    _, keras = tfk
    model = mlp(keras)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    log = tmp_path / "g.jsonl"
    log.write_text('{"epoch": 0, "step": 0, "batch": 0, "report": {}}\n')
    with pytest.raises(FileExistsError, match="overwrite=True"):
        gradinspect.GradInspectCallback(X, Y, path=log)
    with pytest.raises(ValueError, match="contradict"):
        gradinspect.GradInspectCallback(X, Y, path=log, append=True, overwrite=True)
    stream = io.StringIO()
    appended = gradinspect.GradInspectCallback(X, Y, path=log, every_n_batches=1,
                                               append=True, stream=stream)
    model.fit(X, Y, batch_size=32, epochs=1, verbose=0, callbacks=[appended])
    lines = log.read_text().splitlines()
    assert len(lines) == 2  # the old record kept, one new
    assert lines[0] == '{"epoch": 0, "step": 0, "batch": 0, "report": {}}'
    # the epoch on stderr is the one in the file
    assert json.loads(lines[1])["epoch"] == 0
    assert all(" epoch 0 " in line for line in stream.getvalue().splitlines())
    replaced = gradinspect.GradInspectCallback(X, Y, path=log, every_n_batches=1,
                                               overwrite=True, stream=io.StringIO())
    model.fit(X, Y, batch_size=32, epochs=1, verbose=0, callbacks=[replaced])
    assert len(log.read_text().splitlines()) == 1


def test_report_str_and_summary(tfk: Any) -> None:
    _, keras = tfk
    report = gradinspect.inspect(mlp(keras, dead_bias=-50.0), X)
    text = str(report)
    assert text.startswith("gradinspect ")
    assert "\x1b[" not in text  # plain text
    assert max(len(line) for line in text.splitlines()) <= 100
    line = report.summary()
    assert "\n" not in line
    assert "3 entries" in line
    assert "fix first: dead_units at hidden" in line
    f = next(f for f in report.findings() if f.code == "dead_units")
    assert f.layer == "hidden"  # every finding says which entry it belongs to


def test_plot_bars_grow_with_the_gradient(tfk: Any) -> None:
    from gradinspect.render.flow import flow_figure, flow_values

    _, keras = tfk
    report = gradinspect.inspect(mlp(keras), X)
    fig = flow_figure(report)
    ax = fig.axes[0]
    n = len(report.layers)
    widths = [p.get_width() for p in ax.patches[:n]]  # the dL/dW bars, forward order
    logs = [w for _, w, _ in flow_values(report)]
    assert all(width > 0 for width in widths)
    order = np.argsort(logs)
    assert list(np.argsort(widths)) == list(order)  # longer bar, larger gradient
    lefts = {p.get_x() for p in ax.patches[:n]}
    assert len(lefts) == 1  # one common floor


def test_diff_table_is_readable_at_100_columns(tfk: Any) -> None:
    from gradinspect.render.diff import diff_renderable

    _, keras = tfk
    a = gradinspect.inspect(mlp(keras), X).to_dict()
    b = gradinspect.inspect(mlp(keras, dead_bias=-50.0), X * 1e-4).to_dict()
    result = diff_reports(a, b, "a.json", "b.json")
    out = io.StringIO()
    Console(file=out, width=100, color_system=None).print(diff_renderable(result))
    text = out.getvalue()
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 100
    rows = [line for line in text.splitlines() if line.startswith(" hidden ")]
    assert len(rows) == 1  # one line per layer
    added = [code for ly in result.layers for code in ly.findings_added]
    assert added
    for code in added:
        assert f"+{code}" in text  # in full, not cut
