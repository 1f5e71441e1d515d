"""Keras 2 files as Keras 3 reads them: the repairs of their configs (nested models' node indices,
Sequential inputs, architecture JSON + weights), always in a private temporary copy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gradinspect.errors import ModelLoadError
from gradinspect.io.metadata import ModelFile, config_dicts

_MODEL_CLASSES = ("Sequential", "Functional", "Model")


def _fix_keras2_node_indices(config: dict[str, Any]) -> bool:
    """Shift Keras 2 inbound-node indices of nested models down by one; True if any changed.

    In Keras 2 a nested model built with an input owns node 0 itself (its own input call), so
    the first call from the outer model is node 1. Keras 3 numbers that call 0 and rejects the
    Keras 2 graph as disconnected. Applies recursively to models nested in models.
    """
    layers = config.get("config", {}).get("layers", [])
    built: set[str] = set()
    changed = False
    for layer in layers:
        if layer.get("class_name") not in _MODEL_CLASSES:
            continue
        changed |= _fix_keras2_node_indices(layer)
        inner = layer.get("config", {}).get("layers", [])
        has_input = layer["class_name"] != "Sequential" or any(
            x.get("class_name") == "InputLayer" or "batch_input_shape" in x.get("config", {})
            for x in inner[:1]
        )
        if has_input:
            built.add(layer.get("name") or layer.get("config", {}).get("name"))
    for layer in layers:
        for node in layer.get("inbound_nodes", []):
            refs = node if isinstance(node, list) else []
            for ref in refs:
                if isinstance(ref, list) and len(ref) >= 2 and ref[0] in built and ref[1] >= 1:
                    ref[1] -= 1
                    changed = True
    return changed


_INPUT_KEYS = ("batch_input_shape", "input_shape", "input_dim")


def _keras2_sequential_inputs(config: Any) -> bool:
    """Give every Keras 2 Sequential whose first layer carries its input shape
    (``batch_input_shape``, ``input_shape`` or ``input_dim``, as Keras 2 saved models without an
    InputLayer) an explicit InputLayer with that shape; True if any changed.

    Keras 3 reads such a first layer as taking an extra axis, ``(None, None, 128)`` instead of
    ``(None, 128)``, or rejects ``input_dim``; tf-keras builds the input Keras 2 built.
    Sequential models nested anywhere in the config are repaired too."""
    changed = False
    for node in config_dicts(config):
        inner = node.get("config")
        layers = inner.get("layers") if isinstance(inner, dict) else None
        if node.get("class_name") != "Sequential" or not isinstance(layers, list) or not layers:
            continue
        first = layers[0]
        first_config = first.get("config") if isinstance(first, dict) else None
        if not isinstance(first_config, dict) or first.get("class_name") == "InputLayer":
            continue
        shape: list[Any] | None = None
        if isinstance(first_config.get("batch_input_shape"), list):
            shape = list(first_config["batch_input_shape"])
        elif isinstance(first_config.get("input_shape"), list):
            shape = [None, *first_config["input_shape"]]
        elif isinstance(first_config.get("input_dim"), int):
            shape = [None, first_config["input_dim"]]
        if shape is None:
            continue
        for key in _INPUT_KEYS:
            first_config.pop(key, None)
        dtype = first_config.get("dtype")
        layers.insert(0, {"class_name": "InputLayer", "config": {
            "batch_input_shape": shape,
            "dtype": dtype if isinstance(dtype, str) else "float32",
            "sparse": False, "ragged": False,
            "name": f"{first_config.get('name', 'layer')}_input"}})
        changed = True
    return changed


_RNN_CLASSES = frozenset({"LSTM", "GRU", "SimpleRNN", "RNN", "ConvLSTM1D", "ConvLSTM2D",
                          "ConvLSTM3D", "CuDNNLSTM", "CuDNNGRU"})
_WRAPPERS = frozenset({"Bidirectional", "TimeDistributed"})
_WRAPPED_KEYS = ("layer", "backward_layer")


def _keras2_layer_arguments(config: Any) -> bool:
    """Keras 2 layer configs Keras 3 rejects, made readable; True if any changed: recurrent
    layers' ``time_major`` (always False in saved Keras 2 models; Keras 3 has no such
    argument) is dropped, and a wrapped layer (``Bidirectional``, ``TimeDistributed``) written
    without ``module`` — as Keras <= 2.12 and every Keras 2 SavedModel write it — gets
    ``keras.layers``, where Keras 3's deserializer then finds it (the allow-list still judges
    what it resolves to)."""
    changed = False
    for node in config_dicts(config):
        inner = node.get("config")
        if not isinstance(inner, dict):
            continue
        if node.get("class_name") in _RNN_CLASSES and "time_major" in inner:
            if inner.pop("time_major") is True:
                raise ModelLoadError(f"layer {inner.get('name')!r} was saved with "
                                     "time_major=True, which Keras 3 cannot run",
                                     "re-save the model with time_major=False")
            changed = True
        if node.get("class_name") in _WRAPPERS:
            for key in _WRAPPED_KEYS:
                wrapped = inner.get(key)
                if isinstance(wrapped, dict) and "module" not in wrapped:
                    wrapped["module"] = "keras.layers"
                    changed = True
    return changed


def keras2_fixed_config(meta: ModelFile, label: str) -> dict[str, Any] | None:
    """The model config of a Keras 2 file rewritten for Keras 3 (the repairs above, and the
    TensorFlow operator layers translated into Keras 3 op layers: ``io.tfop``), or ``None``
    when none is needed. Operators without a Keras 3 equivalent are refused here."""
    import copy

    from gradinspect.io.tfop import translate_tf_ops

    if not str(meta.keras_version or "").startswith("2.") or meta.config is None:
        return None
    config = copy.deepcopy(meta.config)
    changed = translate_tf_ops(config, label)
    changed = _keras2_layer_arguments(config) or changed
    changed = _keras2_sequential_inputs(config) or changed  # before node indices: adds inputs
    changed = _fix_keras2_node_indices(config) or changed
    return config if changed else None


def staged_model_file(meta: ModelFile, tmp: Path, fixed: dict[str, Any] | None) -> Path:
    """A path Keras can load: a symlink under the right extension, or, for a Keras 2 .h5 whose
    graph needs rewriting (``fixed``, from ``keras2_fixed_config``), a private copy with the
    rewritten config. The original is only read."""
    import json

    p, fmt = meta.path, meta.format
    suffix = ".keras" if fmt == "keras" else ".h5"
    staged = tmp / f"model{suffix}"
    if fixed is None or fmt != "h5":
        staged.symlink_to(p.resolve())
        return staged
    import shutil

    import h5py

    shutil.copyfile(p, staged)
    with h5py.File(staged, "r+") as f:
        f.attrs["model_config"] = json.dumps(fixed)
    return staged


_KERAS2_CLASS_NAMES = {"Model": "Functional"}


def _legacy_layer_entries(entry: dict[str, Any]) -> None:
    """Drop the Keras-3-style keys (``module``, ``registered_name``, ``build_config``) that newer
    tf-keras ``to_json`` puts on layers: with them Keras 3 takes its new deserializer, which
    rejects Keras 2 arguments such as ``batch_input_shape``; without them it takes the legacy
    one that reads Keras 2 configs. Models nested in models are handled recursively."""
    for key in ("module", "registered_name", "build_config"):
        entry.pop(key, None)
    for layer in entry.get("config", {}).get("layers", []) or []:
        if isinstance(layer, dict):
            _legacy_layer_entries(layer)


def keras2_json_repaired(config: dict[str, Any], label: str) -> dict[str, Any]:
    """A Keras 2 architecture JSON's config with the repairs of a Keras 2 ``.h5`` (and the
    class name ``Model`` and the Keras-3-style keys newer tf-keras writes), in place."""
    from gradinspect.io.tfop import translate_tf_ops

    if config.get("class_name") in _KERAS2_CLASS_NAMES:
        config["class_name"] = _KERAS2_CLASS_NAMES[config["class_name"]]
    _legacy_layer_entries(config)
    translate_tf_ops(config, label)
    _keras2_layer_arguments(config)
    _keras2_sequential_inputs(config)
    _fix_keras2_node_indices(config)
    return config


def keras2_json_to_h5(config: dict[str, Any], weights: Path, out: Path) -> None:
    """A Keras 2 architecture config (repaired: ``keras2_json_repaired``) + Keras 2 weights .h5
    -> one full-model .h5 (temporary), the layout Keras 3's legacy loader reads. The inputs
    are only read."""
    import json

    import h5py

    with h5py.File(weights, "r") as src, h5py.File(out, "w") as dst:
        if "layer_names" not in src.attrs:
            raise ModelLoadError(f"{weights}: not a Keras 2 weights file (no layer_names)",
                                 "pass the file written by model.save_weights('...h5')")
        group = dst.create_group("model_weights")
        for key, value in src.attrs.items():
            group.attrs[key] = value
        for name in src:
            src.copy(src[name], group, name=name)
        dst.attrs["model_config"] = json.dumps(config)
        dst.attrs["keras_version"] = str(src.attrs.get("keras_version", "2.15.0"))
        dst.attrs["backend"] = str(src.attrs.get("backend", "tensorflow"))


def is_legacy_weights(path: Path) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return "layer_names" in f.attrs
    except OSError:
        return False
