"""Keras 2 SavedModel directories read without running their graph: the config as the same
model's tf-keras ``.h5`` has it, each layer's weights in tf-keras' own order (checked against
``layer.trainable_weights + layer.non_trainable_weights`` of the model that wrote them), the
written ``.h5`` giving Keras 3 the outputs tf-keras computes, and the refusals of what an
attacker could put in the directory."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from gradinspect.errors import ModelLoadError
from gradinspect.io.legacy import _fix_keras2_node_indices, _keras2_sequential_inputs
from gradinspect.io.safety import check_hdf5
from gradinspect.io.savedmodel import SavedKeras, read_savedmodel, write_keras2_h5

tf_keras = pytest.importorskip("tf_keras")
L = tf_keras.layers
BUDGET = 1 << 30


@dataclass
class Built:
    """A tf-keras model with random weights, saved as a SavedModel directory and as .h5."""

    model: Any
    sm: Path
    h5: Path
    x: Any
    keras3: bool
    """Whether Keras 3 can build the Keras 2 config (with the repairs in ``_keras3_config``)."""


def _randomize(model: Any, seed: int) -> None:
    rng = np.random.default_rng(seed)
    model.set_weights([
        rng.uniform(0.5, 1.5, w.shape) if "variance" in w.name else rng.normal(0, 0.5, w.shape)
        for w in model.weights])


def _dense() -> tuple[Any, Any]:
    model = tf_keras.Sequential([L.Dense(5, activation="relu", input_shape=(3,), name="d1"),
                                 L.Dense(2, name="d2")])
    return model, np.random.default_rng(1).standard_normal((4, 3)).astype("float32")


def _conv() -> tuple[Any, Any]:
    inp = tf_keras.Input((6, 6, 2))
    x = L.Conv2D(3, 3, name="conv")(inp)
    x = L.BatchNormalization(name="bn")(x)
    frozen = L.BatchNormalization(name="frozen_bn")
    frozen.trainable = False
    x = L.GlobalAveragePooling2D()(frozen(x))
    head = L.Dense(2, name="head", trainable=False)  # all its weights are non-trainable
    model = tf_keras.Model(inp, head(x))
    return model, np.random.default_rng(2).standard_normal((3, 6, 6, 2)).astype("float32")


def _rnn() -> tuple[Any, Any]:
    inp = tf_keras.Input((5, 4))
    x = L.LSTM(6, return_sequences=True, name="lstm")(inp)
    x = L.Bidirectional(L.GRU(3, return_sequences=True), name="bigru")(x)
    x = L.Bidirectional(L.LSTM(2), name="bilstm")(x)
    model = tf_keras.Model(inp, L.Dense(2, name="out")(x))
    return model, np.random.default_rng(3).standard_normal((2, 5, 4)).astype("float32")


def _attention() -> tuple[Any, Any]:
    inp = tf_keras.Input((7,), dtype="int32")
    x = L.Embedding(20, 8, name="emb")(inp)
    x = L.MultiHeadAttention(2, 4, name="mha")(x, x)
    x = L.LayerNormalization(name="ln")(x)
    model = tf_keras.Model(inp, L.Dense(3, name="out")(x))
    return model, np.random.default_rng(4).integers(0, 20, (2, 7)).astype("int32")


def _nested() -> tuple[Any, Any]:
    # BatchNormalization first: the nested model's trainable-then-non-trainable order differs
    # from its per-layer order (gamma, beta, kernel, bias, moving_mean, moving_variance).
    inner = tf_keras.Sequential([tf_keras.Input((4,)), L.BatchNormalization(name="inner_bn"),
                                 L.Dense(4, activation="tanh", name="inner_dense")],
                                name="inner")
    inp = tf_keras.Input((4,))
    shared = L.Dense(4, name="shared")
    x = shared(shared(inner(inp)))  # one layer called twice: its weights once
    return (tf_keras.Model(inp, L.Dense(2, name="out")(x)),
            np.random.default_rng(5).standard_normal((3, 4)).astype("float32"))


KINDS: dict[str, tuple[Callable[[], tuple[Any, Any]], bool]] = {
    "dense": (_dense, True), "conv": (_conv, True), "rnn": (_rnn, True),
    # Keras 3 cannot build a Keras 2 MultiHeadAttention node (from the .h5 of tf-keras either)
    "attention": (_attention, False), "nested": (_nested, True),
}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Built]:
    """``zoo(kind)``: that model built, randomized and saved once for the module."""
    cache: dict[str, Built] = {}

    def get(kind: str) -> Built:
        if kind not in cache:
            build, keras3 = KINDS[kind]
            tf_keras.utils.set_random_seed(len(cache) + 11)
            model, x = build()
            _randomize(model, len(kind))
            model.compile("adam", "mse")
            where = tmp_path_factory.mktemp(kind)
            model.save(where / "sm", save_format="tf")
            model.save(where / "model.h5")
            cache[kind] = Built(model, where / "sm", where / "model.h5", x, keras3)
        return cache[kind]

    return get


def _keras3_config(config: dict[str, Any]) -> dict[str, Any]:
    """The pipeline's Keras 2 repairs, and the ones these tests need that it lacks so far:
    Keras 3 rejects RNN ``time_major``, and finds a Bidirectional's inner layer only with the
    ``module`` that tf-keras >= 2.13 writes into .h5 files but not into SavedModel metadata."""
    config = copy.deepcopy(config)
    stack: list[Any] = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            node.pop("time_major", None)
            if node.get("class_name") == "Bidirectional":
                for key in ("layer", "backward_layer"):
                    if isinstance(node["config"].get(key), dict):
                        node["config"][key].setdefault("module", "keras.layers")
            stack.extend(node.values())
    _keras2_sequential_inputs(config)
    _fix_keras2_node_indices(config)
    return config


def _converted(built: Built, tmp_path: Path, *, repaired: bool = False) -> Path:
    saved = read_savedmodel(built.sm)
    if repaired:
        saved = dataclasses.replace(saved, config=_keras3_config(saved.config))
    out = tmp_path / "x.h5"
    write_keras2_h5(saved, out, BUDGET)
    return out


def _without_module_keys(value: Any) -> Any:
    """The .h5 config without the ``module``/``registered_name`` keys tf-keras >= 2.13 adds
    (SavedModel metadata, and every Keras <= 2.12 .h5, has none)."""
    if isinstance(value, dict):
        return {k: _without_module_keys(v) for k, v in value.items()
                if k not in ("module", "registered_name")}
    if isinstance(value, list):
        return [_without_module_keys(v) for v in value]
    return value


@pytest.mark.parametrize("kind", list(KINDS))
def test_config_is_the_h5_config(zoo: Callable[[str], Built], kind: str) -> None:
    built = zoo(kind)
    saved = read_savedmodel(built.sm)
    with h5py.File(built.h5, "r") as f:
        config = json.loads(f.attrs["model_config"])
        training = json.loads(f.attrs["training_config"])
        version = f.attrs["keras_version"]
    assert saved.config == _without_module_keys(config)
    assert saved.training_config == training
    assert saved.keras_version == version == tf_keras.__version__
    assert saved.backend == "tensorflow"
    assert saved.path == built.sm


def _names(group: Any) -> list[str]:
    return [n.decode() for n in group.attrs["weight_names"]]


@pytest.mark.parametrize("kind", list(KINDS))
def test_weights_in_tf_keras_order(zoo: Callable[[str], Built], kind: str,
                                   tmp_path: Path) -> None:
    built = zoo(kind)
    out = _converted(built, tmp_path)
    check_hdf5(out, str(out), ModelLoadError)
    with h5py.File(out, "r") as f, h5py.File(built.h5, "r") as ref:
        weights = f["model_weights"]
        assert [n.decode() for n in weights.attrs["layer_names"]] == \
            [layer["config"]["name"] for layer in built.model.get_config()["layers"]]
        for layer in built.model.layers:
            expected = layer.trainable_weights + layer.non_trainable_weights
            group = weights[layer.name]
            assert _names(group) == [w.name for w in expected], layer.name
            assert _names(group) == [n.decode() if isinstance(n, bytes) else n for n in
                                     ref["model_weights"][layer.name].attrs["weight_names"]]
            for name, w in zip(_names(group), expected, strict=True):
                np.testing.assert_array_equal(group[name][()], w.numpy())


@pytest.mark.parametrize("kind", [k for k, (_, keras3) in KINDS.items() if keras3])
def test_keras3_computes_what_tf_keras_computes(tfk: Any, zoo: Callable[[str], Built],
                                                kind: str, tmp_path: Path) -> None:
    _, keras = tfk
    built = zoo(kind)
    model = keras.models.load_model(str(_converted(built, tmp_path, repaired=True)),
                                    compile=False)
    expected = built.model(built.x, training=False).numpy()
    np.testing.assert_allclose(np.asarray(model(built.x, training=False)), expected,
                               rtol=1e-5, atol=1e-6)
    reference = tmp_path / "reference.h5"  # tf-keras' own .h5, repaired alike
    shutil.copyfile(built.h5, reference)
    with h5py.File(reference, "r+") as f:
        f.attrs["model_config"] = json.dumps(
            _keras3_config(json.loads(f.attrs["model_config"])))
    from_h5 = keras.models.load_model(str(reference), compile=False)
    np.testing.assert_allclose(np.asarray(from_h5(built.x, training=False)), expected,
                               rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- refusals


def _copy(built: Built, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built.sm, tmp_path / "copy"))


def test_plain_tf_module_is_refused(tfk: Any, tmp_path: Path) -> None:
    tf, _ = tfk
    module = tf.Module()
    module.v = tf.Variable([1.0, 2.0])
    module.f = tf.function(lambda x: x * module.v, input_signature=[tf.TensorSpec([2])])
    tf.saved_model.save(module, str(tmp_path / "plain"))
    with pytest.raises(ModelLoadError) as info:
        read_savedmodel(tmp_path / "plain")
    assert info.value.message == (
        f"{tmp_path / 'plain'}: a TensorFlow SavedModel without Keras metadata "
        "(keras_metadata.pb): a plain tf.Module, not a Keras model")
    assert info.value.hint == ("gradinspect inspects Keras models: save the Keras model "
                               "itself (.keras, .h5, or a tf.keras SavedModel)")


def test_a_file_or_an_empty_directory_is_not_a_savedmodel(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_bytes(b"x")
    for path in (tmp_path / "empty", tmp_path / "file"):
        with pytest.raises(ModelLoadError, match="not a"):
            read_savedmodel(path)


def test_budget_refuses_before_reading(zoo: Callable[[str], Built], tmp_path: Path) -> None:
    saved = read_savedmodel(zoo("conv").sm)
    with pytest.raises(ModelLoadError, match="weights need more than 100 bytes") as info:
        write_keras2_h5(saved, tmp_path / "x.h5", 100)
    assert "refused before reading them" in info.value.message
    assert info.value.hint == "pass --max-model-bytes SIZE if the machine really has the memory"
    assert not (tmp_path / "x.h5").exists()


def test_truncated_metadata_is_damaged(zoo: Callable[[str], Built], tmp_path: Path) -> None:
    sm = _copy(zoo("dense"), tmp_path)
    meta = sm / "keras_metadata.pb"
    for size in (meta.stat().st_size // 2, 1):
        meta.write_bytes((zoo("dense").sm / "keras_metadata.pb").read_bytes()[:size])
        with pytest.raises(ModelLoadError, match="damaged SavedModel") as info:
            read_savedmodel(sm)
        assert info.value.hint == "save or download it again"
        assert "\n" not in info.value.message


def _metadata(root_json: str) -> bytes:
    from tf_keras.protobuf import saved_metadata_pb2

    meta = saved_metadata_pb2.SavedMetadata()
    meta.nodes.add(node_id=0, node_path="root", identifier="_tf_keras_network",
                   metadata=root_json)
    return bytes(meta.SerializeToString())


def test_deep_or_broken_metadata_json(zoo: Callable[[str], Built], tmp_path: Path) -> None:
    sm = _copy(zoo("dense"), tmp_path)
    (sm / "keras_metadata.pb").write_bytes(_metadata("[" * 100_000 + "]" * 100_000))
    with pytest.raises(ModelLoadError, match="nested too deeply"):
        read_savedmodel(sm)
    (sm / "keras_metadata.pb").write_bytes(_metadata('{"class_name": '))
    with pytest.raises(ModelLoadError, match=r"damaged SavedModel.*not JSON"):
        read_savedmodel(sm)
    (sm / "keras_metadata.pb").write_bytes(_metadata('{"class_name": "MyModel"}'))
    with pytest.raises(ModelLoadError, match="subclassed Keras model"):
        read_savedmodel(sm)


def test_deep_config_is_walked_without_recursion(zoo: Callable[[str], Built],
                                                 tmp_path: Path) -> None:
    sm = _copy(zoo("dense"), tmp_path)
    deep = '{"a": ' * 900 + '{"class_name": "__tuple__", "items": [1]}' + "}" * 900
    root = ('{"class_name": "Sequential", "keras_version": "2.3.1", "config": '
            '{"name": "s", "layers": [], "deep": ' + deep + "}}")
    (sm / "keras_metadata.pb").write_bytes(_metadata(root))
    saved = read_savedmodel(sm)
    node = saved.config["config"]["deep"]
    for _ in range(900):
        node = node["a"]
    assert node == [1]


def test_oversized_files_are_refused_unread(zoo: Callable[[str], Built],
                                            tmp_path: Path) -> None:
    sm = _copy(zoo("dense"), tmp_path)
    saved = read_savedmodel(sm)
    data = sm / "variables" / "variables.data-00000-of-00001"
    os.truncate(data, data.stat().st_size + (300 << 20))  # sparse: nothing is written
    with pytest.raises(ModelLoadError, match="more than its tensors declare"):
        write_keras2_h5(saved, tmp_path / "x.h5", BUDGET)
    os.truncate(sm / "keras_metadata.pb", 65 << 20)
    with pytest.raises(ModelLoadError, match=r"keras_metadata\.pb: 65 MiB, more than"):
        read_savedmodel(sm)


def test_symlinks_leading_outside_are_refused(zoo: Callable[[str], Built],
                                              tmp_path: Path) -> None:
    sm = _copy(zoo("dense"), tmp_path)
    data = sm / "variables" / "variables.data-00000-of-00001"
    outside = tmp_path / "outside.data"
    shutil.move(data, outside)
    data.symlink_to(outside)
    saved = read_savedmodel(sm)
    with pytest.raises(ModelLoadError, match="outside the SavedModel directory"):
        write_keras2_h5(saved, tmp_path / "x.h5", BUDGET)
    shutil.move(sm / "keras_metadata.pb", tmp_path / "outside.pb")
    (sm / "keras_metadata.pb").symlink_to(tmp_path / "outside.pb")
    with pytest.raises(ModelLoadError, match="outside the SavedModel directory"):
        read_savedmodel(sm)


def test_symlink_inside_the_directory_is_followed(zoo: Callable[[str], Built],
                                                  tmp_path: Path) -> None:
    sm = _copy(zoo("dense"), tmp_path)
    shutil.move(sm / "keras_metadata.pb", sm / "assets" / "meta.pb")
    (sm / "keras_metadata.pb").symlink_to(Path("assets") / "meta.pb")
    assert read_savedmodel(sm).config == read_savedmodel(zoo("dense").sm).config


def test_fifo_is_refused(zoo: Callable[[str], Built], tmp_path: Path) -> None:
    sm = _copy(zoo("dense"), tmp_path)
    (sm / "keras_metadata.pb").unlink()
    os.mkfifo(sm / "keras_metadata.pb")
    with pytest.raises(ModelLoadError, match="named pipe"):
        read_savedmodel(sm)


def _rewrite_checkpoint(tf: Any, sm: Path, edit: Callable[[Any], bytes]) -> None:
    """Write ``sm``'s variables again, with ``edit(object graph proto)`` as the object graph."""
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    prefix = str(sm / "variables" / "variables")
    reader = tf.train.load_checkpoint(prefix)
    keys = sorted(reader.get_variable_to_shape_map())
    values = [reader.get_tensor(k) for k in keys]
    graph = trackable_object_graph_pb2.TrackableObjectGraph.FromString(
        values[keys.index("_CHECKPOINTABLE_OBJECT_GRAPH")])
    values[keys.index("_CHECKPOINTABLE_OBJECT_GRAPH")] = edit(graph)
    for f in (sm / "variables").iterdir():
        f.unlink()
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=keys, shape_and_slices=[""] * len(keys),
                      tensors=[tf.constant(v) for v in values])


def test_weight_missing_from_checkpoint(tfk: Any, zoo: Callable[[str], Built],
                                        tmp_path: Path) -> None:
    tf, _ = tfk
    sm = _copy(zoo("dense"), tmp_path)

    def drop_kernel(graph: Any) -> bytes:
        for node in graph.nodes:
            for attr in node.attributes:
                if attr.full_name == "d2/kernel":
                    attr.checkpoint_key = "no/such/key"
        return bytes(graph.SerializeToString())

    _rewrite_checkpoint(tf, sm, drop_kernel)
    with pytest.raises(ModelLoadError, match=r"layer 'd2': weight 'd2/kernel' is missing"):
        write_keras2_h5(read_savedmodel(sm), tmp_path / "x.h5", BUDGET)


def test_damaged_checkpoint(tfk: Any, zoo: Callable[[str], Built], tmp_path: Path) -> None:
    tf, _ = tfk
    sm = _copy(zoo("dense"), tmp_path)
    saved = read_savedmodel(sm)
    _rewrite_checkpoint(tf, sm, lambda graph: b"\xff\xff\xff")
    with pytest.raises(ModelLoadError, match=r"damaged SavedModel \(variables/"):
        write_keras2_h5(saved, tmp_path / "x.h5", BUDGET)
    index = sm / "variables" / "variables.index"
    index.write_bytes(index.read_bytes()[:20])
    with pytest.raises(ModelLoadError, match=r"damaged SavedModel \(variables/") as info:
        write_keras2_h5(saved, tmp_path / "x.h5", BUDGET)
    assert "\n" not in info.value.message


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def no_graph_loading(tfk: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every way to load (and so run) a SavedModel's graph raises, and is recorded."""
    tf, keras = tfk
    calls: list[str] = []

    def refuse(name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            raise AssertionError(f"{name} called")
        return call

    for owner, attr in ((tf.saved_model, "load"), (tf.compat.v1.saved_model, "load"),
                        (tf.compat.v1.saved_model.loader, "load"),
                        (tf_keras.models, "load_model"), (tf_keras.saving, "load_model"),
                        (keras.layers, "TFSMLayer")):
        monkeypatch.setattr(owner, attr, refuse(f"{owner.__name__}.{attr}"))
    return calls


def test_graph_is_never_run(tfk: Any, tmp_path: Path, no_graph_loading: list[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A layer whose saved function writes a file: converting the SavedModel must not (and
    running the graph does, so the tripwire is armed)."""
    tf, _ = tfk
    flag = tmp_path / "ran.txt"

    layer: Any = tf_keras.layers.Layer

    class Tripwire(layer):  # type: ignore[misc]
        def call(self, x: Any) -> Any:
            import tensorflow as tf

            tf.io.write_file(str(flag), "the saved graph ran")
            return x * 2.0

    tf_keras.utils.set_random_seed(7)
    model = tf_keras.Sequential([tf_keras.Input((3,)), L.Dense(2, name="d"),
                                 Tripwire(name="trip")])
    model.save(tmp_path / "sm", save_format="tf")
    flag.unlink(missing_ok=True)
    before = _snapshot(tmp_path / "sm")
    saved = read_savedmodel(tmp_path / "sm")
    write_keras2_h5(saved, tmp_path / "x.h5", BUDGET)
    assert not flag.exists()
    assert no_graph_loading == []
    assert [layer["class_name"] for layer in saved.config["config"]["layers"]] == \
        ["InputLayer", "Dense", "Tripwire"]
    with h5py.File(tmp_path / "x.h5", "r") as f:
        np.testing.assert_array_equal(f["model_weights/d/d/kernel:0"][()],
                                      model.get_layer("d").kernel.numpy())
        assert _names(f["model_weights/trip"]) == []
    assert _snapshot(tmp_path / "sm") == before
    monkeypatch.undo()
    tf.saved_model.load(str(tmp_path / "sm"))(tf.zeros((1, 3)))
    assert flag.read_text() == "the saved graph ran"


def test_input_directory_unchanged(zoo: Callable[[str], Built], tmp_path: Path) -> None:
    built = zoo("nested")
    before = _snapshot(built.sm)
    listing = sorted(str(p) for p in built.sm.rglob("*"))
    write_keras2_h5(read_savedmodel(built.sm), tmp_path / "x.h5", BUDGET)
    assert _snapshot(built.sm) == before
    assert sorted(str(p) for p in built.sm.rglob("*")) == listing


def _legacy_layout(sm: Path, keep_metadata: bool = True) -> None:
    """``sm`` rewritten as TF <= 2.4 saved Keras models: the metadata of each node in
    ``saved_model.pb``'s object graph, no keras_metadata.pb."""
    from tensorflow.core.protobuf import saved_model_pb2
    from tf_keras.protobuf import saved_metadata_pb2

    meta = saved_metadata_pb2.SavedMetadata.FromString(
        (sm / "keras_metadata.pb").read_bytes())
    model = saved_model_pb2.SavedModel.FromString((sm / "saved_model.pb").read_bytes())
    nodes = model.meta_graphs[0].object_graph_def.nodes
    for node in meta.nodes:
        nodes[node.node_id].user_object.metadata = node.metadata if keep_metadata else ""
    (sm / "saved_model.pb").write_bytes(model.SerializeToString())
    (sm / "keras_metadata.pb").unlink()


def test_tf24_layout_metadata_in_saved_model_pb(tfk: Any, zoo: Callable[[str], Built],
                                                tmp_path: Path) -> None:
    _, keras = tfk
    built = zoo("nested")
    sm = _copy(built, tmp_path)
    _legacy_layout(sm)
    saved = read_savedmodel(sm)
    assert saved == dataclasses.replace(read_savedmodel(built.sm), path=sm)
    saved = dataclasses.replace(saved, config=_keras3_config(saved.config))
    write_keras2_h5(saved, tmp_path / "x.h5", BUDGET)
    model = keras.models.load_model(str(tmp_path / "x.h5"), compile=False)
    np.testing.assert_allclose(np.asarray(model(built.x)), built.model(built.x).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_keras_model_without_metadata(zoo: Callable[[str], Built], tmp_path: Path) -> None:
    sm = _copy(zoo("dense"), tmp_path)
    _legacy_layout(sm, keep_metadata=False)
    with pytest.raises(ModelLoadError, match=r"exported with tf\.saved_model\.save"):
        read_savedmodel(sm)


def test_long_name_lists_are_chunked_as_tf_keras_does(tmp_path: Path) -> None:
    from keras.src.legacy.saving.legacy_h5_format import load_attributes_from_hdf5_group

    from gradinspect.io import savedmodel

    names = [f"layer_with_a_long_name_{i:05d}" for i in range(3000)]
    with h5py.File(tmp_path / "n.h5", "w") as f:
        savedmodel._put_names(f, "layer_names", names)
        assert "layer_names" not in f.attrs
        assert "layer_names1" in f.attrs
        assert load_attributes_from_hdf5_group(f, "layer_names") == names


def test_unsafe_weight_names_are_replaced(zoo: Callable[[str], Built], tmp_path: Path,
                                          tfk: Any) -> None:
    tf, _ = tfk
    sm = _copy(zoo("dense"), tmp_path)

    def rename(graph: Any) -> bytes:
        for node in graph.nodes:
            for attr in node.attributes:
                if attr.full_name == "d1/kernel":
                    attr.full_name = "/model_weights/../d2/bias"
                if attr.full_name == "d1/bias":
                    attr.full_name = "d1/kernel"
        return bytes(graph.SerializeToString())

    _rewrite_checkpoint(tf, sm, rename)
    saved: SavedKeras = read_savedmodel(sm)
    write_keras2_h5(saved, tmp_path / "x.h5", BUDGET)
    with h5py.File(tmp_path / "x.h5", "r") as f:
        assert _names(f["model_weights/d1"]) == ["weight_0:0", "d1/kernel:0"]
        assert sorted(f["model_weights"]) == ["d1", "d1_input", "d2"]
