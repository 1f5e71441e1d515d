"""Data files: one reader per format behind one signature (``Reader``), chosen by content.

``read_arrays`` sniffs a file and hands it to its reader; ``select`` matches what it read to the
model's inputs and labels. May import ``errors``, ``io.sniff`` and ``io.safety``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from gradinspect.errors import DataError
from gradinspect.io.data.csv import looks_like_text, read_csv
from gradinspect.io.data.hdf5 import read_hdf5
from gradinspect.io.data.npy import read_npy
from gradinspect.io.data.npz import read_npz
from gradinspect.io.data.rows import ArrayLike
from gradinspect.io.sniff import check_readable, sniff


class Reader(Protocol):
    """One data format: every array of ``path`` by name (or the one ``inner`` names, HDF5), rows
    read on demand where the format allows; files it keeps open go into ``closers``."""

    def __call__(self, path: Path, inner: str | None,
                 closers: list[Any]) -> Mapping[str, ArrayLike]: ...


READERS: dict[str, Reader] = {"npy": read_npy, "zip": read_npz, "hdf5": read_hdf5,
                              "text": read_csv}
"""The reader for each kind ``sniff`` tells (``text``: a file that looks like numeric text).
A new data format is one module with a reader, and one entry here."""


def split_dataset_spec(spec: str | os.PathLike[str]) -> tuple[Path, str | None]:
    """``FILE:/path/in/file`` -> (FILE, '/path/in/file'); a plain path -> (path, None)."""
    text = os.fspath(spec)
    if ":/" in text and not Path(text).exists():
        file_part, _, inner = text.rpartition(":/")
        if Path(file_part).exists():
            return Path(file_part), "/" + inner
    return Path(text), None


def read_arrays(spec: str | os.PathLike[str],
                closers: list[Any]) -> tuple[Path, Mapping[str, ArrayLike]]:
    """Every array a data file holds, by name (``""`` for a single unnamed array)."""
    path, inner = split_dataset_spec(spec)
    check_readable(path, "data", DataError)
    kind = sniff(path)
    if inner is not None and kind != "hdf5":
        raise DataError(f"{path}: FILE:/dataset works for HDF5 files only", "drop :/...")
    reader = READERS.get("text" if kind == "unknown" and looks_like_text(path) else kind)
    if reader is not None:
        return path, reader(path, inner, closers)
    if kind in ("directory", "savedmodel"):
        raise DataError(f"{path}: is a directory, not a data file",
                        "pass a .npy, .npz, .h5 or .csv file")
    if kind == "empty":
        raise DataError(f"{path}: data file is empty", "save the data again")
    raise DataError(f"{path}: unrecognised data format",
                    "gradinspect reads .npy, .npz, HDF5 (.h5, FILE:/dataset) and numeric .csv")
