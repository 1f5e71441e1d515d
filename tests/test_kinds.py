"""Every layer kind, checked against computations that do not use gradinspect's hooks: one plain
``tf.GradientTape`` over ``model.trainable_variables`` for every variable of every entry, over
random architectures (CNN blocks, recurrent, attention, normalization, embeddings, custom
layers) and over real ones (keras.applications MobileNetV2 and ResNet50 with weights=None, a
Transformer block, an LSTM/GRU classifier, a convolutional autoencoder)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kinds import (
    KindArch,
    assert_matches_tape,
    build_kinds,
    kind_archs,
    kinds_data,
    scale_layer,
    tape_by_path,
)

import gradinspect
from gradinspect.pipeline import ACTIVATION_COPIES, activation_bytes_per_sample

ROOT = Path(__file__).resolve().parent.parent
EXPECTED_KIND = {
    "Dense": "dense", "EinsumDense": "einsum_dense", "Conv1D": "conv", "Conv2D": "conv",
    "DepthwiseConv2D": "conv", "SeparableConv2D": "conv", "Conv2DTranspose": "conv",
    "Embedding": "embedding", "LSTM": "recurrent", "GRU": "recurrent", "SimpleRNN": "recurrent",
    "BatchNormalization": "normalization", "LayerNormalization": "normalization",
    "GroupNormalization": "normalization", "PReLU": "generic", "Scale": "generic",
}


PROPERTY_EXAMPLES = max(6, settings.default.max_examples // 4)


@settings(max_examples=PROPERTY_EXAMPLES)
@given(arch=kind_archs(), loss=st.sampled_from(["sum", "mean"]))
def test_every_variable_of_every_kind_matches_one_plain_tape(tfk: Any, arch: KindArch,
                                                             loss: str) -> None:
    tf, keras = tfk
    model = build_kinds(keras, arch)
    x = kinds_data(arch)
    report = gradinspect.inspect(model, x, loss=loss)
    assert_matches_tape(report, tape_by_path(tf, model, x, loss))
    assert report.data.notes == ()  # token ids fed as the model's int32, not "cast"
    for entry in report.layers:
        assert entry.kind == EXPECTED_KIND[entry.class_name], entry.class_name
        assert entry.params == sum(int(np.prod(w.shape)) for w in
                                   entry.weights.variables.values() if w is not None)
        # dL/dinput exists exactly where the input is a float tensor
        assert (entry.grads.input is None) == (entry.kind == "embedding")


def test_real_architectures_report_every_variable(tfk: Any) -> None:
    """keras.applications models (weights=None), a Transformer block, an LSTM/GRU classifier
    and a convolutional autoencoder: every trainable variable, right gradients, one coverage
    line."""
    tf, keras = tfk
    rng = np.random.default_rng(0)
    L = keras.layers
    keras.utils.set_random_seed(0)
    tokens = keras.Input((12,), dtype="int32")
    h = L.Embedding(50, 16)(tokens)
    attended = L.MultiHeadAttention(2, 8)(h, h)
    h = L.LayerNormalization()(L.Add()([h, attended]))
    ff = L.Dense(16)(L.Dense(32, activation="relu")(h))
    h = L.LayerNormalization()(L.Add()([h, ff]))
    transformer = keras.Model(tokens, L.Dense(2)(L.GlobalAveragePooling1D()(h)))
    text = keras.Input((12,), dtype="int32")
    h = L.Bidirectional(L.GRU(6, return_sequences=True))(L.Embedding(50, 8)(text))
    rnn = keras.Model(text, L.Dense(1, activation="sigmoid")(L.LSTM(5)(h)))
    image = keras.Input((16, 16, 1))
    h = L.Conv2D(4, 3, strides=2, padding="same", activation="relu")(image)
    h = L.Conv2DTranspose(1, 3, strides=2, padding="same", activation="sigmoid")(h)
    autoencoder = keras.Model(image, h)
    cases = [
        (keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), classes=4),
         rng.standard_normal((2, 32, 32, 3)), 158),
        (keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classes=4),
         rng.standard_normal((2, 32, 32, 3)), 214),
        (transformer, rng.integers(0, 50, (3, 12)), 19),
        (rnn, rng.integers(0, 50, (3, 12)), 12),
        (autoencoder, rng.standard_normal((3, 16, 16, 1)), 4),
    ]
    for model, raw, variables in cases:
        x = raw.astype(np.int32 if raw.dtype.kind == "i" else np.float32)
        assert len(model.trainable_variables) == variables
        report = gradinspect.inspect(model, x)
        assert_matches_tape(report, tape_by_path(tf, model, x), rel=1e-4)
        assert report.coverage is not None
        assert report.coverage.entries == len(report.layers)


def test_kind_and_layer_filters_stop_the_backward_pass(tfk: Any) -> None:
    """``--kind dense`` reports the Dense entries exactly as a full run does, and the tape
    never goes back past them: a layer upstream whose gradient function records every call is
    never differentiated."""
    tf, keras = tfk
    called: list[int] = []

    class Tripwire(keras.layers.Layer):
        def call(self, x: Any) -> Any:
            @tf.custom_gradient  # type: ignore[untyped-decorator]
            def f(t: Any) -> Any:
                def grad(dy: Any) -> Any:
                    called.append(1)
                    return dy
                return tf.identity(t), grad
            return f(x)

    L = keras.layers
    keras.utils.set_random_seed(3)
    image = keras.Input((8, 8, 2))
    h = L.Conv2D(3, 3, activation="relu", name="conv")(image)
    h = Tripwire(name="tripwire")(L.BatchNormalization(name="bn")(h))
    h = L.Dense(4, activation="tanh", name="hidden")(L.Flatten()(h))
    model = keras.Model(image, L.Dense(2, name="out")(h))
    x = np.random.default_rng(1).standard_normal((5, 8, 8, 2)).astype(np.float32)
    full = gradinspect.inspect(model, x)
    assert called, "the full pass differentiates through the tripwire"
    called.clear()
    for focus in (gradinspect.inspect(model, x, kinds=["dense"]),
                  gradinspect.inspect(model, x, layers=["hidden", "o*"])):
        assert not called, "the filtered pass must stop at the earliest selected entry"
        assert [ly.path for ly in focus.layers] == ["hidden", "out"]
        for ly in focus.layers:
            assert ly.grads == full[ly.path].grads
            assert ly.backward_gain == full[ly.path].backward_gain
        coverage = focus.coverage
        assert coverage is not None
        assert coverage.inspected_params == 6 * 6 * 3 * 4 + 4 + 4 * 2 + 2  # hidden + out
        assert {s.path for s in coverage.skipped} == {"conv", "bn"}
        assert all("filtered out" in s.reason for s in coverage.skipped)
    both = gradinspect.inspect(model, x, kinds=["dense", "normalization"], layers=["bn", "out"])
    assert [ly.path for ly in both.layers] == ["bn", "out"]


def test_batch_size_follows_the_memory_budget(tfk: Any) -> None:
    _tf, keras = tfk
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(4, 3),
                              keras.layers.Flatten(), keras.layers.Dense(3)])
    # outputs per sample: conv 4*4*4 + flatten 64 + dense 3 floats, the input layer's 72
    assert activation_bytes_per_sample(model) == (72 + 64 + 64 + 3) * 4 * ACTIVATION_COPIES
    x = np.random.default_rng(2).standard_normal((40, 6, 6, 2)).astype(np.float32)
    whole = gradinspect.inspect(model, x)
    per_sample = activation_bytes_per_sample(model)
    assert per_sample is not None
    small = gradinspect.inspect(model, x, memory_budget=per_sample * 7)
    assert any("batches of 7 samples" in n for n in small.data.notes), small.data.notes
    assert not any("batches of" in n for n in whole.data.notes)
    for a, b in zip(whole.layers, small.layers, strict=True):
        for name, g in a.grads.variables.items():
            other = b.grads.variables[name]
            assert g is not None
            assert other is not None
            assert other.norm == pytest.approx(g.norm, rel=1e-5)  # float32 sums per batch
        assert a.grads.input is not None
        assert b.grads.input is not None
        assert b.grads.input.norm == pytest.approx(a.grads.input.norm, rel=1e-5)
    assert small.loss.value == pytest.approx(whole.loss.value, rel=1e-5)


def test_verify_per_sample_and_gradcheck_say_what_each_kind_has(tfk: Any) -> None:
    _tf, keras = tfk
    L = keras.layers
    keras.utils.set_random_seed(8)
    seq = keras.Input((4, 3))
    h = L.LayerNormalization(name="norm")(L.Conv1D(5, 2, activation="tanh", name="conv")(seq))
    h = scale_layer(keras)(name="scale")(L.LSTM(4, name="lstm")(h))
    model = keras.Model(seq, L.Dense(2, activation="sigmoid", name="head")(h))
    x = np.random.default_rng(4).standard_normal((6, 4, 3)).astype(np.float32)
    report = gradinspect.inspect(model, x, verify=True, per_sample=True, gradcheck=3)
    checks = report.checks
    assert checks.verify_note is not None
    assert checks.per_sample is not None
    assert "not available for conv, generic, normalization, recurrent" in checks.verify_note
    assert checks.per_sample.endswith(
        "methods: loop over samples (1), normalised input (1), row norms (1), vectorized (1), "
        "windows, gram (1)")
    for entry in report.layers:
        assert entry.gradcheck is not None, entry.path
        assert entry.gradcheck.ok, (entry.path, entry.gradcheck)
        variables = [w for w in entry.weights.variables.values() if w is not None]
        assert entry.gradcheck.coordinates == sum(min(3, int(np.prod(w.shape)))
                                                  for w in variables)
        dense = entry.kind == "dense"
        assert (entry.verify is not None) == dense
        assert entry.per_sample is not None, entry.path
        if dense:
            assert entry.verify is not None
            assert entry.verify.ok
    # conv saturation is measured like Dense's: per channel, over samples and positions
    conv = report["conv"]
    assert conv.activity is not None
    assert conv.activity.kind == "saturating"
    assert conv.units == 5


def test_one_by_one_stride_two_convolution_runs_from_the_command_line(
        tfk: Any, tmp_path: Path) -> None:
    """The layer that crashed TensorFlow's oneDNN kernels (heap corruption) in the gradient of
    a published Keras 2 CNN: gradinspect turns oneDNN off for its pass unless the user set
    TF_ENABLE_ONEDNN_OPTS, and the gradients equal a plain tape's."""
    tf, keras = tfk
    assert os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "0"
    L = keras.layers
    keras.utils.set_random_seed(11)
    face = keras.Input((48, 48, 1))
    h = L.Conv2D(8, 3, use_bias=False)(face)
    h = L.Activation("relu")(L.BatchNormalization()(h))
    residual = L.BatchNormalization()(L.Conv2D(16, 1, strides=2, padding="same",
                                               use_bias=False)(h))
    h = L.SeparableConv2D(16, 3, padding="same", use_bias=False)(h)
    h = L.MaxPooling2D(3, strides=2, padding="same")(h)
    h = L.Conv2D(7, 3, padding="same")(L.Add()([h, residual]))
    model = keras.Model(face, L.Activation("softmax")(L.GlobalAveragePooling2D()(h)))
    model.save(tmp_path / "emotion.keras")
    x = np.random.default_rng(7).standard_normal((16, 48, 48, 1)).astype(np.float32)
    y = np.arange(16) % 7
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    result = subprocess.run(
        [sys.executable, "-m", "gradinspect", str(tmp_path / "emotion.keras"),
         str(tmp_path / "x.npy"), "-y", str(tmp_path / "y.npy"), "--loss",
         "sparse_categorical_crossentropy", "--json"],
        capture_output=True, text=True, env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    doc = json.loads(result.stdout)
    with tf.GradientTape() as tape:
        loss = keras.losses.sparse_categorical_crossentropy(y, model(x))
        total = tf.reduce_mean(loss)
    grads = tape.gradient(total, model.trainable_variables)
    want = {v.path: float(np.linalg.norm(g)) for v, g in zip(model.trainable_variables, grads,
                                                             strict=True)}
    got = {w["path"]: ly["grads"][k]["norm"] for ly in doc["layers"]
           for k, w in ly["weights"].items() if w is not None}
    assert set(got) == set(want)
    for path, norm in want.items():
        assert got[path] == pytest.approx(norm, rel=1e-4, abs=1e-7), path


def test_einsum_dense_gets_the_dense_closed_forms_and_per_sample_norms(tfk: Any) -> None:
    """Attention projections (P C, C O -> P O) and an EinsumDense whose bias covers one of two
    output axes: --verify passes, and --per-sample equals one tape per sample."""
    tf, keras = tfk
    L = keras.layers
    keras.utils.set_random_seed(21)
    seq = keras.Input((5, 4))
    h = L.MultiHeadAttention(2, 3, name="mha")(seq, seq)
    h = L.EinsumDense("abc,cde->abde", output_shape=(None, 2, 3), bias_axes="e",
                      activation="tanh", name="split")(h)
    h = L.Reshape((5, 6))(h)
    model = keras.Model(seq, L.Dense(2, name="head")(L.GlobalAveragePooling1D()(h)))
    x = np.random.default_rng(9).standard_normal((7, 5, 4)).astype(np.float32)
    report = gradinspect.inspect(model, x, verify=True, per_sample=True)
    assert report.checks.verify_note == "closed forms in float64 for dense, einsum_dense"
    kinds = {ly.path: ly.kind for ly in report.layers}
    assert kinds["mha/query"] == kinds["split"] == "einsum_dense"
    per_sample: dict[str, list[float]] = {ly.path: [] for ly in report.layers}
    for i in range(x.shape[0]):
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(model(x[i:i + 1]))
        grads = dict(zip((v.path for v in model.trainable_variables),
                         tape.gradient(total, model.trainable_variables), strict=True))
        for ly in report.layers:
            per_sample[ly.path].append(float(np.sqrt(sum(
                np.sum(np.square(np.asarray(grads[w.path], dtype=np.float64)))
                for w in ly.weights.variables.values() if w is not None))))
    for ly in report.layers:
        assert ly.verify is not None, ly.path
        assert ly.verify.ok, (ly.path, ly.verify)
        assert ly.per_sample is not None, ly.path
        want = np.array(per_sample[ly.path])
        got = {s.index: s.norm for s in ly.per_sample.top}
        for index, norm in got.items():
            assert norm == pytest.approx(want[index], rel=1e-4, abs=1e-7), ly.path
        assert ly.per_sample.max == pytest.approx(want.max(), rel=1e-4, abs=1e-7)
        assert ly.per_sample.min == pytest.approx(want.min(), rel=1e-4, abs=1e-7)
