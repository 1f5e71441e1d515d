"""Labels and the loss they meet: the Keras version's loss semantics, label checks and per-batch
conversions (sparse ids, one-hot, trailing axes), and the pairings of loss and output
activation that change what is differentiated (kept logits, mismatches)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gradinspect.config import InspectOptions
from gradinspect.errors import DataError
from gradinspect.io.loaded import LoadedData, LoadedModel

LabelPrep = Callable[[Sequence[Any], int], list[np.ndarray]]
"""Turns one batch of stored labels (and its first row's index) into what the loss takes."""


def loss_semantics_for(loaded: LoadedModel, options: InspectOptions, notes: list[str]) -> str:
    """``--loss-semantics``, else the rules of the Keras version that saved the file; when
    the file does not say, ``keras3``, with a note."""
    if options.loss_semantics is not None:
        return options.loss_semantics
    version = loaded.keras_version
    if version is None:
        notes.append("the model file does not record the Keras version that saved it: "
                     "crossentropy losses follow Keras 3 rules (--loss-semantics keras2 for a "
                     "Keras 2 file)")
        return "keras3"
    return "keras2" if version.startswith("2.") else "keras3"


PROBABILITY_ACTIVATIONS = ("softmax", "sigmoid", "hard_sigmoid")


def _spec_at(loss: Any, output_index: int | None) -> Any:
    """The loss of one model output (``None``: not an output, or not in the loss)."""
    spec_for = getattr(loss, "spec_for", None)
    return None if output_index is None or spec_for is None else spec_for(output_index)


def find_logits_mismatch(loss: Any, site: Any) -> tuple[str, bool] | None:
    """(loss name, from_logits) when a crossentropy loss and the output activation disagree."""
    from gradinspect.losses import CROSSENTROPY

    spec = _spec_at(loss, site.output_index)
    if spec is None or spec.name not in CROSSENTROPY:
        return None
    from_logits = bool(spec.from_logits)
    measured = site.measured
    if measured is None:
        return None
    probabilities = measured.kind == "softmax" or measured.name in PROBABILITY_ACTIVATIONS
    if from_logits and probabilities:
        return spec.name, True
    if not from_logits and measured.kind == "linear":
        return spec.name, False
    return None


KEPT_LOGITS = ("softmax", "sigmoid")
"""Activations whose output keeps its logits for a crossentropy (Keras 2.13+ and 3)."""


LOGITS_CLOSED_FORMS = ("categorical_crossentropy", "sparse_categorical_crossentropy",
                       "binary_crossentropy")


def logits_spec(loss: Any, site: Any) -> Any:
    """The output loss spec when this output's crossentropy is computed from the logits its
    softmax/sigmoid keeps rather than from the probabilities: Keras 3 does that for every
    crossentropy (``from_logits`` or not), the ``keras2`` rule only for ``from_logits=True``
    (see ``losses.SEMANTICS``). ``None`` otherwise."""
    from gradinspect.losses import CROSSENTROPY, KERAS2_RULES

    profile = site.profile
    if (profile is None or profile.name not in KEPT_LOGITS or site.follower is not None):
        return None
    spec = _spec_at(loss, site.output_index)
    if spec is None or spec.name not in CROSSENTROPY:
        return None
    if getattr(loss, "semantics", "keras3") == "keras2" and spec.name in KERAS2_RULES \
            and not spec.from_logits:
        return None
    return spec


def find_loss_activation_mismatch(loss: Any, site: Any) -> tuple[str, str, str] | None:
    """(activation, loss, semantics) for a sigmoid output under categorical crossentropy, or
    a softmax over several units under binary crossentropy (probabilities taken as such);
    ``semantics`` is the crossentropy rule the loss follows (``keras2`` or ``keras3``)."""
    semantics = str(getattr(loss, "semantics", "keras3"))
    measured = site.measured
    spec = _spec_at(loss, site.output_index)
    if spec is None or measured is None or spec.from_logits:
        return None
    if spec.name == "categorical_crossentropy" and measured.name == "sigmoid":
        return "sigmoid", spec.name, semantics
    if spec.name == "binary_crossentropy" and measured.kind == "softmax" \
            and (site.units or 0) > 1:
        return "softmax", spec.name, semantics
    return None


def crossentropy_from_logits(loss: Any) -> bool | None:
    values = {p.from_logits for p in getattr(loss, "per_output", ())} - {None}
    return values.pop() if len(values) == 1 else None


def prepare_labels(loss: Any, loaded: LoadedModel, data: LoadedData,
                   notes: list[str]) -> LabelPrep | None:
    """Check the labels against the loss and the outputs once, and return the per-batch
    conversion (sparse class ids to one-hot for categorical losses, dtype casts, range checks).
    Conversions are described in ``notes``.
    """
    if not loss.needs_labels:
        return None
    where = data.label_source or "labels"
    if data.labels is None:
        raise DataError(
            f"the loss {loss.name!r} needs labels",
            "pass --labels FILE, or put a 'y' array in the .npz/HDF5 data file",
        )
    outputs = [loaded.outputs[k] for k in loss.output_indices()]
    if len(data.labels) != len(outputs):
        raise DataError(f"{where}: {len(data.labels)} label arrays for "
                        f"{len(outputs)} model outputs in the loss",
                        "one label array per output in the loss")
    for k, out in enumerate(loaded.outputs):
        if k not in loss.output_indices():
            notes.append(f"output '{out.name}' has no loss (compiled with none): it takes no "
                         "labels and adds nothing to the loss")
    steps = []
    for y, out, spec in zip(data.labels, outputs, loss.per_output, strict=True):
        step, note = _label_step(where, y, out, spec.name) if spec.builtin \
            else _custom_label_step(out, spec.name)
        steps.append(step)
        if note:
            notes.append(note)
    return lambda batch, start: [step(np.asarray(y), start) for step, y in zip(steps, batch,
                                                                                strict=True)]


def _label_step(where: str, y: Any, out: Any, loss_name: str) -> tuple[
    Callable[[np.ndarray, int], np.ndarray], str | None
]:
    out_shape = tuple(out.shape[1:])
    classes = out_shape[-1] if out_shape else None
    y_shape = tuple(y.shape[1:])
    kind = np.dtype(y.dtype).kind
    integral = kind in ("i", "u", "b")
    label = f"{where}: labels for output '{out.name}'"

    def in_range(ids: np.ndarray, start: int) -> np.ndarray:
        if classes is None:
            return ids
        bad = (ids < 0) | (ids >= classes) | (ids != np.floor(ids))
        if bad.any():
            row = start + int(np.argwhere(bad.reshape(bad.shape[0], -1).any(axis=1))[0][0])
            value = float(ids.ravel()[bad.ravel()][0])
            raise DataError(f"{label}: sample {row} has class id {value:g}"
                            f", outside 0..{classes - 1}",
                            "check the labels belong to this model's classes")
        return ids

    if loss_name.startswith("sparse_"):
        ids_shape = (None, *out_shape[:-1])
        if not (_fits(y_shape, out_shape[:-1]) or _fits(y_shape, (*out_shape[:-1], 1))
                or (len(out_shape) <= 1 and y_shape in ((), (1,)))):
            raise DataError(f"{label} have shape {tuple(y.shape)}; "
                            f"{loss_name} takes class ids of shape {_shape_text(ids_shape)} "
                            f"for output {tuple(out.shape)}",
                            "pass integer class ids, or use categorical_crossentropy for "
                            "one-hot labels")
        return (lambda b, start: in_range(b.astype(np.float64), start).astype(np.int32)), None
    if (loss_name == "categorical_crossentropy" and y_shape in ((), (1,)) and classes
            and classes > 1 and integral):
        def one_hot(b: np.ndarray, start: int) -> np.ndarray:
            ids = in_range(b.reshape(-1).astype(np.float64), start).astype(np.int64)
            return np.eye(int(classes), dtype=np.float32)[ids]
        return one_hot, (f"labels for output '{out.name}': integer class ids one-hot encoded "
                         f"({classes} classes) for categorical_crossentropy")
    if not _fits(y_shape, out_shape) and out_shape and out_shape[-1] == 1 and \
            _fits(y_shape, out_shape[:-1]):
        # (N,) labels for an (N, 1) output: Keras trains with them (it expands the last axis)
        return (lambda b, start: np.asarray(b, dtype=np.float32)[..., None]), None
    if not _fits(y_shape, out_shape):
        hint = "labels need the output's shape"
        if loss_name == "categorical_crossentropy" and y_shape in ((), (1,)):
            hint = "integer class ids are one-hot encoded automatically; these are not integers"
        raise DataError(f"{label} have shape {tuple(y.shape)}, the output is "
                        f"{tuple(out.shape)}", hint)
    return (lambda b, start: np.asarray(b, dtype=np.float32)), None


def _custom_label_step(out: Any, loss_name: str) -> tuple[
    Callable[[np.ndarray, int], np.ndarray], str
]:
    """Labels of a custom loss pass as they are, cast to float32 as Keras casts them for any
    loss: Keras checks no shape for a loss whose code it does not know (the keras.io NER
    model's loss reads sparse ``(N, T)`` tags of a ``(N, T, C)`` output)."""
    return ((lambda b, start: np.asarray(b, dtype=np.float32)),
            f"labels for output '{out.name}' go to the custom loss {loss_name!r} as they are "
            "(float32, their shape unchecked, as Keras passes them)")


def _fits(shape: tuple[Any, ...], declared: tuple[Any, ...]) -> bool:
    """Whether a label shape fits an output's declared shape: same rank, and every axis equal
    where the output's is known (a ``None`` axis, as in ``Input((None, None, 3))`` or a
    sequence of any length, takes any size)."""
    return len(shape) == len(declared) and all(
        d is None or int(s) == int(d) for s, d in zip(shape, declared, strict=True))


def _shape_text(shape: tuple[Any, ...]) -> str:
    """``(N, T)``: a shape for a message, the batch axis as N and unknown axes as ``?``."""
    parts = ["N", *("?" if d is None else str(d) for d in shape[1:])]
    return f"({', '.join(parts)}{',' if len(parts) == 1 else ''})"
