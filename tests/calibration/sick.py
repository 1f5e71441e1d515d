"""Sick models, made sick the way real runs get sick, each with the cause gradinspect must name.

A spec plants its pathology (``plant``: usually a real ``fit`` that goes wrong; a hand-set value
only where that is how it happens: an initializer, a weight copy), saves the model and an
inspection sample, and states what gradinspect must say: ``expect_code`` as a root at
``expect_layer`` (``None``: a model-level finding), or a refusal with ``expect_error_exit``.
``check`` confirms, on the saved file read back by Keras and without gradinspect, that the
pathology is really there (NaN in the weights, units that output zero on every sample, moving
statistics at their initial values ...) and returns that evidence as one line; a spec whose
file lacks its pathology raises ``CorpusError``.

An ``expect_code`` that is no gradinspect code yet (``constant_labels``) states what should be
said where nothing says it today.
"""

from __future__ import annotations

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
    accuracy,
    dead_fraction,
    dense_preactivation,
    fresh,
    keras_module,
    predict,
    save,
    tensors,
    weight_gradient_norms,
)


@dataclass(frozen=True)
class Planted:
    """A sick model and the inspection sample that goes with it."""

    model: Any
    x: np.ndarray
    y: np.ndarray
    """Labels as the model's loss takes them."""


Check = Callable[[ModuleType, Any, np.ndarray, np.ndarray], str]
"""(keras module, the saved model read back, x, y of the data file) -> one line of evidence
that the pathology is there; raises ``CorpusError`` when it is not."""


@dataclass(frozen=True)
class SickSpec:
    """One sick model: how it got sick, the verdict gradinspect owes it, and the check."""

    name: str
    kind: str
    """Group label for the table: the pathology (``diverged_lr``, ``dead_bias`` ...)."""
    keras: int
    how: str
    """One line: how a real run gets there."""
    plant: Callable[[ModuleType], Planted]
    check: Check
    expect_code: str | None = None
    """The finding code that must be the root (at warning or error)."""
    expect_layer: str | None = None
    """The layer it must be at; ``None``: a model-level finding."""
    expect_error_exit: int | None = None
    """Instead of findings, gradinspect must refuse the files with this exit status."""
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.expect_code is None) == (self.expect_error_exit is None):
            raise ValueError(f"{self.name}: expect either a finding code or a refusal")

    @property
    def expected(self) -> str:
        """The expectation as the table prints it."""
        if self.expect_error_exit is not None:
            return f"refusal, exit {self.expect_error_exit}"
        return f"{self.expect_code}@{self.expect_layer or 'model'}"

    def build_files(self, out_dir: Path) -> tuple[Path, Path]:
        """Plant the pathology and save ``<name>.keras``/``.h5`` and ``<name>.npz``."""
        keras = keras_module(self.keras)
        fresh(keras, self.seed)
        planted = self.plant(keras)
        model_path = save(planted.model, out_dir / f"{self.name}{SUFFIX[self.keras]}")
        data_path = out_dir / f"{self.name}.npz"
        np.savez(data_path, x=planted.x, y=planted.y)
        return model_path, data_path

    def confirm(self, model_path: Path, data_path: Path) -> str:
        """The evidence that the saved files hold the pathology (``CorpusError`` if not)."""
        keras = keras_module(self.keras)
        model = keras.models.load_model(model_path)  # compiled: some checks read the loss
        with np.load(data_path) as data:
            x, y = data["x"], data["y"]
        return self.check(keras, model, x, y)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise CorpusError(message)


def _loss(model: Any) -> tuple[str, bool]:
    """The compiled loss' name and ``from_logits``, whichever form Keras restored it in."""
    loss = model.loss
    if isinstance(loss, str):
        return loss, False
    if hasattr(loss, "get_config"):
        config = loss.get_config()
        return str(config["name"]), bool(config.get("from_logits", False))
    return str(loss.__name__), False


def _activation(model: Any, name: str) -> str:
    return str(model.get_layer(name).get_config()["activation"])


def _one_hot(y: np.ndarray, classes: int) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[y]


def _fit(model: Any, x: np.ndarray, y: np.ndarray, epochs: int, **kwargs: Any) -> None:
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, **kwargs)


def _sample_accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy on the inspection sample, labels as the loss takes them (ids or one-hot)."""
    ids = y.argmax(axis=-1) if y.ndim == 2 and y.shape[-1] > 1 else y.reshape(-1)
    return accuracy(model, x, ids)


DIGITS_SHAPE = datasets.VIEWS["flat"]


# ----------------------------------------------------------------- a learning rate that diverges


def _diverged(keras: ModuleType) -> Planted:
    """SGD at 1e3 (1e-3 mistyped): the loss overflows within a few steps; TerminateOnNaN stops
    the fit, and the weights saved are those of the step that went NaN."""
    split = datasets.load("digits")
    model = Mlp(DIGITS_SHAPE, 10, optimizer=Opt("sgd", 1e3))(keras)
    _fit(model, split.x_train, split.targets(split.y_train), 5,
         callbacks=[keras.callbacks.TerminateOnNaN()])
    return Planted(model, *split.sample())


def _check_nonfinite(keras: ModuleType, model: Any, x: np.ndarray, y: np.ndarray) -> str:
    bad = [layer.name for layer in model.layers
           if any(not np.isfinite(w).all() for w in layer.get_weights())]
    _require("hidden_1" in bad, f"hidden_1's weights are finite (non-finite in: {bad})")
    return f"NaN/Inf in the weights of {', '.join(bad)}"


# ----------------------------------------------------------------- a deep sigmoid stack


def _sigmoid_stack(keras: ModuleType) -> Planted:
    """Eight sigmoid layers, Glorot init, SGD: the backward signal is multiplied by
    sigmoid' <= 0.25 at every layer on its way to the first ones."""
    split = datasets.load("digits")
    model = Mlp(DIGITS_SHAPE, 10, units=(32,) * 8, activation="sigmoid",
                optimizer=Opt("sgd"))(keras)
    return Planted(model, *split.sample())


def _check_vanishing(keras: ModuleType, model: Any, x: np.ndarray, y: np.ndarray) -> str:
    norms = weight_gradient_norms(keras, model, keras.losses.sparse_categorical_crossentropy,
                                  x, y)
    ratio = norms["hidden_1"] / max(norms.values())
    _require(ratio < 1e-3, f"hidden_1's ||dL/dW|| is {ratio:.2g} of the largest: not vanishing")
    return f"||dL/dW|| of hidden_1 is {ratio:.2g} of the largest layer's (SGD steps scale with it)"


# ----------------------------------------------------------------- dead ReLU units


def _dead_bias(keras: ModuleType) -> Planted:
    """A hidden layer's biases start at -5 (a gate's initializer copied onto a relu layer):
    z = Wx - 5 < 0 for every sample, the units never fire and get no gradient; a fit does
    not revive them."""
    split = datasets.load("digits")
    L = keras.layers
    model = keras.Sequential([
        keras.Input(DIGITS_SHAPE),
        L.Dense(64, activation="relu", bias_initializer=keras.initializers.Constant(-5.0),
                name="hidden_1"),
        L.Dense(32, activation="relu", name="hidden_2"),
        L.Dense(10, activation="softmax", name="out")])
    model.compile("adam", "sparse_categorical_crossentropy")
    _fit(model, split.x_train, split.targets(split.y_train), 5)
    return Planted(model, *split.sample())


def _check_dead_bias(keras: ModuleType, model: Any, x: np.ndarray, y: np.ndarray) -> str:
    dead = dead_fraction(keras, model, "hidden_1", x)
    bias = model.get_layer("hidden_1").get_weights()[1]
    _require(dead >= 0.9, f"only {dead:.0%} of hidden_1's units are dead")
    _require(float(np.median(bias)) <= -4.0, f"hidden_1's median bias is {np.median(bias):.2f}")
    return (f"{dead:.0%} of hidden_1's units output 0 on every sample (median bias "
            f"{np.median(bias):.2f}); accuracy {_sample_accuracy(model, x, y):.2f}")


def _dead_after_lr(keras: ModuleType) -> Planted:
    """Adam at learning rate 1.0: the first steps throw hidden_2's weights so far that its
    pre-activations are negative for every input, and its units stay dead."""
    split = datasets.load("digits")
    model = Mlp(DIGITS_SHAPE, 10, optimizer=Opt("adam", 1.0))(keras)
    _fit(model, split.x_train, split.targets(split.y_train), 5)
    return Planted(model, *split.sample())


def _check_dead_lr(keras: ModuleType, model: Any, x: np.ndarray, y: np.ndarray) -> str:
    dead = dead_fraction(keras, model, "hidden_2", x)
    _require(dead >= 0.5, f"only {dead:.0%} of hidden_2's units are dead")
    return (f"{dead:.0%} of hidden_2's units output 0 on every sample "
            f"(hidden_1: {dead_fraction(keras, model, 'hidden_1', x):.0%}); "
            f"accuracy {_sample_accuracy(model, x, y):.2f}")


# ----------------------------------------------------------------- unscaled pixels


def _pixels(view: str) -> datasets.Split:
    """Digits as 8-bit pixels, 0..255 (the raw 0..16 counts rescaled and rounded), as an image
    pipeline that forgets to divide by 255 feeds them."""
    raw = datasets.load("digits", view, raw=True)
    return datasets.Split(raw.name, np.round(raw.x_train * 255 / 16),
                          raw.y_train, np.round(raw.x_test * 255 / 16), raw.y_test, raw.classes)


def _unscaled(keras: ModuleType) -> Planted:
    """A tanh classifier trained on 0..255 pixels: z = Wx is tens to hundreds, tanh sits flat
    at +-1 and the first layer cannot learn."""
    split = _pixels("flat")
    model = Mlp(DIGITS_SHAPE, 10, units=(64,), activation="tanh", optimizer=Opt("sgd"))(keras)
    _fit(model, split.x_train, split.targets(split.y_train), 5)
    return Planted(model, *split.sample())


def _check_unscaled(keras: ModuleType, model: Any, x: np.ndarray, y: np.ndarray) -> str:
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    z = dense_preactivation(keras, model, "hidden_1", x)
    flat = float(np.mean(np.abs(z) > 3.0))
    _require(rms > 10 and flat > 0.5, f"input RMS {rms:.3g}, {flat:.0%} of |z| > 3")
    return (f"inputs {x.min():g}..{x.max():g} (RMS {rms:.3g}); {flat:.0%} of hidden_1's "
            f"pre-activations have |z| > 3 (tanh' < 0.01)")


# ----------------------------------------------------------------- a softmax over one unit


def _single_unit_softmax(keras: ModuleType) -> Planted:
    """A binary classifier written with Dense(1, activation="softmax"): softmax over one unit
    is 1 whatever the input; the fit runs and learns nothing."""
    split = datasets.load("breast_cancer")
    L = keras.layers
    model = keras.Sequential([keras.Input(split.input_shape),
                              L.Dense(16, activation="relu", name="hidden_1"),
                              L.Dense(1, activation="softmax", name="out")])
    model.compile("adam", "binary_crossentropy")
    _fit(model, split.x_train, split.targets(split.y_train), 5)
    return Planted(model, *split.sample())


def _check_constant_output(keras: ModuleType, model: Any, x: np.ndarray, y: np.ndarray) -> str:
    p = predict(model, x)
    constant = bool(np.all(p == p.flat[0])) and abs(float(p.flat[0]) - 1.0) < 1e-6
    _require(constant, f"outputs range {p.min():.9g}..{p.max():.9g}")
    return f"the output is {p.flat[0]:.8g} (1 up to float32 rounding) on all {len(x)} samples"


# ----------------------------------------------------------------- constant labels


def _constant_labels(true_labels: bool) -> Callable[[ModuleType], Planted]:
    """A label pipeline that yields class 0 for every sample (a join on the wrong key, a
    default filled in): the model learns to answer 0 whatever the input. Inspected with the
    same broken labels, or with the true ones of a clean evaluation set."""

    def plant(keras: ModuleType) -> Planted:
        split = datasets.load("digits")
        model = Mlp(DIGITS_SHAPE, 10)(keras)
        _fit(model, split.x_train, np.zeros_like(split.targets(split.y_train)), 10)
        x, y = split.sample()
        return Planted(model, x, y if true_labels else np.zeros_like(y))

    return plant


def _check_constant_answer(keras: ModuleType, model: Any, x: np.ndarray, y: np.ndarray) -> str:
    guess = predict(model, x).argmax(axis=-1)
    _require(bool(np.all(guess == 0)), f"the model answers {sorted(set(guess.tolist()))}")
    labels = sorted(set(y.reshape(-1).tolist()))
    return (f"the model answers class 0 for all {len(x)} samples; the file's labels are "
            f"{labels if len(labels) < 4 else f'{len(labels)} classes'}")


# ----------------------------------------------------------------- a zero kernel under relu


def _zero_kernel(keras: ModuleType) -> Planted:
    """kernel_initializer="zeros" on a relu hidden layer: z = 0 for every input and relu'(0)
    = 0, so its kernel gets no gradient, ever, and nothing before it learns (with tanh the
    first update moves it: tanh'(0) = 1; that is a healthy control)."""
    split = datasets.load("digits")
    model = Mlp(DIGITS_SHAPE, 10, zeros=(2,))(keras)
    _fit(model, split.x_train, split.targets(split.y_train), 5)
    return Planted(model, *split.sample())


def _check_zero_kernel(keras: ModuleType, model: Any, x: np.ndarray, y: np.ndarray) -> str:
    kernel = model.get_layer("hidden_2").get_weights()[0]
    _require(bool(np.all(kernel == 0.0)), "hidden_2's kernel moved during the fit")
    return (f"hidden_2's kernel is still exactly zero after 5 epochs; its units output 0 on "
            f"every sample; accuracy {_sample_accuracy(model, x, y):.2f}")


# ----------------------------------------------------------------- untrained BatchNormalization


def _bn_init_pixels(keras: ModuleType) -> Planted:
    """Conv -> BatchNormalization -> ReLU on 0..255 pixels (BatchNormalization trusted to
    scale them), inspected at initialisation in inference mode: the moving statistics (0, 1)
    pass the pixel scale straight through, which training (batch statistics) never sees."""
    split = _pixels("image")
    return Planted(Cnn(batchnorm=True)(keras), *split.sample())


def _bn_trainable_copy(keras: ModuleType) -> Planted:
    """A trained CNN exported into a freshly built one through ``trainable_variables`` only
    (as EMA and weight-averaging code copies weights): the moving statistics, not trainable,
    stay at (0, 1), and inference normalises with them."""
    split = datasets.load("digits", "image")
    build = Cnn(batchnorm=True)
    trained = build(keras)
    _fit(trained, split.x_train, split.targets(split.y_train), 10)
    export = build(keras)
    for target, source in zip(export.trainable_variables, trained.trainable_variables,
                              strict=True):
        target.assign(source)
    return Planted(export, *split.sample())


def _initial_moving_stats(model: Any) -> list[str]:
    names = []
    for layer in model.layers:
        if hasattr(layer, "moving_mean"):
            mean, variance = np.asarray(layer.moving_mean), np.asarray(layer.moving_variance)
            _require(bool(np.all(mean == 0.0) and np.all(variance == 1.0)),
                     f"{layer.name}'s moving statistics were updated")
            names.append(layer.name)
    _require(bool(names), "no BatchNormalization layer")
    return names


def _check_bn_pixels(keras: ModuleType, model: Any, x: np.ndarray, y: np.ndarray) -> str:
    names = _initial_moving_stats(model)
    inp, _ = tensors(keras, model, names[0], x)
    rms = float(np.sqrt(np.mean(inp ** 2)))
    _require(rms > 10, f"{names[0]}'s input RMS is {rms:.3g}: its moving statistics fit")
    return (f"moving statistics at (0, 1) in {', '.join(names)}; {names[0]}'s input has "
            f"RMS {rms:.3g}, which they leave as it is")


def _check_bn_copy(keras: ModuleType, model: Any, x: np.ndarray, y: np.ndarray) -> str:
    names = _initial_moving_stats(model)
    inference = _sample_accuracy(model, x, y)
    batch = accuracy(model, x, y, training=True)  # the batch's statistics, as in training
    _require(batch >= 0.9 and inference <= batch - 0.1,
             f"accuracy {inference:.2f} in inference, {batch:.2f} on batch statistics")
    return (f"moving statistics at (0, 1) in {', '.join(names)}; accuracy {inference:.2f} in "
            f"inference, {batch:.2f} with the batch's statistics")


# ----------------------------------------------------------------- a loss that does not fit


def _softmax_bce(keras: ModuleType) -> Planted:
    """A softmax classifier compiled with binary_crossentropy on one-hot labels (the loss of
    a multi-label tutorial): each class trained as an independent sigmoid of a softmax."""
    split = datasets.load("digits")
    L = keras.layers
    model = keras.Sequential([keras.Input(DIGITS_SHAPE),
                              L.Dense(64, activation="relu", name="hidden_1"),
                              L.Dense(10, activation="softmax", name="out")])
    model.compile("adam", "binary_crossentropy")
    _fit(model, split.x_train, _one_hot(split.y_train, 10), 10)
    x, y = split.sample()
    return Planted(model, x, _one_hot(y, 10))


def _sigmoid_cce(keras: ModuleType) -> Planted:
    """Ten sigmoid outputs under categorical_crossentropy (a binary head widened to ten
    classes): the loss renormalises outputs that are not a distribution."""
    split = datasets.load("digits")
    L = keras.layers
    model = keras.Sequential([keras.Input(DIGITS_SHAPE),
                              L.Dense(64, activation="relu", name="hidden_1"),
                              L.Dense(10, activation="sigmoid", name="out")])
    model.compile("adam", "categorical_crossentropy")
    _fit(model, split.x_train, _one_hot(split.y_train, 10), 10)
    x, y = split.sample()
    return Planted(model, x, _one_hot(y, 10))


def _check_loss_pairing(keras: ModuleType, model: Any, x: np.ndarray, y: np.ndarray) -> str:
    act = _activation(model, "out")
    loss, _ = _loss(model)
    fits = {("softmax", "categorical_crossentropy"), ("sigmoid", "binary_crossentropy")}
    _require((act, loss) not in fits and "crossentropy" in loss, f"{act} under {loss}")
    return f"a {act} output compiled with {loss}; accuracy {_sample_accuracy(model, x, y):.2f}"


def _linear_probabilities(keras: ModuleType) -> Planted:
    """A logits output (no activation) under crossentropy left at from_logits=False: the loss
    clips the logits into [eps, 1 - eps] as if they were probabilities."""
    split = datasets.load("digits")
    L = keras.layers
    model = keras.Sequential([keras.Input(DIGITS_SHAPE),
                              L.Dense(64, activation="relu", name="hidden_1"),
                              L.Dense(10, name="out")])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=False))
    _fit(model, split.x_train, split.targets(split.y_train), 10)
    return Planted(model, *split.sample())


def _check_logits(keras: ModuleType, model: Any, x: np.ndarray, y: np.ndarray) -> str:
    act = _activation(model, "out")
    loss, from_logits = _loss(model)
    _require(act == "linear" and not from_logits, f"a {act} output, from_logits={from_logits}")
    p = predict(model, x)
    return (f"a linear output under {loss}(from_logits=False); outputs {p.min():.3g}.."
            f"{p.max():.3g}; accuracy {_sample_accuracy(model, x, y):.2f}")


# ----------------------------------------------------------------- a huge initialisation


def _exploding(keras: ModuleType) -> Planted:
    """Six relu layers initialised with RandomNormal(stddev=3) (a scale meant for one
    input): every layer multiplies the signal by ~sqrt(32 * 9 / 2) = 12, forward and back."""
    split = datasets.load("digits")
    L = keras.layers
    init = keras.initializers.RandomNormal(stddev=3.0)
    model = keras.Sequential([keras.Input(DIGITS_SHAPE),
                              *(L.Dense(32, activation="relu", kernel_initializer=init,
                                        name=f"hidden_{k}") for k in range(1, 7)),
                              L.Dense(10, activation="softmax", name="out")])
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy")
    return Planted(model, *split.sample())


def _check_exploding(keras: ModuleType, model: Any, x: np.ndarray, y: np.ndarray) -> str:
    norms = weight_gradient_norms(keras, model, keras.losses.sparse_categorical_crossentropy,
                                  x, y)
    first = norms["hidden_1"]
    weight = float(np.linalg.norm(model.get_layer("hidden_1").get_weights()[0]))
    _require(first > 1e3, f"hidden_1's ||dL/dW|| is {first:.3g}")
    return (f"||dL/dW|| of hidden_1 is {first:.3g} ({first / weight:.3g}x ||W||): one SGD step "
            "at 0.01 moves it by more than its own size")


def _saturated_tanh(keras: ModuleType) -> Planted:
    """Three tanh layers initialised with RandomNormal(stddev=10): |z| is tens, tanh sits at
    +-1 on nearly every entry and passes no gradient."""
    split = datasets.load("digits")
    L = keras.layers
    init = keras.initializers.RandomNormal(stddev=10.0)
    model = keras.Sequential([keras.Input(DIGITS_SHAPE),
                              *(L.Dense(32, activation="tanh", kernel_initializer=init,
                                        name=f"hidden_{k}") for k in range(1, 4)),
                              L.Dense(10, activation="softmax", name="out")])
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy")
    return Planted(model, *split.sample())


def _check_saturated(keras: ModuleType, model: Any, x: np.ndarray, y: np.ndarray) -> str:
    z = dense_preactivation(keras, model, "hidden_1", x)
    flat = float(np.mean(np.abs(z) > 3.0))
    _require(flat > 0.5, f"{flat:.0%} of hidden_1's |z| > 3")
    return f"{flat:.0%} of hidden_1's pre-activations have |z| > 3 (tanh' < 0.01)"


# ----------------------------------------------------------------- broken data files


def _healthy_digits(keras: ModuleType) -> tuple[Any, datasets.Split]:
    """A relu MLP trained well on digits: the model is fine, the data file is not."""
    split = datasets.load("digits")
    model = Mlp(DIGITS_SHAPE, 10)(keras)
    _fit(model, split.x_train, split.targets(split.y_train), 5)
    return model, split


def _nan_data(keras: ModuleType) -> Planted:
    """A trained model inspected on data with missing values: a CSV export whose empty cells
    became NaN (3 entries in 64 samples)."""
    model, split = _healthy_digits(keras)
    x, y = split.sample()
    x = x.copy()
    x[[3, 17, 40], [10, 20, 30]] = np.nan
    return Planted(model, x, y)


def _check_nan_data(keras: ModuleType, model: Any, x: np.ndarray, y: np.ndarray) -> str:
    count = int(np.isnan(x).sum())
    _require(count > 0, "the data holds no NaN")
    rows = sorted(set(np.argwhere(np.isnan(x))[:, 0].tolist()))
    return f"{count} NaN entries in x (rows {rows})"


def _one_based_labels(keras: ModuleType) -> Planted:
    """A trained model inspected with labels exported 1-based (1..10, a MATLAB/R habit):
    class id 10 does not exist for a 10-class output."""
    model, split = _healthy_digits(keras)
    x, y = split.sample()
    return Planted(model, x, y + 1)


def _check_label_range(keras: ModuleType, model: Any, x: np.ndarray, y: np.ndarray) -> str:
    classes = int(model.outputs[0].shape[-1])
    _require(int(y.max()) >= classes, f"labels {y.min()}..{y.max()} fit {classes} classes")
    return f"labels {y.min()}..{y.max()} for a {classes}-class output"


SICK: tuple[SickSpec, ...] = (
    SickSpec("diverged_sgd", "diverged_lr", 3,
             "SGD learning rate 1e3 (1e-3 mistyped): NaN loss, TerminateOnNaN, checkpoint saved",
             _diverged, _check_nonfinite, "nonfinite_weights", "hidden_1"),
    SickSpec("k2_diverged_sgd", "diverged_lr", 2,
             "the same divergence in Keras 2 (tf_keras, .h5)",
             _diverged, _check_nonfinite, "nonfinite_weights", "hidden_1"),
    SickSpec("sigmoid_stack_init", "vanishing_sigmoid_stack", 3,
             "eight sigmoid Dense layers with SGD, inspected before training",
             _sigmoid_stack, _check_vanishing, "vanishing_gradient", "hidden_1"),
    SickSpec("dead_bias", "dead_bias", 3,
             "bias_initializer=Constant(-5) on a relu layer, then 5 epochs of Adam",
             _dead_bias, _check_dead_bias, "dead_units", "hidden_1"),
    SickSpec("k2_dead_bias", "dead_bias", 2,
             "the same dead layer in Keras 2 (tf_keras, .h5)",
             _dead_bias, _check_dead_bias, "dead_units", "hidden_1"),
    SickSpec("dead_after_adam_lr1", "dead_lr", 3,
             "Adam at learning rate 1.0 for 5 epochs kills a relu layer",
             _dead_after_lr, _check_dead_lr, "dead_units", "hidden_2"),
    SickSpec("unscaled_pixels_tanh", "unscaled_input", 3,
             "0..255 pixels fed to a tanh classifier (no /255), trained 5 epochs with SGD",
             _unscaled, _check_unscaled, "unscaled_input"),
    SickSpec("single_unit_softmax", "single_unit_softmax", 3,
             "a binary head written Dense(1, activation='softmax'), trained 5 epochs",
             _single_unit_softmax, _check_constant_output, "constant_output", "out"),
    SickSpec("constant_labels_in_file", "constant_labels", 3,
             "every training label 0 (a broken label join), inspected with those labels",
             _constant_labels(true_labels=False), _check_constant_answer, "constant_labels"),
    SickSpec("constant_labels_true_eval", "constant_labels", 3,
             "every training label 0, inspected with the true labels of the test split",
             _constant_labels(true_labels=True), _check_constant_answer,
             "softmax_saturated", "out"),
    SickSpec("zero_kernel_relu", "zero_kernel", 3,
             "kernel_initializer='zeros' on a relu hidden layer, trained 5 epochs",
             _zero_kernel, _check_zero_kernel, "zero_kernel", "hidden_2"),
    SickSpec("bn_init_pixels", "untrained_batchnorm", 3,
             "Conv-BN-ReLU CNN on 0..255 pixels inspected at initialisation (inference mode)",
             _bn_init_pixels, _check_bn_pixels, "untrained_batchnorm", "bn_1"),
    SickSpec("bn_trainable_copy", "untrained_batchnorm", 3,
             "trained CNN copied into a fresh one through trainable_variables (EMA export)",
             _bn_trainable_copy, _check_bn_copy, "untrained_batchnorm", "bn_1"),
    SickSpec("softmax_bce", "wrong_loss", 3,
             "softmax output compiled with binary_crossentropy on one-hot labels",
             _softmax_bce, _check_loss_pairing, "loss_activation_mismatch", "out"),
    SickSpec("sigmoid_cce", "wrong_loss", 3,
             "ten sigmoid outputs compiled with categorical_crossentropy on one-hot labels",
             _sigmoid_cce, _check_loss_pairing, "loss_activation_mismatch", "out"),
    SickSpec("linear_out_probabilities", "logits_as_probabilities", 3,
             "Dense(10) logits under SparseCategoricalCrossentropy(from_logits=False)",
             _linear_probabilities, _check_logits, "logits_mismatch", "out"),
    SickSpec("k2_linear_out_probabilities", "logits_as_probabilities", 2,
             "the same logits under from_logits=False in Keras 2 (tf_keras, .h5)",
             _linear_probabilities, _check_logits, "logits_mismatch", "out"),
    SickSpec("relu_stack_stddev3", "exploding_init", 3,
             "six relu layers with RandomNormal(stddev=3) and SGD, inspected before training",
             _exploding, _check_exploding, "exploding_gradient", "hidden_1"),
    SickSpec("tanh_stddev10", "saturated_init", 3,
             "three tanh layers with RandomNormal(stddev=10), inspected before training",
             _saturated_tanh, _check_saturated, "saturated_units", "hidden_1"),
    SickSpec("k2_tanh_stddev10", "saturated_init", 2,
             "the same saturated tanh stack in Keras 2 (tf_keras, .h5)",
             _saturated_tanh, _check_saturated, "saturated_units", "hidden_1"),
    SickSpec("nan_in_data", "nan_data", 3,
             "a trained model inspected on data whose empty CSV cells became NaN",
             _nan_data, _check_nan_data, "nonfinite_input"),
    SickSpec("one_based_labels", "labels_out_of_range", 3,
             "a trained model inspected with labels exported 1-based (1..10)",
             _one_based_labels, _check_label_range, expect_error_exit=4),
)
"""Every sick spec (names are unique); ``kind`` groups the variants of one pathology."""
