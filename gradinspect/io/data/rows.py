"""Rows read on demand: lazy row views of .npy files and HDF5 datasets; aligned batch buffers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gradinspect.errors import DataError

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


def first_rows(array: ArrayLike, n: int) -> ArrayLike:
    if isinstance(array, H5Rows):
        return H5Rows(array.dataset, n)
    if isinstance(array, NpyRows):
        return NpyRows(array.path, array.full_shape, array.dtype, array.offset, n)
    return array[:n]
