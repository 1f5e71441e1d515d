"""Reading models and data: format sniffing by content, validation, typed errors.

Files are only ever opened for reading. Keras picks its loader by file extension, so a model
whose content and extension disagree is handed to Keras through a symlink with the right
extension in a temporary directory; the original file is never copied, renamed or written.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import math
import os
import re
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gradinspect.errors import DataError, ModelLoadError
from gradinspect.safety import (
    SPARSE_MIN_BYTES,
    SPARSE_RATIO,
    available_memory,
    check_hdf5,
    check_keras_archive,
    read_config,
    require_regular_file,
    scan_config,
    weight_budget,
)

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
NPY_MAGIC = b"\x93NUMPY"


@dataclass(frozen=True)
class InputSpec:
    """One model input: its name, shape (batch first, ``None`` = any) and dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str


@dataclass(frozen=True)
class LoadedModel:
    """A Keras model and where it came from."""

    model: Any
    path: str | None
    format: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[InputSpec, ...] = ()
    """Model outputs (name, shape, dtype), in order."""
    compile_config: dict[str, Any] | None = None
    """The compile configuration saved with the model (``loss``, ``loss_weights`` ...)."""
    custom_objects: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """What ``--custom-objects`` defined, by name (custom losses are looked up here)."""
    keras_version: str | None = None
    """The Keras version that saved the file (``None`` when the file does not say)."""


@dataclass(frozen=True)
class LoadedData:
    """Input arrays in model-input order, read lazily where the format allows (``NpyRows`` for
    .npy, ``H5Rows`` for HDF5), and the labels per model output when there are any."""

    path: str | None
    names: tuple[str, ...]
    arrays: tuple[Any, ...]
    stored_dtypes: tuple[str, ...]
    notes: tuple[str, ...] = ()
    labels: tuple[Any, ...] | None = None
    label_source: str | None = None
    closers: tuple[Any, ...] = ()
    """Open files (HDF5) to close when the run is over."""

    @property
    def samples(self) -> int:
        return int(self.arrays[0].shape[0])

    def close(self) -> None:
        """Close files kept open for streaming."""
        for f in self.closers:
            f.close()


# ---------------------------------------------------------------- sniffing


def sniff(path: Path) -> str:
    """What a path holds, judged by content: ``hdf5``, ``zip``, ``npy``, ``json``, ``savedmodel``,
    ``directory``, ``empty`` or ``unknown``."""
    if path.is_dir():
        return "savedmodel" if (path / "saved_model.pb").exists() else "directory"
    with path.open("rb") as f:
        head = f.read(512)
    if not head:
        return "empty"
    if head.startswith(HDF5_MAGIC):
        return "hdf5"
    if head.startswith(ZIP_MAGIC) or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.lstrip()[:1] == b"{":
        return "json"
    return "unknown"


def _readable(path: Path) -> bool:
    return os.access(path, os.R_OK)


def _check_readable(path: Path, kind: str, error: type[ModelLoadError] | type[DataError]) -> None:
    if not path.exists():
        raise error(f"{kind} file not found: {path}", "check the path and spelling")
    require_regular_file(path, kind, error)  # a FIFO or device is never opened
    if not path.is_dir() and not _readable(path):
        raise error(f"{kind} file is not readable: {path}", "check its permissions")


# ---------------------------------------------------------------- models


def _zip_names(path: Path, error: type[ModelLoadError] | type[DataError] = ModelLoadError,
               what: str = "zip archive",
               hint: str = "the file is truncated or corrupt; save or download it again",
               ) -> list[str]:
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise error(f"{path}: damaged {what} ({exc})", hint) from exc


def _h5_model_kind(path: Path) -> str:
    """``model`` (full model), ``weights`` (weights only) or ``other`` HDF5 content."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "model_config" in f.attrs:
                return "model"
            if "layer_names" in f.attrs or "model_weights" in f:
                return "weights"
            return "other"
    except Exception as exc:  # h5py raises OSError, RuntimeError, KeyError ... on damage
        raise ModelLoadError(
            f"{path}: damaged HDF5 file ({str(exc).splitlines()[0]})",
            "the file is truncated or corrupt; save or download it again",
        ) from exc


def detect_model_format(path: Path) -> str:
    """``keras`` or ``h5``, or raise a ``ModelLoadError`` that says what the file is instead."""
    _check_readable(path, "model", ModelLoadError)
    kind = sniff(path)
    if kind == "savedmodel":
        raise ModelLoadError(
            f"{path}: TensorFlow SavedModel directories cannot be inspected with Keras 3",
            "load it in the code that made it and save with model.save('model.keras'), "
            "or pass the original .keras/.h5 file",
        )
    if kind == "directory":
        raise ModelLoadError(
            f"{path}: is a directory, not a model file", "pass a .keras or .h5 file"
        )
    if kind == "empty":
        raise ModelLoadError(f"{path}: model file is empty", "save or download it again")
    if kind == "npy":
        raise ModelLoadError(
            f"{path}: is a NumPy array, not a model", "did you swap MODEL and DATA? usage: "
            "gradinspect MODEL DATA"
        )
    if kind == "zip":
        names = _zip_names(path)
        if "config.json" in names:
            check_keras_archive(path)
            return "keras"
        if names and all(n.endswith(".npy") for n in names):
            raise ModelLoadError(
                f"{path}: is a NumPy .npz archive, not a model",
                "did you swap MODEL and DATA? usage: gradinspect MODEL DATA",
            )
        raise ModelLoadError(
            f"{path}: zip archive without a Keras config.json", "pass a .keras or .h5 model file"
        )
    if kind == "json":
        return "json"
    if kind == "hdf5":
        check_hdf5(path, str(path), ModelLoadError)
        h5kind = _h5_model_kind(path)
        if h5kind == "model":
            return "h5"
        if h5kind == "weights":
            raise ModelLoadError(
                f"{path}: holds weights only, no architecture",
                "pass the full model saved with model.save(), or the architecture JSON with "
                f"--weights {path}",
            )
        raise ModelLoadError(
            f"{path}: HDF5 file without a Keras model", "pass a model saved with model.save()"
        )
    raise ModelLoadError(
        f"{path}: unrecognised model format",
        "gradinspect reads Keras .keras (zip) and .h5/.hdf5 (HDF5) model files",
    )


def _model_inputs(model: Any) -> tuple[InputSpec, ...]:
    specs = []
    for i, t in enumerate(getattr(model, "inputs", None) or ()):
        name = str(getattr(t, "name", "") or f"input_{i}")
        specs.append(
            InputSpec(name=name, shape=tuple(t.shape), dtype=str(getattr(t, "dtype", "float32")))
        )
    return tuple(specs)


def _model_outputs(model: Any) -> tuple[InputSpec, ...]:
    outputs = list(getattr(model, "outputs", None) or ())
    names = list(getattr(model, "output_names", None) or ())
    specs = []
    for i, t in enumerate(outputs):
        history = getattr(t, "_keras_history", None)
        fallback = getattr(history[0], "name", None) if history else None
        name = names[i] if i < len(names) else (fallback or f"output_{i}")
        specs.append(InputSpec(name=str(name), shape=tuple(t.shape),
                               dtype=str(getattr(t, "dtype", "float32"))))
    return tuple(specs)


def read_keras_version(path: Path, fmt: str) -> str | None:
    """The Keras version recorded in a model file: the HDF5 ``keras_version`` attribute, the
    ``.keras`` archive's metadata.json, or the architecture JSON's ``keras_version``."""
    import json

    try:
        if fmt == "keras":
            with zipfile.ZipFile(path) as z:
                found = json.loads(z.read("metadata.json")).get("keras_version")
        elif fmt == "h5":
            import h5py

            with h5py.File(path, "r") as f:
                found = f.attrs.get("keras_version")
        else:
            found = json.loads(path.read_text(encoding="utf-8")).get("keras_version")
    except Exception:  # no metadata, or damaged: the caller says the version is unknown
        return None
    if isinstance(found, bytes):
        found = found.decode("utf-8", "replace")
    return str(found) if isinstance(found, str) and found else None


def read_compile_config(path: Path, fmt: str) -> dict[str, Any] | None:
    """The training/compile configuration stored in a model file, or ``None``."""
    import json

    try:
        if fmt == "keras":
            with zipfile.ZipFile(path) as z:
                config = json.loads(z.read("config.json"))
            found = config.get("compile_config")
        else:
            import h5py

            with h5py.File(path, "r") as f:
                raw = f.attrs.get("training_config")
            found = json.loads(raw.decode() if isinstance(raw, bytes) else raw) if raw else None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    return found if isinstance(found, dict) else None


_MISSING_CLASS = re.compile(
    r"(?:Could not locate (?:class|function)|Unknown (?:layer|activation|loss|initializer|"
    r"regularizer|constraint|object)(?: type)?:?)\s*'?([A-Za-z_][\w.>]*)'?"
)


def _explain_load_failure(path: Path, exc: Exception) -> ModelLoadError:
    text = str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    lowered = text.lower()
    if "lambda" in lowered and ("safe_mode" in lowered or "unsafe" in lowered):
        return ModelLoadError(
            f"{path}: the model contains a Lambda layer, whose Python code would run when the "
            "model is loaded and called; refused (safe mode)",
            "if and only if you trust where the file came from, pass --unsafe",
        )
    missing = _MISSING_CLASS.search(text)
    if missing or "could not locate" in lowered or "unknown " in lowered:
        name = missing.group(1) if missing else first
        return ModelLoadError(
            f"{path}: the model needs the custom object '{name}', which is not available",
            "pass the Python file or module that defines it: --custom-objects my_layers.py",
        )
    if len(first) > 300:
        first = first[:300] + "..."
    return ModelLoadError(f"{path}: could not load the model ({first})", "is the file complete?")


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
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        stack.extend(node.values())
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


def _keras2_fixed_config(path: Path) -> str | None:
    """The model config of a Keras 2 .h5 rewritten for Keras 3, or None when none is needed."""
    import json

    import h5py

    with h5py.File(path, "r") as f:
        version = f.attrs.get("keras_version", b"")
        version = version.decode() if isinstance(version, bytes) else str(version)
        raw = f.attrs.get("model_config")
    if not version.startswith("2.") or raw is None:
        return None
    config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    changed = _keras2_sequential_inputs(config)  # before the node indices: it adds inputs
    changed = _fix_keras2_node_indices(config) or changed
    return json.dumps(config) if changed else None


def _staged_model_file(p: Path, fmt: str, tmp: Path) -> Path:
    """A path Keras can load: a symlink under the right extension, or, for a Keras 2 .h5 whose
    graph needs rewriting, a private copy with the rewritten config. The original is only read."""
    suffix = ".keras" if fmt == "keras" else ".h5"
    staged = tmp / f"model{suffix}"
    fixed = _keras2_fixed_config(p) if fmt == "h5" else None
    if fixed is None:
        staged.symlink_to(p.resolve())
        return staged
    import shutil

    import h5py

    shutil.copyfile(p, staged)
    with h5py.File(staged, "r+") as f:
        f.attrs["model_config"] = fixed
    return staged


def import_custom_objects(specs: Sequence[str]) -> dict[str, Any]:
    """Import the user's modules (``path/to/file.py`` or ``package.module``) and collect what
    they define: Keras layers, losses, initializers, regularizers, constraints, activations and
    loss functions, by name. Classes registered with ``register_keras_serializable`` register
    themselves on import too."""
    from gradinspect.errors import UsageError

    _tf()  # TensorFlow through the quiet door first: the user's module may import keras
    found: dict[str, Any] = {}
    for spec in specs:
        path = Path(spec)
        try:
            if path.suffix == ".py" or path.exists():
                if not path.is_file():
                    raise UsageError(f"--custom-objects {spec}: no such file",
                                     "pass a .py file or an importable module name")
                name = f"gradinspect_custom_{abs(hash(str(path.resolve())))}"
                module_spec = importlib.util.spec_from_file_location(name, path)
                if module_spec is None or module_spec.loader is None:
                    raise UsageError(f"--custom-objects {spec}: cannot import this file")
                module = importlib.util.module_from_spec(module_spec)
                sys.modules[name] = module
                module_spec.loader.exec_module(module)
            else:
                module = importlib.import_module(spec)
        except UsageError:
            raise
        except Exception as exc:
            raise UsageError(f"--custom-objects {spec}: importing it failed "
                             f"({type(exc).__name__}: {exc})",
                             "check that the module runs on its own") from exc
        for attr, value in vars(module).items():
            if attr.startswith("_"):
                continue
            if (inspect.isclass(value) or inspect.isfunction(value)) and \
                    getattr(value, "__module__", None) == module.__name__:
                found[attr] = value
    return found


def _scan(p: Path, config: Any, unsafe: bool, custom_objects: Mapping[str, Any] | None) -> None:
    """The config allow-list (``safety.scan_config`` judged by ``resolve.Resolver``), unless
    ``unsafe``. Keras is imported first: names resolve against its own tables."""
    if unsafe:
        return
    from gradinspect.resolve import Resolver

    _tf()
    if isinstance(config, dict):
        # the compile config is never deserialized (models load with compile=False); its loss
        # names are only looked up among --custom-objects, Keras' registry and Keras' losses
        config = {k: v for k, v in config.items() if k != "compile_config"}
    scan_config(config, str(p), Resolver(custom_objects))


def load_model(
    path: str | os.PathLike[str],
    *,
    unsafe: bool = False,
    custom_objects: Mapping[str, Any] | None = None,
    weights: str | os.PathLike[str] | None = None,
    max_model_bytes: int | None = None,
) -> LoadedModel:
    """Load a full Keras model (``.keras`` or ``.h5``, Keras 2 or 3), or an architecture JSON
    with a weights file, without compiling it. Safe mode and the config allow-list stay on
    unless ``unsafe``; the weights the model creates may not pass ``max_model_bytes`` (default:
    the memory the machine has available)."""
    p = Path(path)
    fmt = detect_model_format(p)
    budget = max_model_bytes if max_model_bytes is not None else available_memory()
    if fmt == "json":
        return _load_json_model(p, weights, unsafe=unsafe, custom_objects=custom_objects,
                                budget=budget)
    _scan(p, read_config(p, fmt), unsafe, custom_objects)
    if weights is not None:
        raise ModelLoadError(f"{p}: --weights goes with an architecture JSON file",
                             "drop --weights: this file is a full model")
    _, keras = _tf()
    with tempfile.TemporaryDirectory(prefix="gradinspect-") as tmp:
        try:
            link = _staged_model_file(p, fmt, Path(tmp))
        except Exception as exc:  # damaged HDF5 metadata surfaces as many exception types
            raise ModelLoadError(f"{p}: damaged model file ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''})",
                                 "save or download it again") from exc
        try:
            with _safe_mode(keras, unsafe), weight_budget(keras, str(p), budget):
                model = keras.models.load_model(str(link), compile=False, safe_mode=not unsafe,
                                                custom_objects=dict(custom_objects or {}))
        except ModelLoadError:
            raise
        except RecursionError as exc:
            raise ModelLoadError(f"{p}: the model config is nested too deeply",
                                 "refused: no real model nests this deep") from exc
        except Exception as exc:
            raise _explain_load_failure(p, exc) from exc
    if not hasattr(model, "inputs") or not model.inputs:
        raise ModelLoadError(
            f"{p}: the model has no defined inputs", "save a model built with an Input shape"
        )
    return LoadedModel(model=model, path=str(p), format=fmt, inputs=_model_inputs(model),
                       outputs=_model_outputs(model),
                       compile_config=read_compile_config(p, fmt),
                       custom_objects=dict(custom_objects or {}),
                       keras_version=read_keras_version(p, fmt))


@contextmanager
def _safe_mode(keras: Any, unsafe: bool) -> Iterator[None]:
    """Keras' safe-mode switch set explicitly for the load (the legacy .h5 path reads the global
    switch, not an argument), and put back as it was afterwards."""
    from keras.src.backend.common import global_state

    before = global_state.get_global_attribute("safe_mode_saving")
    global_state.set_global_attribute("safe_mode_saving", not unsafe)
    try:
        yield
    finally:
        global_state.set_global_attribute("safe_mode_saving", before)


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


def _keras2_json_to_h5(config: dict[str, Any], weights: Path, out: Path) -> None:
    """A Keras 2 architecture JSON + Keras 2 weights .h5 -> one full-model .h5 (temporary),
    the layout Keras 3's legacy loader reads. The inputs are only read."""
    import json

    import h5py

    if config.get("class_name") in _KERAS2_CLASS_NAMES:
        config["class_name"] = _KERAS2_CLASS_NAMES[config["class_name"]]
    _legacy_layer_entries(config)
    _keras2_sequential_inputs(config)
    _fix_keras2_node_indices(config)
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


def _load_json_model(
    p: Path, weights: str | os.PathLike[str] | None, *, unsafe: bool,
    custom_objects: Mapping[str, Any] | None, budget: int,
) -> LoadedModel:
    import json

    if weights is None:
        raise ModelLoadError(f"{p}: is an architecture JSON without weights",
                             "pass the weights too: --weights model_weights.h5")
    wp = Path(weights)
    _check_readable(wp, "weights", ModelLoadError)
    if sniff(wp) == "hdf5":
        check_hdf5(wp, str(wp), ModelLoadError)
    config = read_config(p, "json")
    if not isinstance(config, dict) or "class_name" not in config:
        raise ModelLoadError(f"{p}: JSON without a Keras model config",
                             "pass the output of model.to_json()")
    _scan(p, config, unsafe, custom_objects)
    _, keras = _tf()
    keras2 = str(config.get("keras_version", "")).startswith("2.") or "module" not in config
    with tempfile.TemporaryDirectory(prefix="gradinspect-") as tmp:
        try:
            with _safe_mode(keras, unsafe), weight_budget(keras, str(p), budget):
                if keras2:
                    staged = Path(tmp) / "model.h5"
                    _keras2_json_to_h5(config, wp, staged)
                    model = keras.models.load_model(str(staged), compile=False,
                                                    safe_mode=not unsafe,
                                                    custom_objects=dict(custom_objects or {}))
                else:
                    model = keras.models.model_from_json(
                        json.dumps(config), custom_objects=dict(custom_objects or {}))
                    link = Path(tmp) / ("model.weights.h5" if sniff(wp) == "hdf5"
                                        and not _is_legacy_weights(wp) else "model.h5")
                    link.symlink_to(wp.resolve())
                    model.load_weights(str(link))
        except ModelLoadError:
            raise
        except RecursionError as exc:
            raise ModelLoadError(f"{p}: the model config is nested too deeply",
                                 "refused: no real model nests this deep") from exc
        except Exception as exc:
            raise _explain_load_failure(p, exc) from exc
    return LoadedModel(model=model, path=str(p), format="json", inputs=_model_inputs(model),
                       outputs=_model_outputs(model), compile_config=None,
                       custom_objects=dict(custom_objects or {}),
                       keras_version=read_keras_version(p, "json"))


def _is_legacy_weights(path: Path) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return "layer_names" in f.attrs
    except OSError:
        return False


def live_model(model: Any) -> LoadedModel:
    """Wrap an in-memory model for the API (no file)."""
    if not getattr(model, "inputs", None):
        raise ModelLoadError(
            "the model has no defined inputs (it was never built)",
            "call the model once on data, or build it with keras.Input",
        )
    compile_config = None
    get_compile_config = getattr(model, "get_compile_config", None)
    if callable(get_compile_config) and getattr(model, "compiled", False):
        try:
            compile_config = get_compile_config()
        except Exception:  # a model compiled with objects that do not serialize
            compile_config = None
    return LoadedModel(model=model, path=None, format="live", inputs=_model_inputs(model),
                       outputs=_model_outputs(model), compile_config=compile_config,
                       keras_version=str(_tf()[1].__version__))


def _tf() -> tuple[Any, Any]:
    from gradinspect._tf import tf_modules

    return tf_modules()


# ---------------------------------------------------------------- data


ArrayLike = Any
"""A numpy array, or a lazy row view of a .npy file (``NpyRows``) or HDF5 dataset (``H5Rows``)."""

BUFFER_ALIGNMENT = 128
"""Byte alignment of the batch buffers this module allocates. TensorFlow's CPU kernels need
their data aligned to Eigen's maximum (64 bytes in today's wheels; twice that here to stay clear
of a build with a larger one), and only then can a buffer become a tensor without a copy."""


def aligned_empty(shape: Sequence[int], dtype: np.dtype[Any]) -> np.ndarray:
    """A new C-contiguous, writable array whose data starts on a ``BUFFER_ALIGNMENT`` boundary."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + BUFFER_ALIGNMENT, dtype=np.uint8)
    start = -raw.ctypes.data % BUFFER_ALIGNMENT
    return raw[start:start + nbytes].view(dtype).reshape(tuple(shape))


class H5Rows:
    """Rows of an HDF5 dataset read on demand: slicing reads only the rows asked for, into a
    new aligned buffer (``aligned_empty``) when the rows are contiguous and numeric."""

    def __init__(self, dataset: Any, rows: int | None = None) -> None:
        self.dataset = dataset
        total = int(dataset.shape[0]) if dataset.shape else 0
        self.shape = (min(total, rows) if rows is not None else total, *dataset.shape[1:])
        self.dtype = dataset.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, index: slice) -> np.ndarray:
        start, stop, step = index.indices(self.shape[0])
        try:
            if step == 1 and self.dtype.kind in "biuf":
                out = aligned_empty((max(stop - start, 0), *self.shape[1:]), self.dtype)
                if out.size:
                    self.dataset.read_direct(out, np.s_[start:stop])
                return out
            return np.asarray(self.dataset[start:stop:step])
        except Exception as exc:  # a damaged chunk shows only when it is read
            raise DataError(f"{self.dataset.file.filename}: rows {start}..{stop} of "
                            f"{self.dataset.name} cannot be read ({type(exc).__name__}: {exc})",
                            "the HDF5 file is damaged; save it again") from exc

    def __len__(self) -> int:
        return int(self.shape[0])


class NpyRows:
    """Rows of a C-ordered .npy file read on demand with positioned reads.

    Like a read-only memory map, but pages read for one batch are not kept resident, so memory
    grows with the batch size, not with the file (a 3 GB file streams in well under 1.5 GB).
    Each slice is a new aligned buffer (``aligned_empty``) that nothing else refers to, which
    lets the probe hand it to TensorFlow without copying it.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype[Any], offset: int,
                 rows: int | None = None) -> None:
        self.path = path
        self.full_shape = shape
        self.shape = (min(shape[0], rows) if rows is not None else shape[0], *shape[1:])
        self.dtype = dtype
        self.ndim = len(shape)
        self.offset = offset
        self.row_items = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1

    def __getitem__(self, index: slice) -> np.ndarray:
        start, stop, step = index.indices(self.shape[0])
        if step != 1:
            return self[start:stop][::step]
        count = max(stop - start, 0)
        out = aligned_empty((count, *self.shape[1:]), self.dtype)
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset + start * self.row_items * self.dtype.itemsize)
                read = f.readinto(out.reshape(-1).view(np.uint8).data) if out.size else 0
        except (OSError, ValueError) as exc:
            raise DataError(f"{self.path}: rows {start}..{stop} cannot be read ({exc})",
                            "the file is damaged or was changed during the run") from exc
        if read != out.nbytes:
            raise DataError(f"{self.path}: the file is shorter than its header says",
                            "the .npy file is truncated; save it again")
        return out

    def __len__(self) -> int:
        return int(self.shape[0])


def _first_rows(array: ArrayLike, n: int) -> ArrayLike:
    if isinstance(array, H5Rows):
        return H5Rows(array.dataset, n)
    if isinstance(array, NpyRows):
        return NpyRows(array.path, array.full_shape, array.dtype, array.offset, n)
    return array[:n]


def split_dataset_spec(spec: str | os.PathLike[str]) -> tuple[Path, str | None]:
    """``FILE:/path/in/file`` -> (FILE, '/path/in/file'); a plain path -> (path, None)."""
    text = os.fspath(spec)
    if ":/" in text and not Path(text).exists():
        file_part, _, inner = text.rpartition(":/")
        if Path(file_part).exists():
            return Path(file_part), "/" + inner
    return Path(text), None


def _load_npy(path: Path) -> ArrayLike:
    fmt = np.lib.format
    try:
        with path.open("rb") as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = fmt.read_array_header_2_0(f)
            offset = f.tell()
        if dtype.hasobject:
            raise ValueError("Object arrays cannot be loaded when allow_pickle=False")
        if not fortran and len(shape) >= 1:
            # Python ints: a header shape whose product overflows int64 is still caught
            expected = offset + math.prod(int(d) for d in shape) * dtype.itemsize
            if path.stat().st_size < expected:
                raise ValueError(f"file is {path.stat().st_size} bytes, the header says "
                                 f"{expected}")
            return NpyRows(path, tuple(shape), dtype, offset)
        array: np.ndarray = np.load(path, mmap_mode="r", allow_pickle=False)
        return array
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "pickle" in str(exc).lower():
            raise DataError(
                f"{path}: holds pickled Python objects; refusing to unpickle untrusted data",
                "save a numeric array instead: np.save(path, np.asarray(x, dtype='float32'))",
            ) from exc
        raise DataError(f"{path}: damaged .npy file ({exc})", "save it again") from exc
    except DataError:
        raise
    except Exception as exc:  # the header parser raises many kinds on damaged bytes
        raise DataError(f"{path}: damaged .npy file ({type(exc).__name__}: {exc})",
                        "save it again") from exc


class _LazyNpz(Mapping[str, ArrayLike]):
    """The arrays of an ``.npz``, decompressed only when used (an archive may hold members
    nobody asked for), each checked against its declared and compressed sizes first."""

    def __init__(self, path: Path) -> None:
        self.path = path
        budget = available_memory()
        try:
            with zipfile.ZipFile(path) as z:
                infos = [i for i in z.infolist() if i.filename.endswith(".npy")]
        except Exception as exc:  # zip parsers raise many kinds on damaged bytes
            raise DataError(f"{path}: damaged .npz file ({type(exc).__name__}: {exc})",
                            "save it again") from exc
        for info in infos:
            inflated, packed = int(info.file_size), max(int(info.compress_size), 1)
            if inflated > budget or (inflated >= SPARSE_MIN_BYTES
                                     and inflated > SPARSE_RATIO * packed):
                raise DataError(
                    f"{path}: member {info.filename!r} inflates {packed:,} bytes to "
                    f"{inflated:,}; refused (a zip bomb, or more than the memory available)",
                    "save the arrays uncompressed with np.savez, or as .npy files")
        self._infos = {i.filename[: -len(".npy")]: i for i in infos}
        self._cache: dict[str, ArrayLike] = {}

    def __getitem__(self, key: str) -> ArrayLike:
        if key not in self._cache:
            self._cache[key] = self._read(key)
        return self._cache[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._infos)

    def __len__(self) -> int:
        return len(self._infos)

    def _read(self, key: str) -> ArrayLike:
        info = self._infos[key]
        fmt = np.lib.format
        try:
            with zipfile.ZipFile(self.path) as z, z.open(info) as member:
                version = fmt.read_magic(member)
                header = (fmt.read_array_header_1_0 if version == (1, 0)
                          else fmt.read_array_header_2_0)
                shape, fortran, dtype = header(member)
                if dtype.hasobject:
                    raise DataError(
                        f"{self.path}: member {key!r} holds pickled Python objects; refusing "
                        "to unpickle untrusted data", "save numeric arrays instead with np.savez")
                declared = math.prod(int(d) for d in shape) * dtype.itemsize
                if declared > int(info.file_size):
                    raise DataError(f"{self.path}: member {key!r} declares {declared:,} bytes "
                                    f"but holds {int(info.file_size):,}", "save it again")
                data = member.read(declared)
            if len(data) != declared:
                raise DataError(f"{self.path}: member {key!r} is truncated", "save it again")
            array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran
                                                             else "C")
            return np.array(array)  # writable, owned
        except DataError:
            raise
        except Exception as exc:  # zip, zlib and npy parsers raise many kinds on damage
            raise DataError(f"{self.path}: damaged .npz member {key!r} "
                            f"({type(exc).__name__}: {exc})", "save it again") from exc


def _load_npz(path: Path) -> Mapping[str, ArrayLike]:
    return _LazyNpz(path)


def _load_hdf5(path: Path, inner: str | None, closers: list[Any]) -> dict[str, ArrayLike]:
    import h5py

    check_hdf5(path, str(path), DataError)  # no external link, storage or virtual dataset
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: damaged HDF5 file ({str(exc).splitlines()[0]})",
                        "save it again") from exc
    closers.append(f)
    if "model_config" in f.attrs or "model_weights" in f:
        raise DataError(f"{path}: is a Keras model, not data",
                        "did you swap MODEL and DATA? usage: gradinspect MODEL DATA")
    if inner is not None:
        node = f.get(inner)
        if not isinstance(node, h5py.Dataset):
            raise DataError(f"{path}: no dataset at {inner}",
                            f"datasets in the file: {', '.join(_h5_datasets(f)) or 'none'}")
        return {"": H5Rows(node)}
    found = {name: H5Rows(f[name]) for name in _h5_datasets(f)}
    if not found:
        raise DataError(f"{path}: HDF5 file holds no datasets", "pass a file with arrays")
    return found


def _h5_datasets(f: Any) -> list[str]:
    import h5py

    names: list[str] = []
    f.visititems(lambda name, node: names.append(name) if isinstance(node, h5py.Dataset)
                 else None)
    return names


def _load_csv(path: Path) -> dict[str, ArrayLike]:
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        first = fh.readline()
    cells = [c.strip() for c in first.split(",")]
    try:
        [float(c) for c in cells if c]
        skip = 0
    except ValueError:
        skip = 1  # a header row
    try:
        array = np.loadtxt(path, delimiter=",", skiprows=skip, dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise DataError(f"{path}: CSV holds non-numeric values ({exc})",
                        "only numeric CSV is read; encode categories as numbers first") from exc
    return {"": array}


def read_arrays(spec: str | os.PathLike[str],
                closers: list[Any]) -> tuple[Path, Mapping[str, ArrayLike]]:
    """Every array a data file holds, by name (``""`` for a single unnamed array)."""
    path, inner = split_dataset_spec(spec)
    _check_readable(path, "data", DataError)
    kind = sniff(path)
    if inner is not None and kind != "hdf5":
        raise DataError(f"{path}: FILE:/dataset works for HDF5 files only", "drop :/...")
    if kind == "npy":
        return path, {"": _load_npy(path)}
    if kind == "zip":
        names = _zip_names(path, DataError, "zip/.npz archive", "save it again")
        if "config.json" in names:
            raise DataError(f"{path}: is a Keras model, not data",
                            "did you swap MODEL and DATA? usage: gradinspect MODEL DATA")
        return path, _load_npz(path)
    if kind == "hdf5":
        try:
            return path, _load_hdf5(path, inner, closers)
        except DataError:
            raise
        except Exception as exc:  # damaged HDF5 metadata surfaces as many exception types
            raise DataError(f"{path}: damaged HDF5 file ({type(exc).__name__}: {exc})",
                            "save it again") from exc
    if kind in ("directory", "savedmodel"):
        raise DataError(f"{path}: is a directory, not a data file",
                        "pass a .npy, .npz, .h5 or .csv file")
    if kind == "empty":
        raise DataError(f"{path}: data file is empty", "save the data again")
    if kind == "unknown" and _looks_like_text(path):
        return path, _load_csv(path)
    raise DataError(f"{path}: unrecognised data format",
                    "gradinspect reads .npy, .npz, HDF5 (.h5, FILE:/dataset) and numeric .csv")


def _looks_like_text(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(4096)
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


LABEL_KEYS = ("y", "labels")


def _pick_arrays(
    path: Path, found: Mapping[str, ArrayLike], inputs: Sequence[InputSpec]
) -> tuple[tuple[str, ...], list[ArrayLike]]:
    if "" in found:  # a lone array
        if len(inputs) != 1:
            raise DataError(
                f"{path}: one array given, but the model takes {len(inputs)} inputs "
                f"({', '.join(s.name for s in inputs)})",
                "save the inputs in an .npz keyed by input name: np.savez(f, name=array, ...)",
            )
        return (inputs[0].name,), [found[""]]
    keys = [k for k in found if k not in LABEL_KEYS and not k.startswith("y_")]
    if len(inputs) == 1:
        name = inputs[0].name
        for key in (name, "x"):
            if key in found:
                return (name,), [found[key]]
        if len(keys) == 1:
            return (name,), [found[keys[0]]]
        raise DataError(
            f"{path}: cannot tell which array is the input among {', '.join(keys)}",
            f"name it 'x' or '{name}'",
        )
    names = [s.name for s in inputs]
    if all(n in found for n in names):
        return tuple(names), [found[n] for n in names]
    if len(keys) == len(inputs):
        return tuple(names), [found[k] for k in keys]
    raise DataError(
        f"{path}: the model takes {len(inputs)} inputs ({', '.join(names)}) "
        f"but the file holds {len(keys)} arrays ({', '.join(keys) or 'none'})",
        "save one array per model input, keyed by input name",
    )


def _check_numeric(where: str, array: ArrayLike) -> None:
    kind = np.dtype(array.dtype).kind
    if kind in ("O", "U", "S", "V", "M", "m"):
        raise DataError(
            f"{where} has dtype {array.dtype}, not numbers",
            "convert it to a numeric array (e.g. float32) before saving",
        )
    if kind == "c":
        raise DataError(f"{where} is complex-valued", "pass real-valued data")


def _check_array(path: Path, spec: InputSpec, array: ArrayLike) -> str | None:
    """Validate dtype and shape against the input spec; return a note when data is converted."""
    where = f"{path}: input '{spec.name}'"
    _check_numeric(where, array)
    if array.ndim != len(spec.shape):
        expected = "(" + ", ".join("N" if d is None else str(d) for d in spec.shape) + ")"
        hint = "reshape the data to match"
        if array.ndim == len(spec.shape) - 1:
            hint = "add a batch axis, e.g. x[None, ...] for a single sample"
        raise DataError(
            f"{where} has shape {tuple(array.shape)}, the model expects {expected}", hint
        )
    for axis, (want, got) in enumerate(zip(spec.shape[1:], array.shape[1:], strict=True), 1):
        if want is not None and want != got:
            raise DataError(
                f"{where} has {got} features on axis {axis}, the model expects {want} "
                f"(data shape {tuple(array.shape)}, model input {spec.shape})",
                "check that the data belongs to this model",
            )
    if array.shape[0] == 0:
        raise DataError(f"{where} holds zero samples", "pass at least one sample")
    if np.dtype(array.dtype).kind in ("i", "u", "b") and str(array.dtype) != spec.dtype:
        return f"input '{spec.name}': {array.dtype} data cast to {spec.dtype}"
    return None


def _pick_labels(path: Path, found: Mapping[str, ArrayLike], outputs: Sequence[InputSpec],
                 from_data_file: bool) -> list[ArrayLike] | None:
    """Labels per model output: the lone array / ``y`` / ``labels`` / ``y_<output>`` keys."""
    if "" in found:
        if from_data_file:
            return None
        if len(outputs) != 1:
            raise DataError(f"{path}: one label array given for {len(outputs)} outputs",
                            "save labels in an .npz keyed by output name")
        return [found[""]]
    names = [o.name for o in outputs]
    if len(outputs) == 1:
        for key in (*LABEL_KEYS, f"y_{names[0]}", names[0]):
            if key in found and (key not in names or not from_data_file):
                return [found[key]]
        if not from_data_file and len(found) == 1:
            return [next(iter(found.values()))]
        return None
    picked = []
    for name in names:
        for key in (f"y_{name}", name):
            if key in found and (not from_data_file or key.startswith("y_")):
                picked.append(found[key])
                break
    if len(picked) == len(names):
        return picked
    if not from_data_file and len(found) == len(names):
        return list(found.values())
    if from_data_file and not any(k.startswith("y_") for k in found):
        return None
    raise DataError(f"{path}: labels for outputs {names} not found (keys: {', '.join(found)})",
                    "key the labels by output name (y_<output> in a data file)")


def load_data(
    path: str | os.PathLike[str],
    inputs: Sequence[InputSpec],
    samples: int | None = None,
    labels_path: str | os.PathLike[str] | None = None,
    outputs: Sequence[InputSpec] = (),
) -> LoadedData:
    """Read the data (and labels) and match the arrays to the model inputs (and outputs)."""
    closers: list[Any] = []
    try:
        p, found = read_arrays(path, closers)
        names, arrays = _pick_arrays(p, found, inputs)
        labels = None
        label_source = None
        if labels_path is not None:
            lp, lfound = read_arrays(labels_path, closers)
            labels = _pick_labels(lp, lfound, outputs, from_data_file=False)
            if labels is None:
                raise DataError(f"{lp}: no labels found", "name the array 'y'")
            label_source = str(lp)
        elif outputs:
            labels = _pick_labels(p, found, outputs, from_data_file=True)
            label_source = str(p) if labels is not None else None
        loaded = validate_arrays(str(p), names, arrays, inputs, samples, labels=labels,
                                 label_source=label_source)
    except BaseException:
        for f in closers:
            f.close()
        raise
    return dataclasses.replace(loaded, closers=tuple(closers))


def validate_arrays(
    label: str | None,
    names: Sequence[str],
    arrays: Sequence[ArrayLike],
    inputs: Sequence[InputSpec],
    samples: int | None = None,
    labels: Sequence[ArrayLike] | None = None,
    label_source: str | None = None,
) -> LoadedData:
    """Check arrays against the model inputs; shared by files and the in-memory API."""
    where = Path(label) if label else Path("<data>")
    if len(arrays) != len(inputs):
        raise DataError(
            f"{where}: {len(arrays)} arrays given, the model takes {len(inputs)} inputs",
            "pass one array per model input",
        )
    notes = [n for s, a in zip(inputs, arrays, strict=True) if (n := _check_array(where, s, a))]
    counts = {int(a.shape[0]) for a in arrays}
    if len(counts) > 1:
        raise DataError(
            f"{where}: inputs have different sample counts {sorted(counts)}",
            "every input needs the same number of samples (axis 0)",
        )
    if labels is not None:
        lwhere = label_source or "labels"
        for y in labels:
            _check_numeric(f"{lwhere}: labels", y)
            if not y.shape or int(y.shape[0]) != int(arrays[0].shape[0]):
                raise DataError(
                    f"{lwhere}: labels have {y.shape[0] if y.shape else 0} rows, the data has "
                    f"{arrays[0].shape[0]} samples",
                    "labels need one row per sample, in the same order",
                )
    if samples is not None:
        arrays = [_first_rows(a, samples) for a in arrays]
        if labels is not None:
            labels = [_first_rows(y, samples) for y in labels]
    return LoadedData(
        path=label,
        names=tuple(names),
        arrays=tuple(arrays),
        stored_dtypes=tuple(str(a.dtype) for a in arrays),
        notes=tuple(notes),
        labels=tuple(labels) if labels is not None else None,
        label_source=label_source,
    )
