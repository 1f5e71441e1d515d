"""The .npy reader: header checked in Python integers, never unpickled, rows read on demand."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gradinspect.errors import DataError
from gradinspect.io.data.rows import ArrayLike, NpyRows


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


def read_npy(path: Path, inner: str | None, closers: list[Any]) -> Mapping[str, ArrayLike]:
    """The ``Reader`` of .npy files: one unnamed array (``""``), its rows read on demand."""
    return {"": _load_npy(path)}
