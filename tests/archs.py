"""Random Dense architectures for property tests, and independent reference computations.

The references never touch gradinspect's hooks: a plain ``tf.GradientTape`` on an unhooked twin
of the model, and the closed-form Dense formulas in float64 numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st

SELU_SCALE = 1.0507009873554805
SELU_ALPHA = 1.6732632423543772


def _sig(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


DERIVATIVES = {
    "linear": np.ones_like,
    "relu": lambda z: (z > 0).astype(np.float64),
    "sigmoid": lambda z: _sig(z) * (1 - _sig(z)),
    "tanh": lambda z: 1 - np.tanh(z) ** 2,
    "elu": lambda z: np.where(z > 0, 1.0, np.exp(np.minimum(z, 0))),
    "softplus": _sig,
    "silu": lambda z: _sig(z) + z * _sig(z) * (1 - _sig(z)),
    # at z == 0 exactly (relu output feeding a bias-free layer) TF takes the right-hand branch
    "selu": lambda z: SELU_SCALE * np.where(z >= 0, 1.0, SELU_ALPHA * np.exp(np.minimum(z, 0))),
}
ACTIVATIONS = {
    "linear": lambda z: z,
    "relu": lambda z: np.maximum(z, 0),
    "sigmoid": _sig,
    "tanh": np.tanh,
    "elu": lambda z: np.where(z > 0, z, np.exp(np.minimum(z, 0)) - 1),
    "softplus": lambda z: np.log1p(np.exp(z)),
    "silu": lambda z: z * _sig(z),
    "selu": lambda z: SELU_SCALE * np.where(z > 0, z, SELU_ALPHA * (np.exp(np.minimum(z, 0)) - 1)),
}


@dataclass(frozen=True)
class Arch:
    """A model shape: optional second input, optional time axis, a Dense chain, an optional
    nested sub-model around part of the chain, an optional shared (twice-called) layer."""

    features: tuple[int, ...]
    time: int | None
    widths: tuple[int, ...]
    activations: tuple[str, ...]
    biases: tuple[bool, ...]
    nest: tuple[int, int] | None
    shared: int | None
    batch: int
    seed: int

    @property
    def is_chain(self) -> bool:
        return len(self.features) == 1 and self.nest is None and self.shared is None


@st.composite
def archs(draw: Any) -> Arch:
    n_inputs = draw(st.integers(1, 2))
    depth = draw(st.integers(1, 4))
    widths = list(draw(st.lists(st.integers(1, 6), min_size=depth, max_size=depth)))
    shared = draw(st.none() | st.integers(1, depth - 1)) if depth > 1 else None
    if shared is not None:
        widths[shared] = widths[shared - 1]  # called twice: output width = input width
    nest = None
    if depth > 1 and draw(st.booleans()):
        start = draw(st.integers(0, depth - 2))
        nest = (start, draw(st.integers(start + 1, depth)))
        if shared is not None and nest[0] <= shared < nest[1]:
            nest = None
    return Arch(
        features=tuple(draw(st.lists(st.integers(1, 5), min_size=n_inputs, max_size=n_inputs))),
        time=draw(st.none() | st.integers(2, 3)),
        widths=tuple(widths),
        activations=tuple(draw(st.lists(st.sampled_from(sorted(DERIVATIVES)), min_size=depth,
                                        max_size=depth))),
        biases=tuple(draw(st.lists(st.booleans(), min_size=depth, max_size=depth))),
        nest=nest,
        shared=shared,
        batch=draw(st.integers(1, 5)),
        seed=draw(st.integers(0, 2**16)),
    )


def build(keras: Any, arch: Arch) -> Any:
    """A Keras 3 functional model for ``arch``, with random biases (not zero) for coverage."""
    keras.utils.set_random_seed(arch.seed)
    layers = keras.layers
    inputs = [
        keras.Input((arch.time, f) if arch.time else (f,), name=f"in{i}")
        for i, f in enumerate(arch.features)
    ]
    bias_init = keras.initializers.RandomNormal(stddev=0.5)
    chain = [
        layers.Dense(w, activation=a, use_bias=b, bias_initializer=bias_init, name=f"d{i}")
        for i, (w, a, b) in enumerate(zip(arch.widths, arch.activations, arch.biases,
                                          strict=True))
    ]
    if len(inputs) > 1:
        first = chain[0]
        branch = [layers.Dense(first.units, activation="tanh", name=f"branch{i}")(x)
                  for i, x in enumerate(inputs)]
        h = layers.Concatenate(name="join")(branch)
    else:
        h = inputs[0]
    i = 0
    while i < len(chain):
        if arch.nest is not None and i == arch.nest[0]:
            sub = keras.Sequential(chain[arch.nest[0]:arch.nest[1]], name="nested")
            h = sub(h)
            i = arch.nest[1]
            continue
        h = chain[i](h)
        if i == arch.shared:
            h = chain[i](h)
        i += 1
    return keras.Model(inputs, h, name="arch")


def data_for(arch: Arch) -> list[np.ndarray]:
    rng = np.random.default_rng(arch.seed)
    return [
        rng.standard_normal((arch.batch, arch.time, f) if arch.time else (arch.batch, f))
        .astype(np.float32)
        for f in arch.features
    ]


def twin(keras: Any, arch: Arch, model: Any) -> Any:
    """An independent copy (built again from the spec) carrying the same weights."""
    other = build(keras, arch)
    other.set_weights(model.get_weights())
    return other


def plain_tape_grads(tf: Any, model: Any, inputs: list[np.ndarray], loss: str = "sum") -> dict[
    str, np.ndarray
]:
    """dL/dvariable by a plain tape, keyed by variable path, no hooks involved."""
    x = [tf.constant(a) for a in inputs]
    with tf.GradientTape() as tape:
        out = model(x if len(x) > 1 else x[0])
        total = tf.reduce_sum(out) if loss == "sum" else tf.reduce_mean(out)
    grads = tape.gradient(total, model.trainable_variables)
    return {v.path: g.numpy() for v, g in zip(model.trainable_variables, grads, strict=True)}


def chain_input_grads(tf: Any, model: Any, inputs: list[np.ndarray], loss: str = "sum") -> list[
    np.ndarray
]:
    """For a plain chain: dL/dinput of every Dense layer, by calling the layers one by one under
    a plain tape and watching each intermediate tensor."""
    dense = [ly for ly in model.layers if ly.__class__.__name__ == "Dense"]
    h = tf.constant(inputs[0])
    seen = []
    with tf.GradientTape(persistent=True) as tape:
        for layer in dense:
            tape.watch(h)
            seen.append(h)
            h = layer(h)
        total = tf.reduce_sum(h) if loss == "sum" else tf.reduce_mean(h)
    grads = [tape.gradient(total, t).numpy() for t in seen]
    del tape
    return grads
