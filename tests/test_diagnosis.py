"""Verdicts a user can act on: no false alarms on healthy models, causes linked to their
consequences, the forward signal and the data. Each planted fault is checked against an
independent computation of what makes it a fault (numpy statistics of the data, Keras's own
intermediate outputs, the crossentropy-of-logits formula)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

import gradinspect
from gradinspect.records import Finding, Severity
from gradinspect.render.table import render_table
from gradinspect.report import Report

RNG = np.random.default_rng(15)


def _all(report: Report) -> list[Finding]:
    return list(report.findings())


def _codes(report: Report) -> dict[str, list[Finding]]:
    out: dict[str, list[Finding]] = {}
    for f in _all(report):
        out.setdefault(f.code, []).append(f)
    return out


def _one(report: Report, code: str, layer: str | None = None) -> Finding:
    found = [f for f in _all(report) if f.code == code and (layer is None or f.layer == layer)]
    assert found, f"no {code} at {layer}: {[(f.code, f.layer) for f in _all(report)]}"
    return found[0]


def _classifier(keras: Any, act: str, units: int, seed: int = 0) -> Any:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="tanh"),
                             keras.layers.Dense(units, activation=act, name="out")])


# ------------------------------------------------------------- --verify on kept logits

VERIFY_CASES = [
    ("softmax", 3, "categorical_crossentropy", {}),
    ("softmax", 3, "categorical_crossentropy", {"label_smoothing": 0.1}),
    ("softmax", 3, "sparse_categorical_crossentropy", {}),
    ("sigmoid", 1, "binary_crossentropy", {}),
    ("sigmoid", 3, "binary_crossentropy", {"label_smoothing": 0.2}),
    ("sigmoid", 3, "categorical_crossentropy", {}),
]


@pytest.mark.parametrize(("act", "units", "loss", "kwargs"), VERIFY_CASES)
def test_verify_passes_healthy_classifiers(tfk: Any, act: str, units: int, loss: str,
                                           kwargs: dict[str, float]) -> None:
    """Keras computes these losses from the logits the output keeps: --verify follows that
    path instead of reporting a mismatch (it did: worst relative error inf)."""
    _, keras = tfk
    model = _classifier(keras, act, units)
    fn = {"categorical_crossentropy": keras.losses.CategoricalCrossentropy,
          "sparse_categorical_crossentropy": keras.losses.SparseCategoricalCrossentropy,
          "binary_crossentropy": keras.losses.BinaryCrossentropy}[loss](**kwargs)
    model.compile(loss=fn)
    x = RNG.standard_normal((48, 8)).astype(np.float32)
    if loss.startswith("sparse"):
        y = RNG.integers(0, units, 48)
    elif units == 1:
        y = RNG.integers(0, 2, 48).astype(np.float32)  # (N,) for an (N, 1) output, as fit takes
    elif loss == "binary_crossentropy":
        y = RNG.integers(0, 2, (48, units)).astype(np.float32)
    else:
        y = np.eye(units, dtype=np.float32)[RNG.integers(0, units, 48)]
    report = gradinspect.inspect(model, x, y, verify=True)
    for layer in report.layers:
        assert layer.verify is not None, layer.path
        assert layer.verify.ok, (layer.path, layer.verify)
    assert "gradient_mismatch" not in _codes(report)
    assert report.checks.verify_note is not None
    assert "kept logits" in report.checks.verify_note
    # the closed form is a real check: the tape's delta of the output equals (p - y) / N ...
    assert report["out"].verify is not None
    assert report["out"].verify.worst_rel_error < 1e-4


def test_verify_on_kept_logits_still_catches_a_wrong_output_gradient(tfk: Any) -> None:
    tf, keras = tfk

    @tf.custom_gradient
    def doubled(x: Any) -> Any:
        return tf.identity(x), lambda dy: 2.0 * dy  # wrong on purpose

    class Doubled(keras.layers.Dense):  # type: ignore[misc]
        def call(self, inputs: Any) -> Any:
            return self.activation(doubled(tf.matmul(inputs, self.kernel) + self.bias))

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="tanh"),
                              Doubled(3, activation="softmax", name="out")])
    model.compile(loss="categorical_crossentropy")
    x = RNG.standard_normal((32, 8)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[RNG.integers(0, 3, 32)]
    report = gradinspect.inspect(model, x, y, verify=True)
    assert report["out"].verify is not None
    assert not report["out"].verify.ok
    assert _one(report, "gradient_mismatch", "out").severity is Severity.ERROR


# ------------------------------------------------------------- softmax with labels


def _confident_classifier(keras: Any) -> tuple[Any, np.ndarray, np.ndarray]:
    model = _classifier(keras, "softmax", 4, seed=3)
    w, b = model.get_layer("out").get_weights()
    model.get_layer("out").set_weights([w * 60.0, b])
    x = RNG.standard_normal((200, 8)).astype(np.float32)
    predicted = np.argmax(np.asarray(model(x)), axis=1)
    model.compile(loss="sparse_categorical_crossentropy")
    return model, x, predicted


def test_confident_and_right_is_not_a_warning(tfk: Any) -> None:
    _, keras = tfk
    model, x, predicted = _confident_classifier(keras)
    report = gradinspect.inspect(model, x, predicted)
    f = _one(report, "softmax_saturated", "out")
    assert f.severity is Severity.INFO
    assert f.figures["confident_wrong_fraction"] == 0.0
    assert report.worst_severity() in (None, Severity.INFO)


def test_confident_and_wrong_is_the_warning(tfk: Any) -> None:
    _, keras = tfk
    model, x, predicted = _confident_classifier(keras)
    p = np.asarray(model(x))
    labels = predicted.copy()
    flip = np.arange(0, 200, 5)  # 20 % of the samples get another class
    labels[flip] = (labels[flip] + 1) % 4
    report = gradinspect.inspect(model, x, labels)
    f = _one(report, "softmax_saturated", "out")
    assert f.severity is Severity.WARNING
    expected = np.mean((p.max(axis=1) >= 0.99) & (np.argmax(p, axis=1) != labels))
    assert f.figures["confident_wrong_fraction"] == pytest.approx(expected)
    assert "confidently wrong" in f.message


# ------------------------------------------------------------- rounding, NaN


def test_no_finding_whose_figures_round_to_zero(tfk: Any) -> None:
    _, keras = tfk
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(64, activation="tanh",
                                                                   name="t"),
                              keras.layers.Dense(1)])
    x = RNG.standard_normal((256, 4)).astype(np.float32)
    w, b = model.get_layer("t").get_weights()
    z = x @ w + b
    x[0] *= 4.0 / max(float(np.abs(z[0]).max()), 1e-3) * 1.2  # a few entries past |z| = 3
    report = gradinspect.inspect(model, x)
    activity = report["t"].activity
    assert activity is not None
    assert activity.low_grad_fraction is not None
    assert 0 < activity.low_grad_fraction < 0.01
    assert "saturated_units" not in _codes(report)
    for f in _all(report):
        assert " 0%" not in f.message, f.message
        assert "0/" not in f.message, f.message


def test_nan_weights_are_the_root_not_dead_units(tfk: Any) -> None:
    """A diverged run: every weight NaN. The cause leads, the NaN gradients follow from it and
    no unit is called dead or saturated on NaN pre-activations."""
    _, keras = tfk
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)),
                              keras.layers.Dense(8, activation="relu", name="a"),
                              keras.layers.Dense(8, activation="sigmoid", name="b"),
                              keras.layers.Dense(1, name="c")])
    for layer in model.layers:
        layer.set_weights([np.full_like(w, np.nan) for w in layer.get_weights()])
    report = gradinspect.inspect(model, RNG.standard_normal((32, 6)).astype(np.float32))
    codes = _codes(report)
    assert "dead_units" not in codes
    assert "saturated_units" not in codes
    first = _one(report, "nonfinite_weights", "a")
    assert first.root
    assert first.severity is Severity.ERROR
    for f in codes["nan_gradient"]:
        assert f.caused_by == ("nonfinite_weights@a",)
        assert not f.root
    table = render_table(report)
    assert table.index("diagnosis") < table.index("nan_gradient")
    assert table.index("nonfinite_weights") < table.index("nan_gradient")


# ------------------------------------------------------------- chains and hints


def test_a_chain_of_saturated_layers_is_one_root_and_one_line_of_consequences(
        tfk: Any) -> None:
    _, keras = tfk
    keras.utils.set_random_seed(0)
    layers = [keras.layers.Dense(8, activation="sigmoid", name=f"s{k}") for k in range(10)]
    model = keras.Sequential([keras.Input((8,)), *layers, keras.layers.Dense(1, name="head")])
    for layer in layers:
        w, b = layer.get_weights()
        layer.set_weights([w * 40.0, b])
    report = gradinspect.inspect(model, RNG.standard_normal((64, 8)).astype(np.float32) * 3)
    saturated = [f for f in _all(report) if f.code == "saturated_units"
                 and f.severity is Severity.WARNING]
    assert len(saturated) >= 5
    # one cause, one root: the first saturated layer feeds the rest, which link to it
    roots = [f.layer for f in saturated if f.root]
    assert roots == ["s0"]
    assert all(f.caused_by == ("saturated_units@s0",) for f in saturated if f.root is False)
    table = render_table(report, width=100)
    assert "s1 … s9" in table
    assert "(9 layers)" in table
    explains = re.search(r"explains (\d+) other findings", table)
    assert explains is not None
    assert int(explains.group(1)) >= 9, table  # the nine, and what they cut below them
    assert sum(f.code == "saturated_units" for f in report.findings()) == len(
        [ly for ly in report.layers if any(f.code == "saturated_units" for f in ly.warnings)])


def test_hints_do_not_recommend_what_the_model_does(tfk: Any) -> None:
    """An all-relu model with BatchNormalization whose first layers barely get a gradient: the
    vanishing hint does not say "use relu" or "add BatchNormalization"."""
    _, keras = tfk
    keras.utils.set_random_seed(0)
    L = keras.layers
    model = keras.Sequential([keras.Input((6,)), L.Dense(8, activation="relu", name="r0"),
                              L.BatchNormalization(name="bn"),
                              L.Dense(8, activation="relu", name="r1"),
                              L.Dense(1, name="head")])
    w, b = model.get_layer("r1").get_weights()
    model.get_layer("r1").set_weights([w * 1e-6, b + 1.0])
    report = gradinspect.inspect(model, RNG.standard_normal((64, 6)).astype(np.float32))
    vanishing = _codes(report).get("vanishing_gradient", [])
    assert vanishing
    for f in vanishing:
        assert "relu-family" not in f.hint, f.hint
        assert "BatchNormalization" not in f.hint, f.hint


# ------------------------------------------------------------- forward signal and data


def test_forward_rms_and_data_stats_match_numpy(tfk: Any) -> None:
    _, keras = tfk
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, activation="tanh",
                                                                   name="a"),
                              keras.layers.Dense(2, name="b")])
    x = (RNG.standard_normal((300, 6)) * 2 + 0.5).astype(np.float32)
    report = gradinspect.inspect(model, x, batch_size=128)
    stats = report.data.arrays[0].stats
    assert stats is not None
    assert stats.min == pytest.approx(float(x.min()))
    assert stats.max == pytest.approx(float(x.max()))
    assert stats.mean == pytest.approx(float(x.astype(np.float64).mean()), rel=1e-5)
    assert stats.std == pytest.approx(float(x.astype(np.float64).std()), rel=1e-5)
    hidden = np.asarray(model.get_layer("a")(x), dtype=np.float64)
    out = np.asarray(model(x), dtype=np.float64)
    a, b = report["a"].forward, report["b"].forward
    assert a is not None
    assert b is not None
    assert a.input_rms == pytest.approx(np.sqrt(np.mean(x.astype(np.float64) ** 2)), rel=1e-5)
    assert a.output_rms == pytest.approx(np.sqrt(np.mean(hidden ** 2)), rel=1e-5)
    assert b.input_rms == pytest.approx(np.sqrt(np.mean(hidden ** 2)), rel=1e-5)
    assert b.output_rms == pytest.approx(np.sqrt(np.mean(out ** 2)), rel=1e-5)
    assert a.moving_stats_rms is None
    data = report.to_dict()["data"]["arrays"][0]["stats"]
    assert set(data) == {"min", "max", "mean", "std"}
    assert set(report.to_dict()["layers"][0]["forward"]) == {"input_rms", "output_rms",
                                                            "moving_stats_rms"}


def test_unscaled_pixels_are_named_and_explain_the_saturation(tfk: Any) -> None:
    _, keras = tfk
    keras.utils.set_random_seed(0)
    L = keras.layers
    x = RNG.integers(0, 256, (64, 12)).astype(np.float32)
    model = keras.Sequential([keras.Input((12,)), L.Dense(8, activation="sigmoid", name="s"),
                              L.Dense(1, name="head")])
    report = gradinspect.inspect(model, x)
    f = _one(report, "unscaled_input")
    assert f.layer is None
    assert f.root
    assert f.severity is Severity.WARNING
    assert "255" in f.hint
    assert f.figures["max"] == float(x.max())
    sat = _one(report, "saturated_units", "s")
    assert "unscaled_input@model" in sat.caused_by
    scaled = keras.Sequential([keras.Input((12,)), L.Rescaling(1 / 255),
                               L.Dense(8, activation="sigmoid"), L.Dense(1)])
    assert "unscaled_input" not in _codes(gradinspect.inspect(scaled, x))
    standard = (x - x.mean(axis=0)) / x.std(axis=0)
    assert "unscaled_input" not in _codes(gradinspect.inspect(model, standard))


def test_vanishing_activations_where_the_signal_collapses(tfk: Any) -> None:
    _, keras = tfk
    keras.utils.set_random_seed(0)
    L = keras.layers
    model = keras.Sequential([keras.Input((16,)), L.Dense(16, name="d0"),
                              L.Dense(16, name="tiny"), L.Dense(16, name="d2"),
                              L.Dense(1, name="head")])
    w, b = model.get_layer("tiny").get_weights()
    model.get_layer("tiny").set_weights([w * 1e-5, b])
    x = RNG.standard_normal((64, 16)).astype(np.float32)
    report = gradinspect.inspect(model, x)
    f = _one(report, "vanishing_activations")
    assert f.layer == "d2"
    assert f.root
    d0 = np.asarray(model.get_layer("d0")(x), dtype=np.float64)
    tiny = np.asarray(model.get_layer("tiny")(d0), dtype=np.float64)
    assert f.figures["input_rms"] == pytest.approx(np.sqrt(np.mean(tiny ** 2)), rel=1e-4)
    for v in _codes(report).get("vanishing_gradient", []):
        assert v.caused_by, v  # d0: the backward collapse at tiny; d2, head: the forward one
    assert _one(report, "signal_collapse").layer == "tiny"


def _untrained_cnn(keras: Any) -> Any:
    keras.utils.set_random_seed(0)
    return keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), alpha=0.35,
                                          classes=4)


@pytest.fixture(scope="module")
def untrained(tfk: Any) -> tuple[Any, np.ndarray, np.ndarray]:
    _, keras = tfk
    model = _untrained_cnn(keras)
    x = RNG.standard_normal((16, 32, 32, 3)).astype(np.float32)
    y = np.eye(4, dtype=np.float32)[RNG.integers(0, 4, 16)]
    model.compile(loss="categorical_crossentropy")
    return model, x, y


def test_untrained_batchnorm_is_the_root_on_mobilenet(untrained: Any) -> None:
    """Untrained MobileNetV2 in inference mode: the signal collapses through BatchNormalization
    layers still at their initial statistics (head input ~1e-12). The first of them is the
    root; the collapse and the vanishing gradients follow from it."""
    model, x, y = untrained
    report = gradinspect.inspect(model, x, y)
    bns = _codes(report)["untrained_batchnorm"]
    roots = [f for f in bns if f.root]
    assert len(roots) == 1
    root = roots[0]
    assert root.figures["initial_values"] is True
    assert "--training" in root.hint
    for f in bns:
        assert f is root or f.caused_by == (root.id,)
    collapse = _one(report, "vanishing_activations")
    assert root.id in collapse.caused_by
    for f in _codes(report).get("vanishing_gradient", []):
        assert not f.root, f
    # the figure is the data's own misfit: recompute it for the root from Keras's tensors
    layer = model.get_layer(root.layer)
    probe = model.__class__(model.input, layer.input)
    a = np.asarray(probe(x), dtype=np.float64)
    m2 = ((a - np.asarray(layer.moving_mean)) ** 2).reshape(-1, a.shape[-1]).mean(axis=0) / (
        np.asarray(layer.moving_variance) + layer.epsilon)
    assert root.figures["moving_stats_rms"] == pytest.approx(np.sqrt(np.median(m2)), rel=1e-3)
    table = render_table(report, width=100)
    assert table.index("untrained_batchnorm") < table.index("vanishing_activations")


def test_untrained_batchnorm_judged_by_effect_not_initial_values(untrained: Any,
                                                                  tfk: Any) -> None:
    model, x, y = untrained
    assert "untrained_batchnorm" not in _codes(gradinspect.inspect(model, x, y, training=True))
    _, keras = tfk
    once = _untrained_cnn(keras)
    once(x, training=True)  # one training-mode call: moving statistics moved 1 % of the way
    report = gradinspect.inspect(once, x, y)
    found = _codes(report)["untrained_batchnorm"]
    assert found
    assert not any(f.figures["initial_values"] for f in found)


def test_calibrated_batchnorm_is_quiet(tfk: Any) -> None:
    _, keras = tfk
    keras.utils.set_random_seed(0)
    L = keras.layers
    model = keras.Sequential([keras.Input((6,)), L.Dense(8, name="d"),
                              L.BatchNormalization(name="bn"), L.Dense(1, name="head")])
    x = (RNG.standard_normal((128, 6)) * 30 + 5).astype(np.float32)
    h = np.asarray(model.get_layer("d")(x), dtype=np.float64)
    bn = model.get_layer("bn")
    gamma, beta, _, _ = bn.get_weights()
    bn.set_weights([gamma, beta, h.mean(axis=0), h.var(axis=0)])
    report = gradinspect.inspect(model, x)
    fwd = report["bn"].forward
    assert fwd is not None
    assert fwd.moving_stats_rms == pytest.approx(1.0, rel=1e-3)
    assert "untrained_batchnorm" not in _codes(report)


# ------------------------------------------------------------- per-sample outliers


def test_outliers_found_when_most_samples_have_zero_gradient(tfk: Any) -> None:
    """Confident and right on all but two samples: those two carry the whole gradient and are
    the outliers (the median absolute deviation is 0 here)."""
    _, keras = tfk
    model, x, predicted = _confident_classifier(keras)
    p = np.asarray(model(x))
    confident = np.flatnonzero(p.max(axis=1) > 0.99999)
    labels = predicted.copy()
    wrong = confident[:2]
    labels[wrong] = (labels[wrong] + 1) % 4
    report = gradinspect.inspect(model, x, labels, per_sample=True)
    ps = report["out"].per_sample
    assert ps is not None
    assert set(wrong.tolist()) <= set(ps.outliers), (ps, wrong)


# ------------------------------------------------------------- healthy models stay quiet


def test_a_trained_classifier_gets_no_warning(tfk: Any) -> None:
    """Trained with fit to ~100 % accuracy on its data: confident and right, --verify passes,
    nothing at warning or above (a healthy model must pass ``--fail-on warning``)."""
    _, keras = tfk
    keras.utils.set_random_seed(4)
    rng = np.random.default_rng(4)
    centres = rng.standard_normal((3, 8)) * 4
    ids = rng.integers(0, 3, 600)
    x = centres[ids] + rng.standard_normal((600, 8))
    x = ((x - x.mean(axis=0)) / x.std(axis=0)).astype(np.float32)
    model = _classifier(keras, "softmax", 3, seed=4)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(x, ids, epochs=15, batch_size=64, verbose=0)
    assert history.history["accuracy"][-1] > 0.98
    report = gradinspect.inspect(model, x, ids, verify=True)
    assert report.worst_severity() in (None, Severity.INFO), [
        (f.code, f.layer, f.severity) for f in report.findings()]
    for layer in report.layers:
        assert layer.verify is not None
        assert layer.verify.ok, (layer.path, layer.verify)


def test_an_lstm_with_a_sigmoid_head_passes_verify(tfk: Any) -> None:
    _, keras = tfk
    keras.utils.set_random_seed(5)
    L = keras.layers
    model = keras.Sequential([keras.Input((7,), dtype="int32"), L.Embedding(50, 8),
                              L.LSTM(6), L.Dense(1, activation="sigmoid", name="out")])
    model.compile(loss="binary_crossentropy")
    x = RNG.integers(0, 50, (40, 7)).astype(np.int32)
    y = RNG.integers(0, 2, 40).astype(np.float32)  # (N,) labels for the (N, 1) output
    report = gradinspect.inspect(model, x, y, verify=True, gradcheck=3, seed=0)
    out = report["out"]
    assert out.verify is not None
    assert out.verify.ok, out.verify
    assert out.gradcheck is not None
    assert out.gradcheck.ok
    assert "gradient_mismatch" not in _codes(report)
