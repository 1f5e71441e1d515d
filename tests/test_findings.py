"""A planted model for every finding code: each asserts its code, severity and the figures.
A healthy model asserts no finding at warning or above."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import gradinspect
from gradinspect.diagnose import CODES
from gradinspect.records import Finding, Severity
from gradinspect.report import Report

RNG = np.random.default_rng(11)
X = RNG.standard_normal((64, 6)).astype(np.float32)
SEEN: set[str] = set()


def find(report: Report, code: str, where: str | None = None) -> Finding:
    pool = report.warnings if where == "model" else tuple(
        f for layer in report.layers if where in (None, layer.path) for f in layer.warnings
    )
    for f in pool:
        if f.code == code:
            SEEN.add(code)
            return f
    got = [(ly.path, f.code) for ly in report.layers for f in ly.warnings]
    got += [("model", f.code) for f in report.warnings]
    raise AssertionError(f"no {code} at {where}; found {got}")


def seq(keras: Any, *layers: Any, features: int = 6) -> Any:
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((features,)), *layers])


def scale_weights(layer: Any, factor: float = 1.0, bias: float | None = None) -> None:
    w, *rest = layer.get_weights()
    if rest and bias is not None:
        rest = [np.full_like(rest[0], bias)]
    layer.set_weights([w * factor, *rest])


def test_saturated_sigmoid_from_large_weights(tfk: Any) -> None:
    _, keras = tfk
    L = keras.layers
    model = seq(keras, L.Dense(8, activation="sigmoid", name="sat"), L.Dense(1))
    scale_weights(model.get_layer("sat"), 40.0)
    f = find(gradinspect.inspect(model, X), "saturated_units", "sat")
    assert f.severity is Severity.WARNING
    assert f.figures["entries_fraction"] > 0.5
    assert f.figures["activation"] == "sigmoid"
    assert f.figures["source"] == "layer"


def test_saturated_tanh_after_batchnorm_is_attributed_to_the_dense_row(tfk: Any) -> None:
    _, keras = tfk
    L = keras.layers
    model = seq(keras, L.Dense(8, name="pre"), L.BatchNormalization(name="bn"),
                L.Activation("tanh", name="act"), L.Dense(1))
    bn = model.get_layer("bn")
    gamma, beta, mean, var = bn.get_weights()
    bn.set_weights([gamma * 60, beta, mean, var])
    report = gradinspect.inspect(model, X)
    f = find(report, "saturated_units", "pre")
    assert f.severity is Severity.WARNING
    assert f.figures["source"] == "act"
    assert f.figures["activation"] == "tanh"
    activity = report["pre"].activity
    assert activity is not None
    assert activity.source == "act"
    assert "act" in f.message


def test_dead_relu_from_large_negative_bias(tfk: Any) -> None:
    _, keras = tfk
    L = keras.layers
    model = seq(keras, L.Dense(6, activation="tanh"), L.Dense(16, activation="relu",
                                                              name="dead"), L.Dense(1))
    scale_weights(model.get_layer("dead"), bias=-100.0)
    report = gradinspect.inspect(model, X)
    f = find(report, "dead_units", "dead")
    # the root cause, as bad as the worst finding it explains (zero gradients: errors)
    assert f.root
    assert f.caused_by == ()
    assert f.severity is Severity.ERROR
    assert f.figures["units"] == 16
    assert f.figures["entries_fraction"] == 1.0
    for layer in report.layers[:2]:  # the dead layer and the tanh layer before it
        z = find(report, "zero_gradient", layer.path)
        assert z.severity is Severity.ERROR
        assert z.caused_by == ("dead_units@dead",)
        assert not z.root
    collapse = find(report, "signal_collapse", "model")
    assert collapse.layer == "dead"
    assert collapse.caused_by == ("dead_units@dead",)
    assert collapse.figures["layer"] == "dead"
    assert collapse.figures["backward_gain"] == 0.0


def test_all_dead_means_constant_loss(tfk: Any) -> None:
    _, keras = tfk
    model = seq(keras, keras.layers.Dense(4, activation="relu", name="only"))
    scale_weights(model.get_layer("only"), bias=-100.0)
    report = gradinspect.inspect(model, X)
    assert find(report, "constant_loss", "model").severity is Severity.ERROR
    assert find(report, "zero_gradient", "only").figures["kernel_norm"] == 0.0


def test_softmax_output_under_sum_loss_is_constant(tfk: Any) -> None:
    _, keras = tfk
    L = keras.layers
    model = seq(keras, L.Dense(5, activation="relu"), L.Dense(3, activation="softmax",
                                                             name="probs"))
    report = gradinspect.inspect(model, X)
    f = find(report, "constant_loss", "model")
    assert "softmax" in f.message
    assert "categorical_crossentropy" in f.hint
    for layer in report.layers:
        assert find(report, "zero_gradient", layer.path).severity is Severity.ERROR
    assert not [f for ly in report.layers for f in ly.warnings if f.code == "vanishing_gradient"]
    mean = gradinspect.inspect(model, X, loss="mean")
    find(mean, "constant_loss", "model")


def test_softmax_saturated_inside_the_model(tfk: Any) -> None:
    _, keras = tfk
    L = keras.layers
    model = seq(keras, L.Dense(4, activation="softmax", name="gate"), L.Dense(1))
    scale_weights(model.get_layer("gate"), 80.0)
    report = gradinspect.inspect(model, X)
    f = find(report, "softmax_saturated", "gate")
    assert f.severity is Severity.WARNING
    assert f.figures["confident_fraction"] >= 0.5
    assert not report.warnings or all(w.code != "constant_loss" for w in report.warnings)


def test_nan_from_inf_in_weights(tfk: Any) -> None:
    _, keras = tfk
    L = keras.layers
    model = seq(keras, L.Dense(3, activation="tanh", name="broken"), L.Dense(1))
    w, b = model.get_layer("broken").get_weights()
    w[0, 0] = np.inf
    model.get_layer("broken").set_weights([w, b])
    report = gradinspect.inspect(model, X)
    assert find(report, "nonfinite_weights", "broken").severity is Severity.ERROR
    nan = find(report, "nan_gradient", "broken")
    assert nan.severity is Severity.ERROR
    assert nan.figures["gradient"] == "dL/dinput"
    assert report["broken"].grads.input.nan > 0
    assert report.worst_severity() is Severity.ERROR


def test_inf_gradient_from_overflow(tfk: Any) -> None:
    _, keras = tfk
    model = seq(keras, keras.layers.Dense(1, name="lin", kernel_initializer="ones"),
                features=1)
    x = np.full((4, 1), 3e38, np.float32)
    report = gradinspect.inspect(model, x)
    f = find(report, "inf_gradient", "lin")
    assert f.severity is Severity.ERROR
    assert report["lin"].grads.kernel.inf == 1


def test_vanishing_through_deep_sigmoid_stack(tfk: Any) -> None:
    _, keras = tfk
    L = keras.layers
    model = seq(keras, *[L.Dense(8, activation="sigmoid", name=f"s{i}") for i in range(12)],
                L.Dense(1, name="head"))
    report = gradinspect.inspect(model, X)
    f = find(report, "vanishing_gradient", "s0")
    assert f.severity is Severity.WARNING
    assert f.figures["relative"] < 1e-4
    assert not [w for w in report["head"].warnings if w.code == "vanishing_gradient"]


def test_exploding_through_large_weights(tfk: Any) -> None:
    _, keras = tfk
    L = keras.layers
    model = seq(keras, *[L.Dense(8, name=f"l{i}") for i in range(5)])
    for i in range(5):
        scale_weights(model.get_layer(f"l{i}"), 8.0)
    report = gradinspect.inspect(model, X)
    f = find(report, "exploding_gradient", "l0")
    assert f.severity is Severity.WARNING
    assert f.figures["norm_per_sample"] > 1e3 or f.figures["grad_to_weight_per_sample"] > 10


def test_signal_collapse_at_a_saturated_layer(tfk: Any) -> None:
    _, keras = tfk
    L = keras.layers
    model = seq(keras, L.Dense(8, name="a"), L.Dense(8, activation="tanh", name="wall"),
                L.Dense(1, name="out"))
    scale_weights(model.get_layer("wall"), bias=8.0)
    report = gradinspect.inspect(model, X)
    f = find(report, "signal_collapse", "model")
    assert f.figures["layer"] == "wall"
    assert f.figures["backward_gain"] < 1e-3


def test_nonfinite_input(tfk: Any) -> None:
    _, keras = tfk
    model = seq(keras, keras.layers.Dense(2))
    x = X.copy()
    x[3, 2] = np.nan
    x[5, 0] = np.inf
    f = find(gradinspect.inspect(model, x), "nonfinite_input", "model")
    assert f.severity is Severity.ERROR
    assert f.figures["nonfinite"] == 2


@pytest.mark.filterwarnings("ignore:.*from_logits=True.*:UserWarning")  # planted on purpose
def test_logits_mismatch_both_ways(tfk: Any) -> None:
    _, keras = tfk
    L = keras.layers
    y = RNG.integers(0, 3, 64)
    logits = seq(keras, L.Dense(8, activation="relu"), L.Dense(3, name="out"))
    f = find(gradinspect.inspect(logits, X, y, loss="sparse_categorical_crossentropy"),
             "logits_mismatch", "out")
    assert f.severity is Severity.WARNING
    assert f.figures["from_logits"] is False
    probs = seq(keras, L.Dense(8, activation="relu"), L.Dense(3, name="out"),
                L.Activation("softmax", name="sm"))
    f = find(gradinspect.inspect(probs, X, y, loss="sparse_categorical_crossentropy",
                                 from_logits=True), "logits_mismatch", "out")
    assert f.severity is Severity.INFO
    assert f.figures["activation"] == "softmax"
    fine = gradinspect.inspect(probs, X, y, loss="sparse_categorical_crossentropy")
    assert not [w for ly in fine.layers for w in ly.warnings if w.code == "logits_mismatch"]


def test_healthy_model_has_no_warnings(tfk: Any) -> None:
    _, keras = tfk
    L = keras.layers
    model = seq(keras, L.Dense(32, activation="relu", kernel_initializer="he_normal"),
                L.Dense(16, activation="tanh"), L.Dense(1))
    x = RNG.standard_normal((256, 6)).astype(np.float32)
    for loss in ("sum", "mean"):
        report = gradinspect.inspect(model, x, loss=loss)
        worst = report.worst_severity()
        assert worst is None or worst is Severity.INFO, report.findings()


def test_thresholds_change_verdicts(tfk: Any) -> None:
    _, keras = tfk
    L = keras.layers
    model = seq(keras, L.Dense(8, activation="sigmoid", name="sat"), L.Dense(1))
    scale_weights(model.get_layer("sat"), 40.0)
    strict = gradinspect.inspect(model, X)
    lax = gradinspect.inspect(
        model, X, thresholds=gradinspect.Thresholds(saturated_entries=1.01, saturated_units=1.01))
    assert find(strict, "saturated_units").severity is Severity.WARNING
    assert find(lax, "saturated_units").severity is Severity.INFO


PLANTED_ELSEWHERE = {
    "gradient_outliers":
        "test_per_sample_kinds.py::test_mislabelled_image_in_a_cnn_batch_is_named_by_its_row",
    "constant_labels": "test_verdicts.py::test_labels_of_one_class_are_named",
    "degenerate_normalization":
        "test_verdicts.py::test_a_normalisation_over_one_feature_is_the_root_of_the_zero_gradients",
    "gradient_mismatch": "test_checks.py::test_verify_catches_a_wrong_custom_gradient",
    "gradcheck_mismatch": "test_checks.py::test_gradcheck_catches_a_wrong_custom_gradient",
    "constant_output": "test_keras2.py::test_single_unit_softmax_is_the_root_cause",
    "loss_activation_mismatch": "test_keras2.py::test_loss_activation_mismatch_is_named",
    "zero_kernel":
        "test_keras2.py::test_a_zero_output_kernel_explains_the_zero_gradients_below_it",
    "unscaled_input":
        "test_diagnosis.py::test_unscaled_pixels_are_named_and_explain_the_saturation",
    "vanishing_activations":
        "test_diagnosis.py::test_vanishing_activations_where_the_signal_collapses",
    "untrained_batchnorm": "test_diagnosis.py::test_untrained_batchnorm_is_the_root_on_mobilenet",
}


def test_every_code_is_planted() -> None:
    """Runs last in this file: every documented code was produced by some planted model."""
    missing = set(CODES) - SEEN - set(PLANTED_ELSEWHERE)
    assert not missing, f"codes without a planted model: {sorted(missing)}"
