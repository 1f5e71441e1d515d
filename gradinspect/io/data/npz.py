"""The .npz reader: members decompressed only when used, each checked against inflation first."""

from __future__ import annotations

import math
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gradinspect.errors import DataError
from gradinspect.io.data.rows import ArrayLike
from gradinspect.io.safety import (
    SPARSE_MIN_BYTES,
    SPARSE_RATIO,
    available_memory,
)
from gradinspect.io.sniff import zip_names


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


def read_npz(path: Path, inner: str | None, closers: list[Any]) -> Mapping[str, ArrayLike]:
    """The ``Reader`` of .npz archives: every member by name, decompressed when used; a zip
    that is a Keras model is refused as data."""
    names = zip_names(path, DataError, "zip/.npz archive", "save it again")
    if "config.json" in names:
        raise DataError(f"{path}: is a Keras model, not data",
                        "did you swap MODEL and DATA? usage: gradinspect MODEL DATA")
    return _LazyNpz(path)
