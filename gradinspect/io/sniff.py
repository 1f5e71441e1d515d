"""What a path holds, judged by content, and which model format it is: sniffing, readability,
and the format errors that say what the file is instead."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from gradinspect.errors import DataError, ModelLoadError
from gradinspect.io.safety import (
    check_hdf5,
    check_keras_archive,
    require_regular_file,
)

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


ZIP_MAGIC = b"PK\x03\x04"


NPY_MAGIC = b"\x93NUMPY"


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


def check_readable(path: Path, kind: str, error: type[ModelLoadError] | type[DataError]) -> None:
    if not path.exists():
        raise error(f"{kind} file not found: {path}", "check the path and spelling")
    require_regular_file(path, kind, error)  # a FIFO or device is never opened
    if not path.is_dir() and not _readable(path):
        raise error(f"{kind} file is not readable: {path}", "check its permissions")


def zip_names(path: Path, error: type[ModelLoadError] | type[DataError] = ModelLoadError,
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


def detect_model(path: Path) -> tuple[str, int | None]:
    """The model format and the bytes of weights the file stores (``None`` where that is not
    known before loading: an architecture JSON, a SavedModel directory), after the safety
    checks of its format; or raise a ``ModelLoadError`` that says what the file is instead."""
    check_readable(path, "model", ModelLoadError)
    kind = sniff(path)
    if kind == "savedmodel":
        return "savedmodel", None  # io.savedmodel tells a Keras one from a plain tf.Module
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
        names = zip_names(path)
        if "config.json" in names:
            return "keras", check_keras_archive(path)
        if names and all(n.endswith(".npy") for n in names):
            raise ModelLoadError(
                f"{path}: is a NumPy .npz archive, not a model",
                "did you swap MODEL and DATA? usage: gradinspect MODEL DATA",
            )
        raise ModelLoadError(
            f"{path}: zip archive without a Keras config.json", "pass a .keras or .h5 model file"
        )
    if kind == "json":
        return "json", None
    if kind == "hdf5":
        stored = check_hdf5(path, str(path), ModelLoadError)
        h5kind = _h5_model_kind(path)
        if h5kind == "model":
            return "h5", stored
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
