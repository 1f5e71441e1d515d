"""Keras 2 TFOpLambda / SlicingOpLambda layers translated for Keras 3 (``gradinspect.io.tfop``).

tf-keras builds and saves real functional models that call TensorFlow functions on their
tensors; the translated config, written into a copy of the .h5, must load in Keras 3 and give
tf-keras's outputs (same dtype, rtol 1e-5), and each op layer must be the entry Keras 3 itself
writes for the same ``keras.ops`` call (checked against Keras 3's own ``get_config``). Hostile
configs (functions outside the table, unknown arguments, malformed nodes, deep nesting) must
end in ``ModelLoadError`` and leave the config as it was.

The Keras 2 repairs run as ``_keras2_sequential_inputs``, ``translate_tf_ops``,
``_fix_keras2_node_indices``; the first two commute, the last must come after the translation.
"""

from __future__ import annotations

import copy
import json
import operator
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import h5py
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gradinspect.errors import ModelLoadError
from gradinspect.io.legacy import _fix_keras2_node_indices, _keras2_sequential_inputs
from gradinspect.io.tfop import TRANSLATIONS, translate_tf_ops

tf_keras = pytest.importorskip("tf_keras")

Fn = Callable[[Any, Any], Any]
OPS = ("TFOpLambda", "SlicingOpLambda")


def _bases(tf: Any, x: Any, dense: Any) -> SimpleNamespace:
    """The tensors every case starts from, built the same way in either Keras (``tf`` is
    tensorflow for tf-keras, ``keras.ops`` for Keras 3)."""
    h, i = dense(4, name="d")(x), dense(4, name="d2")(x)
    return SimpleNamespace(h=h, i=i, pos=tf.sigmoid(h) + 0.5, unit=tf.tanh(h) * 0.9, b=h > 0,
                           c=i > 0)


def _tf_call(module: str, name: str, base: str) -> Fn:
    return lambda tf, t: getattr(getattr(tf, module), name)(getattr(t, base))


def _ops_call(name: str, base: str) -> Fn:
    return lambda ops, t: getattr(ops, name)(getattr(t, base))


# (the function tf-keras writes, the tf-keras call, the same call with keras.ops or None when
# Keras 3 would write it otherwise). Every entry of the table is written by one case, except
# the aliases TensorFlow 2.21 no longer writes (test_aliases).
CASES: list[tuple[str, Fn, Fn | None]] = [
    ("__operators__.add", lambda tf, t: t.h + t.i, lambda o, t: t.h + t.i),
    ("math.add", lambda tf, t: tf.math.add(t.h, 1.5), lambda o, t: o.add(t.h, 1.5)),
    ("math.subtract", lambda tf, t: 2.0 - t.h, lambda o, t: 2.0 - t.h),
    ("math.multiply", lambda tf, t: t.h * 2.0, lambda o, t: t.h * 2.0),
    ("math.truediv", lambda tf, t: 1.0 / t.pos, lambda o, t: 1.0 / t.pos),
    ("compat.v1.floor_div", lambda tf, t: t.h // 0.3, lambda o, t: t.h // 0.3),
    ("math.floormod", lambda tf, t: t.h % 0.7, lambda o, t: t.h % 0.7),
    ("math.pow", lambda tf, t: t.pos ** t.i, lambda o, t: t.pos ** t.i),
    ("math.maximum", lambda tf, t: tf.maximum(t.h, t.i), lambda o, t: o.maximum(t.h, t.i)),
    ("math.minimum", lambda tf, t: tf.minimum(t.h, 0.1), lambda o, t: o.minimum(t.h, 0.1)),
    ("math.greater", lambda tf, t: t.h > t.i, lambda o, t: t.h > t.i),
    ("math.greater_equal", lambda tf, t: t.h >= 0.2, lambda o, t: t.h >= 0.2),
    ("math.less", lambda tf, t: t.h < t.i, lambda o, t: t.h < t.i),
    ("math.less_equal", lambda tf, t: t.h <= t.i, lambda o, t: t.h <= t.i),
    ("math.equal", lambda tf, t: tf.equal(t.h, t.h), lambda o, t: o.equal(t.h, t.h)),
    ("math.not_equal", lambda tf, t: tf.not_equal(t.h, t.i), lambda o, t: o.not_equal(t.h, t.i)),
    ("math.logical_and", lambda tf, t: tf.logical_and(t.b, t.c),
     lambda o, t: o.logical_and(t.b, t.c)),
    ("math.logical_or", lambda tf, t: tf.logical_or(t.b, t.c), lambda o, t: o.logical_or(t.b, t.c)),
    ("math.logical_not", lambda tf, t: tf.logical_not(t.b), lambda o, t: o.logical_not(t.b)),
    ("math.atan2", lambda tf, t: tf.math.atan2(t.h, t.i), lambda o, t: o.arctan2(t.h, t.i)),
    *((f"math.{name}", _tf_call("math", name, "h"), _ops_call(k3, "h")) for name, k3 in (
        ("negative", "negative"), ("exp", "exp"), ("square", "square"), ("abs", "abs"),
        ("tanh", "tanh"), ("sin", "sin"), ("cos", "cos"), ("tan", "tan"), ("sinh", "sinh"),
        ("cosh", "cosh"), ("atan", "arctan"), ("asinh", "arcsinh"), ("expm1", "expm1"),
        ("floor", "floor"), ("ceil", "ceil"), ("sign", "sign"), ("round", "round"),
        ("is_nan", "isnan"), ("is_inf", "isinf"), ("is_finite", "isfinite"),
        ("erf", "erf"), ("sigmoid", "sigmoid"), ("softplus", "softplus"),
        ("log_sigmoid", "log_sigmoid"))),
    *((f"math.{name}", _tf_call("math", name, "pos"), _ops_call(k3, "pos")) for name, k3 in (
        ("log", "log"), ("sqrt", "sqrt"), ("rsqrt", "rsqrt"), ("reciprocal", "reciprocal"),
        ("log1p", "log1p"))),
    *((f"math.{name}", _tf_call("math", name, "unit"), _ops_call(k3, "unit")) for name, k3 in (
        ("asin", "arcsin"), ("acos", "arccos"), ("atanh", "arctanh"))),
    ("math.acosh", lambda tf, t: tf.math.acosh(t.pos + 1.0), lambda o, t: o.arccosh(t.pos + 1.0)),
    *((f"nn.{name}", _tf_call("nn", name, "h"), _ops_call(k3, "h")) for name, k3 in (
        ("relu", "relu"), ("relu6", "relu6"), ("selu", "selu"), ("elu", "elu"),
        ("softsign", "softsign"), ("silu", "silu"))),
    ("nn.gelu", lambda tf, t: tf.nn.gelu(t.h), lambda o, t: o.gelu(t.h, approximate=False)),
    ("nn.gelu", lambda tf, t: tf.nn.gelu(t.h, approximate=True), lambda o, t: o.gelu(t.h)),
    ("nn.softmax", lambda tf, t: tf.nn.softmax(t.h), lambda o, t: o.softmax(t.h)),
    ("nn.softmax", lambda tf, t: tf.nn.softmax(t.h, axis=1), lambda o, t: o.softmax(t.h, 1)),
    ("nn.log_softmax", lambda tf, t: tf.nn.log_softmax(t.h, 1),
     lambda o, t: o.log_softmax(t.h, axis=1)),
    ("nn.leaky_relu", lambda tf, t: tf.nn.leaky_relu(t.h), lambda o, t: o.leaky_relu(t.h)),
    ("nn.leaky_relu", lambda tf, t: tf.nn.leaky_relu(t.h, alpha=0.1),
     lambda o, t: o.leaky_relu(t.h, negative_slope=0.1)),
    ("math.reduce_mean", lambda tf, t: tf.reduce_mean(t.h, axis=1),
     lambda o, t: o.mean(t.h, axis=1)),
    ("math.reduce_sum", lambda tf, t: tf.reduce_sum(t.h, axis=[1], keepdims=True),
     lambda o, t: o.sum(t.h, axis=[1], keepdims=True)),
    ("math.reduce_max", lambda tf, t: tf.reduce_max(t.h, -1), lambda o, t: o.max(t.h, -1)),
    ("math.reduce_min", lambda tf, t: tf.reduce_min(t.h), lambda o, t: o.min(t.h)),
    ("math.reduce_prod", lambda tf, t: tf.reduce_prod(t.pos, 1), lambda o, t: o.prod(t.pos, 1)),
    ("math.reduce_std", lambda tf, t: tf.math.reduce_std(t.h, 1), lambda o, t: o.std(t.h, 1)),
    ("math.reduce_variance", lambda tf, t: tf.math.reduce_variance(t.h, [1, 2]),
     lambda o, t: o.var(t.h, [1, 2])),
    ("math.reduce_logsumexp", lambda tf, t: tf.reduce_logsumexp(t.h, 1),
     lambda o, t: o.logsumexp(t.h, 1)),
    ("math.reduce_any", lambda tf, t: tf.reduce_any(t.b, 1), lambda o, t: o.any(t.b, 1)),
    ("math.reduce_all", lambda tf, t: tf.reduce_all(t.c), lambda o, t: o.all(t.c)),
    ("reshape", lambda tf, t: tf.reshape(t.h, (-1, 12)), lambda o, t: o.reshape(t.h, (-1, 12))),
    ("concat", lambda tf, t: tf.concat([t.h, t.i], axis=-1),
     lambda o, t: o.concatenate([t.h, t.i], axis=-1)),
    ("stack", lambda tf, t: tf.stack([t.h, t.i], axis=1), lambda o, t: o.stack([t.h, t.i], 1)),
    ("compat.v1.transpose", lambda tf, t: tf.transpose(t.h, perm=[0, 2, 1]),
     lambda o, t: o.transpose(t.h, [0, 2, 1])),
    ("compat.v1.transpose", lambda tf, t: tf.transpose(t.h), lambda o, t: o.transpose(t.h)),
    ("expand_dims", lambda tf, t: tf.expand_dims(t.h, 1), lambda o, t: o.expand_dims(t.h, 1)),
    ("compat.v1.squeeze", lambda tf, t: tf.squeeze(tf.expand_dims(t.h, 1), axis=1),
     lambda o, t: o.squeeze(o.expand_dims(t.h, 1), axis=1)),
    ("compat.v1.squeeze", lambda tf, t: tf.squeeze(tf.expand_dims(t.h, 1)),
     lambda o, t: o.squeeze(o.expand_dims(t.h, 1))),
    ("tile", lambda tf, t: tf.tile(t.h, [1, 2, 1]), lambda o, t: o.tile(t.h, [1, 2, 1])),
    ("cast", lambda tf, t: tf.cast(t.h * 10.0, "int32"),
     lambda o, t: o.cast(t.h * 10.0, "int32")),
    ("cast", lambda tf, t: tf.cast(t.h, "float32"), lambda o, t: o.cast(t.h, "float32")),
    ("clip_by_value", lambda tf, t: tf.clip_by_value(t.h, -0.5, 0.5),
     lambda o, t: o.clip(t.h, -0.5, 0.5)),
    ("where", lambda tf, t: tf.where(t.b, t.h, t.i), lambda o, t: o.where(t.b, t.h, t.i)),
    ("linalg.matmul", lambda tf, t: t.h @ tf.transpose(t.i, [0, 2, 1]),
     lambda o, t: t.h @ o.transpose(t.i, [0, 2, 1])),
    ("linalg.matmul", lambda tf, t: tf.matmul(t.h, t.i, transpose_b=True),
     lambda o, t: o.einsum("...ij,...kj->...ik", t.h, t.i)),
    ("linalg.matmul", lambda tf, t: tf.matmul(t.h, t.i, transpose_a=True),
     lambda o, t: o.einsum("...ji,...jk->...ik", t.h, t.i)),
    ("linalg.matmul", lambda tf, t: tf.matmul(t.h, tf.transpose(t.i, [0, 2, 1]),
                                              transpose_a=True, transpose_b=True),
     lambda o, t: o.einsum("...ji,...kj->...ik", t.h, o.transpose(t.i, [0, 2, 1]))),
    ("__operators__.getitem", lambda tf, t: t.h[:, 0], lambda o, t: t.h[:, 0]),
    ("__operators__.getitem", lambda tf, t: t.h[:, 1:3, ::2], lambda o, t: t.h[:, 1:3, ::2]),
    ("__operators__.getitem", lambda tf, t: t.h[:, None, -2:], lambda o, t: t.h[:, None, -2:]),
    ("__operators__.getitem", lambda tf, t: t.h[1], lambda o, t: t.h[1]),
    ("__operators__.getitem", lambda tf, t: t.h[1:3], lambda o, t: t.h[[slice(1, 3)]]),
    ("__operators__.getitem", lambda tf, t: t.h[:, ::-1, 0, ...], lambda o, t: t.h[:, ::-1, 0]),
    ("__operators__.getitem", lambda tf, t: t.h[..., -1], None),
    ("__operators__.getitem", lambda tf, t: t.h[None, ..., 1, 2], None),
    ("__operators__.add", lambda tf, t: operator.add(t.h, [[1.0, 2.0, 3.0, 4.0]]),
     lambda o, t: t.h + o.convert_to_tensor([[1.0, 2.0, 3.0, 4.0]])),
    ("math.multiply", lambda tf, t: t.h * tf.constant([1.0, -2.0, 3.0, 0.5]),
     lambda o, t: t.h * o.convert_to_tensor([1.0, -2.0, 3.0, 0.5])),
    ("__operators__.add", lambda tf, t: operator.add(tf.cast(t.h * 10.0, "int32"), [1, 2, 3, 4]),
     lambda o, t: o.cast(t.h * 10.0, "int32") + o.convert_to_tensor([1, 2, 3, 4], "int32")),
]
ALIASES = {"math.logical_xor", "math.divide", "math.floordiv", "transpose", "squeeze", "nn.swish"}
"""Table entries TensorFlow 2.21's tf-keras does not write (the call dispatches to another
name, e.g. ``tf.divide`` to ``math.truediv``); their signatures match the names that it does."""


def _translate(src: Path, dst: Path) -> dict[str, Any]:
    """A copy of a Keras 2 .h5 with its config repaired for Keras 3; the config."""
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        _keras2_sequential_inputs(config)
        assert translate_tf_ops(config, dst.name)
        _fix_keras2_node_indices(config)
        f.attrs["model_config"] = json.dumps(config)
    return config


def _saved(model: Any, path: Path) -> Path:
    model.save(path, save_format="h5")
    return path


def _assert_same_outputs(keras: Any, reference: Any, path: Path, x: np.ndarray) -> None:
    loaded = keras.models.load_model(path, compile=False, safe_mode=True)
    expected, got = reference(x), loaded([x])
    expected = expected if isinstance(expected, list) else [expected]
    got = got if isinstance(got, list) else [got]
    assert len(got) == len(expected)
    for n, (want, have) in enumerate(zip(expected, got, strict=True)):
        a, b = np.asarray(want), np.asarray(have)
        assert (a.dtype, a.shape) == (b.dtype, b.shape), n
        if a.dtype.kind == "f":
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=str(n))
        else:
            np.testing.assert_array_equal(b, a, err_msg=str(n))


@pytest.fixture(scope="module")
def table_model(tfk: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """A tf-keras model with one output per case, saved as .h5."""
    tf, _ = tfk
    tf_keras.utils.set_random_seed(7)
    x = tf_keras.Input((3, 4), name="x")
    t = _bases(tf, x, tf_keras.layers.Dense)
    model = tf_keras.Model(x, [fn(tf, t) for _, fn, _ in CASES])
    return model, _saved(model, tmp_path_factory.mktemp("tfop") / "table.h5")


@pytest.fixture(scope="module")
def translated(table_model: tuple[Any, Path], tmp_path_factory: pytest.TempPathFactory,
               ) -> tuple[Path, dict[str, Any]]:
    path = tmp_path_factory.mktemp("tfop") / "table3.h5"
    return path, _translate(table_model[1], path)


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((5, 3, 4)).astype(np.float32)


def _functions(config: dict[str, Any]) -> set[str]:
    return {layer["config"]["function"] for layer in config["config"]["layers"]
            if layer["class_name"] in OPS}


def test_every_table_entry_is_written_by_a_case(table_model: tuple[Any, Path]) -> None:
    with h5py.File(table_model[1], "r") as f:
        written = _functions(json.loads(f.attrs["model_config"]))
    assert written == set(TRANSLATIONS) - ALIASES
    assert {name for name, _, _ in CASES} == written


def test_translated_table_model_gives_tf_keras_outputs(
        tfk: Any, table_model: tuple[Any, Path], translated: tuple[Path, dict[str, Any]],
        x: np.ndarray) -> None:
    assert not any(layer.get("class_name") in OPS for layer in translated[1]["config"]["layers"])
    _assert_same_outputs(tfk[1], table_model[0], translated[0], x)


def _shape_free(value: Any) -> Any:
    """A JSON value with every ``__keras_tensor__`` replaced by ``"T"``."""
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        return "T"
    if isinstance(value, dict):
        return {k: _shape_free(v) for k, v in value.items()}
    return [_shape_free(v) for v in value] if isinstance(value, list) else value


def _op_entry(config: dict[str, Any], output: list[Any]) -> dict[str, Any]:
    entry = next(x for x in config["config"]["layers"] if x["name"] == output[0])
    entry = json.loads(json.dumps(entry))
    entry["config"].pop("name")
    entry.pop("name")
    entry["inbound_nodes"] = _shape_free(entry["inbound_nodes"])
    return entry


def test_op_layers_are_what_keras_3_writes(tfk: Any, translated: tuple[Path, dict[str, Any]]
                                           ) -> None:
    _, keras = tfk
    x = keras.Input((3, 4), name="x")
    t = _bases(keras.ops, x, keras.layers.Dense)
    cases = [(n, k) for n, (_, _, k) in enumerate(CASES) if k is not None]
    reference = keras.Model(x, [k(keras.ops, t) for _, k in cases]).get_config()
    reference = json.loads(json.dumps(reference))
    ours = translated[1]
    for (n, _), out in zip(cases, reference["output_layers"], strict=True):
        assert _op_entry(ours, ours["config"]["output_layers"][n]) == _op_entry(
            {"config": reference}, out), CASES[n][0]


@pytest.fixture(scope="module")
def nested_model(tfk: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, str]:
    """Ops inside a nested functional model, ops on its outputs (called twice, so node 2 in
    Keras 2), a nested Sequential with an input, and one op layer called on two nodes with
    different arguments (its second output feeding a Dense layer and another op); the name
    of that op layer (tf-keras numbers op layer names across the session)."""
    tf, _ = tfk
    tf_keras.utils.set_random_seed(11)
    xi = tf_keras.Input((4,), name="xi")
    hi = tf_keras.layers.Dense(4, name="di")(xi)
    inner = tf_keras.Model(xi, [tf.nn.relu(hi) * 3.0 + hi[:, ::-1]], name="inner")
    seq = tf_keras.Sequential([tf_keras.layers.Dense(4, input_shape=(4,), name="ds")],
                              name="seq")
    x = tf_keras.Input((4,), name="x")
    y1, s = inner(x), seq(x)
    y2 = inner(tf.nn.relu(x))
    grid = tf_keras.layers.Reshape((2, 2), name="grid")(x)
    m1 = tf.reduce_mean(grid, axis=1)
    op = next(layer for layer in tf_keras.Model(x, m1).layers
              if layer.name.startswith("tf.math.reduce_mean"))
    m2 = op(grid, axis=2, keepdims=True)
    outs = [y1 * 2.0, tf.concat([y1, s, y2], -1), tf.math.add(x, y2), y2, s - 1.0, m1, m2,
            tf_keras.layers.Flatten(name="flat")(m2), tf.squeeze(m2, -1) + 1.0]
    model = tf_keras.Model(x, outs)
    return model, _saved(model, tmp_path_factory.mktemp("tfop") / "nested.h5"), op.name


def test_nested_models_and_shared_op_layers(tfk: Any, nested_model: tuple[Any, Path, str],
                                            tmp_path: Path) -> None:
    model, path, first = nested_model
    config = _translate(path, tmp_path / "nested3.h5")
    layers = {x["name"]: x for x in config["config"]["layers"]}
    second = f"{first}_1"
    assert [(layers[n]["config"]["axis"], layers[n]["config"]["keepdims"])
            for n in (first, second)] == [(1, False), (2, True)]
    assert [second, 0, 0] in config["config"]["output_layers"]
    assert [first, 0, 0] in config["config"]["output_layers"]
    assert layers["flat"]["inbound_nodes"] == [[[second, 0, 0, {}]]]
    inner_layers = layers["inner"]["config"]["layers"]
    assert not any(x["class_name"] in OPS for x in inner_layers)
    x = np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32)
    _assert_same_outputs(tfk[1], model, tmp_path / "nested3.h5", x)


def test_translating_after_the_node_index_repair_is_refused(
        nested_model: tuple[Any, Path, str]) -> None:
    with h5py.File(nested_model[1], "r") as f:
        config = json.loads(f.attrs["model_config"])
    _fix_keras2_node_indices(config)  # the wrong order: tf.concat's list was shifted
    with pytest.raises(ModelLoadError, match="node 0 of the nested model"):
        translate_tf_ops(config, "nested.h5")


def test_the_sequential_input_repair_may_come_before_or_after(
        nested_model: tuple[Any, Path, str]) -> None:
    with h5py.File(nested_model[1], "r") as f:
        config = json.loads(f.attrs["model_config"])
    seq = next(x for x in config["config"]["layers"] if x["name"] == "seq")
    inner = seq["config"]["layers"]  # as Keras <= 2.3 wrote it: the input shape on a layer
    shape = inner.pop(0)["config"]["batch_input_shape"]
    inner[0]["config"]["input_shape"] = shape[1:]
    before, after = copy.deepcopy(config), config
    _keras2_sequential_inputs(before)
    assert translate_tf_ops(before, "nested.h5")
    assert translate_tf_ops(after, "nested.h5")
    _keras2_sequential_inputs(after)
    assert before == after
    minus = next(x for x in after["config"]["layers"] if x["class_name"] == "Subtract")
    assert minus["inbound_nodes"][0]["args"][0]["config"]["keras_history"] == ["seq", 0, 0]


@pytest.mark.parametrize(("alias", "kwargs", "class_name", "config"), [
    ("math.logical_xor", {"y": ["c", 0, 0], "name": "LogicalXor"}, "LogicalXor", {}),
    ("math.divide", {"y": 2.0, "name": None}, "Divide", {}),
    ("math.floordiv", {"y": ["c", 0, 0]}, "FloorDivide", {}),
    ("transpose", {"perm": [0, 2, 1], "conjugate": False, "name": "transpose"}, "Transpose",
     {"axes": [0, 2, 1]}),
    ("squeeze", {"axis": [1], "name": None}, "Squeeze", {"axis": [1]}),
    ("nn.swish", {"beta": 1.0}, "Silu", {}),
])
def test_aliases(alias: str, kwargs: dict[str, Any], class_name: str,
                 config: dict[str, Any]) -> None:
    cfg = _config([_op("op", alias, ["d", 0, 0, kwargs])])
    assert translate_tf_ops(cfg, "f.h5")
    entry = cfg["config"]["layers"][-1]
    assert (entry["class_name"], entry["config"]) == (class_name, {"name": "op", **config})


# Hand-written configs: what TensorFlow is never asked to build.

def _op(name: str, fn: str, *nodes: Any, cls: str = "TFOpLambda") -> dict[str, Any]:
    return {"class_name": cls, "name": name, "inbound_nodes": list(nodes),
            "config": {"name": name, "trainable": True, "dtype": "float32", "function": fn}}


def _config(ops: list[Any]) -> dict[str, Any]:
    """A Keras 2 functional config: input x, Dense d and c, then ``ops``; outputs: the last."""
    dense = [{"class_name": "Dense", "name": n, "config": {"name": n, "units": 4},
              "inbound_nodes": [[["x", 0, 0, {}]]]} for n in ("d", "c")]
    last = ops[-1].get("name") if ops and isinstance(ops[-1], dict) else "d"
    return {"class_name": "Functional", "config": {
        "name": "m", "layers": [{"class_name": "InputLayer", "name": "x", "config": {
            "batch_input_shape": [None, 3, 4], "name": "x"}, "inbound_nodes": []},
            *dense, *ops],
        "input_layers": [["x", 0, 0]], "output_layers": [[last, 0, 0]]}}


def _refused(config: Any, match: str) -> None:
    before = copy.deepcopy(config)
    with pytest.raises(ModelLoadError, match=match) as info:
        translate_tf_ops(config, "evil.h5")
    assert info.value.message.startswith("evil.h5: ")
    assert config == before


@pytest.mark.parametrize("fn", ["io.write_file", "py_func", "numpy_function", "compat.v1.py_func",
                                "summary.scalar", "__import__", "os.system", "print",
                                "random.normal", "einsum", "strings.join", "debugging.assert_equal",
                                "math.l2_normalize", "__operators__.ragged_getitem",
                                "boolean_mask", "math.add\n\x1b[31m"])
def test_functions_outside_the_table_are_refused(fn: str) -> None:
    config = _config([_op("tf.evil", fn, ["d", 0, 0, {"y": 1.0}])])
    _refused(config, "layer 'tf.evil' calls the TensorFlow function 'tf.")
    with pytest.raises(ModelLoadError) as info:
        translate_tf_ops(config, "evil.h5")
    assert "\x1b" not in info.value.message
    assert "\n" not in info.value.message
    assert "keras.ops" in (info.value.hint or "")


def test_getitem_only_from_a_slicing_layer_and_the_rest_only_from_tfoplambda() -> None:
    _refused(_config([_op("g", "__operators__.getitem", ["d", 0, 0, {"slice_spec": 0}])]),
             "'tf.__operators__.getitem'")
    _refused(_config([_op("a", "math.add", ["d", 0, 0, {"y": 1.0}], cls="SlicingOpLambda")]),
             "'tf.math.add'")


@pytest.mark.parametrize(("fn", "kwargs", "match"), [
    ("math.reduce_mean", {"axis": 1, "foo": 2}, "the argument 'foo'"),
    ("math.reduce_mean", {"axis": ["c", 0, 0]}, "axis="),
    ("math.reduce_mean", {"axis": True}, "axis=True"),
    ("math.reduce_mean", {"keepdims": 1}, "keepdims=1"),
    ("linalg.matmul", {"b": ["c", 0, 0], "adjoint_a": True}, "adjoint_a=True"),
    ("linalg.matmul", {"b": ["c", 0, 0], "output_type": "int32"}, "output_type"),
    ("linalg.matmul", {}, "no 'b' argument"),
    ("nn.silu", {"beta": 2.0}, "beta=2.0"),
    ("nn.gelu", {"approximate": "yes"}, "approximate"),
    ("nn.softmax", {"axis": [1, 2]}, "axis"),
    ("compat.v1.transpose", {"perm": [0, 2, 1], "conjugate": True}, "conjugate=True"),
    ("compat.v1.squeeze", {"squeeze_dims": [1]}, "squeeze_dims"),
    ("reshape", {"shape": [-1, ["c", 0, 0]]}, "shape="),
    ("reshape", {}, "no 'shape' argument"),
    ("cast", {"dtype": "string"}, "dtype"),
    ("cast", {"dtype": {"class_name": "__lambda__"}}, "dtype"),
    ("clip_by_value", {"clip_value_min": ["c", 0, 0], "clip_value_max": 1.0}, "clip_value_min"),
    ("clip_by_value", {"clip_value_min": float("nan"), "clip_value_max": 1.0}, "clip"),
    ("where", {"x": None, "y": None}, "not a tensor, number or array"),
    ("where", {}, "no 'x' argument"),
    ("math.add", {"y": "some text"}, "not a tensor, number or array"),
    ("math.add", {"y": [[1.0, 2.0], [3.0]]}, "not a tensor, number or array"),
    ("math.add", {"y": [1.0, True]}, "not a tensor, number or array"),
    ("math.add", {"y": {"class_name": "__lambda__", "config": {}}}, "not a tensor"),
    ("math.add", {"y": 1.0, "name": ["x"]}, "name that is not text"),
    ("__operators__.getitem", {"slice_spec": [0, ["c", 0, 0]]}, "index"),
    ("__operators__.getitem", {"slice_spec": ["c", 0, 0]}, "index that is a tensor"),
    ("__operators__.getitem", {"slice_spec": [{"start": 1.5, "stop": None, "step": None}]},
     "index"),
    ("__operators__.getitem", {"slice_spec": [{"class_name": "__ellipsis__"}, {
        "start": 0, "stop": 1, "step": None}]}, "'...' before a slice"),
    ("__operators__.getitem", {"slice_spec": [{"class_name": "__ellipsis__"}, None]},
     "'...' before a slice or new axis"),
    ("__operators__.getitem", {"slice_spec": 0, "var": ["c", 0, 0]}, "'var'"),
    ("__operators__.getitem", {}, "slice_spec"),
])
def test_arguments_outside_the_table_are_refused(fn: str, kwargs: dict[str, Any],
                                                 match: str) -> None:
    cls = "SlicingOpLambda" if fn == "__operators__.getitem" else "TFOpLambda"
    _refused(_config([_op("op", fn, ["d", 0, 0, kwargs], cls=cls)]), match)


DEEP = 100_000


def _deep(leaf: Any) -> Any:
    value = leaf
    for _ in range(DEEP):
        value = [value]
    return value


@pytest.mark.parametrize(("layers", "match"), [
    ([_op("op", "nn.relu", "not a list")], "malformed inbound node"),
    ([_op("op", "nn.relu", 5)], "malformed inbound node"),
    ([_op("op", "nn.relu", {"args": []})], "malformed inbound node"),
    ([_op("op", "nn.relu", [])], "malformed inbound node"),
    ([_op("op", "nn.relu", ["d", 0])], "malformed inbound node"),
    ([_op("op", "nn.relu", ["d", 0, 0, {}, 5])], "malformed inbound node"),
    ([_op("op", "nn.relu", [["d", 0, 0, {}]])], "malformed inbound node"),
    ([_op("op", "concat", ["d", 0, 0, {"axis": 1}])], "malformed inbound node"),
    ([_op("op", "concat", [["d", 0, 0, {"axis": 1}], ["c", 0, 0, {"axis": 2}]])],
     "different arguments"),
    ([_op("op", "concat", [["d", 0, 0, {"axis": 1}], "c"])], "malformed inbound node"),
    ([_op("op", "nn.relu", ["ghost", 0, 0, {}])], "missing layer 'ghost'"),
    ([_op("op", "math.add", ["d", 0, 0, {"y": ["ghost", 0, 0]}])], "missing layer 'ghost'"),
    ([_op("op", "nn.relu", ["d", -1, 0, {}])], "bad index"),
    ([_op("op", "nn.relu", ["d", "0", 0, {}])], "bad index"),
    ([_op("op", "nn.relu", ["d", True, 0, {}])], "bad index"),
    ([_op("op", "nn.relu", ["d", 2**70, 0, {}])], "bad index"),
    ([_op("op", "nn.relu", ["d", 0, 0, ["not", "a", "dict"]])], "not a dict"),
    ([_op("a", "nn.relu", ["d", 0, 0, {}]), _op("b", "nn.relu", ["a", 3, 0, {}])],
     "node 3 of 'a', which has none"),
    ([_op("op", "nn.relu", ["d", 0, 0, {}]), _op("op", "nn.relu", ["d", 0, 0, {}])],
     "no valid unique name"),
    ([_op("d", "nn.relu", ["c", 0, 0, {}])], "no valid unique name"),
    ([{**_op("op", "nn.relu"), "inbound_nodes": {"0": 1}}], "no valid unique name"),
    ([{**_op("op", "nn.relu", ["d", 0, 0, {}]), "name": None}], "no valid unique name"),
    ([_op("a/b", "nn.relu", ["d", 0, 0, {}])], "no valid unique name"),
    ([{**_op("op", "nn.relu", ["d", 0, 0, {}]), "config": "nope"}], "'tf.None'"),
    ([{**_op("op", "nn.relu", ["d", 0, 0, {}]), "config": {"function": ["x"]}}],
     "calls the TensorFlow function"),
])
def test_malformed_op_layers_are_refused(layers: list[Any], match: str) -> None:
    _refused(_config(layers), match)


@pytest.mark.parametrize(("layers", "match"), [
    (lambda: [_op("op", "math.add", ["d", 0, 0, {"y": _deep(1.0)}])],
     "not a tensor, number or array"),
    (lambda: [_op("op", "concat", [["d", 0, 0, {"axis": 1, "name": _deep(1)}],
                                   ["c", 0, 0, {"axis": 1, "name": _deep(1)}]])], "name"),
    (lambda: [_op("op", "__operators__.getitem", ["d", 0, 0, {"slice_spec": _deep(0)}],
                  cls="SlicingOpLambda")], "index"),
    (lambda: [{**_op("op", "nn.relu", ["d", 0, 0, {}]), "name": _deep("x")}],
     "no valid unique name"),
    (lambda: [_op("op", "nn.relu", ["d", 0, 0, {}]), _op("evil", "nn.relu", _deep("d"))],
     "malformed inbound node"),
])
def test_deeply_nested_values_are_refused_without_recursing(
        layers: Callable[[], list[Any]], match: str) -> None:
    with pytest.raises(ModelLoadError, match=match):  # no deepcopy: it would recurse
        translate_tf_ops(_config(layers()), "evil.h5")


def test_op_layers_outside_a_functional_model_are_refused() -> None:
    relu = _op("op", "nn.relu", ["d", 0, 0, {}])
    sequential = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 4]}}, relu]}}
    _refused(sequential, "outside a functional model")
    wrapper = {"class_name": "TimeDistributed", "name": "td", "inbound_nodes": [],
               "config": {"name": "td", "layer": copy.deepcopy(relu)}}
    _refused(_config([wrapper]), "'op' is a TensorFlow op outside a functional model")


def test_a_refused_layer_leaves_every_model_as_it_was() -> None:
    good = _op("good", "nn.relu", ["d", 0, 0, {}])
    inner = _config([copy.deepcopy(good)])
    inner.update(name="inner", inbound_nodes=[[["x", 0, 0, {}]]])
    _refused(_config([inner, good, _op("bad", "py_func", ["d", 0, 0, {}])]), "'tf.py_func'")


def test_configs_without_op_layers_are_left_alone() -> None:
    for config in (_config([]), {"class_name": "Sequential", "config": {"layers": []}}, [], None,
                   "text", {"config": {"layers": "x"}}):
        before = copy.deepcopy(config)
        assert translate_tf_ops(config, "f.h5") is False
        assert config == before


def test_deep_and_cyclic_configs_end() -> None:
    config = _config([_op("op", "nn.relu", ["d", 0, 0, {}])])
    config["config"]["layers"][1]["config"]["deep"] = _deep({"class_name": "TFOpLambda"})
    with pytest.raises(ModelLoadError, match="outside a functional model"):
        translate_tf_ops(config, "evil.h5")
    config = _config([_op("op", "nn.relu", ["d", 0, 0, {}])])
    config["config"]["layers"][1]["config"]["deep"] = _deep(1)
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    config["config"]["layers"][2]["config"]["loop"] = cyclic
    assert translate_tf_ops(config, "f.h5")
    assert config["config"]["layers"][-1]["class_name"] == "Relu"


def test_a_layer_never_called_is_dropped_and_an_empty_index_kept() -> None:
    config = _config([_op("unused", "nn.relu"), _op("all", "__operators__.getitem", [
        "d", 0, 0, {"slice_spec": [{"class_name": "__ellipsis__"}]}], cls="SlicingOpLambda")])
    assert translate_tf_ops(config, "f.h5")
    names = [x["name"] for x in config["config"]["layers"]]
    assert names == ["x", "d", "c", "all"]
    assert config["config"]["layers"][-1]["inbound_nodes"][0]["args"][1] == []


def test_new_names_do_not_collide() -> None:
    shared = _op("op", "nn.relu", ["d", 0, 0, {}], ["c", 0, 0, {}], ["d", 0, 0, {}])
    taken = _op("op_1", "math.add", ["op", 2, 0, {"y": ["op", 1, 0]}])
    config = _config([shared, taken])
    config["config"]["output_layers"] = [["op", 1, 0], ["op", 2, 0], ["op_1", 0, 0]]
    assert translate_tf_ops(config, "f.h5")
    layers = config["config"]["layers"]
    assert [x["name"] for x in layers[3:]] == ["op", "op_1_1", "op_2", "op_1"]
    history = [a["config"]["keras_history"] for a in layers[-1]["inbound_nodes"][0]["args"]]
    assert history == [["op_2", 0, 0], ["op_1_1", 0, 0]]
    assert config["config"]["output_layers"] == [["op_1_1", 0, 0], ["op_2", 0, 0], ["op_1", 0, 0]]


JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True)
                    | st.sampled_from(["d", "c", "x", "op", "_CONSTANT_VALUE", "y", "axis"]),
                    lambda inner: st.lists(inner, max_size=5)
                    | st.dictionaries(st.sampled_from(["y", "axis", "name", "slice_spec", "b",
                                                       "start", "stop", "step", "class_name"]),
                                      inner, max_size=4), max_leaves=20)


@given(fn=st.sampled_from(sorted(TRANSLATIONS)), node=JSON)
def test_any_node_translates_or_is_refused(fn: str, node: Any) -> None:
    cls = "SlicingOpLambda" if fn == "__operators__.getitem" else "TFOpLambda"
    config = _config([_op("op", fn, node, cls=cls)])
    try:
        translate_tf_ops(config, "fuzz.h5")
    except ModelLoadError as error:
        message = error.message
    else:
        return
    assert message.startswith("fuzz.h5: layer 'op'")
