"""The HDF5 reader: every dataset (or the one FILE:/path names), read row range by row range."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gradinspect.errors import DataError
from gradinspect.io.data.rows import ArrayLike, H5Rows
from gradinspect.io.safety import (
    check_hdf5,
)


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


def read_hdf5(path: Path, inner: str | None, closers: list[Any]) -> Mapping[str, ArrayLike]:
    """The ``Reader`` of HDF5 files: every dataset, or the one ``inner`` names; the file stays
    open (in ``closers``) while its rows are read; damage is one data error."""
    try:
        return _load_hdf5(path, inner, closers)
    except DataError:
        raise
    except Exception as exc:  # damaged HDF5 metadata surfaces as many exception types
        raise DataError(f"{path}: damaged HDF5 file ({type(exc).__name__}: {exc})",
                        "save it again") from exc
