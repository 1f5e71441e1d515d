"""What loading hands on: a model with its inputs and outputs, and data arrays with labels.

Frozen records; nothing here reads a file."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class InputSpec:
    """One model input: its name, shape (batch first, ``None`` = any) and dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str


@dataclass(frozen=True)
class LoadedModel:
    """A Keras model and where it came from."""

    model: Any
    path: str | None
    format: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[InputSpec, ...] = ()
    """Model outputs (name, shape, dtype), in order."""
    compile_config: dict[str, Any] | None = None
    """The compile configuration saved with the model (``loss``, ``loss_weights`` ...)."""
    custom_objects: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """What ``--custom-objects`` defined, by name (custom losses are looked up here)."""
    keras_version: str | None = None
    """The Keras version that saved the file (``None`` when the file does not say)."""

    @property
    def optimizer(self) -> str | None:
        """The optimizer it was compiled with, as a lowercase class name (``adam``): Keras 3's
        ``optimizer`` (a name or a serialised object), Keras 2's ``optimizer_config``; the
        optimizer inside a ``LossScaleOptimizer``; ``None`` when not compiled or not said."""
        config = self.compile_config or {}
        found: Any = config.get("optimizer", config.get("optimizer_config"))
        for _ in range(4):  # a loss-scale wrapper holds the real one
            if isinstance(found, str):
                return _class_part(found)
            if not isinstance(found, dict):
                return None
            name = found.get("class_name")
            inner = found.get("config")
            if name == "LossScaleOptimizer" and isinstance(inner, dict):
                found = inner.get("inner_optimizer")
                continue
            return _class_part(name) if isinstance(name, str) else None
        return None


def _class_part(name: str) -> str | None:
    """``Custom>Adam``, ``keras.optimizers.Adam``, ``adam`` -> ``adam``."""
    return name.rsplit(">", 1)[-1].rsplit(".", 1)[-1].lower() or None


@dataclass(frozen=True)
class LoadedData:
    """Input arrays in model-input order, read lazily where the format allows (``NpyRows`` for
    .npy, ``H5Rows`` for HDF5), and the labels per model output when there are any."""

    path: str | None
    names: tuple[str, ...]
    arrays: tuple[Any, ...]
    stored_dtypes: tuple[str, ...]
    notes: tuple[str, ...] = ()
    labels: tuple[Any, ...] | None = None
    label_source: str | None = None
    closers: tuple[Any, ...] = ()
    """Open files (HDF5) to close when the run is over."""

    @property
    def samples(self) -> int:
        return int(self.arrays[0].shape[0])

    def close(self) -> None:
        """Close files kept open for streaming."""
        for f in self.closers:
            f.close()
