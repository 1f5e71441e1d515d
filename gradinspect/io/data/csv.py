"""The CSV reader: numeric text, one sample a row."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gradinspect.errors import DataError
from gradinspect.io.data.rows import ArrayLike


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


def looks_like_text(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(4096)
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def read_csv(path: Path, inner: str | None, closers: list[Any]) -> Mapping[str, ArrayLike]:
    """The ``Reader`` of numeric text files."""
    return _load_csv(path)
