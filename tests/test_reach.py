"""Reach: every model Keras itself loads safely is inspected without ``--unsafe``.

Functional models with tensor operators (saved as op layers), keras-hub backbones and tasks
built from small configs (random weights, no presets, no downloads), dict inputs at the top
and inside nested models; each checked against one plain ``tf.GradientTape`` over
``model.trainable_variables``. And the doors these open stay shut to what they must not admit:
control-flow ops, tokenizers that would read a file, packages that are not installed, configs
that declare more weights than the file holds, configurations nested too deep.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from kinds import assert_matches_tape, tape_by_path
from refusals import one_plain_line, rewrite_keras_config
from typer.testing import CliRunner

import gradinspect
from gradinspect import cli
from gradinspect.errors import ExitStatus, ModelLoadError, ProbeError

runner = CliRunner()


def invoke(*args: Any) -> Any:
    return runner.invoke(cli.app, [str(a) for a in args])


# ---------------------------------------------------------------- Keras 3 op layers


@pytest.fixture(scope="module")
def ops_model(tfk: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A functional model as people write them: a residual ``h + i``, ``ops.tanh(h) * 2.0``,
    last-position slicing ``h[:, -1, :]`` and ``ops.mean(h, axis=1)``."""
    _, keras = tfk
    keras.utils.set_random_seed(11)
    x = keras.Input((5, 6))
    h = keras.layers.Dense(6, activation="relu")(x)
    i = keras.layers.Dense(6)(x)
    y = keras.layers.Dense(4)(h + i)
    z = keras.layers.Dense(3)(keras.ops.mean(keras.ops.tanh(y) * 2.0, axis=1))
    w = keras.layers.Dense(2)(y[:, -1, :] - keras.ops.square(y[:, 0, :]))
    model = keras.Model(x, [z, w])
    where = tmp_path_factory.mktemp("ops")
    model.save(where / "ops.keras")
    np.save(where / "x.npy", np.random.default_rng(1).normal(size=(9, 5, 6)).astype("float32"))
    return where / "ops.keras", where / "x.npy"


def test_op_layers_load_without_unsafe_and_match_a_plain_tape(tfk: Any,
                                                              ops_model: tuple[Path, Path]
                                                              ) -> None:
    tf, keras = tfk
    path, xp = ops_model
    config = json.loads(zipfile.ZipFile(path).read("config.json"))
    ops = {layer["class_name"] for layer in config["config"]["layers"]
           if str(layer.get("module", "")).startswith("keras.src.ops")}
    assert {"Add", "Tanh", "Multiply", "Mean", "GetItem", "Subtract", "Square"} <= ops
    result = invoke(path, xp, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["coverage"]["skipped"] == []
    report = gradinspect.inspect_files(path, xp, gradinspect.InspectOptions(loss="sum"))
    model = keras.models.load_model(path)
    assert_matches_tape(report, tape_by_path(tf, model, np.load(xp)))


@pytest.mark.parametrize(("module", "class_name"), [
    ("keras.src.ops.core", "Cond"),            # calls the functions it is given
    ("keras.src.ops.core", "VectorizedMap"),
    ("keras.src.ops.core", "WhileLoop"),
    ("keras.src.ops.function", "Function"),    # a graph, not an operation
    ("keras.src.ops.operation", "Operation"),  # the base class
])
def test_operations_that_are_not_modelling_steps_are_refused(
        ops_model: tuple[Path, Path], tmp_path: Path, module: str, class_name: str) -> None:
    path, xp = ops_model

    def edit(config: dict[str, Any]) -> None:
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "Tanh":
                layer.update(module=module, class_name=class_name, registered_name=class_name)

    hostile = rewrite_keras_config(path, tmp_path / "hostile.keras", edit)
    one_plain_line(invoke(hostile, xp), ExitStatus.MODEL_ERROR, "'tanh'", class_name, "refused")


# ---------------------------------------------------------------- dict inputs


def test_dict_inputs_reach_the_model_and_nested_models_as_dicts(tfk: Any) -> None:
    tf, keras = tfk
    keras.utils.set_random_seed(3)
    a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    inner = keras.Model({"a": a, "b": b},
                        keras.layers.Dense(5, activation="tanh")(
                            keras.layers.Concatenate()([a, b])), name="inner")
    a2, b2 = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    outer = keras.Model({"a": a2, "b": b2},
                        keras.layers.Dense(2)(inner({"a": a2, "b": b2}) + keras.ops.sum(b2)))
    rng = np.random.default_rng(0)
    x = {"a": rng.normal(size=(6, 4)).astype("float32"),
         "b": rng.normal(size=(6, 3)).astype("float32")}
    report = gradinspect.inspect(outer, x)
    assert_matches_tape(report, tape_by_path(tf, outer, x))


# ---------------------------------------------------------------- failures of the pass


def test_a_failure_inside_call_says_what_keras_said(tfk: Any) -> None:
    _, keras = tfk
    x = keras.Input((4,))
    # builds symbolically (None broadcasts), fails on a batch of 5 rows against 3
    model = keras.Model(x, keras.layers.Dense(2)(x) + keras.ops.ones((3, 2)))
    with pytest.raises(ProbeError) as info:
        gradinspect.inspect(model, np.ones((5, 4), "float32"))
    message = info.value.message
    assert "Exception encountered" not in message
    assert "Graph execution error" not in message
    assert "Incompatible shapes" in message, message
    assert "\n" not in message
    assert "\x1b" not in message


def test_what_keras_said_takes_the_cause_from_keras_call_errors() -> None:
    from gradinspect.engine.figures import what_keras_said

    exc = ValueError("Exception encountered when calling BertTextClassifier.call().\n\n"
                     "\x1b[1mThe structure of `inputs` doesn't match the expected structure.\n"
                     "Expected: {'token_ids': 'token_ids'}\nReceived: inputs=['Tensor']\x1b[0m"
                     "\n\nArguments received by BertTextClassifier.call():\n  • inputs=[...]")
    assert what_keras_said(exc) == (
        "BertTextClassifier.call(): The structure of `inputs` doesn't match the expected "
        "structure. Expected: {'token_ids': 'token_ids'} Received: inputs=['Tensor']")
    assert what_keras_said(ValueError("plain\nmore")) == "plain"


# ---------------------------------------------------------------- keras-hub


@pytest.fixture(scope="module")
def hub(tfk: Any) -> Any:
    return pytest.importorskip("keras_hub", reason="keras-hub is the [hub] extra; "
                               "pip install 'gradinspect[hub]'")


def _token_data(rng: np.random.Generator, n: int, t: int, vocab: int,
                segments: bool) -> dict[str, np.ndarray]:
    x = {"token_ids": rng.integers(0, vocab, (n, t)).astype("int32"),
         "padding_mask": np.ones((n, t), "int32")}
    x["padding_mask"][0, t - 3:] = 0
    if segments:
        x["segment_ids"] = np.zeros((n, t), "int32")
    return x


@pytest.fixture(scope="module")
def bert(hub: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    import keras

    keras.utils.set_random_seed(5)
    backbone = hub.models.BertBackbone(vocabulary_size=50, num_layers=2, num_heads=2,
                                       hidden_dim=16, intermediate_dim=32,
                                       max_sequence_length=12)
    model = hub.models.BertTextClassifier(backbone, num_classes=3, preprocessor=None)
    where = tmp_path_factory.mktemp("bert")
    model.save(where / "bert.keras")
    rng = np.random.default_rng(2)
    x = _token_data(rng, 6, 10, 50, segments=True)
    np.savez(where / "x.npz", **x, y=rng.integers(0, 3, 6))
    return where / "bert.keras", where / "x.npz"


@pytest.fixture(scope="module")
def gpt2(hub: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    import keras

    keras.utils.set_random_seed(6)
    backbone = hub.models.GPT2Backbone(vocabulary_size=60, num_layers=2, num_heads=2,
                                       hidden_dim=16, intermediate_dim=32,
                                       max_sequence_length=12)
    model = hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    where = tmp_path_factory.mktemp("gpt2")
    model.save(where / "gpt2.keras")
    rng = np.random.default_rng(3)
    x = _token_data(rng, 5, 10, 60, segments=False)
    np.savez(where / "x.npz", **x, y=rng.integers(0, 60, (5, 10)))
    return where / "gpt2.keras", where / "x.npz"


@pytest.mark.parametrize("which", ["bert", "gpt2"])
def test_keras_hub_models_are_inspected_in_full_without_unsafe(
        tfk: Any, request: pytest.FixtureRequest, which: str) -> None:
    tf, keras = tfk
    path, xp = request.getfixturevalue(which)
    result = invoke(path, xp, "--json")
    assert result.exit_code in (0, 1), result.stderr
    plain = json.loads(result.stdout)
    coverage = plain["coverage"]
    assert coverage["inspected_params"] == coverage["trainable_params"] > 0
    assert coverage["skipped"] == []
    assert plain["loss"]["name"] == "sparse_categorical_crossentropy"
    report = gradinspect.inspect_files(path, xp, gradinspect.InspectOptions(loss="sum"))
    model = keras.models.load_model(path)
    with np.load(xp) as data:
        x = {k: data[k] for k in data.files if k != "y"}
    assert_matches_tape(report, tape_by_path(tf, model, x))


def test_a_keras_hub_backbone_takes_a_dict_from_the_api(tfk: Any, hub: Any) -> None:
    tf, _ = tfk
    backbone = hub.models.GPT2Backbone(vocabulary_size=40, num_layers=1, num_heads=2,
                                       hidden_dim=8, intermediate_dim=16,
                                       max_sequence_length=8)
    x = _token_data(np.random.default_rng(4), 3, 6, 40, segments=False)
    report = gradinspect.inspect(backbone, x)
    assert_matches_tape(report, tape_by_path(tf, backbone, x))


def test_a_tokenizer_whose_vocabulary_names_a_file_is_refused(
        hub: Any, tmp_path: Path) -> None:
    import keras

    secret = tmp_path / "vocab.txt"
    secret.write_text("[PAD]\nTOP-SECRET\n")
    tokenizer = hub.tokenizers.WordPieceTokenizer(vocabulary=["[PAD]", "[UNK]", "a", "b"])
    inp = keras.Input((), dtype="string")
    model = keras.Model(inp, keras.layers.Embedding(4, 2)(tokenizer(inp)))
    try:
        model.save(tmp_path / "tok.keras")
    except Exception as exc:  # string inputs do not save on every keras-hub version
        pytest.skip(f"cannot save a tokenizer model here: {exc}")

    def edit(config: dict[str, Any]) -> None:
        for layer in config["config"]["layers"]:
            if "Tokenizer" in layer["class_name"]:
                layer["config"]["vocabulary"] = str(secret)

    hostile = rewrite_keras_config(tmp_path / "tok.keras", tmp_path / "hostile.keras", edit)
    np.save(tmp_path / "x.npy", np.array(["a b"]))
    before = secret.stat().st_atime_ns
    line = one_plain_line(invoke(hostile, tmp_path / "x.npy"), ExitStatus.MODEL_ERROR,
                    "vocabulary", str(secret), "refused")
    assert "TOP-SECRET" not in line
    assert secret.stat().st_atime_ns == before


def test_a_model_package_that_is_not_installed_says_so(tfk: Any) -> None:
    import importlib.util

    from gradinspect.io.resolve import Resolver
    from gradinspect.io.safety import scan_config

    if importlib.util.find_spec("keras_cv") is not None:
        pytest.skip("keras-cv is installed here")
    config = {"module": "keras_cv.src.models.yolo", "class_name": "YOLOV8Detector",
              "config": {"name": "det"}, "registered_name": "keras_cv>YOLOV8Detector"}
    with pytest.raises(ModelLoadError) as info:
        scan_config(config, "m.keras", Resolver())
    assert "keras_cv, which is not installed" in info.value.message
    assert info.value.hint is not None
    assert "pip install keras-cv" in info.value.hint


# ---------------------------------------------------------------- budgets and depth


def test_a_config_declaring_more_weights_than_the_file_holds_is_refused(
        ops_model: tuple[Path, Path], tmp_path: Path) -> None:
    path, xp = ops_model

    def edit(config: dict[str, Any]) -> None:
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "InputLayer":
                layer["config"]["batch_shape"] = [None, 5, 50_000]
            if layer["class_name"] == "Dense" and layer["config"]["units"] == 6:
                layer["config"]["units"] = 50_000
                layer["build_config"]["input_shape"] = [None, 5, 50_000]

    hostile = rewrite_keras_config(path, tmp_path / "huge.keras", edit)
    # no --max-model-bytes: the machine may well have 10 GB; the file does not
    one_plain_line(invoke(hostile, xp), ExitStatus.MODEL_ERROR, "(50000, 50000)",
             "declares more weights than the file stores", "before allocating")


def test_a_training_configuration_nested_too_deep_is_refused(
        tfk: Any, tmp_path: Path) -> None:
    _, keras = tfk
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.save(tmp_path / "m.h5")
    shutil.copy(tmp_path / "m.h5", tmp_path / "deep.h5")
    with h5py.File(tmp_path / "deep.h5", "r+") as f:
        f.attrs["training_config"] = '{"loss": ' + "[" * 200_000 + "]" * 200_000 + "}"
    np.save(tmp_path / "x.npy", np.ones((2, 3), "float32"))
    one_plain_line(invoke(tmp_path / "deep.h5", tmp_path / "x.npy"), ExitStatus.MODEL_ERROR,
             "nested too deeply")


# ---------------------------------------------------------------- Keras 2 operators, SavedModel


@pytest.fixture(scope="module")
def keras2_ops(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tf.keras functional model with operators (saved as TFOpLambda / SlicingOpLambda),
    BatchNormalization and an LSTM, as a Keras 2 .h5 and as a SavedModel directory, with a
    data sample and tf-keras' own outputs on it."""
    tf_keras = pytest.importorskip("tf_keras")
    import tensorflow as tf

    tf_keras.utils.set_random_seed(21)
    layers = tf_keras.layers
    inp = tf_keras.Input((5, 3))
    seq = layers.LSTM(6, return_sequences=True)(inp)
    h = layers.Dense(6, activation="tanh")(seq)
    h = layers.BatchNormalization()(h + layers.Dense(6)(inp))
    pooled = tf.reduce_mean(h, axis=1) * 2.0 - h[:, 0]
    model = tf_keras.Model(inp, layers.Dense(3)(tf.nn.relu(pooled)))
    model.compile(loss="mse")
    where = tmp_path_factory.mktemp("keras2ops")
    model.save(where / "ops.h5")
    model.save(where / "saved", save_format="tf")
    x = np.random.default_rng(7).normal(size=(8, 5, 3)).astype("float32")
    np.save(where / "x.npy", x)
    np.save(where / "want.npy", model.predict(x, verbose=0))
    config = json.loads(h5py.File(where / "ops.h5", "r").attrs["model_config"])
    assert {"TFOpLambda", "SlicingOpLambda"} <= {
        layer["class_name"] for layer in config["config"]["layers"]}
    return {"h5": where / "ops.h5", "savedmodel": where / "saved", "x": where / "x.npy",
            "want": where / "want.npy"}


@pytest.mark.parametrize("form", ["h5", "savedmodel"])
def test_keras2_operator_models_load_without_unsafe_and_match(
        tfk: Any, keras2_ops: dict[str, Path], form: str) -> None:
    tf, _ = tfk
    from gradinspect.io.models import load_model

    path, xp = keras2_ops[form], keras2_ops["x"]
    before = sorted((q, q.stat().st_mtime_ns) for q in [path, *path.rglob("*")])
    result = invoke(path, xp, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["model"]["format"] == form
    loaded = load_model(path)
    x = np.load(xp)
    np.testing.assert_allclose(np.asarray(loaded.model(x)), np.load(keras2_ops["want"]),
                               rtol=1e-5, atol=1e-6)
    report = gradinspect.inspect_files(path, xp, gradinspect.InspectOptions(loss="sum"))
    assert_matches_tape(report, tape_by_path(tf, loaded.model, x))
    assert sorted((q, q.stat().st_mtime_ns) for q in [path, *path.rglob("*")]) == before


@pytest.mark.parametrize("function", ["io.write_file", "py_func", "numpy_function",
                                      "compat.v1.py_func", "summary.scalar"])
def test_a_tensorflow_function_outside_the_table_is_refused_by_name(
        keras2_ops: dict[str, Path], tmp_path: Path, function: str) -> None:
    hostile = tmp_path / "hostile.h5"
    shutil.copy(keras2_ops["h5"], hostile)
    with h5py.File(hostile, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "TFOpLambda" and \
                    layer["config"]["function"] == "math.reduce_mean":
                layer["config"]["function"] = function
        f.attrs["model_config"] = json.dumps(config)
    one_plain_line(invoke(hostile, keras2_ops["x"]), ExitStatus.MODEL_ERROR, function, "refused")


# ---------------------------------------------------------------- layers never built


def test_a_sublayer_created_and_never_called_owns_nothing_and_breaks_nothing(tfk: Any) -> None:
    """keras.io's GatedResidualNetwork creates a projection Dense used only when the widths
    differ; unbuilt, it has no variables and its ``kernel`` raises."""
    tf, keras = tfk

    class Gated(keras.layers.Layer):
        def __init__(self, units: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.units = units
            self.dense = keras.layers.Dense(units, activation="elu")
            self.project = keras.layers.Dense(units)

        def call(self, x: Any) -> Any:
            h = self.dense(x)
            return h + self.project(x) if x.shape[-1] != self.units else h + x

    keras.utils.set_random_seed(8)
    x = keras.Input((4,))
    model = keras.Model(x, keras.layers.Dense(2)(Gated(4)(x)))
    data = np.random.default_rng(1).normal(size=(5, 4)).astype("float32")
    report = gradinspect.inspect(model, data)
    assert_matches_tape(report, tape_by_path(tf, model, data))
    assert all("project" not in entry.path for entry in report.layers)


# ---------------------------------------------------------------- outputs without a loss


@pytest.mark.parametrize("form", ["list", "dict"])
def test_an_output_compiled_without_a_loss_takes_no_labels(tfk: Any, tmp_path: Path,
                                                           form: str) -> None:
    """The miniature GPT of keras.io returns its logits and its embeddings and compiles
    ``loss=[loss_fn, None]``: only the logits take labels and enter the loss."""
    tf, keras = tfk
    keras.utils.set_random_seed(9)
    x = keras.Input((6,), dtype="int32")
    emb = keras.layers.Embedding(20, 8, name="emb")(x)
    logits = keras.layers.Dense(20, name="logits")(emb)
    if form == "list":
        model = keras.Model(x, [logits, emb])
        model.compile(loss=[keras.losses.SparseCategoricalCrossentropy(from_logits=True), None])
    else:
        model = keras.Model(x, {"logits": logits, "emb": emb})
        model.compile(loss={"logits": keras.losses.SparseCategoricalCrossentropy(
            from_logits=True)})
    model.save(tmp_path / "m.keras")
    rng = np.random.default_rng(4)
    tokens, y = rng.integers(0, 20, (5, 6)).astype("int32"), rng.integers(0, 20, (5, 6))
    np.savez(tmp_path / "d.npz", x=tokens, y=y)
    result = invoke(tmp_path / "m.keras", tmp_path / "d.npz", "--json")
    assert result.exit_code in (0, 1), result.stderr
    plain = json.loads(result.stdout)
    assert plain["loss"]["name"] == "sparse_categorical_crossentropy"
    assert any("has no loss" in note for note in plain["data"]["notes"])
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False)
    with tf.GradientTape() as tape:
        out = loaded(tf.constant(tokens))
        first = out["logits"] if isinstance(out, dict) else out[0]
        total = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
            tf.constant(y), first, from_logits=True))
    grads = tape.gradient(total, loaded.trainable_variables)
    reference = {v.path: np.asarray(tf.convert_to_tensor(g), dtype=np.float64)
                 for v, g in zip(loaded.trainable_variables, grads, strict=True)}
    report = gradinspect.inspect_files(tmp_path / "m.keras", tmp_path / "d.npz")
    assert_matches_tape(report, reference)
