"""Regenerate the bundled samples deterministically: ``python samples/make_samples.py``.

Each model is saved twice, as ``NAME.keras`` (Keras 3 zip) and ``NAME.h5`` (HDF5), with its
input sample as ``NAME_x.npy``. The weights come from fixed seeds, so reruns give the same
numbers (the .keras archive also stores a save date, so its bytes differ).

- seed_a: Dense(4, sigmoid) on [[1,2,3],[4,5,6]]           (the seed article's first example)
- seed_b: Dense(3, relu) on [[1,2,3,4,5]]                   (second example)
- seed_c: Dense(8, relu) -> Dense(5, sigmoid) on a (2, 10) normal batch   (third example)
- mnist_mlp: 784 -> 256 relu -> 128 relu -> 10 logits on 64 synthetic "pixel" rows in [0, 1]
- cnn_small: a MobileNet-style CNN (Conv2D 1x1/3x3 with BatchNormalization and ReLU6, a
  depthwise convolution, a residual add, a Dense head of 10 logits) on 32 standardised 16x16x3
  images: every layer kind a CNN has

``python samples/make_samples.py [OUT_DIR] [NAME ...]`` writes all samples, or the named ones.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def build(keras, name: str):  # type: ignore[no-untyped-def]
    layers = keras.layers
    if name == "seed_a":
        return keras.Sequential([keras.Input((3,)), layers.Dense(4, activation="sigmoid")],
                                name=name)
    if name == "seed_b":
        return keras.Sequential([keras.Input((5,)), layers.Dense(3, activation="relu")],
                                name=name)
    if name == "seed_c":
        return keras.Sequential(
            [keras.Input((10,)), layers.Dense(8, activation="relu"),
             layers.Dense(5, activation="sigmoid")],
            name=name,
        )
    if name == "mnist_mlp":
        return keras.Sequential(
            [keras.Input((784,), name="pixels"), layers.Dense(256, activation="relu"),
             layers.Dense(128, activation="relu"), layers.Dense(10, name="logits")],
            name=name,
        )
    if name == "cnn_small":
        image = keras.Input((16, 16, 3), name="image")
        h = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="stem")(image)
        h = layers.ReLU(6.0, name="stem_relu")(layers.BatchNormalization(name="stem_bn")(h))
        e = layers.Conv2D(16, 1, use_bias=False, name="expand")(h)
        e = layers.ReLU(6.0, name="expand_relu")(layers.BatchNormalization(name="expand_bn")(e))
        d = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="depthwise")(e)
        d = layers.ReLU(6.0, name="depthwise_relu")(
            layers.BatchNormalization(name="depthwise_bn")(d))
        p = layers.Conv2D(8, 1, use_bias=False, name="project")(d)
        p = layers.BatchNormalization(name="project_bn")(p)
        h = layers.Add(name="residual")([h, p])
        h = layers.GlobalAveragePooling2D(name="pool")(h)
        return keras.Model(image, layers.Dense(10, name="logits")(h), name=name)
    raise ValueError(name)


def data(name: str) -> np.ndarray:
    rng = np.random.default_rng(20261127)
    if name == "seed_a":
        return np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32)
    if name == "seed_b":
        return np.array([[1, 2, 3, 4, 5]], dtype=np.float32)
    if name == "seed_c":
        return rng.standard_normal((2, 10)).astype(np.float32)
    if name == "mnist_mlp":
        return rng.uniform(0.0, 1.0, (64, 784)).astype(np.float32)
    if name == "cnn_small":
        return rng.standard_normal((32, 16, 16, 3)).astype(np.float32)
    raise ValueError(name)


NAMES = ("seed_a", "seed_b", "seed_c", "mnist_mlp", "cnn_small")


def main(out: Path = HERE, only: tuple[str, ...] = ()) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(HERE.parent))
    from gradinspect._tf import tf_modules

    _, keras = tf_modules()
    for i, name in enumerate(NAMES):
        if only and name not in only:
            continue
        keras.utils.set_random_seed(1000 + i)
        model = build(keras, name)
        model.save(out / f"{name}.keras")
        model.save(out / f"{name}.h5")
        np.save(out / f"{name}_x.npy", data(name))
        print(f"wrote {name}.keras, {name}.h5, {name}_x.npy")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE, tuple(sys.argv[2:]))
