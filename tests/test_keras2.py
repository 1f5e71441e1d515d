"""Keras 2 files as Keras 2 trained them: the input shape a Keras 2 Sequential was built with,
and crossentropy computed as Keras 2.x computed it (clipped, renormalised probabilities), or as
Keras 3 does (the logits a softmax/sigmoid keeps), checked against tf-keras itself and against
the formulas written out here, independently of gradinspect's code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import gradinspect
from gradinspect.io.models import load_model

tf_keras = pytest.importorskip("tf_keras")
EPS = 1e-7


def _keras23_layout(src: Path, dst: Path, key: str) -> Path:
    """A tf-keras Sequential .h5 rewritten as Keras <= 2.3 saved it: no InputLayer, the input
    shape on the first layer (``batch_input_shape``, ``input_shape`` or ``input_dim``)."""
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        layers = config["config"]["layers"]
        shape = layers.pop(0)["config"]["batch_input_shape"]
        value = {"batch_input_shape": shape, "input_shape": shape[1:],
                 "input_dim": shape[-1]}[key]
        layers[0]["config"][key] = value
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["keras_version"] = "2.3.1"
    return dst


@pytest.mark.parametrize("key", ["batch_input_shape", "input_shape", "input_dim"])
def test_keras2_sequential_keeps_its_input_shape(tfk: Any, tmp_path: Path, key: str) -> None:
    tf, _ = tfk
    tf_keras.utils.set_random_seed(3)
    model = tf_keras.Sequential([tf_keras.layers.Dense(8, activation="relu", input_shape=(12,)),
                                 tf_keras.layers.Dense(3, activation="softmax")])
    model.save(tmp_path / "new.h5")
    old = _keras23_layout(tmp_path / "new.h5", tmp_path / "old.h5", key)
    x = np.random.default_rng(0).standard_normal((5, 12)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    reference = tf_keras.models.load_model(old, compile=False)
    loaded = load_model(old)
    assert tuple(loaded.model.inputs[0].shape) == tuple(reference.inputs[0].shape) == (None, 12)
    np.testing.assert_allclose(np.asarray(loaded.model(x)), reference(x).numpy(), rtol=1e-6)
    report = gradinspect.inspect_files(old, tmp_path / "x.npy")
    assert report.layers[0].input_shape == (5, 12)
    del tf


def _keras2_reference(tf: Any, name: str, y: Any, p: Any) -> Any:
    """Keras 2.x crossentropy of probabilities, per sample, written out here."""
    if name == "categorical_crossentropy":
        q = tf.clip_by_value(p / tf.reduce_sum(p, axis=-1, keepdims=True), EPS, 1 - EPS)
        return -tf.reduce_sum(y * tf.math.log(q), axis=-1)
    q = tf.clip_by_value(p, EPS, 1 - EPS)
    return -tf.reduce_mean(y * tf.math.log(q + EPS) + (1 - y) * tf.math.log(1 - q + EPS),
                           axis=-1)


CASES = {  # output activation, units, loss
    "sigmoid_cce": ("sigmoid", 3, "categorical_crossentropy"),
    "softmax_bce": ("softmax", 3, "binary_crossentropy"),
    "single_unit_softmax": ("softmax", 1, "categorical_crossentropy"),
    "softmax_cce": ("softmax", 3, "categorical_crossentropy"),
    "sigmoid_bce": ("sigmoid", 1, "binary_crossentropy"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_semantics_follow_the_keras_that_trained_the_file(tfk: Any, tmp_path: Path,
                                                               case: str) -> None:
    tf, keras = tfk
    act, units, loss = CASES[case]
    tf_keras.utils.set_random_seed(5)
    k2 = tf_keras.Sequential([tf_keras.layers.Dense(6, activation="tanh", input_shape=(4,)),
                              tf_keras.layers.Dense(units, activation=act)])
    k2.compile("sgd", loss)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, 4)).astype(np.float32)
    y = (rng.random((16, units)) > 0.5).astype(np.float32)
    if loss == "categorical_crossentropy" and units > 1:
        y = np.eye(units, dtype=np.float32)[rng.integers(0, units, 16)]
    k2.fit(x, y, epochs=2, verbose=0)  # a few steps of Keras 2 training
    trained_loss = float(k2.evaluate(x, y, verbose=0))  # tf-keras itself
    k2.save(tmp_path / "m.h5")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    model = keras.models.load_model(tmp_path / "m.h5", compile=False)
    variables = model.trainable_variables
    with tf.GradientTape(persistent=True) as tape:
        p = model(x)
        k2_loss = tf.reduce_mean(_keras2_reference(tf, loss, tf.constant(y), p))
        k3_loss = tf.reduce_mean(getattr(keras.losses, loss)(tf.constant(y), p))
    want = {"keras2": (k2_loss, tape.gradient(k2_loss, variables)),
            "keras3": (k3_loss, tape.gradient(k3_loss, variables))}
    for rule in ("keras2", "keras3"):
        args = [str(tmp_path / "m.h5"), str(tmp_path / "x.npy")]
        options = gradinspect.InspectOptions(
            loss_semantics=None if rule == "keras2" else rule)  # keras2: the file's default
        report = gradinspect.inspect_files(*args, options,
                                           labels_path=str(tmp_path / "y.npy"))
        assert report.loss.semantics == rule
        assert report.loss.name == loss
        value, grads = want[rule]
        assert report.loss.value == pytest.approx(float(value), rel=1e-5, abs=1e-7), rule
        # tf-keras itself (2.21, which saved the file): on the ordinary pairs both rules give
        # its loss; on the mismatched pairs current tf-keras takes the cached logits, as Keras 3
        # does — the keras2 rule is how Keras 2.x computed them, written out above
        if (rule == "keras3" and case in ("sigmoid_cce", "softmax_bce")) or \
                case in ("softmax_cce", "sigmoid_bce"):
            assert report.loss.value == pytest.approx(trained_loss, rel=1e-4, abs=1e-6), rule
        norms = {v.path: float(np.linalg.norm(g)) for v, g in zip(variables, grads,
                                                                  strict=True)}
        got = {w.path: ly.grads.variables[n].norm for ly in report.layers
               for n, w in ly.weights.variables.items() if w is not None}
        for path, norm in norms.items():
            assert got[path] == pytest.approx(norm, rel=1e-4, abs=1e-9), (rule, path)
    if case in ("softmax_cce", "sigmoid_bce"):  # the ordinary pairs: both rules agree
        assert float(want["keras2"][0]) == pytest.approx(float(want["keras3"][0]), rel=1e-4)


def test_a_file_without_a_keras_version_says_which_rule(tfk: Any, tmp_path: Path) -> None:
    _, keras = tfk
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "categorical_crossentropy")
    model.save(tmp_path / "m.h5")
    with h5py.File(tmp_path / "m.h5", "a") as f:
        del f.attrs["keras_version"]
    np.save(tmp_path / "x.npy", np.ones((4, 3), np.float32))
    np.save(tmp_path / "y.npy", np.eye(2, dtype=np.float32)[[0, 1, 0, 1]])
    report = gradinspect.inspect_files(tmp_path / "m.h5", tmp_path / "x.npy",
                                       labels_path=tmp_path / "y.npy")
    assert report.loss.semantics == "keras3"
    assert any("does not record the Keras version" in n for n in report.data.notes)
    chosen = gradinspect.inspect_files(tmp_path / "m.h5", tmp_path / "x.npy",
                                       gradinspect.InspectOptions(loss_semantics="keras2"),
                                       labels_path=tmp_path / "y.npy")
    assert chosen.loss.semantics == "keras2"
    assert not any("does not record" in n for n in chosen.data.notes)


def _keras2_file(tmp_path: Path, units: int, act: str, loss: str, zero_out: bool = False
                 ) -> tuple[Path, Path, Path]:
    tf_keras.utils.set_random_seed(9)
    out_init = "zeros" if zero_out else "glorot_uniform"
    model = tf_keras.Sequential([
        tf_keras.layers.Dense(8, activation="relu", input_shape=(5,), name="hidden"),
        tf_keras.layers.Dense(6, activation="tanh", name="mid"),
        tf_keras.layers.Dense(units, activation=act, kernel_initializer=out_init, name="out")])
    model.compile("sgd", loss)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((32, 5)).astype(np.float32)
    y = np.eye(max(units, 2), dtype=np.float32)[rng.integers(0, max(units, 2), 32)][:, :units]
    if not zero_out:
        model.fit(x, y, epochs=2, verbose=0)
    model.save(tmp_path / "m.h5")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    return tmp_path / "m.h5", tmp_path / "x.npy", tmp_path / "y.npy"


def _codes(report: Any) -> dict[str, dict[str, str]]:
    return {ly.path: {f.code: f.severity.value for f in ly.warnings} for ly in report.layers}


@pytest.mark.parametrize(("act", "loss"), [("sigmoid", "categorical_crossentropy"),
                                           ("softmax", "binary_crossentropy")])
def test_loss_activation_mismatch_is_named(tfk: Any, tmp_path: Path, act: str,
                                           loss: str) -> None:
    """Under the Keras 2 rule the file was trained with, the loss takes the probabilities as
    they are (renormalised for categorical crossentropy): the model trains, and the pair is a
    portability note (info). Judged by the Keras 3 rule, the loss trains the logits as the
    other activation's: a warning that says what is minimised."""
    model, x, y = _keras2_file(tmp_path, 3, act, loss)
    for semantics, severity in (("keras2", "info"), ("keras3", "warning")):
        report = gradinspect.inspect_files(
            model, x, labels_path=y,
            options=gradinspect.InspectOptions(loss_semantics=semantics))
        assert _codes(report)["out"].get("loss_activation_mismatch") == severity
        finding = next(f for f in report["out"].warnings
                       if f.code == "loss_activation_mismatch")
        assert finding.figures == {"activation": act, "loss": loss, "semantics": semantics}
        assert ("training is not harmed" in finding.message) is (semantics == "keras2")


def test_single_unit_softmax_is_the_root_cause(tfk: Any, tmp_path: Path) -> None:
    model, x, y = _keras2_file(tmp_path, 1, "softmax", "categorical_crossentropy")
    report = gradinspect.inspect_files(model, x, labels_path=y)
    codes = _codes(report)
    assert codes["out"]["constant_output"] == "error"
    errors = [(ly.path, f.code) for ly in report.layers for f in ly.warnings
              if f.severity.value == "error"] + [("model", f.code) for f in report.warnings
                                                 if f.severity.value == "error"]
    assert errors == [("out", "constant_output")], errors  # the consequences are not errors
    for path in ("hidden", "mid"):
        zero = next(f for f in report[path].warnings if f.code == "zero_gradient")
        assert zero.severity.value == "info"
        assert zero.caused_by == ("constant_output@out",)
        assert not zero.root


def test_a_zero_output_kernel_explains_the_zero_gradients_below_it(tfk: Any,
                                                                   tmp_path: Path) -> None:
    model, x, y = _keras2_file(tmp_path, 3, "softmax", "categorical_crossentropy",
                               zero_out=True)
    report = gradinspect.inspect_files(model, x, labels_path=y)
    codes = _codes(report)
    assert codes["out"].get("zero_kernel") == "info"
    assert "zero_gradient" not in codes["out"]  # its own gradient is not zero
    for path in ("hidden", "mid"):
        zero = next(f for f in report[path].warnings if f.code == "zero_gradient")
        assert zero.severity.value == "info"
        assert zero.caused_by == ("zero_kernel@out",)
        assert not zero.root
    assert report.worst_severity() is not None
    assert report.worst_severity().value != "error"  # the model trains once out updates
