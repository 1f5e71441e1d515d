"""Random architectures of every layer kind for property tests (CNN, recurrent, attention,
normalization, embedding, custom layers), and the independent reference: one plain
``tf.GradientTape`` over ``model.trainable_variables``, no hooks involved."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st

from gradinspect.report import Report

IMAGE_BLOCKS = ("conv", "conv_bn_relu", "depthwise", "separable", "transpose", "residual",
                "group_norm", "custom")
SEQUENCE_BLOCKS = ("lstm", "gru", "simple_rnn", "bidirectional", "conv1d", "attention",
                   "layer_norm", "einsum", "prelu", "custom")
ACTIVATIONS = ("linear", "relu", "tanh", "sigmoid", "elu")


@dataclass(frozen=True)
class KindArch:
    """A model: an input kind, a few blocks, a pooled Dense head."""

    source: str
    """``image`` (H, W, C), ``sequence`` (T, F) or ``tokens`` (T,) integer ids."""
    blocks: tuple[str, ...]
    activations: tuple[str, ...]
    bias: bool
    batch: int
    seed: int


@st.composite
def kind_archs(draw: Any) -> KindArch:
    source = draw(st.sampled_from(["image", "sequence", "tokens"]))
    pool = IMAGE_BLOCKS if source == "image" else SEQUENCE_BLOCKS
    depth = draw(st.integers(1, 3))
    return KindArch(
        source=source,
        blocks=tuple(draw(st.lists(st.sampled_from(pool), min_size=depth, max_size=depth))),
        activations=tuple(draw(st.lists(st.sampled_from(ACTIVATIONS), min_size=depth,
                                        max_size=depth))),
        bias=draw(st.booleans()),
        batch=draw(st.integers(1, 4)),
        seed=draw(st.integers(0, 2**16)),
    )


_SCALE: list[Any] = []


def scale_layer(keras: Any) -> Any:
    """A custom layer with a weight of its own (the ``generic`` kind), registered with Keras so
    that a model using it can be rebuilt from its config (``--gradcheck``)."""
    if _SCALE:
        return _SCALE[0]

    @keras.saving.register_keras_serializable(package="gradinspect_tests")
    class Scale(keras.layers.Layer):
        def build(self, shape: Any) -> None:
            self.w = self.add_weight(shape=(shape[-1],), initializer="random_normal",
                                     name="w")

        def call(self, x: Any) -> Any:
            return x * (1.0 + self.w)

    _SCALE.append(Scale)
    return Scale


def _block(keras: Any, name: str, act: str, bias: bool, h: Any, k: int) -> Any:
    L = keras.layers
    width = 6
    if name == "conv":
        return L.Conv2D(width, 3, padding="same", activation=act, use_bias=bias)(h)
    if name == "conv_bn_relu":
        h = L.Conv2D(width, 1, strides=2, padding="same", use_bias=False)(h)  # 1x1, stride 2
        return L.ReLU()(L.BatchNormalization()(h))
    if name == "depthwise":
        return L.DepthwiseConv2D(3, padding="same", activation=act, use_bias=bias)(h)
    if name == "separable":
        return L.SeparableConv2D(width, 3, padding="same", activation=act, use_bias=bias)(h)
    if name == "transpose":
        return L.Conv2DTranspose(width, 2, strides=1, padding="same", activation=act,
                                 use_bias=bias)(h)
    if name == "residual":
        inner = L.Conv2D(int(h.shape[-1]), 3, padding="same", activation=act)(h)
        return L.Add()([h, inner])
    if name == "group_norm":
        channels = int(h.shape[-1])
        return L.GroupNormalization(groups=2 if channels % 2 == 0 else 1)(h)
    if name == "custom":
        return scale_layer(keras)(name=f"scale{k}")(h)
    if name in ("lstm", "gru", "simple_rnn"):
        cls = {"lstm": L.LSTM, "gru": L.GRU, "simple_rnn": L.SimpleRNN}[name]
        return cls(width, return_sequences=True, use_bias=bias)(h)
    if name == "bidirectional":
        return L.Bidirectional(L.GRU(3, return_sequences=True))(h)
    if name == "conv1d":
        return L.Conv1D(width, 2, padding="causal", activation=act, use_bias=bias)(h)
    if name == "attention":
        return L.MultiHeadAttention(2, 3, use_bias=bias)(h, h)
    if name == "layer_norm":
        return L.LayerNormalization()(h)
    if name == "einsum":
        return L.EinsumDense("abc,cd->abd", output_shape=(None, width), activation=act,
                             bias_axes="d" if bias else None)(h)
    if name == "prelu":
        return L.PReLU()(h)
    raise ValueError(name)


def build_kinds(keras: Any, arch: KindArch) -> Any:
    keras.utils.set_random_seed(arch.seed)
    L = keras.layers
    if arch.source == "image":
        inp = keras.Input((6, 6, 3))
        h = inp
    elif arch.source == "sequence":
        inp = keras.Input((5, 4))
        h = inp
    else:
        inp = keras.Input((5,), dtype="int32")
        h = L.Embedding(11, 4)(inp)
    for k, (name, act) in enumerate(zip(arch.blocks, arch.activations, strict=True)):
        h = _block(keras, name, act, arch.bias, h, k)
    pool = L.GlobalAveragePooling2D() if arch.source == "image" else L.GlobalAveragePooling1D()
    out = L.Dense(3, activation="tanh")(pool(h))
    return keras.Model(inp, out)


def kinds_data(arch: KindArch) -> np.ndarray:
    rng = np.random.default_rng(arch.seed)
    if arch.source == "image":
        return rng.standard_normal((arch.batch, 6, 6, 3)).astype(np.float32)
    if arch.source == "sequence":
        return rng.standard_normal((arch.batch, 5, 4)).astype(np.float32)
    return rng.integers(0, 11, size=(arch.batch, 5)).astype(np.int32)


def tape_by_path(tf: Any, model: Any, x: Any, loss: str = "sum") -> dict[str, np.ndarray]:
    """dL/dvariable by one plain tape over ``model.trainable_variables``, keyed by path; ``x``
    one array or a dict by input name (keras-hub models)."""
    inputs = {k: tf.constant(v) for k, v in x.items()} if isinstance(x, dict) \
        else tf.constant(x)
    with tf.GradientTape() as tape:
        flat = [tf.reshape(o, [-1]) for o in tf.nest.flatten(model(inputs))]
        out = tf.concat(flat, 0)  # every output entry, as gradinspect's sum and mean take them
        total = tf.reduce_sum(out) if loss == "sum" else tf.reduce_mean(out)
    grads = tape.gradient(total, model.trainable_variables)
    return {v.path: np.asarray(tf.convert_to_tensor(g), dtype=np.float64)
            for v, g in zip(model.trainable_variables, grads, strict=True)}


def assert_matches_tape(report: Report, reference: dict[str, np.ndarray],
                        rel: float = 1e-5) -> None:
    """Every variable of every entry against the plain tape, by Keras variable path; entries
    whose true gradient is zero (a key bias in attention) are compared on the model's scale."""
    got = {w.path: (entry, name) for entry in report.layers
           for name, w in entry.weights.variables.items() if w is not None}
    assert set(got) == set(reference), "the report must cover exactly the trainable variables"
    scale = max((float(np.abs(g).max(initial=0.0)) for g in reference.values()), default=0.0)
    floor = 1e-6 * max(scale, 1e-30)
    for path, want in reference.items():
        entry, name = got[path]
        stats = entry.grads.variables[name]
        assert stats is not None
        assert stats.shape == want.shape, path
        norm = float(np.linalg.norm(want))
        assert abs(stats.norm - norm) <= rel * norm + floor * np.sqrt(want.size), path
        assert abs(stats.max_abs - float(np.abs(want).max())) <= rel * norm + floor, path
        assert abs(stats.mean_abs - float(np.abs(want).mean())) <= rel * norm + floor, path
    coverage = report.coverage
    assert coverage is not None
    assert coverage.inspected_params == coverage.trainable_params
    assert coverage.skipped == ()
