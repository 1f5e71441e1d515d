"""Keras 2 SavedModel directories, read without running a byte of their graph.

A tf.keras (TF <= 2.12) or tf-keras SavedModel holds the model twice: as TensorFlow functions in
``saved_model.pb`` (running them runs whatever the file's author traced) and as Keras metadata
(``keras_metadata.pb``, each layer's config as JSON) beside the variables checkpoint. Only the
second is read: ``read_savedmodel`` decodes the metadata protobuf by hand (tf-keras is not a
runtime dependency) into the config a Keras 2 ``.h5`` would carry; ``write_keras2_h5`` follows
the checkpoint's object graph, where each layer lists its ``trainable_variables`` and
``keras_api.non_trainable_variables`` in tf.keras' order, into a Keras 2 full-model ``.h5``
(Keras 3's legacy loader assigns by position). TF <= 2.4 kept the metadata in the object graph
of ``saved_model.pb``; only that message of it is decoded. The directory is treated as written
by an attacker: regular files inside it only, size caps, every protobuf length checked, the
weights counted against the budget before one is read, nothing written there.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradinspect.errors import ModelLoadError
from gradinspect.io.safety import human_bytes, require_regular_file

METADATA_MAX_BYTES = 64 << 20
"""Largest ``keras_metadata.pb`` read (a 1,000-layer model's is about 5 MiB)."""
SAVED_MODEL_MAX_BYTES = 512 << 20
"""Largest ``saved_model.pb`` decoded for a TF <= 2.4 SavedModel's metadata (its functions make
it big; only the object graph message inside is parsed)."""
INDEX_MAX_BYTES = 64 << 20
"""Largest ``variables/variables.index`` (a few hundred bytes per variable)."""
NON_NUMERIC_MAX_BYTES = 256 << 20
"""Bytes the checkpoint's data files may hold beyond its numeric tensors' declared sizes: the
object graph and string tensors, whose sizes the index does not declare."""

_ROOT = "root"
_LAYER_KINDS = ("_tf_keras_layer", "_tf_keras_input_layer", "_tf_keras_network",
                "_tf_keras_model", "_tf_keras_sequential", "_tf_keras_rnn_layer")
_NAME_PART = re.compile(r"[A-Za-z0-9_.>-]+")
_HEADER_LIMIT = 64512  # HDF5's object header limit: tf.keras splits longer name lists
_DAMAGED_HINT = "save or download it again"


@dataclass(frozen=True)
class SavedKeras:
    """What a Keras 2 SavedModel says about its model, in the terms of a Keras 2 ``.h5``."""

    path: Path
    """The SavedModel directory."""
    config: dict[str, Any]
    """The model config, ``{"class_name": "Functional"|"Sequential"|..., "config": {...}}``."""
    training_config: dict[str, Any] | None
    """What ``compile`` was given, or None when the model was not compiled."""
    keras_version: str | None
    backend: str | None
    layer_nodes: Mapping[str, str] = field(default_factory=dict)
    """Top-level layer name -> its child of the root in the object graph (``layer-3``)."""


class _Damaged(ValueError):
    """A protobuf that does not decode; becomes one 'damaged SavedModel' error."""


def _damaged(label: str, what: str) -> ModelLoadError:
    return ModelLoadError(f"{label}: damaged SavedModel ({what})", _DAMAGED_HINT)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _checked_file(root: Path, relative: str, cap: int | None) -> Path | None:
    """The file at ``root/relative`` if there is one, after refusing a symlink that leads out
    of the directory, anything but a regular file, and a file larger than ``cap``."""
    path = root / relative
    if not os.path.lexists(path):
        return None
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(Path(os.path.realpath(root))):
        raise ModelLoadError(f"{path}: a symlink to {real}, outside the SavedModel directory; "
                             "refused", "copy the file into the directory itself")
    require_regular_file(real, "SavedModel", ModelLoadError)
    info = os.stat(real)
    if not stat.S_ISREG(info.st_mode):  # a directory: require_regular_file leaves those to us
        raise ModelLoadError(f"{path}: not a regular file; refused", _DAMAGED_HINT)
    if cap is not None and info.st_size > cap:
        raise ModelLoadError(f"{path}: {human_bytes(info.st_size)}, more than such a file "
                             f"plausibly needs ({human_bytes(cap)}); refused", _DAMAGED_HINT)
    return real


def _read(root: Path, relative: str, cap: int) -> bytes | None:
    found = _checked_file(root, relative, cap)
    if found is None:
        return None
    with open(found, "rb") as fh:  # the real path, as checked
        data = fh.read(cap + 1)
    if len(data) > cap:  # it grew since it was checked
        raise ModelLoadError(f"{found}: more than {human_bytes(cap)}; refused", _DAMAGED_HINT)
    return data


def _directory(path: Path) -> Path:
    if not path.is_dir() or _checked_file(path, "saved_model.pb", None) is None:
        raise ModelLoadError(f"{path}: not a TensorFlow SavedModel directory (no "
                             "saved_model.pb)", "pass the directory model.save('dir') wrote")
    return path


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(buf) and shift <= 63:
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos
    raise _Damaged("a truncated varint")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, memoryview | int]]:
    """``(field number, wire type, value)`` of one message, flat: a nested message is handed
    over as its bytes (no recursion); fixed-width values are skipped (yielded as 0)."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Damaged("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if size > len(buf) - pos:
                raise _Damaged(f"a field of {size} bytes with {len(buf) - pos} left")
            yield number, wire, buf[pos:pos + size]
            pos += size
        elif wire in (1, 5) and pos + (8 if wire == 1 else 4) <= len(buf):
            pos += 8 if wire == 1 else 4
            yield number, wire, 0
        else:
            raise _Damaged(f"wire type {wire} at byte {pos}")


def _metadata_nodes(data: bytes) -> list[tuple[str, str, str]]:
    """``(node_path, identifier, metadata JSON)`` of each node of a ``SavedMetadata`` (its
    ``SavedObject nodes = 1`` have ``node_path = 3``, ``identifier = 4``, ``metadata = 5``)."""
    nodes = []
    for number, wire, value in _fields(memoryview(data)):
        if number != 1:
            continue  # unknown fields are skipped, as protobuf does
        if isinstance(value, int) or wire != 2:
            raise _Damaged("a node that is not a message")
        found = {3: "", 4: "", 5: ""}
        for n, _, v in _fields(value):
            if n in found:
                if isinstance(v, int):
                    raise _Damaged("a number where text belongs")
                found[n] = bytes(v).decode("utf-8")  # UnicodeDecodeError is a ValueError
        nodes.append((found[3], found[4], found[5]))
    return nodes


def _first_message(buf: memoryview, number: int) -> memoryview | None:
    for n, wire, value in _fields(buf):
        if n == number and wire == 2 and not isinstance(value, int):
            return value
    return None


def _legacy_nodes(path: Path, label: str) -> list[tuple[str, str, str]]:
    """The Keras nodes of a SavedModel without ``keras_metadata.pb``: the root and its direct
    children from ``saved_model.pb``'s object graph (``SavedModel.meta_graphs = 2`` ->
    ``MetaGraphDef.object_graph_def = 7``), where TF <= 2.4 kept the same metadata."""
    from gradinspect._tf import tf_modules

    tf_modules()  # the quiet door, before any tensorflow module is imported
    from tensorflow.core.protobuf import saved_object_graph_pb2

    data = _read(path, "saved_model.pb", SAVED_MODEL_MAX_BYTES) or b""
    try:
        meta_graph = _first_message(memoryview(data), 2)
        graph_bytes = _first_message(meta_graph, 7) if meta_graph is not None else None
        graph = saved_object_graph_pb2.SavedObjectGraph.FromString(bytes(graph_bytes or b""))
    except Exception as exc:  # _Damaged, protobuf's DecodeError
        raise _damaged(label, f"saved_model.pb: {_first_line(exc)}") from exc
    nodes: list[tuple[str, str, str]] = []
    refs = [(_ROOT, 0)] + [(f"{_ROOT}.{c.local_name}", c.node_id)
                           for c in (graph.nodes[0].children if graph.nodes else ())]
    paths: dict[int, str] = {}
    for node_path, node_id in refs:  # a node keeps its first path, as tf-keras names them
        paths.setdefault(node_id, node_path)
    for node_id, node_path in paths.items():
        obj = graph.nodes[node_id].user_object if 0 <= node_id < len(graph.nodes) else None
        if obj is not None and obj.identifier.startswith("_tf_keras_"):
            nodes.append((node_path, obj.identifier, obj.metadata))
    if not nodes or nodes[0][0] != _ROOT:
        raise ModelLoadError(f"{path}: a TensorFlow SavedModel without Keras metadata "
                             "(keras_metadata.pb): a plain tf.Module, not a Keras model",
                             "gradinspect inspects Keras models: save the Keras model itself "
                             "(.keras, .h5, or a tf.keras SavedModel)")
    if not nodes[0][2]:
        raise ModelLoadError(f"{path}: a Keras model exported with tf.saved_model.save, "
                             "without its Keras metadata (keras_metadata.pb)",
                             "save it with model.save('dir') (or as .keras or .h5)")
    return nodes


def _keras_nodes(path: Path, label: str) -> list[tuple[str, str, str]]:
    data = _read(path, "keras_metadata.pb", METADATA_MAX_BYTES)
    if data is None:
        return _legacy_nodes(path, label)
    try:
        return _metadata_nodes(data)
    except ValueError as exc:  # _Damaged, UnicodeDecodeError
        raise _damaged(label, f"keras_metadata.pb: {exc}") from exc


def _json(text: str, label: str, what: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError as exc:
        raise ModelLoadError(f"{label}: the metadata of {what} is nested too deeply to read",
                             "refused: no real model nests this deep") from exc
    except ValueError as exc:
        raise _damaged(label, f"the metadata of {what} is not JSON: {exc}") from exc


def _plain(value: Any) -> Any:
    """The metadata's JSON as a Keras 2 ``.h5`` has it: the SavedModel encoder writes tuples and
    TensorShapes as ``{"class_name": "__tuple__"|"TensorShape", "items": [...]}`` and marks
    objects with ``shared_object_id``, the ``.h5`` one lists and no marks. A loop: no recursion."""
    holder = [value]
    stack: list[tuple[Any, Any]] = [(holder, 0)]
    while stack:
        parent, key = stack.pop()
        node = parent[key]
        while (isinstance(node, dict) and node.get("class_name") in ("__tuple__", "TensorShape")
               and set(node) == {"class_name", "items"}):
            node = parent[key] = node["items"]
        if isinstance(node, dict):
            if "class_name" in node:
                node.pop("shared_object_id", None)
            stack.extend((node, k) for k in node)
        elif isinstance(node, list):
            stack.extend((node, i) for i in range(len(node)))
    return holder[0]


def _model_config(meta: dict[str, Any], label: str) -> dict[str, Any]:
    config = meta.get("model_config")
    if not isinstance(config, dict):  # older metadata: the root's own serialization
        config = {"class_name": meta.get("class_name"), "config": meta.get("config")}
    inner = config.get("config")
    if not isinstance(inner, dict) or not isinstance(inner.get("layers"), list):
        raise ModelLoadError(f"{label}: a subclassed Keras model (class "
                             f"{str(meta.get('class_name'))!r}): no layer graph to rebuild it "
                             "from, only its saved functions, which gradinspect never runs",
                             "save it as .keras from the code that defines the class")
    return config


def read_savedmodel(path: Path) -> SavedKeras:
    """What the Keras 2 SavedModel ``path`` says of its model, from its Keras metadata only (the
    graph is never read or run); ``ModelLoadError`` for a plain ``tf.Module``, a subclassed
    model, damaged or oversized metadata, files not regular or leading outside."""
    label = str(path)
    nodes = _keras_nodes(_directory(path), label)
    root = next((text for node_path, _, text in nodes if node_path == _ROOT), None)
    if root is None:
        raise _damaged(label, "keras_metadata.pb has no root node")
    meta = _plain(_json(root, label, "the model"))
    if not isinstance(meta, dict):
        raise _damaged(label, "the model's metadata is not a JSON object")
    tracked: dict[str, str] = {}  # layer name -> the root's child it is, one level down
    for node_path, identifier, text in nodes:
        parts = node_path.split(".")
        if len(parts) == 2 and parts[0] == _ROOT and identifier in _LAYER_KINDS:
            layer = _json(text, label, f"the layer at {node_path}")
            name = layer.get("name") if isinstance(layer, dict) else None
            if isinstance(name, str) and tracked.setdefault(name, parts[1]) != parts[1]:
                raise ModelLoadError(f"{label}: two layers named {name!r}", _DAMAGED_HINT)
    training = meta.get("training_config")
    version, backend = meta.get("keras_version"), meta.get("backend")
    return SavedKeras(
        path=path, config=_model_config(meta, label),
        training_config=training if isinstance(training, dict) else None,
        keras_version=version if isinstance(version, str) else None,
        backend=backend if isinstance(backend, str) else None,
        layer_nodes=tracked)


def _open_checkpoint(path: Path, label: str) -> tuple[Any, Any]:
    """``(CheckpointReader, TrackableObjectGraph)`` of ``path/variables``, after the file rules,
    and after refusing data files that hold far more than their numeric tensors declare (the
    object graph's size is not declared: it is read only when the rest adds up)."""
    from gradinspect._tf import tf_modules

    tf, _ = tf_modules()
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    if _checked_file(path, "variables/variables.index", INDEX_MAX_BYTES) is None:
        raise _damaged(label, "no variables/variables.index")
    shards = [_checked_file(path, f"variables/{entry}", None) for entry in
              sorted(os.listdir(path / "variables")) if entry.startswith("variables.data-")]
    data_bytes = sum(os.stat(shard).st_size for shard in shards if shard is not None)
    try:
        reader = tf.train.load_checkpoint(os.path.abspath(path / "variables" / "variables"))
        shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
        numeric = sum(math.prod(shapes[k]) * dtypes[k].size for k in shapes
                      if _numeric(dtypes[k]))
        if data_bytes - numeric > NON_NUMERIC_MAX_BYTES:
            raise ModelLoadError(f"{label}: variables/ holds {human_bytes(data_bytes - numeric)}"
                                 " more than its tensors declare; refused", _DAMAGED_HINT)
        raw = reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH")
        graph = trackable_object_graph_pb2.TrackableObjectGraph.FromString(raw)
    except ModelLoadError:
        raise
    except Exception as exc:  # TF's errors on a damaged bundle, protobuf's DecodeError
        raise _damaged(label, f"variables/: {_first_line(exc)}") from exc
    return reader, graph


def _numeric(dtype: Any) -> bool:
    return bool(dtype.is_floating or dtype.is_integer or dtype.is_bool or dtype.is_complex)


def _child(graph: Any, node: int | None, name: str) -> int | None:
    found = [] if node is None else [
        int(ref.node_id) for ref in graph.nodes[node].children if ref.local_name == name]
    if found and not 0 <= found[0] < len(graph.nodes):
        raise _Damaged(f"a reference to node {found[0]} of {len(graph.nodes)}")
    return found[0] if found else None


def _listed(graph: Any, node: int, kind: str) -> list[int] | None:
    """The variable nodes a layer lists under ``keras_api.<kind>`` (or ``<kind>``), in order."""
    found = _child(graph, _child(graph, node, "keras_api"), kind)
    found = _child(graph, node, kind) if found is None else found
    if found is None:
        return None
    by_index = {ref.local_name: int(ref.node_id) for ref in graph.nodes[found].children}
    order = [by_index.get(str(i), -1) for i in range(len(graph.nodes[found].children))]
    if any(not 0 <= v < len(graph.nodes) for v in order):
        raise _Damaged(f"a {kind} list not numbered 0..n-1, or referring past the last node")
    return order


def _layer_weights(graph: Any, node: int, layer: str,
                   label: str) -> list[tuple[str, str | None]]:
    """``(full name, checkpoint key or None)`` of each weight of one layer in the order
    tf.keras' ``layer.trainable_weights + layer.non_trainable_weights`` had them."""
    listed = [_listed(graph, node, kind) for kind in
              ("trainable_variables", "non_trainable_variables")]
    if listed[0] is None or listed[1] is None:
        owns = any(a.name == "VARIABLE_VALUE" for ref in graph.nodes[node].children
                   if 0 <= ref.node_id < len(graph.nodes)
                   for a in graph.nodes[ref.node_id].attributes)
        if owns:
            raise ModelLoadError(f"{label}: layer {layer!r} has variables but the SavedModel "
                                 "does not list their order (saved with save_traces=False?)",
                                 "save it again with model.save('dir'), or as .h5 or .keras")
        return []
    weights: list[tuple[str, str | None]] = []
    for i, var in enumerate(listed[0] + listed[1]):
        values = [a for a in graph.nodes[var].attributes if a.name == "VARIABLE_VALUE"]
        name = values[0].full_name if values and values[0].full_name else f"{layer}/weight_{i}"
        weights.append((name, values[0].checkpoint_key if values else None))
    return weights


def _plan(saved: SavedKeras, graph: Any, reader: Any,
          label: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """``(layer name, [(weight name, checkpoint key)])`` for each layer of the config, in the
    config's order; a layer the object graph does not track must be an InputLayer."""
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    tracked = saved.layer_nodes
    layers = saved.config.get("config", {}).get("layers")
    plan: list[tuple[str, list[tuple[str, str]]]] = []
    for entry in layers if isinstance(layers, list) else ():
        inner = entry.get("config") if isinstance(entry, dict) else None
        name = inner.get("name") if isinstance(inner, dict) else None
        name = entry.get("name") if name is None and isinstance(entry, dict) else name
        if not isinstance(name, str):
            raise ModelLoadError(f"{label}: a layer of the model config has no name",
                                 _DAMAGED_HINT)
        if name not in tracked:
            if entry.get("class_name") != "InputLayer":
                raise ModelLoadError(f"{label}: layer {name!r} of the model config is not in "
                                     "the SavedModel's object graph", _DAMAGED_HINT)
            plan.append((name, []))
            continue
        try:
            node = _child(graph, 0, tracked[name])
            if node is None:
                raise _Damaged(f"layer {name!r} is not in the checkpoint's object graph")
            weights = _layer_weights(graph, node, name, label)
        except _Damaged as exc:
            raise _damaged(label, f"variables/: {exc}") from exc
        for weight, key in weights:
            if key is None or key not in shapes or not _numeric(dtypes[key]):
                what = "holds no numbers" if key in shapes else "is missing from the checkpoint"
                raise ModelLoadError(f"{label}: layer {name!r}: weight {weight!r} {what} "
                                     "(variables/)", _DAMAGED_HINT)
        plan.append((name, [(w, str(k)) for w, k in weights]))
    return plan


def _h5_name(name: str, taken: set[str], fallback: str, suffix: str = "") -> str:
    """``name + suffix`` if each ``/`` part of ``name`` is a plain HDF5 name (a layer's: one
    part) not taken yet, else ``fallback`` made unique (the names are the file's to choose)."""
    parts = name.split("/")
    plain = all(_NAME_PART.fullmatch(p) and p not in (".", "..") for p in parts)
    chosen = name + suffix
    if not plain or (not suffix and len(parts) > 1) or chosen in taken:
        chosen = fallback
        while chosen in taken:
            chosen = "_" + chosen
    taken.add(chosen)
    return chosen


def _put_names(group: Any, key: str, names: list[str]) -> None:
    """A name list as tf.keras stores it: bytes, split into ``key0``, ``key1``... chunks when
    one attribute would pass HDF5's object header limit."""
    import numpy as np

    data = np.asarray([n.encode("utf-8") for n in names]) if names else np.asarray([])
    parts = [data]
    while any(p.nbytes > _HEADER_LIMIT for p in parts):
        parts = np.array_split(data, len(parts) + 1)
    group.attrs.update({key: data} if len(parts) == 1 else
                       {f"{key}{i}": part for i, part in enumerate(parts)})


def write_keras2_h5(saved: SavedKeras, out: Path, max_bytes: int) -> None:
    """Write ``out``, a Keras 2 full-model ``.h5`` of ``saved`` (its config as given, repairs
    included; its layers found by ``saved.layer_nodes``) with the weights of the checkpoint,
    each layer's in tf.keras' order, their sizes summed first: past ``max_bytes`` none is
    read. The SavedModel directory is only read."""
    import h5py

    label = str(saved.path)
    reader, graph = _open_checkpoint(_directory(saved.path), label)
    plan = _plan(saved, graph, reader, label)
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    total = sum(math.prod(shapes[k]) * dtypes[k].size for _, ws in plan for _, k in ws)
    if total > max_bytes:
        raise ModelLoadError(f"{label}: the model's weights need more than "
                             f"{human_bytes(max_bytes)} ({human_bytes(total)}); refused "
                             "before reading them",
                             "pass --max-model-bytes SIZE if the machine really has the memory")
    try:
        config = json.dumps(saved.config)
        training = None if saved.training_config is None else json.dumps(saved.training_config)
    except (RecursionError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"{label}: the model config cannot be written back as JSON "
                             f"({_first_line(exc)})", "refused") from exc
    version, backend = saved.keras_version or "2", saved.backend or "tensorflow"
    try:
        with h5py.File(out, "w") as f:
            f.attrs.update({"model_config": config, "keras_version": version,
                            "backend": backend})
            if training is not None:
                f.attrs["training_config"] = training
            group = f.create_group("model_weights")
            group.attrs.update({"backend": backend.encode(), "keras_version": version.encode()})
            layer_names: list[str] = []
            taken: set[str] = set()
            for i, (layer, weights) in enumerate(plan):
                layer_names.append(_h5_name(layer, taken, f"layer_{i}"))
                _write_layer(group.create_group(layer_names[-1]), weights, reader, label)
            _put_names(group, "layer_names", layer_names)
    except BaseException:
        out.unlink(missing_ok=True)  # no half-written model left for anyone to load
        raise


def _write_layer(group: Any, weights: list[tuple[str, str]], reader: Any, label: str) -> None:
    taken: set[str] = set()
    names = []
    for i, (weight, key) in enumerate(weights):
        names.append(_h5_name(weight, taken, f"weight_{i}:0", ":0"))
        try:
            value = reader.get_tensor(key)
        except Exception as exc:  # a bundle whose data does not match its index
            raise _damaged(label, f"variables/: {_first_line(exc)}") from exc
        if getattr(value.dtype, "name", "") == "bfloat16":  # HDF5 has no bfloat16
            value = value.astype("float32")
        group.create_dataset(names[-1], data=value)
    _put_names(group, "weight_names", names)

