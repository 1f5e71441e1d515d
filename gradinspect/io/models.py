"""Loading a Keras model: the allow-list first, then Keras in safe mode under a weights budget.

Files are only ever opened for reading. Keras picks its loader by file extension, so a model
whose content and extension disagree is handed to Keras through a symlink with the right
extension in a temporary directory; the original file is never copied, renamed or written."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gradinspect.errors import ModelLoadError
from gradinspect.io.legacy import (
    is_legacy_weights,
    keras2_fixed_config,
    keras2_json_repaired,
    keras2_json_to_h5,
    staged_model_file,
)
from gradinspect.io.loaded import InputSpec, LoadedModel
from gradinspect.io.metadata import read_model_file
from gradinspect.io.safety import (
    available_memory,
    check_hdf5,
    scan_config,
    weight_budget,
)
from gradinspect.io.sniff import check_readable, detect_model, sniff


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
    from gradinspect.io.resolve import Resolver, import_model_packages

    _tf()
    import_model_packages(config)  # Keras' loader would import them; the scan must see them
    if unsafe:
        return
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
    """Load a full Keras model (``.keras`` or ``.h5``, Keras 2 or 3; a Keras 2 SavedModel
    directory), or an architecture JSON with a weights file, without compiling it. Safe mode
    and the config allow-list stay on unless ``unsafe``; the weights the model creates may not
    pass ``max_model_bytes`` (default: the memory the machine has available, and about what
    the file stores: see ``safety.stored_weight_limit``)."""
    p = Path(path)
    fmt, stored = detect_model(p)
    budget = max_model_bytes if max_model_bytes is not None else available_memory()
    if max_model_bytes is not None:
        stored = None  # the user's figure: they know the model and the machine
    if fmt == "json":
        return _load_json_model(p, weights, unsafe=unsafe, custom_objects=custom_objects,
                                budget=budget, bound_by_file=max_model_bytes is None)
    if weights is not None:
        raise ModelLoadError(f"{p}: --weights goes with an architecture JSON file",
                             "drop --weights: this file is a full model")
    with tempfile.TemporaryDirectory(prefix="gradinspect-") as tmp:
        if fmt == "savedmodel":
            source, stored = _savedmodel_as_h5(p, Path(tmp), budget,
                                               bounded=max_model_bytes is None)
            meta = read_model_file(source, "h5")
        else:
            meta = read_model_file(p, fmt)
        fixed = keras2_fixed_config(meta, str(p))
        _scan(p, meta.config if fixed is None else fixed, unsafe, custom_objects)
        _, keras = _tf()
        try:
            link = staged_model_file(meta, Path(tmp), fixed)
        except Exception as exc:  # damaged HDF5 metadata surfaces as many exception types
            raise ModelLoadError(f"{p}: damaged model file ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''})",
                                 "save or download it again") from exc
        with _load_errors(p), _safe_mode(keras, unsafe), weight_budget(keras, str(p), budget,
                                                                         stored):
            model = keras.models.load_model(str(link), compile=False, safe_mode=not unsafe,
                                            custom_objects=dict(custom_objects or {}))
    if not hasattr(model, "inputs") or not model.inputs:
        raise ModelLoadError(
            f"{p}: the model has no defined inputs", "save a model built with an Input shape"
        )
    return LoadedModel(model=model, path=str(p), format=fmt, inputs=_model_inputs(model),
                       outputs=_model_outputs(model),
                       compile_config=meta.compile_config,
                       custom_objects=dict(custom_objects or {}),
                       keras_version=meta.keras_version)


@contextmanager
def _load_errors(p: Path) -> Iterator[None]:
    """Keras' failures while it builds a model, as one ``ModelLoadError``: nesting too deep,
    or what Keras said (a missing custom class, a Lambda in safe mode ...)."""
    try:
        yield
    except ModelLoadError:
        raise
    except RecursionError as exc:
        raise ModelLoadError(f"{p}: the model config is nested too deeply",
                             "refused: no real model nests this deep") from exc
    except Exception as exc:
        raise _explain_load_failure(p, exc) from exc


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


def _savedmodel_as_h5(p: Path, tmp: Path, budget: int, bounded: bool) -> tuple[Path, int | None]:
    """A Keras 2 SavedModel directory as the Keras 2 ``.h5`` it would have been (its layer
    configs from ``keras_metadata.pb``, its weights from the variables checkpoint; the graph
    is never run: ``io.savedmodel``), in ``tmp``; and the bytes of weights it stores when the
    build is bounded by them."""
    from gradinspect.io.savedmodel import read_savedmodel, write_keras2_h5

    out = tmp / "savedmodel.h5"
    write_keras2_h5(read_savedmodel(p), out, budget)
    stored = check_hdf5(out, str(p), ModelLoadError)
    return out, stored if bounded else None


def _load_json_model(
    p: Path, weights: str | os.PathLike[str] | None, *, unsafe: bool,
    custom_objects: Mapping[str, Any] | None, budget: int, bound_by_file: bool,
) -> LoadedModel:
    import json

    if weights is None:
        raise ModelLoadError(f"{p}: is an architecture JSON without weights",
                             "pass the weights too: --weights model_weights.h5")
    wp = Path(weights)
    check_readable(wp, "weights", ModelLoadError)
    stored = check_hdf5(wp, str(wp), ModelLoadError) if sniff(wp) == "hdf5" else None
    stored = stored if bound_by_file else None
    meta = read_model_file(p, "json")
    config = meta.config
    if not isinstance(config, dict) or "class_name" not in config:
        raise ModelLoadError(f"{p}: JSON without a Keras model config",
                             "pass the output of model.to_json()")
    keras2 = str(config.get("keras_version", "")).startswith("2.") or "module" not in config
    if keras2:
        config = keras2_json_repaired(config, str(p))
    _scan(p, config, unsafe, custom_objects)
    _, keras = _tf()
    with tempfile.TemporaryDirectory(prefix="gradinspect-") as tmp, _load_errors(p), \
            _safe_mode(keras, unsafe), weight_budget(keras, str(p), budget, stored):
        if keras2:
            staged = Path(tmp) / "model.h5"
            keras2_json_to_h5(config, wp, staged)
            model = keras.models.load_model(str(staged), compile=False,
                                            safe_mode=not unsafe,
                                            custom_objects=dict(custom_objects or {}))
        else:
            model = keras.models.model_from_json(
                json.dumps(config), custom_objects=dict(custom_objects or {}))
            link = Path(tmp) / ("model.weights.h5" if sniff(wp) == "hdf5"
                                and not is_legacy_weights(wp) else "model.h5")
            link.symlink_to(wp.resolve())
            model.load_weights(str(link))
    return LoadedModel(model=model, path=str(p), format="json", inputs=_model_inputs(model),
                       outputs=_model_outputs(model), compile_config=None,
                       custom_objects=dict(custom_objects or {}),
                       keras_version=meta.keras_version)


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
