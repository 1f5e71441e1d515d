"""Verdicts that are true on the architectures people write: a normalisation over a single
entry is named as the cause of the zero gradients behind it; a layer that reads only its
input's shape (a position embedding added to its input) is no collapse; a zero-initialised
kernel is no explosion; under an adaptive optimizer, a gradient small or large next to the
others or to its weights is no harm; and every consequence's hint is its root's."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import gradinspect
from gradinspect.io.loaded import LoadedModel
from gradinspect.measure.stats import glorot_scale, near_zero
from gradinspect.records import Finding, Severity, WeightStats
from gradinspect.report import Report

RNG = np.random.default_rng(29)


def _all(report: Report) -> list[Finding]:
    return [*report.warnings, *(f for ly in report.layers for f in ly.warnings)]


def _codes(report: Report, at_least: Severity = Severity.WARNING) -> set[str]:
    return {f.code for f in _all(report) if f.severity.rank >= at_least.rank}


# ------------------------------------------------------ a normalisation over one entry


def _timeseries_transformer(keras: Any, blocks: int = 2) -> Any:
    """keras.io "Timeseries classification with a Transformer model", small: one feature per
    time step, LayerNormalization over that feature axis after the attention and after the
    feed-forward block, as the example writes it."""
    L = keras.layers
    keras.utils.set_random_seed(3)
    inputs = keras.Input((32, 1), name="signal")
    x = inputs
    for _ in range(blocks):
        a = L.MultiHeadAttention(key_dim=8, num_heads=2)(x, x)
        a = L.LayerNormalization(epsilon=1e-6)(a)
        res = a + x
        f = L.Conv1D(4, 1, activation="relu")(res)
        f = L.Conv1D(x.shape[-1], 1)(f)
        f = L.LayerNormalization(epsilon=1e-6)(f)
        x = f + res
    x = L.GlobalAveragePooling1D(data_format="channels_first")(x)
    x = L.Dense(8, activation="relu")(x)
    outputs = L.Dense(2, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy")
    return model


def test_a_normalisation_over_one_feature_is_the_root_of_the_zero_gradients(tfk: Any) -> None:
    _, keras = tfk
    model = _timeseries_transformer(keras)
    x = RNG.standard_normal((16, 32, 1)).astype(np.float32)
    y = RNG.integers(0, 2, 16)
    report = gradinspect.inspect(model, x, y)
    found = _all(report)
    roots = [f for f in found if f.root and f.severity is not Severity.INFO]
    norms = [ly.path for ly in report.layers if ly.class_name == "LayerNormalization"]
    assert len(norms) == 4
    assert {f.code for f in roots} == {"degenerate_normalization"}
    assert sorted(f.layer or "" for f in roots) == sorted(norms)
    for f in roots:
        assert f.severity is Severity.ERROR
        assert "axis -1 (size 1)" in f.message
        assert f.figures["sizes"] == "1"
    order = [ly.path for ly in report.layers]
    zero = [f for f in found if f.code == "zero_gradient"]
    # every attention and convolution weight of every block: exactly zero gradient
    zero_layers = {f.layer for f in zero}
    assert {p for p in order if "attention" in p or "conv1d" in p} <= zero_layers
    for f in zero:
        assert not f.root
        (cause,) = f.caused_by
        code, where = cause.split("@")
        assert code == "degenerate_normalization"
        # the normalisation on the layer's own branch: the nearest one after it
        after = [p for p in norms if order.index(p) >= order.index(f.layer or "")]
        assert where == after[0]
        assert f.hint.startswith(f"fix {cause} first: normalise over an axis")
        assert "initialisation" not in f.hint
    head = report.layers[-1]
    assert head.grads.kernel is not None
    assert head.grads.kernel.norm > 0


def test_normalisations_over_more_than_one_entry_are_not_flagged(tfk: Any) -> None:
    _, keras = tfk
    L = keras.layers
    keras.utils.set_random_seed(4)
    inputs = keras.Input((8, 8, 4))
    h = L.Conv2D(4, 3, padding="same")(inputs)
    h = L.GroupNormalization(groups=4)(h)  # one channel per group, but 64 positions
    h = L.LayerNormalization(axis=(1, 2))(h)
    h = L.Flatten()(h)
    outputs = L.Dense(3)(h)
    model = keras.Model(inputs, outputs)
    report = gradinspect.inspect(model, RNG.standard_normal((8, 8, 8, 4)).astype(np.float32))
    assert "degenerate_normalization" not in _codes(report, Severity.INFO)


@pytest.mark.parametrize("kind", ["group", "unit"])
def test_other_normalisations_over_one_entry_are_named(tfk: Any, kind: str) -> None:
    _, keras = tfk
    L = keras.layers
    keras.utils.set_random_seed(5)
    inputs = keras.Input((1, 1, 3))
    h = L.Conv2D(3, 1, name="conv")(inputs)
    norm = {"group": lambda: L.GroupNormalization(groups=3, name="norm"),
            "rms": lambda: L.LayerNormalization(rms_scaling=True, axis=(1, 2), name="norm"),
            "unit": lambda: L.UnitNormalization(axis=(1, 2), name="norm")}[kind]()
    h = norm(h)
    outputs = L.Dense(2, name="head")(L.Dense(4, name="mid")(L.Flatten()(h)))
    model = keras.Model(inputs, outputs)
    x = RNG.standard_normal((8, 1, 1, 3)).astype(np.float32)
    if kind == "unit":  # owns no weights: not an entry, so nothing to name it by
        report = gradinspect.inspect(model, x)
        assert "degenerate_normalization" not in _codes(report, Severity.INFO)
        return
    report = gradinspect.inspect(model, x)
    (f,) = [f for f in report["norm"].warnings if f.code == "degenerate_normalization"]
    assert f.root
    assert f.severity is Severity.ERROR
    conv = [g for g in report["conv"].warnings if g.severity is not Severity.INFO]
    assert conv
    assert all(g.caused_by == ("degenerate_normalization@norm",) for g in conv)


# ------------------------------------------------------ what a parallel path carries


def test_a_position_embedding_added_to_its_input_is_no_collapse(tfk: Any) -> None:
    """FNet/CCT/keras-hub: the position embedding reads only its input's shape, so its
    ∂L/∂input is zero by construction; the add carries the signal to the token embedding."""
    _, keras = tfk
    L = keras.layers

    class PositionOnly(L.Layer):
        def build(self, input_shape: Any) -> None:
            self.table = self.add_weight(shape=tuple(input_shape[1:]), name="table")

        def call(self, x: Any) -> Any:
            return keras.ops.zeros_like(x) * x + self.table

    keras.utils.set_random_seed(6)
    tokens = keras.Input((10,), dtype="int32")
    emb = L.Embedding(50, 16, name="tokens")(tokens)
    pos = PositionOnly(name="positions")(emb)
    h = L.Dense(16, activation="relu", name="ffn")(emb + pos)
    outputs = L.Dense(3, name="head")(L.GlobalAveragePooling1D()(h))
    model = keras.Model(tokens, outputs)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ids = RNG.integers(0, 50, (16, 10)).astype(np.int32)
    report = gradinspect.inspect(model, ids, RNG.integers(0, 3, 16))
    assert report["positions"].backward_gain == 0.0
    assert "signal_collapse" not in _codes(report, Severity.INFO)
    assert _codes(report) == set()


def test_a_collapse_with_nothing_past_it_is_still_found(tfk: Any) -> None:
    _, keras = tfk
    L = keras.layers
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((6,)), L.Dense(8, name="a"),
                              L.Dense(8, activation="tanh", name="wall"), L.Dense(1)])
    w, b = model.get_layer("wall").get_weights()
    model.get_layer("wall").set_weights([w, b + 8.0])
    report = gradinspect.inspect(model, RNG.standard_normal((32, 6)).astype(np.float32))
    (f,) = [f for f in report.warnings if f.code == "signal_collapse"]
    assert f.figures["layer"] == "wall"


# ------------------------------------------------------ zero kernels, adaptive optimizers


def _tnet(keras: Any, optimizer: Any) -> tuple[Any, np.ndarray, np.ndarray]:
    """PointNet's T-net ends in a zero-initialised Dense (its bias the identity)."""
    L = keras.layers
    keras.utils.set_random_seed(8)
    inputs = keras.Input((9,), name="points")
    h = L.Dense(16, activation="relu", name="features")(inputs)
    h = L.Dense(9, kernel_initializer="zeros",
                bias_initializer=keras.initializers.Constant(np.eye(3).flatten()),
                name="transform")(h)
    outputs = L.Dense(4, name="head")(h)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = RNG.standard_normal((16, 9)).astype(np.float32)
    y = RNG.integers(0, 4, 16)
    return model, x, y


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_zero_initialised_kernel_is_no_explosion(tfk: Any, optimizer: str) -> None:
    _, keras = tfk
    model, x, y = _tnet(keras, optimizer)
    at_init = gradinspect.inspect(model, x, y)
    assert "exploding_gradient" not in _codes(at_init, Severity.INFO)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)  # a kernel of ~lr-sized entries
    kernel = model.get_layer("transform").get_weights()[0]
    assert 0 < np.abs(kernel).max() < 0.05
    after = gradinspect.inspect(model, x, y)
    assert not [f for f in after["transform"].warnings if f.code == "exploding_gradient"]


def test_an_adaptive_optimizer_makes_relative_verdicts_info(tfk: Any) -> None:
    """||dL/dW||/||W|| above 10 warns under SGD (a step at learning rate 0.1 would be larger
    than W) but not under Adam, whose step is the learning rate whatever the gradient's
    size; an absolutely huge gradient warns under both."""
    _, keras = tfk
    L = keras.layers
    x = RNG.standard_normal((16, 6)).astype(np.float32)
    y = RNG.standard_normal((16, 1)).astype(np.float32) * 50
    severities = {}
    for optimizer in ("sgd", "adam"):
        keras.utils.set_random_seed(9)
        model = keras.Sequential([keras.Input((6,)), L.Dense(8, name="small"),
                                  L.Dense(1, name="out")])
        model.compile(optimizer, "mse")
        report = gradinspect.inspect(model, x, y)
        (f,) = [f for f in report["small"].warnings if f.code == "exploding_gradient"]
        assert f.figures["grad_to_weight_per_sample"] > 10
        assert f.figures["norm_per_sample"] < 1e3
        severities[optimizer] = f.severity
        if optimizer == "adam":
            assert "adam" in f.message
    assert severities == {"sgd": Severity.WARNING, "adam": Severity.INFO}


def test_absolute_vanishing_warns_under_adam_too(tfk: Any) -> None:
    _, keras = tfk
    L = keras.layers
    keras.utils.set_random_seed(10)
    model = keras.Sequential([keras.Input((6,)), L.Dense(8, name="tiny"), L.Dense(1)])
    w, b = model.get_layer("tiny").get_weights()
    model.get_layer("tiny").set_weights([w, b])
    last = model.layers[-1]
    lw, lb = last.get_weights()
    last.set_weights([lw * 1e-9, lb])
    model.compile("adam", "mse")
    x = RNG.standard_normal((16, 6)).astype(np.float32)
    report = gradinspect.inspect(model, x, np.zeros((16, 1), np.float32) + 1.0)
    (f,) = [f for f in report["tiny"].warnings if f.code == "vanishing_gradient"]
    assert f.figures["mean_abs_per_sample"] < 1e-7
    assert f.severity is Severity.WARNING


# ------------------------------------------------------ the figures behind them


@pytest.mark.parametrize(("config", "expected"), [
    (None, None),
    ({"optimizer": "adam"}, "adam"),
    ({"optimizer": {"module": "keras.optimizers", "class_name": "AdamW", "config": {}}},
     "adamw"),
    ({"optimizer_config": {"class_name": "Custom>Adam", "config": {}}}, "adam"),
    ({"optimizer_config": {"class_name": "keras.optimizers.SGD", "config": {}}}, "sgd"),
    ({"optimizer": {"class_name": "LossScaleOptimizer", "config": {
        "inner_optimizer": {"class_name": "RMSprop", "config": {}}}}}, "rmsprop"),
    ({"optimizer": 3}, None),
])
def test_the_optimizer_is_read_from_keras_3_and_keras_2_configs(config: Any,
                                                               expected: str | None) -> None:
    loaded = LoadedModel(model=None, path=None, format="keras", inputs=(),
                         compile_config=config)
    assert loaded.optimizer == expected


def test_near_zero_is_judged_against_the_glorot_scale() -> None:
    assert glorot_scale((64, 32)) == pytest.approx(np.sqrt(2 / 96))
    assert glorot_scale((3, 3, 8, 16)) == pytest.approx(np.sqrt(2 / (9 * 24)))
    assert np.isnan(glorot_scale(()))
    scale = glorot_scale((64, 32))
    rms = 0.05 * scale
    small = WeightStats(shape=(64, 32), norm=rms * np.sqrt(64 * 32))
    usual = WeightStats(shape=(64, 32), norm=scale * np.sqrt(64 * 32))
    assert near_zero([small], 0.1)
    assert not near_zero([usual], 0.1)
    assert not near_zero([small, usual], 0.1)
    assert not near_zero([], 0.1)


# ------------------------------------------------------ unscaled inputs: harm, not scale


def test_unscaled_features_that_harm_nothing_are_information(tfk: Any) -> None:
    """Raw numeric features (an age, an angle in degrees) into a Dense followed by
    BatchNormalization, as keras.io's wide & deep network feeds them: named, as info, with
    no consequence; the same features into a sigmoid layer that they saturate: a warning,
    root of the saturation (the planted pixel case in test_diagnosis)."""
    _, keras = tfk
    L = keras.layers
    keras.utils.set_random_seed(5)
    x = np.stack([RNG.uniform(18, 80, 64), RNG.uniform(0, 360, 64)], 1).astype(np.float32)
    calm = keras.Sequential([keras.Input((2,)), L.BatchNormalization(), L.Dense(8, "relu"),
                             L.Dense(1)])
    report = gradinspect.inspect(calm, x, training=True)
    found = [f for f in _all(report) if f.code == "unscaled_input"]
    assert [f.severity for f in found] == [Severity.INFO]
    assert _codes(report) == set()
    saturating = keras.Sequential([keras.Input((2,)), L.Dense(8, "sigmoid"), L.Dense(1)])
    harmed = [f for f in _all(gradinspect.inspect(saturating, x)) if f.code == "unscaled_input"]
    assert [f.severity for f in harmed] == [Severity.WARNING]
    assert harmed[0].root


def test_token_ids_in_a_float_input_read_by_an_embedding_are_not_unscaled(tfk: Any) -> None:
    """keras.io's text Transformer declares ``Input(shape=(maxlen,))`` (float) and feeds its
    token ids to an Embedding inside a custom layer: ids index a table, their scale means
    nothing. Float features beside them are still judged."""
    _, keras = tfk
    L = keras.layers
    keras.utils.set_random_seed(6)
    tokens = keras.Input((10,), name="tokens")
    extra = keras.Input((3,), name="extra")
    h = L.GlobalAveragePooling1D()(L.Embedding(500, 8)(tokens))
    out = L.Dense(2, activation="softmax")(L.Concatenate()([h, L.Dense(4, "sigmoid")(extra)]))
    model = keras.Model([tokens, extra], out)
    ids = RNG.integers(1, 500, (32, 10)).astype(np.float32)
    scaled = RNG.standard_normal((32, 3)).astype(np.float32)
    report = gradinspect.inspect(model, {"tokens": ids, "extra": scaled})
    assert "unscaled_input" not in _codes(report, Severity.INFO)
    raw = {"tokens": ids, "extra": 200 + 50 * scaled}
    named = [f.figures["input"] for f in _all(gradinspect.inspect(model, raw))
             if f.code == "unscaled_input"]
    assert named == ["extra"]


def test_a_signal_at_unit_scale_is_no_collapse_beside_a_huge_branch(tfk: Any) -> None:
    """keras.io's deep & cross network: a cross layer multiplies raw features (RMS ~800),
    a parallel branch normalises them and feeds its next Dense at unit scale: no collapse.
    A signal that does fall to nothing is still found (test_diagnosis' planted case)."""
    _, keras = tfk
    L = keras.layers
    keras.utils.set_random_seed(7)
    x0 = keras.Input((4,))
    cross = x0
    for k in range(2):  # the second cross Dense reads x0 * Dense(x0): RMS in the thousands
        cross = L.Add()([L.Multiply()([x0, L.Dense(4, name=f"cross_{k}")(cross)]), cross])
    deep = L.Dense(8, name="deep_out")(L.ReLU()(L.BatchNormalization()(L.Dense(8)(x0))))
    model = keras.Model(x0, L.Dense(2, name="head")(L.Concatenate()([cross, deep])))
    x = (300 + 100 * RNG.standard_normal((64, 4))).astype(np.float32)
    report = gradinspect.inspect(model, x, training=True)
    figures = {ly.path: ly.forward for ly in report.layers}
    assert figures["cross_1"].output_rms > 1e3 * figures["deep_out"].input_rms
    assert "vanishing_activations" not in _codes(report, Severity.INFO)


# ------------------------------------------------------ BatchNormalization on one-hot columns


def test_one_hot_columns_that_never_fire_say_nothing_about_moving_statistics(tfk: Any) -> None:
    """keras.io's wide & deep network normalises one-hot columns, most of which never fire in
    a batch: constant at their moving mean, they leave the fit of the others to judge (the
    median over every channel was 0, an "untrained" BatchNormalization that is trained)."""
    _, keras = tfk
    L = keras.layers
    keras.utils.set_random_seed(8)
    model = keras.Sequential([keras.Input((12,)), L.BatchNormalization(name="bn"),
                              L.Dense(4, "relu"), L.Dense(1)])
    x = np.zeros((64, 12), np.float32)
    x[:, :4] = RNG.standard_normal((64, 4))  # 4 live columns, 8 one-hot columns never firing
    bn = model.get_layer("bn")
    bn.momentum = 0.0
    model(x, training=True)  # moving statistics = this data's
    report = gradinspect.inspect(model, x)
    assert "untrained_batchnorm" not in _codes(report, Severity.INFO)
    rms = report.layers[0].forward.moving_stats_rms
    assert rms == pytest.approx(1.0, rel=1e-2)  # (x - mean) / sqrt(var + eps) on live columns
    bn.moving_variance.assign(np.full(12, 1e4, np.float32))  # a misfit on the live columns
    assert "untrained_batchnorm" in _codes(gradinspect.inspect(model, x))


def test_one_confidently_wrong_sample_is_information_two_are_a_warning(tfk: Any) -> None:
    """1 of 16 samples (6%, above ``softmax_wrong``) confidently wrong is an anecdote whose
    label is the first suspect; two are a pattern."""
    _, keras = tfk
    keras.utils.set_random_seed(9)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    kernel, bias = model.layers[0].get_weights()
    model.layers[0].set_weights([kernel * 300, bias])  # every sample >= 0.99 confident
    x = RNG.standard_normal((16, 4)).astype(np.float32)
    predicted = np.argmax(np.asarray(model(x)), axis=1)
    assert float(np.asarray(model(x)).max(axis=1).min()) >= 0.99
    for wrong, severity in ((1, Severity.INFO), (2, Severity.WARNING)):
        y = predicted.copy()
        y[:wrong] = (y[:wrong] + 1) % 3
        report = gradinspect.inspect(model, x, y, loss="sparse_categorical_crossentropy")
        (found,) = [f for f in _all(report) if f.code == "softmax_saturated"]
        assert found.severity is severity
        assert found.figures["confident_wrong_fraction"] == pytest.approx(wrong / 16)


# ------------------------------------------------------ one cause, one root


def test_a_vanishing_chain_through_a_sigmoid_stack_is_one_root(tfk: Any) -> None:
    """Ten sigmoid layers: the gradient shrinks by about x0.2 per layer on its way back, and
    the first four from the input fall below the vanishing thresholds. One cause: one root,
    the chain's layer nearest the output, which the others link to."""
    _, keras = tfk
    keras.utils.set_random_seed(0)
    L = keras.layers
    model = keras.Sequential([keras.Input((16,)),
                              *(L.Dense(16, activation="sigmoid", name=f"h{i}") for i in range(10)),
                              L.Dense(3, activation="softmax", name="out")])
    x = np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 3, 64)
    report = gradinspect.inspect(model, x, y, loss="sparse_categorical_crossentropy")
    vanishing = [f for f in _all(report) if f.code == "vanishing_gradient"]
    assert len(vanishing) >= 3
    order = [ly.path for ly in report.layers]
    layers = sorted((f.layer or "" for f in vanishing), key=order.index)
    assert [order.index(p) for p in layers] == list(range(len(layers)))  # h0, h1, ... adjacent
    roots = [f for f in vanishing if f.root]
    assert [f.layer for f in roots] == [layers[-1]]
    for f in vanishing:
        if not f.root:
            assert f.caused_by == (roots[0].id,)
            assert f.hint.startswith(f"fix {roots[0].id} first")


# ------------------------------------------------------ saturation, by what it does


@pytest.mark.parametrize(("activation", "peak"), [("tanh", 1.0), ("sigmoid", 0.25)])
def test_the_derivative_gain_is_what_the_activation_does_to_the_backward_signal(
        tfk: Any, activation: str, peak: float) -> None:
    """||dL/dz|| / ||dL/doutput|| of a saturating activation inside a Dense, against its
    peak derivative, equals a plain tape of the same two gradients."""
    tf, keras = tfk
    keras.utils.set_random_seed(10)
    hidden = keras.layers.Dense(8, activation=activation, name="hidden")
    model = keras.Sequential([keras.Input((8,)), hidden, keras.layers.Dense(2, name="head")])
    x = (3 * RNG.standard_normal((32, 8))).astype(np.float32)
    with tf.GradientTape(persistent=True) as tape:
        z = tf.constant(x) @ hidden.kernel + hidden.bias
        tape.watch(z)
        a = getattr(tf.math, activation)(z)
        total = tf.reduce_sum(model.layers[1](a))
    want = float(tf.norm(tape.gradient(total, z)) / tf.norm(tape.gradient(total, a))) / peak
    got = gradinspect.inspect(model, x).layers[0].activity
    assert got is not None
    assert got.derivative_gain == pytest.approx(want, rel=1e-5)
    assert 0 < got.derivative_gain < 1


# ------------------------------------------------------ labels of one class


def test_labels_of_one_class_are_named(tfk: Any) -> None:
    """Every label 0 (a broken join): named at model level with the output and the class;
    labels of two classes or more are not."""
    _, keras = tfk
    keras.utils.set_random_seed(11)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, "relu"),
                              keras.layers.Dense(3, activation="softmax", name="out")])
    x = RNG.standard_normal((32, 4)).astype(np.float32)
    for loss, y in (("sparse_categorical_crossentropy", np.zeros(32, np.int64)),
                    ("categorical_crossentropy", np.eye(3, dtype=np.float32)[np.zeros(32, int)])):
        report = gradinspect.inspect(model, x, y, loss=loss, batch_size=10)
        (found,) = [f for f in _all(report) if f.code == "constant_labels"]
        assert found.severity is Severity.WARNING
        assert found.layer is None
        assert found.figures["output"] == "out"
        assert found.figures["class"] == 0
    mixed = np.zeros(32, np.int64)
    mixed[-1] = 2  # one other class, in the last batch: not constant
    report = gradinspect.inspect(model, x, mixed, loss="sparse_categorical_crossentropy",
                                 batch_size=10)
    assert "constant_labels" not in _codes(report, Severity.INFO)


@pytest.mark.parametrize(("activation", "stuck"), [("tanh", False), ("relu", True)])
def test_a_zero_kernel_is_an_error_only_where_it_can_never_move(
        tfk: Any, activation: str, stuck: bool) -> None:
    """kernel_initializer="zeros": under tanh the layer's own gradient is not zero (tanh'(0)
    = 1) and the first update moves it, so what it zeroes meanwhile is info; under relu with
    a zero bias, relu'(0) = 0 zeroes its own gradient too: an error root, the dead units and
    the zero input of the next layer linked to it."""
    _, keras = tfk
    keras.utils.set_random_seed(12)
    L = keras.layers
    model = keras.Sequential([keras.Input((6,)), L.Dense(8, "relu", name="first"),
                              L.Dense(8, activation, kernel_initializer="zeros", name="zero"),
                              L.Dense(3, activation="softmax", name="out")])
    x = RNG.standard_normal((32, 6)).astype(np.float32)
    y = RNG.integers(0, 3, 32)
    report = gradinspect.inspect(model, x, y, loss="sparse_categorical_crossentropy")
    (zero,) = [f for f in _all(report) if f.code == "zero_kernel"]
    assert zero.figures["stuck"] is stuck
    if not stuck:
        assert zero.severity is Severity.INFO
        assert _codes(report) == set()
        return
    assert zero.severity is Severity.ERROR
    assert zero.root
    harmful = [f for f in _all(report) if f.severity.rank >= Severity.WARNING.rank]
    assert all(f is zero or f.caused_by for f in harmful), [f.id for f in harmful]
    assert any(f.code == "dead_units" and f.caused_by == (zero.id,) for f in harmful)
