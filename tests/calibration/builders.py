"""Model builders both sides of the corpus share, written as people write small classifiers.

Each builder is a frozen record with ``__call__(keras) -> compiled model``: the same record
builds the Keras 3 model (``keras``) and the Keras 2 one (``tf_keras``), whose layer APIs agree
on everything used here. Layers are named (``hidden_1``, ``conv_2``, ``out`` ...) so that an
expectation can name the layer where a cause sits. Also the Keras helpers: which module a
version means, its file suffix, saving, accuracy and intermediate tensors.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

SUFFIX = {3: ".keras", 2: ".h5"}
"""The file each Keras version saves: the Keras 3 zip, the Keras 2 full-model HDF5."""


class CorpusError(Exception):
    """A corpus entry that is not what it claims: a healthy model that did not learn, a sick
    one without its pathology. A broken corpus, not a data point."""


def keras_module(version: int) -> ModuleType:
    """``keras`` (3) or ``tf_keras`` (2). TensorFlow is imported through gradinspect's quiet
    door first, so that its start-up chatter stays out of the report."""
    from gradinspect._tf import tf_modules

    _, keras = tf_modules()
    if version == 3:
        return keras
    if version == 2:
        import tf_keras

        return tf_keras
    raise ValueError(f"Keras version {version}: the corpus has 2 (tf_keras) and 3")


def tensorflow() -> ModuleType:
    from gradinspect._tf import tf_modules

    return tf_modules()[0]


def fresh(keras: ModuleType, seed: int) -> None:
    """A clean graph and every random generator seeded: the same spec builds the same model."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)


def save(model: Any, path: Path) -> Path:
    """``model.save`` without the notice that HDF5 is a legacy format (Keras 2 files are HDF5
    on purpose)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*HDF5 file", category=UserWarning)
        model.save(path)
    return path


def predict(model: Any, x: np.ndarray, *, training: bool = False) -> np.ndarray:
    return np.asarray(model(x, training=training), dtype=np.float64)


def accuracy(model: Any, x: np.ndarray, y: np.ndarray, *, training: bool = False) -> float:
    """Test accuracy for class ids ``y``: argmax of a softmax, or one sigmoid unit > 0.5."""
    p = predict(model, x, training=training)
    guess = (p[:, 0] > 0.5).astype(np.int64) if p.shape[-1] == 1 else p.argmax(axis=-1)
    return float(np.mean(guess == np.asarray(y).reshape(-1)))


def tensors(keras: ModuleType, model: Any, name: str, x: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """(input, output) of layer ``name`` on ``x``, read from a sub-model of the same graph."""
    layer = model.get_layer(name)
    probe = keras.Model(model.inputs, [layer.input, layer.output])
    inp, out = probe(x, training=False)
    return np.asarray(inp, dtype=np.float64), np.asarray(out, dtype=np.float64)


def dense_preactivation(keras: ModuleType, model: Any, name: str, x: np.ndarray) -> np.ndarray:
    """z = x W + b of Dense layer ``name``, computed here from its input and weights."""
    inp, _ = tensors(keras, model, name, x)
    kernel, *bias = model.get_layer(name).get_weights()
    return np.asarray(inp @ kernel + (bias[0] if bias else 0.0), dtype=np.float64)


def dead_fraction(keras: ModuleType, model: Any, name: str, x: np.ndarray) -> float:
    """Fraction of the layer's units whose output is exactly zero on every sample of ``x``."""
    _, out = tensors(keras, model, name, x)
    return float(np.mean(np.all(out.reshape(-1, out.shape[-1]) == 0.0, axis=0)))


def weight_gradient_norms(keras: ModuleType, model: Any, loss: Any, x: np.ndarray,
                          y: np.ndarray) -> dict[str, float]:
    """||dL/dkernel|| per layer name, from a plain tape of ``loss`` (mean over the samples)."""
    tf = tensorflow()
    kernels = {layer.name: layer.kernel for layer in model.layers if hasattr(layer, "kernel")}
    with tf.GradientTape() as tape:
        value = tf.reduce_mean(loss(y, model(x, training=False)))
    grads = tape.gradient(value, list(kernels.values()))
    return {name: float(np.linalg.norm(np.asarray(g, dtype=np.float64)))
            for name, g in zip(kernels, grads, strict=True)}


@dataclass(frozen=True)
class Opt:
    """An ordinary optimizer: ``adam``, ``rmsprop``, or ``sgd`` (always with momentum 0.9, as
    people use it); ``learning_rate`` ``None`` keeps the library default (SGD: 0.01)."""

    name: str = "adam"
    learning_rate: float | None = None

    def __call__(self, keras: ModuleType) -> Any:
        if self.name == "sgd":
            return keras.optimizers.SGD(self.learning_rate or 0.01, momentum=0.9)
        cls = {"adam": keras.optimizers.Adam, "rmsprop": keras.optimizers.RMSprop}[self.name]
        return cls() if self.learning_rate is None else cls(learning_rate=self.learning_rate)


def head(keras: ModuleType, classes: int) -> tuple[Any, str]:
    """The output layer and its loss: one sigmoid unit under binary_crossentropy for two
    classes, a softmax under sparse_categorical_crossentropy otherwise."""
    if classes == 2:
        return keras.layers.Dense(1, activation="sigmoid", name="out"), "binary_crossentropy"
    return (keras.layers.Dense(classes, activation="softmax", name="out"),
            "sparse_categorical_crossentropy")


@dataclass(frozen=True)
class Mlp:
    """Dense hidden layers and a classifier head. ``batchnorm``: Dense -> BatchNormalization ->
    Activation per hidden layer; ``dropout``: a Dropout after each; ``frozen``: hidden layers
    (1-based) left untrainable, a fixed random projection; ``zeros``: hidden layers whose kernel
    is initialised to zeros."""

    input_shape: tuple[int, ...]
    classes: int
    units: tuple[int, ...] = (64, 32)
    activation: str = "relu"
    initializer: str = "glorot_uniform"
    batchnorm: bool = False
    dropout: float = 0.0
    frozen: tuple[int, ...] = ()
    zeros: tuple[int, ...] = ()
    optimizer: Opt = Opt()

    def __call__(self, keras: ModuleType) -> Any:
        L = keras.layers
        stack: list[Any] = [keras.Input(self.input_shape)]
        for k, width in enumerate(self.units, 1):
            init = "zeros" if k in self.zeros else self.initializer
            if self.batchnorm:
                stack += [L.Dense(width, kernel_initializer=init, name=f"hidden_{k}"),
                          L.BatchNormalization(name=f"bn_{k}"),
                          L.Activation(self.activation, name=f"act_{k}")]
            else:
                stack.append(L.Dense(width, activation=self.activation, kernel_initializer=init,
                                     name=f"hidden_{k}"))
            if self.dropout:
                stack.append(L.Dropout(self.dropout, name=f"dropout_{k}"))
        out, loss = head(keras, self.classes)
        model = keras.Sequential([*stack, out])
        for k in self.frozen:
            model.get_layer(f"hidden_{k}").trainable = False
        model.compile(self.optimizer(keras), loss)
        return model


@dataclass(frozen=True)
class Cnn:
    """Conv2D(3x3, same) + MaxPooling2D blocks on 8x8 digits, a Dense layer and the head;
    ``batchnorm``: Conv -> BatchNormalization -> ReLU, as every CNN writes it."""

    classes: int = 10
    filters: tuple[int, ...] = (16, 32)
    dense: int = 64
    batchnorm: bool = False
    dropout: float = 0.0
    optimizer: Opt = Opt()

    def __call__(self, keras: ModuleType) -> Any:
        L = keras.layers
        stack: list[Any] = [keras.Input((8, 8, 1))]
        for k, n in enumerate(self.filters, 1):
            if self.batchnorm:
                stack += [L.Conv2D(n, 3, padding="same", name=f"conv_{k}"),
                          L.BatchNormalization(name=f"bn_{k}"),
                          L.Activation("relu", name=f"act_{k}")]
            else:
                stack.append(L.Conv2D(n, 3, padding="same", activation="relu", name=f"conv_{k}"))
            stack.append(L.MaxPooling2D(name=f"pool_{k}"))
        stack.append(L.Flatten(name="flatten"))
        if self.dropout:
            stack.append(L.Dropout(self.dropout, name="dropout"))
        stack.append(L.Dense(self.dense, activation="relu", name="dense"))
        out, loss = head(keras, self.classes)
        model = keras.Sequential([*stack, out])
        model.compile(self.optimizer(keras), loss)
        return model


@dataclass(frozen=True)
class Rnn:
    """An LSTM or GRU over digits' 8 rows (8 features a step), its last state to the head;
    ``layers`` 2 stacks a second recurrent layer; ``dropout`` on the recurrent inputs."""

    cell: str = "lstm"
    units: int = 32
    layers: int = 1
    dropout: float = 0.0
    classes: int = 10
    optimizer: Opt = Opt()

    def __call__(self, keras: ModuleType) -> Any:
        cell = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}[self.cell]
        stack: list[Any] = [keras.Input((8, 8))]
        for k in range(1, self.layers + 1):
            stack.append(cell(self.units, dropout=self.dropout, name=f"{self.cell}_{k}",
                              return_sequences=k < self.layers))
        out, loss = head(keras, self.classes)
        model = keras.Sequential([*stack, out])
        model.compile(self.optimizer(keras), loss)
        return model


@dataclass(frozen=True)
class Transformer:
    """One Transformer encoder block over digits' 8 rows: a Dense projection to ``width``,
    MultiHeadAttention and a relu FFN, each added back to its input and LayerNormalized (post
    norm, as in the original block); flattened, so the head sees each row's position."""

    width: int = 32
    heads: int = 2
    ffn: int = 64
    dropout: float = 0.0
    classes: int = 10
    optimizer: Opt = Opt()

    def __call__(self, keras: ModuleType) -> Any:
        L = keras.layers
        x = keras.Input((8, 8))
        h = L.Dense(self.width, name="embed")(x)
        a = L.MultiHeadAttention(self.heads, self.width // self.heads, dropout=self.dropout,
                                 name="attention")(h, h)
        h = L.LayerNormalization(name="norm_1")(L.Add(name="residual_1")([h, a]))
        f = L.Dense(self.ffn, activation="relu", name="ffn_1")(h)
        f = L.Dense(self.width, name="ffn_2")(f)
        if self.dropout:
            f = L.Dropout(self.dropout, name="dropout")(f)
        h = L.LayerNormalization(name="norm_2")(L.Add(name="residual_2")([h, f]))
        out, loss = head(keras, self.classes)
        model = keras.Model(x, out(L.Flatten(name="flatten")(h)))
        model.compile(self.optimizer(keras), loss)
        return model
