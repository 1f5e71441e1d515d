"""``--per-sample`` for every layer kind, against per-example gradients computed one sample at
a time with a plain ``tf.GradientTape`` (rel 1e-5): random shapes of each kind (kernel sizes,
strides, dilation, padding, bias, a layer called twice), each form the adapters choose
(Dense rows, convolution windows, Embedding rows, normalised input, the vectorized fallback)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import CI_EXAMPLES
from hypothesis import given, settings
from hypothesis import strategies as st

import gradinspect

BATCH = 4


def _tape_norms(tf: Any, model: Any, x: Any, y: np.ndarray,
                groups: dict[str, list[Any]]) -> dict[str, np.ndarray]:
    """Per sample, ||dl_i/dvariables|| of each group of variables, l_i the sample's mean
    squared error (what ``inspect`` differentiates for one sample)."""
    out: dict[str, list[float]] = {k: [] for k in groups}
    for i in range(BATCH):
        xi = x[i:i + 1]
        with tf.GradientTape() as tape:
            pred = model(xi, training=False)
            loss = tf.reduce_mean(tf.square(tf.cast(pred, tf.float64) - y[i:i + 1]))
        flat = [v for vs in groups.values() for v in vs]
        grads = tape.gradient(loss, flat, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        k = 0
        for name, variables in groups.items():
            sq = sum(float(np.sum(np.square(tf.convert_to_tensor(g).numpy().astype(np.float64))))
                     for g in grads[k:k + len(variables)])
            out[name].append(np.sqrt(sq))
            k += len(variables)
    return {k: np.array(v) for k, v in out.items()}


def _report_norms(report: Any, prefix: str) -> tuple[np.ndarray, set[str]]:
    """Per sample, the norm over every entry under ``prefix`` (each entry's per-sample
    squared norms added), and the methods they used."""
    sq = np.zeros(BATCH)
    methods = set()
    found = False
    for layer in report.layers:
        if layer.path != prefix and not layer.path.startswith(prefix + "/"):
            continue
        p = layer.per_sample
        assert p is not None, (layer.path, report.checks.per_sample)
        assert len(p.top) == BATCH
        found = True
        methods.add(p.method)
        for entry in p.top:
            sq[entry.index] += entry.norm ** 2
    assert found, prefix
    return np.sqrt(sq), methods


def _conv(keras: Any, data: Any) -> tuple[Any, Any, str]:
    """A random convolution (1D/2D/3D, depthwise, separable, transpose) on a random input."""
    layers = keras.layers
    kind = data.draw(st.sampled_from(["Conv1D", "Conv2D", "Conv3D", "DepthwiseConv1D",
                                      "DepthwiseConv2D", "SeparableConv2D",
                                      "Conv2DTranspose"]))
    rank = 3 if "3D" in kind else 1 if "1D" in kind else 2
    size = data.draw(st.integers(4, 7))
    channels = data.draw(st.integers(1, 3))
    kernel = data.draw(st.integers(1, 3))
    padding = data.draw(st.sampled_from(
        ["same", "valid", "causal"] if kind == "Conv1D" else ["same", "valid"]))
    strided = data.draw(st.booleans()) and "Transpose" not in kind
    dilated = not strided and kernel > 1 and data.draw(st.booleans()) and rank < 3 \
        and "Transpose" not in kind \
        and "Separable" not in kind
    kwargs: dict[str, Any] = {"kernel_size": kernel, "padding": padding,
                              "use_bias": data.draw(st.booleans()),
                              "activation": data.draw(st.sampled_from([None, "relu", "tanh"]))}
    if strided:
        kwargs["strides"] = 2
    if dilated and not (padding == "valid" and size <= 2 * (kernel - 1)):
        kwargs["dilation_rate"] = 2
    if kind.startswith("Depthwise"):
        kwargs["depth_multiplier"] = data.draw(st.integers(1, 2))
    else:
        kwargs["filters"] = data.draw(st.integers(1, 4))
    inputs = keras.Input((*(size,) * rank, channels))
    layer = getattr(layers, kind)(name="under_test", **kwargs)
    h = layer(inputs)
    if data.draw(st.booleans()) and kind in ("Conv2D", "DepthwiseConv2D") and not strided \
            and padding == "same" and h.shape[-1] == channels:
        h = layer(h)  # one layer called twice: its per-sample gradient is the sum of both
    pooled = layers.Flatten()(h)
    return inputs, layers.Dense(2, name="head")(pooled), kind


def _other(keras: Any, data: Any) -> tuple[Any, Any, str]:
    """A random non-convolution kind: Embedding, the normalisations, recurrent layers,
    attention, PReLU (the generic fallback)."""
    layers = keras.layers
    kind = data.draw(st.sampled_from(["Embedding", "LayerNormalization", "BatchNormalization",
                                      "GroupNormalization", "LSTM", "GRU", "Bidirectional",
                                      "MultiHeadAttention", "PReLU", "EinsumDense"]))
    steps, width = data.draw(st.integers(2, 5)), data.draw(st.sampled_from([2, 4]))
    if kind == "Embedding":
        inputs = keras.Input((steps,), dtype="int32")
        h = layers.Embedding(data.draw(st.integers(2, 6)), width, name="under_test")(inputs)
        return inputs, layers.Dense(2, name="head")(layers.Flatten()(h)), kind
    inputs = keras.Input((steps, width))
    if kind == "LayerNormalization":
        axis = data.draw(st.sampled_from([-1, [1, 2]]))
        h = layers.LayerNormalization(axis=axis, name="under_test")(inputs)
    elif kind == "BatchNormalization":
        layer = layers.BatchNormalization(name="under_test")
        h = layer(inputs)
        layer.moving_mean.assign(np.linspace(-1, 1, width))
        layer.moving_variance.assign(np.linspace(0.5, 2, width))
    elif kind == "GroupNormalization":
        h = layers.GroupNormalization(2, name="under_test")(inputs)
    elif kind in ("LSTM", "GRU"):
        h = getattr(layers, kind)(3, return_sequences=data.draw(st.booleans()),
                                  name="under_test")(inputs)
    elif kind == "Bidirectional":
        h = layers.Bidirectional(layers.LSTM(2, return_sequences=True), name="under_test")(inputs)
    elif kind == "MultiHeadAttention":
        h = layers.MultiHeadAttention(2, 3, name="under_test")(inputs, inputs)
    elif kind == "EinsumDense":
        h = layers.EinsumDense("btc,cd->btd", output_shape=(steps, 3), bias_axes="d",
                               name="under_test")(inputs)
    else:
        h = layers.PReLU(name="under_test")(inputs)
    return inputs, layers.Dense(2, name="head")(layers.Flatten()(h)), kind


def _examples() -> Any:
    """Each example traces a model's step and runs one tape per sample: 12 in CI, all of the
    thorough profile's."""
    current = settings.default.max_examples
    return settings(max_examples=current if current > CI_EXAMPLES else 12)


@_examples()
@given(data=st.data(), conv=st.booleans())
def test_per_sample_of_every_kind_equals_one_sample_tapes(tfk: Any, data: Any,
                                                         conv: bool) -> None:
    tf, keras = tfk
    keras.utils.set_random_seed(data.draw(st.integers(0, 2**16)))
    inputs, outputs, kind = (_conv if conv else _other)(keras, data)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    shape = (BATCH, *inputs.shape[1:])
    x = (rng.integers(0, 2, shape).astype(np.int32) if kind == "Embedding"
         else rng.standard_normal(shape).astype(np.float32))
    if kind == "Embedding":
        x[0, :] = 1  # one id repeated over a whole sample: its rows add before the norm
    y = rng.standard_normal((BATCH, 2))
    report = gradinspect.inspect(model, x, y.astype(np.float32), loss="mean_squared_error",
                                 per_sample=True)
    layer = model.get_layer("under_test")
    want = _tape_norms(tf, model, x, y, {"under_test": list(layer.trainable_weights),
                                         "head": list(model.get_layer("head").trainable_weights)})
    for name in ("under_test", "head"):
        got, methods = _report_norms(report, name)
        np.testing.assert_allclose(got, want[name], rtol=1e-5, atol=1e-9,
                                   err_msg=f"{kind} {methods} {report.checks.per_sample}")


@pytest.mark.parametrize("case", [
    {"rank": 1, "padding": "valid", "strides": 2, "depth_multiplier": 2, "use_bias": True},
    {"rank": 1, "padding": "same", "strides": 1, "depth_multiplier": 1, "use_bias": False},
    {"rank": 2, "padding": "same", "strides": 2, "depth_multiplier": 2, "use_bias": True},
    {"rank": 2, "padding": "valid", "strides": 1, "depth_multiplier": 1, "use_bias": True,
     "twice": True},
    {"rank": 2, "padding": "same", "strides": 1, "depth_multiplier": 1, "use_bias": True,
     "dilation_rate": 2},
])
def test_depthwise_per_sample_equals_one_sample_tapes(tfk: Any, case: dict[str, Any]) -> None:
    """Depthwise convolutions by TensorFlow's filter gradient with the samples as channels
    (1D and strided, depth multiplier 2, a layer called twice), and by windows where
    that kernel does not take the layer (dilation): each equal to one-sample tapes."""
    tf, keras = tfk
    layers = keras.layers
    keras.utils.set_random_seed(5)
    case = dict(case)
    rank, twice = case.pop("rank"), case.pop("twice", False)
    inputs = keras.Input((*(7,) * rank, 3))
    layer = getattr(layers, f"DepthwiseConv{rank}D")(3, name="under_test", **case)
    h = layer(inputs)
    if twice:
        h = layer(layers.ZeroPadding2D(1)(h))
    model = keras.Model(inputs, layers.Dense(2, name="head")(layers.Flatten()(h)))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((BATCH, *(7,) * rank, 3)).astype(np.float32)
    y = rng.standard_normal((BATCH, 2))
    report = gradinspect.inspect(model, x, y.astype(np.float32), loss="mean_squared_error",
                                 per_sample=True)
    want = _tape_norms(tf, model, x, y, {"under_test": list(layer.trainable_weights)})
    got, methods = _report_norms(report, "under_test")
    assert methods == {"depthwise windows" if "dilation_rate" in case
                       else "depthwise, samples as channels"}
    np.testing.assert_allclose(got, want["under_test"], rtol=1e-5, atol=1e-9)


def _issue_model(keras: Any, arch: str) -> tuple[Any, np.ndarray]:
    """The three models the per-sample work is judged on, small: MobileNetV2 (weights=None,
    32x32, width 0.35), a Transformer encoder block over an Embedding, a BiLSTM classifier."""
    layers = keras.layers
    rng = np.random.default_rng(2)
    if arch == "MobileNetV2":
        model = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3),
                                               alpha=0.35, classes=2)
        return model, rng.standard_normal((BATCH, 32, 32, 3)).astype(np.float32)
    tokens = keras.Input((12,), dtype="int32")
    if arch == "Transformer block":
        h = layers.Embedding(50, 16)(tokens)
        h = layers.LayerNormalization()(layers.Add()([h, layers.MultiHeadAttention(2, 8)(h, h)]))
        ff = layers.Dense(16)(layers.Dense(32, activation="gelu")(h))
        h = layers.LayerNormalization()(layers.Add()([h, ff]))
        out = layers.Dense(2)(layers.GlobalAveragePooling1D()(h))
    else:
        out = layers.Dense(2)(layers.Bidirectional(layers.LSTM(8))(layers.Embedding(50, 8)(tokens)))
    return keras.Model(tokens, out), rng.integers(0, 50, (BATCH, 12)).astype(np.int32)


@pytest.mark.parametrize("arch", ["MobileNetV2", "Transformer block", "BiLSTM"])
def test_per_sample_of_whole_models_equals_one_sample_tapes(tfk: Any, arch: str) -> None:
    """Every entry of MobileNetV2, a Transformer block and a BiLSTM classifier has a
    per-sample figure, and the whole model's per-sample gradient norms (the entries' squares
    added) equal one-sample tapes over ``model.trainable_weights``."""
    tf, keras = tfk
    keras.utils.set_random_seed(7)
    model, x = _issue_model(keras, arch)
    y = np.random.default_rng(3).standard_normal((BATCH, 2))
    report = gradinspect.inspect(model, x, y.astype(np.float32), loss="mean_squared_error",
                                 per_sample=True)
    missing = [ly.path for ly in report.layers if ly.per_sample is None]
    assert missing == [], report.checks.per_sample
    sq = np.zeros(BATCH)
    for layer in report.layers:
        assert layer.per_sample is not None
        for entry in layer.per_sample.top:
            sq[entry.index] += entry.norm ** 2
    want = _tape_norms(tf, model, x, y, {"all": list(model.trainable_weights)})["all"]
    np.testing.assert_allclose(np.sqrt(sq), want, rtol=1e-5)


@pytest.mark.parametrize("arch", ["cnn", "bilstm"])
def test_per_sample_of_one_batch_from_a_file_equals_the_compiled_step(
        tfk: Any, tmp_path: Any, arch: str) -> None:
    """One small batch read from a file runs the step eagerly (the command line's case): its
    per-sample figures, recurrent loop and depthwise filter gradient included, equal the
    compiled step's on the same model and data (which the tests above hold to one-sample
    tapes)."""
    _, keras = tfk
    layers = keras.layers
    keras.utils.set_random_seed(11)
    rng = np.random.default_rng(4)
    if arch == "cnn":
        inputs = keras.Input((8, 8, 3))
        h = layers.Conv2D(4, 3, activation="relu")(inputs)
        h = layers.DepthwiseConv2D(3, strides=2, padding="same")(h)
        h = layers.BatchNormalization()(h)
        outputs = layers.Dense(3, activation="softmax")(layers.Flatten()(h))
        x = rng.standard_normal((BATCH, 8, 8, 3)).astype(np.float32)
    else:
        inputs = keras.Input((10,), dtype="int32")
        h = layers.Bidirectional(layers.LSTM(4))(layers.Embedding(30, 6)(inputs))
        outputs = layers.Dense(3, activation="softmax")(h)
        x = rng.integers(0, 30, (BATCH, 10)).astype(np.int32)
    model = keras.Model(inputs, outputs)
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", x)
    from_file = gradinspect.inspect_files(tmp_path / "m.keras", tmp_path / "x.npy",
                                          gradinspect.InspectOptions(per_sample=True))
    live = gradinspect.inspect(keras.models.load_model(tmp_path / "m.keras"), x,
                               per_sample=True)
    assert from_file.data.samples == BATCH  # one batch from a file: the eager step
    for a, b in zip(from_file.layers, live.layers, strict=True):
        assert a.per_sample is not None, a.path
        assert b.per_sample is not None, b.path
        assert a.per_sample.method == b.per_sample.method
        got = sorted((e.index, e.norm) for e in a.per_sample.top)
        want = sorted((e.index, e.norm) for e in b.per_sample.top)
        np.testing.assert_allclose([n for _, n in got], [n for _, n in want], rtol=1e-5)
        assert [i for i, _ in got] == [i for i, _ in want]


def test_per_sample_methods_chosen_per_kind(tfk: Any) -> None:
    """The documented method per kind: closed forms where there is one, the vectorized
    fallback for the rest."""
    _, keras = tfk
    layers = keras.layers
    keras.utils.set_random_seed(3)
    inputs = keras.Input((6, 6, 2))
    h = layers.Conv2D(3, 3, padding="same", activation="relu", name="conv")(inputs)
    h = layers.DepthwiseConv2D(3, name="depthwise")(h)
    h = layers.BatchNormalization(name="bn")(h)
    h = layers.SeparableConv2D(2, 1, name="separable")(h)
    h = layers.Dense(2, name="dense")(layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inputs, h)
    x = np.random.default_rng(0).standard_normal((BATCH, 6, 6, 2)).astype(np.float32)
    report = gradinspect.inspect(model, x, np.zeros((BATCH, 2), np.float32),
                                 loss="mean_squared_error", per_sample=True)
    methods = {ly.path: ly.per_sample.method for ly in report.layers if ly.per_sample}
    assert methods == {"conv": "windows, product", "depthwise": "depthwise, samples as channels",
                       "bn": "normalised input", "separable": "vectorized",
                       "dense": "row norms"}
    assert report.checks.per_sample is not None
    assert "vectorized (1)" in report.checks.per_sample


def test_per_sample_fallback_over_budget_says_why(tfk: Any) -> None:
    """An entry whose per-sample gradients would not fit the memory budget: no figure, and
    the reason with the sizes."""
    _, keras = tfk
    layers = keras.layers
    model = keras.Sequential([keras.Input((4, 3)), layers.LSTM(64, name="lstm"),
                              layers.Dense(1, name="out")])
    x = np.random.default_rng(0).standard_normal((BATCH, 4, 3)).astype(np.float32)
    report = gradinspect.inspect(model, x, np.zeros((BATCH, 1), np.float32),
                                 loss="mean_squared_error", per_sample=True,
                                 memory_budget=100_000)
    assert report["lstm"].per_sample is None
    assert report["out"].per_sample is not None
    note = report.checks.per_sample
    assert note is not None
    assert "lstm (per-sample gradients of 17,408 parameters" in note
    assert "--memory-budget" in note


def test_per_sample_training_with_dropout_in_a_fallback_layer(tfk: Any) -> None:
    """In training mode a layer that draws random numbers cannot be called again to the same
    result: its figure is refused, with the reason, and the others stay exact."""
    _, keras = tfk
    layers = keras.layers
    model = keras.Sequential([keras.Input((4, 3)), layers.GRU(3, dropout=0.5, name="gru"),
                              layers.Dense(1, name="out")])
    x = np.random.default_rng(0).standard_normal((BATCH, 4, 3)).astype(np.float32)
    report = gradinspect.inspect(model, x, np.zeros((BATCH, 1), np.float32),
                                 loss="mean_squared_error", per_sample=True, training=True)
    assert report["gru"].per_sample is None
    assert report["out"].per_sample is not None
    assert "random numbers" in (report.checks.per_sample or "")


def test_mislabelled_image_in_a_cnn_batch_is_named_by_its_row(tfk: Any) -> None:
    """A trained CNN, one image of the batch given the wrong label: the whole-model
    per-sample norms single it out, and the finding names its row."""
    _, keras = tfk
    layers = keras.layers
    keras.utils.set_random_seed(7)
    rng = np.random.default_rng(7)
    n = 32
    labels = np.arange(n) % 2
    x = rng.normal(0.0, 0.3, (n, 12, 12, 1)).astype(np.float32)
    for i, c in enumerate(labels):  # class 0: a bright square top left; class 1: bottom right
        x[i, 1:5, 1:5] += 2.0 if c == 0 else 0.0
        x[i, 7:11, 7:11] += 2.0 if c == 1 else 0.0
    model = keras.Sequential([
        keras.Input((12, 12, 1)), layers.Conv2D(4, 3, activation="relu", name="conv1"),
        layers.MaxPooling2D(), layers.Conv2D(4, 3, activation="relu", name="conv2"),
        layers.GlobalAveragePooling2D(), layers.Dense(2, activation="softmax", name="out")])
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="sparse_categorical_crossentropy")
    model.fit(x, labels, epochs=40, batch_size=n, verbose=0)
    wrong = labels.copy()
    wrong[7] = 1 - wrong[7]
    report = gradinspect.inspect(model, x, wrong, per_sample=True)
    whole = report.checks.per_sample_model
    assert whole is not None
    assert whole.method == "whole model (3 of 3 entries)"
    assert whole.top[0].index == 7
    assert 7 in whole.outliers
    found = [f for f in report.warnings if f.code == "gradient_outliers"]
    assert len(found) == 1
    assert found[0].message.startswith("sample 7 (1 of 32)")
    assert all(ly.per_sample is not None and ly.per_sample.top[0].index == 7
               for ly in report.layers)
    clean = gradinspect.inspect(model, x, labels, per_sample=True)
    assert not [f for f in clean.warnings if f.code == "gradient_outliers"]
