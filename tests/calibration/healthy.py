"""Healthy models: small classifiers written as people write them, each trained until it
reaches a stated test accuracy. gradinspect must give none of their files a warning, neither
at initialisation (training from it works) nor after training (it learnt).

``HEALTHY`` lists the specs; ``train(spec, out_dir)`` builds, saves at initialisation, fits,
checks the target and saves the trained file and the inspection sample. A spec that misses its
target raises ``CorpusError``: a healthy model that did not learn is a broken corpus, not a
data point.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from . import datasets
from .builders import (
    SUFFIX,
    Cnn,
    CorpusError,
    Mlp,
    Opt,
    Rnn,
    Transformer,
    accuracy,
    fresh,
    keras_module,
    save,
)


@dataclass(frozen=True)
class HealthySpec:
    """One healthy model: what it is, how it is trained, the accuracy it must reach."""

    name: str
    family: str
    """Group label for the table: ``mlp_relu``, ``cnn_bn``, ``rnn_dropout`` ..."""
    dataset: str
    keras: int
    """3 (``keras``, saved as ``.keras``) or 2 (``tf_keras``, saved as ``.h5``)."""
    build: Callable[[ModuleType], Any]
    """keras module -> compiled model."""
    epochs: int
    batch_size: int
    target: float
    """Test-split accuracy the training must reach."""
    seed: int = 0
    view: str = "flat"
    """How the dataset is shaped for the model (``datasets.VIEWS``)."""


@dataclass(frozen=True)
class TrainedCase:
    """The files of one trained healthy spec and what the training reached."""

    spec: HealthySpec
    init_path: Path
    trained_path: Path
    data_path: Path
    """``.npz`` with ``x`` (test samples) and ``y`` (their labels, as the loss takes them)."""
    accuracy: float
    seconds: float
    """Wall time of the fit."""


def train(spec: HealthySpec, out_dir: Path) -> TrainedCase:
    """Build, save at initialisation, fit, save trained and write the inspection sample.
    Raises ``CorpusError`` when the test accuracy stays below ``spec.target``."""
    keras = keras_module(spec.keras)
    fresh(keras, spec.seed)
    split = datasets.load(spec.dataset, spec.view)
    model = spec.build(keras)
    suffix = SUFFIX[spec.keras]
    init_path = save(model, out_dir / f"{spec.name}_init{suffix}")
    start = time.perf_counter()
    model.fit(split.x_train, split.targets(split.y_train), epochs=spec.epochs,
              batch_size=spec.batch_size, verbose=0)
    seconds = time.perf_counter() - start
    reached = accuracy(model, split.x_test, split.y_test)
    trained_path = save(model, out_dir / f"{spec.name}_trained{suffix}")
    x, y = split.sample()
    data_path = out_dir / f"{spec.name}.npz"
    np.savez(data_path, x=x, y=y)
    if reached < spec.target:
        raise CorpusError(f"{spec.name}: test accuracy {reached:.3f} after {spec.epochs} epochs "
                          f"is below its target {spec.target}: it did not learn")
    return TrainedCase(spec, init_path, trained_path, data_path, reached, seconds)


TARGET = {"digits": 0.93, "iris": 0.87, "wine": 0.85, "breast_cancer": 0.93}
"""What "it learnt" means per dataset (test split; chance is 0.1, 0.33, 0.4 and 0.63)."""


def _family(kind: str, *, batchnorm: bool = False, dropout: float = 0.0,
            frozen: tuple[int, ...] = ()) -> str:
    return kind + ("_bn" if batchnorm else "") + ("_dropout" if dropout else "") + (
        "_frozen" if frozen else "")


def mlp(name: str, dataset: str, activation: str, opt: Opt, *, keras: int = 3,
        epochs: int = 20, batch_size: int = 32, seed: int = 0, **arch: Any) -> HealthySpec:
    """An MLP spec; ``arch`` goes to ``Mlp`` (units, batchnorm, dropout, frozen, zeros).
    selu takes its own initialisation (lecun_normal), as its paper prescribes."""
    init = "lecun_normal" if activation == "selu" else "glorot_uniform"
    build = Mlp(datasets.input_shape(dataset), datasets.classes(dataset), activation=activation,
                initializer=init, optimizer=opt, **arch)
    family = _family(f"mlp_{activation}", batchnorm=build.batchnorm, dropout=build.dropout,
                     frozen=build.frozen)
    return HealthySpec(name, family, dataset, keras, build, epochs, batch_size,
                       TARGET[dataset], seed)


def cnn(name: str, opt: Opt, *, keras: int = 3, epochs: int = 15, batch_size: int = 32,
        seed: int = 0, **arch: Any) -> HealthySpec:
    build = Cnn(optimizer=opt, **arch)
    return HealthySpec(name, _family("cnn", batchnorm=build.batchnorm, dropout=build.dropout),
                       "digits", keras, build, epochs, batch_size, TARGET["digits"], seed,
                       view="image")


def rnn(name: str, cell: str, opt: Opt, *, keras: int = 3, epochs: int = 15,
        batch_size: int = 32, seed: int = 0, **arch: Any) -> HealthySpec:
    build = Rnn(cell, optimizer=opt, **arch)
    return HealthySpec(name, _family("rnn", dropout=build.dropout), "digits", keras, build,
                       epochs, batch_size, TARGET["digits"], seed, view="sequence")


def transformer(name: str, opt: Opt, *, epochs: int = 10, batch_size: int = 32, seed: int = 0,
                **arch: Any) -> HealthySpec:
    build = Transformer(optimizer=opt, **arch)
    return HealthySpec(name, _family("transformer", dropout=build.dropout), "digits", 3, build,
                       epochs, batch_size, TARGET["digits"], seed, view="sequence")


ADAM, SGD, RMSPROP = Opt("adam"), Opt("sgd"), Opt("rmsprop")
ADAM_FAST = Opt("adam", 0.01)
"""For the tabular sets of a hundred-odd training samples: a few steps an epoch."""
SGD_FAST = Opt("sgd", 0.05)
ADAM_RNN, RMSPROP_RNN = Opt("adam", 0.003), Opt("rmsprop", 0.003)
"""Recurrent models take a few times the default step to learn in a few seconds."""
SMALL: dict[str, Any] = {"units": (32, 16)}
"""Two hidden layers for breast cancer's 30 features."""
TINY: dict[str, Any] = {"units": (16, 16), "batch_size": 16}
"""For iris' 4 and wine's 13 features, 112 and 133 training samples."""

HEALTHY: tuple[HealthySpec, ...] = (
    # relu MLPs
    mlp("digits_relu_adam", "digits", "relu", ADAM),
    mlp("digits_relu_sgd", "digits", "relu", SGD),
    mlp("digits_relu_rmsprop", "digits", "relu", RMSPROP),
    mlp("digits_relu_deep_adam", "digits", "relu", ADAM, units=(128, 64, 32), epochs=15),
    mlp("iris_relu_adam", "iris", "relu", ADAM_FAST, epochs=60, **TINY),
    mlp("iris_relu_sgd", "iris", "relu", SGD_FAST, epochs=60, **TINY),
    mlp("wine_relu_adam", "wine", "relu", ADAM_FAST, epochs=40, **TINY),
    mlp("breast_cancer_relu_adam", "breast_cancer", "relu", ADAM, epochs=30, **SMALL),
    mlp("breast_cancer_relu_sgd", "breast_cancer", "relu", SGD, epochs=30, **SMALL),
    mlp("k2_digits_relu_adam", "digits", "relu", ADAM, keras=2),
    mlp("k2_iris_relu_adam", "iris", "relu", ADAM_FAST, keras=2, epochs=60, **TINY),
    mlp("k2_wine_relu_sgd", "wine", "relu", SGD_FAST, keras=2, epochs=40, **TINY),
    mlp("k2_breast_cancer_relu_rmsprop", "breast_cancer", "relu", RMSPROP, keras=2, epochs=30,
        **SMALL),
    mlp("digits_relu_bn_adam", "digits", "relu", ADAM, batchnorm=True),
    mlp("digits_relu_bn_sgd", "digits", "relu", SGD, batchnorm=True),
    mlp("wine_relu_bn_adam", "wine", "relu", ADAM_FAST, batchnorm=True, epochs=40, **TINY),
    mlp("breast_cancer_relu_bn_adam", "breast_cancer", "relu", ADAM, batchnorm=True,
        epochs=30, **SMALL),
    mlp("k2_digits_relu_bn_sgd", "digits", "relu", SGD, keras=2, batchnorm=True),
    mlp("digits_relu_dropout_adam", "digits", "relu", ADAM, dropout=0.2, epochs=25),
    mlp("wine_relu_dropout_adam", "wine", "relu", ADAM_FAST, dropout=0.2, epochs=40, **TINY),
    mlp("breast_cancer_relu_dropout_rmsprop", "breast_cancer", "relu", RMSPROP, dropout=0.2,
        epochs=30, **SMALL),
    mlp("k2_digits_relu_dropout_adam", "digits", "relu", ADAM, keras=2, dropout=0.2,
        epochs=25),
    # a frozen first layer (a fixed random projection) is no defect: the control for "frozen"
    mlp("digits_relu_frozen_first_adam", "digits", "relu", ADAM, units=(128, 64), frozen=(1,)),
    # tanh MLPs
    mlp("digits_tanh_adam", "digits", "tanh", ADAM),
    mlp("digits_tanh_sgd", "digits", "tanh", SGD),
    mlp("digits_tanh_deep_rmsprop", "digits", "tanh", RMSPROP, units=(64, 64, 32)),
    mlp("iris_tanh_adam", "iris", "tanh", ADAM_FAST, epochs=60, **TINY),
    mlp("wine_tanh_sgd", "wine", "tanh", SGD_FAST, epochs=40, **TINY),
    mlp("breast_cancer_tanh_adam", "breast_cancer", "tanh", ADAM, epochs=30, **SMALL),
    # a zero-initialised tanh kernel is moved by its first update (tanh'(0) = 1): the control
    # for the zero-kernel sick case, where relu'(0) = 0 keeps it at zero for good
    mlp("digits_tanh_zero_hidden_adam", "digits", "tanh", ADAM, zeros=(2,)),
    mlp("k2_digits_tanh_sgd", "digits", "tanh", SGD, keras=2),
    mlp("k2_iris_tanh_adam", "iris", "tanh", ADAM_FAST, keras=2, epochs=60, **TINY),
    mlp("digits_tanh_dropout_adam", "digits", "tanh", ADAM, dropout=0.2, epochs=25),
    # sigmoid MLPs
    mlp("digits_sigmoid_adam", "digits", "sigmoid", ADAM, epochs=30),
    mlp("digits_sigmoid_deep_adam", "digits", "sigmoid", ADAM, units=(64, 64, 32), epochs=30),
    mlp("digits_sigmoid_sgd", "digits", "sigmoid", SGD_FAST, epochs=30),
    mlp("iris_sigmoid_adam", "iris", "sigmoid", ADAM_FAST, epochs=80, **TINY),
    mlp("wine_sigmoid_adam", "wine", "sigmoid", ADAM_FAST, epochs=60, **TINY),
    mlp("breast_cancer_sigmoid_rmsprop", "breast_cancer", "sigmoid", RMSPROP, epochs=40,
        **SMALL),
    mlp("k2_digits_sigmoid_adam", "digits", "sigmoid", ADAM, keras=2, epochs=30),
    mlp("k2_wine_sigmoid_sgd", "wine", "sigmoid", SGD_FAST, keras=2, epochs=60, **TINY),
    # selu MLPs (lecun_normal)
    mlp("digits_selu_adam", "digits", "selu", ADAM),
    mlp("digits_selu_sgd", "digits", "selu", SGD),
    mlp("iris_selu_adam", "iris", "selu", ADAM_FAST, epochs=60, **TINY),
    mlp("wine_selu_adam", "wine", "selu", ADAM_FAST, epochs=40, **TINY),
    mlp("breast_cancer_selu_sgd", "breast_cancer", "selu", SGD, epochs=30, **SMALL),
    mlp("k2_digits_selu_adam", "digits", "selu", ADAM, keras=2),
    # CNNs on 8x8 digits
    cnn("cnn_adam", ADAM),
    cnn("cnn_sgd", SGD, epochs=20),
    cnn("cnn_rmsprop", RMSPROP),
    cnn("k2_cnn_adam", ADAM, keras=2),
    cnn("cnn_bn_adam", ADAM, batchnorm=True),
    cnn("cnn_bn_sgd", SGD, batchnorm=True),
    cnn("k2_cnn_bn_adam", ADAM, keras=2, batchnorm=True),
    cnn("cnn_dropout_adam", ADAM, dropout=0.3),
    cnn("k2_cnn_dropout_rmsprop", RMSPROP, keras=2, dropout=0.3),
    # recurrent models on digits' rows
    rnn("lstm_adam", "lstm", ADAM_RNN),
    rnn("gru_adam", "gru", ADAM_RNN),
    rnn("lstm_rmsprop", "lstm", RMSPROP_RNN),
    rnn("gru_stacked_adam", "gru", ADAM_RNN, layers=2, epochs=12),
    rnn("k2_lstm_adam", "lstm", ADAM_RNN, keras=2),
    rnn("k2_gru_rmsprop", "gru", RMSPROP_RNN, keras=2),
    rnn("lstm_dropout_adam", "lstm", ADAM_RNN, dropout=0.2, epochs=20),
    rnn("k2_gru_dropout_adam", "gru", ADAM_RNN, keras=2, dropout=0.2, epochs=20),
    # one Transformer block on digits' rows
    transformer("transformer_adam", ADAM),
    transformer("transformer_wide_adam", ADAM, width=48, heads=4, epochs=8, seed=1),
    transformer("transformer_dropout_adam", ADAM, dropout=0.1, epochs=12),
)
"""Every healthy spec (names are unique; about a quarter in Keras 2)."""
