"""Keras 2 .h5 files (made with tf-keras, as most files on users' disks were) load and give the
same gradients as a plain tape on the original Keras 2 model."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gradinspect

tf_keras = pytest.importorskip("tf_keras")
L = tf_keras.layers


def chain() -> Any:
    return tf_keras.Sequential([L.Dense(6, activation="relu", input_shape=(5,)),
                                L.Dense(3, activation="sigmoid")])


def nested_sequential() -> Any:
    inner = tf_keras.Sequential([L.Dense(4, activation="tanh", input_shape=(5,)), L.Dense(3)],
                                name="inner")
    inp = tf_keras.Input((5,))
    return tf_keras.Model(inp, L.Dense(2, activation="sigmoid", name="head")(inner(inp)))


def nested_functional_twice() -> Any:
    i = tf_keras.Input((5,))
    block = tf_keras.Model(i, L.Dense(5, activation="elu", name="blk")(i), name="block")
    inp = tf_keras.Input((5,))
    return tf_keras.Model(inp, L.Dense(1, name="out")(block(block(inp))))


def shared_dropout_bn_activation() -> Any:
    inp = tf_keras.Input((5,))
    shared = L.Dense(5, activation="relu", name="shared")
    h = L.Dropout(0.3)(shared(shared(inp)))
    h = L.Dense(3, name="pre")(h)
    h = L.BatchNormalization()(h)
    return tf_keras.Model(inp, L.Activation("tanh")(h))


def multi_input_rank3() -> Any:
    a = tf_keras.Input((4, 3), name="seq")
    b = tf_keras.Input((4, 2), name="aux")
    h = L.Concatenate()([L.Dense(3, activation="tanh", name="ta")(a),
                         L.Dense(3, activation="relu", name="tb")(b)])
    return tf_keras.Model([a, b], L.Dense(2, name="head")(h))


BUILDERS: dict[str, Callable[[], Any]] = {
    "chain": chain,
    "nested_sequential": nested_sequential,
    "nested_functional_twice": nested_functional_twice,
    "shared_dropout_bn_activation": shared_dropout_bn_activation,
    "multi_input_rank3": multi_input_rank3,
}


def _inputs(model: Any) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.standard_normal((4, *t.shape[1:])).astype(np.float32) for t in model.inputs]


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_keras2_h5_gradients_match_keras2_tape(tfk: Any, tmp_path: Path, name: str) -> None:
    tf, _ = tfk
    tf_keras.utils.set_random_seed(3)
    model = BUILDERS[name]()
    path = tmp_path / f"{name}.h5"
    model.save(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    xs = _inputs(model)
    if len(xs) == 1:
        data = tmp_path / "x.npy"
        np.save(data, xs[0])
    else:
        data = tmp_path / "x.npz"
        np.savez(data, **{t.name.split(":")[0]: a for t, a in zip(model.inputs, xs,
                                                                    strict=True)})
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(model([tf.constant(a) for a in xs] if len(xs) > 1 else xs[0]))
    variables = model.trainable_variables
    grads = dict(zip((v.name for v in variables), tape.gradient(total, variables),
                     strict=True))

    report = gradinspect.inspect_files(path, data)
    assert report.model.format == "h5"
    assert report.loss.value == pytest.approx(float(total), rel=1e-5)
    for layer in report.layers:  # every variable of every entry, Dense or not
        for short, g in layer.grads.variables.items():
            if g is None:
                continue
            want = grads[f"{layer.name}/{short}:0"].numpy().astype(np.float64)
            assert g.norm == pytest.approx(np.linalg.norm(want), rel=1e-5, abs=1e-7), short
    assert report.coverage is not None
    assert report.coverage.inspected_params == report.coverage.trainable_params == sum(
        int(np.prod(v.shape)) for v in model.trainable_variables)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, "model file was modified"
