"""From the arrays of a data file to the model's inputs and labels: picking by name, checking
shapes and dtypes, and the one-line errors when they do not fit."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gradinspect.errors import DataError
from gradinspect.io.data import read_arrays
from gradinspect.io.data.rows import ArrayLike, first_rows
from gradinspect.io.loaded import InputSpec, LoadedData

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
        arrays = [first_rows(a, samples) for a in arrays]
        if labels is not None:
            labels = [first_rows(y, samples) for y in labels]
    return LoadedData(
        path=label,
        names=tuple(names),
        arrays=tuple(arrays),
        stored_dtypes=tuple(str(a.dtype) for a in arrays),
        notes=tuple(notes),
        labels=tuple(labels) if labels is not None else None,
        label_source=label_source,
    )
