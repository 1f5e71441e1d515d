"""A model file's metadata, read once and without Keras: the model config (for the allow-list
and the Keras 2 repairs), the compile configuration (for the loss) and the Keras version that
saved it (for the loss semantics), in one ``ModelFile`` record."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradinspect.errors import ModelLoadError


@dataclass(frozen=True)
class ModelFile:
    """What a model file says about itself, read in one opening of the file."""

    path: Path
    format: str
    """``keras``, ``h5`` or ``json`` (an architecture JSON)."""
    config: Any
    """The model config as plain JSON data (``None`` if the file has none)."""
    compile_config: dict[str, Any] | None
    """The training/compile configuration (``loss``, ``loss_weights`` ...), or ``None``."""
    keras_version: str | None
    """The Keras version that saved the file (``None`` when it does not say)."""


def read_model_file(path: Path, fmt: str) -> ModelFile:
    """Open the file once and read its config (a damaged or invalid config is a
    ``ModelLoadError``), compile configuration and Keras version (either missing or damaged:
    ``None``)."""
    try:
        if fmt == "keras":
            with zipfile.ZipFile(path) as z:
                raw: Any = z.read("config.json")
                version = _json_member(z, "metadata.json").get("keras_version")
            training = None
        elif fmt == "h5":
            import h5py

            with h5py.File(path, "r") as f:
                raw = f.attrs.get("model_config")
                training = f.attrs.get("training_config")
                version = f.attrs.get("keras_version")
        else:
            raw, training, version = path.read_bytes(), None, None
        config = None if raw is None else json.loads(_text(raw))
    except RecursionError as exc:
        raise ModelLoadError(f"{path}: the model config is nested too deeply to read",
                             "refused: no real model nests this deep") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path}: the model config is not valid JSON ({exc})",
                             "save or download it again") from exc
    except Exception as exc:  # zip, zlib and HDF5 parsers raise many kinds on damaged bytes
        raise ModelLoadError(f"{path}: damaged model file ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})",
                             "save or download it again") from exc
    if fmt == "json" and isinstance(config, dict):
        version = config.get("keras_version")
    if fmt == "keras":
        found = config.get("compile_config") if isinstance(config, dict) else None
    else:
        found = _training_config(training, path)
    return ModelFile(path=path, format=fmt, config=config,
                     compile_config=found if isinstance(found, dict) else None,
                     keras_version=_version(version))


def _text(raw: Any) -> Any:
    return raw.decode("utf-8") if isinstance(raw, bytes) else raw


def _json_member(z: zipfile.ZipFile, name: str) -> dict[str, Any]:
    """A JSON member of the archive as a dict; ``{}`` when missing or damaged."""
    try:
        found = json.loads(z.read(name))
    except Exception:  # no metadata, or damaged: the caller says the version is unknown
        return {}
    return found if isinstance(found, dict) else {}


def _training_config(raw: Any, path: Path) -> Any:
    """The training configuration, ``None`` when missing or damaged (the loss then comes from
    the options); nested too deeply to parse is refused like a model config that deep."""
    try:
        return json.loads(_text(raw)) if raw else None
    except RecursionError as exc:
        raise ModelLoadError(f"{path}: the training configuration is nested too deeply to "
                             "read", "refused: no real model nests this deep") from exc
    except (ValueError, UnicodeDecodeError):
        return None


def _version(found: Any) -> str | None:
    if isinstance(found, bytes):
        found = found.decode("utf-8", "replace")
    return str(found) if isinstance(found, str) and found else None


def config_dicts(config: Any) -> Iterator[dict[str, Any]]:
    """Every dict in a config (JSON data), depth first, with an explicit stack (a hostile
    config may nest deeper than Python's recursion limit). A dict's values are taken before it
    is yielded, so a caller may rewrite the dict it is given; what it adds inside a value it
    has not changed (a list it inserts into) is still visited."""
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            stack.extend(node.values())
            yield node
