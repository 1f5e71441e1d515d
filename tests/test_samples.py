"""The bundled samples against the seed article's own code (load, tape, reduce_sum, print)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gradinspect
from gradinspect.engine.runners import Probe
from gradinspect.engine.walk import find_dense_layers
from gradinspect.losses import get_loss

SEEDS = ["seed_a", "seed_b", "seed_c", "mnist_mlp"]


def article_gradients(tf: Any, keras: Any, model_path: Path, x: np.ndarray) -> list[np.ndarray]:
    """What the seed article does, line for line."""
    model = keras.models.load_model(model_path, compile=False)
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        output = model(x)
        loss = tf.reduce_sum(output)
    grads = tape.gradient(loss, model.trainable_variables)
    return [g.numpy() for g in grads]


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


@pytest.mark.parametrize("fmt", ["h5", "keras"])
@pytest.mark.parametrize("name", SEEDS)
def test_sample_matches_article_code(tfk: Any, samples_dir: Path, name: str, fmt: str) -> None:
    tf, keras = tfk
    model_path = samples_dir / f"{name}.{fmt}"
    x = np.load(samples_dir / f"{name}_x.npy")
    expected = article_gradients(tf, keras, model_path, x)
    report = gradinspect.inspect_files(model_path, samples_dir / f"{name}_x.npy")
    # trainable_variables order: kernel, bias per Dense layer, forward order
    for layer, (kernel_grad, bias_grad) in zip(report.layers, zip(expected[::2], expected[1::2],
                                                                   strict=True), strict=True):
        for got, want in ((layer.grads.kernel, kernel_grad), (layer.grads.bias, bias_grad)):
            assert got is not None
            w = want.astype(np.float64)
            assert _rel(got.norm, float(np.linalg.norm(w))) <= 1e-6
            assert _rel(got.max_abs, float(np.abs(w).max())) <= 1e-6
            assert _rel(got.mean_abs, float(np.abs(w).mean())) <= 1e-6
            assert got.shape == want.shape
    # and the raw arrays themselves, entry by entry
    model = keras.models.load_model(model_path, compile=False)
    sites = find_dense_layers(model)
    with Probe(model, sites, get_loss("sum")) as probe:
        probe.step([x], None, 1.0)
        sums = probe.gradient_sums()
    for (got_kernel, got_bias), kernel_grad, bias_grad in zip(sums, expected[::2],
                                                              expected[1::2], strict=True):
        err = np.abs(got_kernel - kernel_grad) / np.maximum(np.abs(kernel_grad), 1e-30)
        assert float(err.max()) <= 1e-6
        assert got_bias is not None
        err_b = np.abs(got_bias - bias_grad) / np.maximum(np.abs(bias_grad), 1e-30)
        assert float(err_b.max()) <= 1e-6


def test_seed_a_closed_form_by_hand(samples_dir: Path, tfk: Any) -> None:
    """Example (a) worked by hand: sigmoid, sum loss, so delta = s(1-s)."""
    _, keras = tfk
    model = keras.models.load_model(samples_dir / "seed_a.h5", compile=False)
    w, b = (v.numpy().astype(np.float64) for v in model.layers[-1].weights)
    x = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float64)
    s = 1 / (1 + np.exp(-(x @ w + b)))
    delta = s * (1 - s)
    report = gradinspect.inspect_files(samples_dir / "seed_a.h5", samples_dir / "seed_a_x.npy")
    layer = report.layers[0]
    assert layer.grads.kernel.norm == pytest.approx(np.linalg.norm(x.T @ delta), rel=1e-6)
    assert layer.grads.bias is not None
    assert layer.grads.bias.norm == pytest.approx(np.linalg.norm(delta.sum(0)), rel=1e-6)
    assert layer.grads.input.norm == pytest.approx(np.linalg.norm(delta @ w.T), rel=1e-6)
    assert report.loss.value == pytest.approx(s.sum(), rel=1e-6)


def test_regeneration_is_deterministic(tmp_path: Path, samples_dir: Path) -> None:
    import subprocess
    import sys

    subprocess.run([sys.executable, str(samples_dir / "make_samples.py"), str(tmp_path)],
                   check=True, capture_output=True)
    for name in SEEDS:
        np.testing.assert_array_equal(np.load(tmp_path / f"{name}_x.npy"),
                                      np.load(samples_dir / f"{name}_x.npy"))
        a = gradinspect.inspect_files(tmp_path / f"{name}.h5", tmp_path / f"{name}_x.npy")
        b = gradinspect.inspect_files(samples_dir / f"{name}.h5", samples_dir / f"{name}_x.npy")
        da, db = a.to_dict(), b.to_dict()
        for d in (da, db):
            d["model"]["path"] = d["data"]["path"] = None
        assert json.dumps(da) == json.dumps(db)
