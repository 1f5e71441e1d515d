"""The public Python API: ``inspect(model, x)`` on a live model in a notebook or at a breakpoint,
``inspect_files`` for what ``gradinspect MODEL DATA`` runs. Both return a ``Report``; the work
is ``pipeline.run_inspection``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gradinspect.config import InspectOptions, LoadOptions, Thresholds
from gradinspect.distribute import effective
from gradinspect.errors import DataError
from gradinspect.io.data.select import load_data
from gradinspect.io.models import import_custom_objects, live_model, load_model
from gradinspect.pipeline import ProgressHook, run_inspection
from gradinspect.report import Report


def inspect_files(
    model_path: str | os.PathLike[str],
    data_path: str | os.PathLike[str],
    options: InspectOptions | None = None,
    progress: ProgressHook | None = None,
    labels_path: str | os.PathLike[str] | None = None,
    load: LoadOptions | None = None,
    strategy: Any = None,
) -> Report:
    """Load a model file, a data file (and labels) and inspect them (what the CLI runs).
    With a ``tf.distribute`` ``strategy`` the model is loaded in its scope (its variables
    mirrored on the replicas, as in training under the strategy) and the pass runs on it;
    of each batch, a worker reads only its share of the rows."""
    options = options or InspectOptions()
    load = load or LoadOptions()
    custom = import_custom_objects(load.custom_objects) if load.custom_objects else None
    with _scope(effective(strategy)):
        loaded = load_model(model_path, unsafe=load.unsafe, custom_objects=custom,
                            weights=load.weights, max_model_bytes=load.max_model_bytes)
    data = load_data(data_path, loaded.inputs, options.samples, labels_path=labels_path,
                     outputs=_outputs_taking_labels(loaded, options.loss))
    try:
        return run_inspection(loaded, data, options, progress, strategy=strategy)
    finally:
        data.close()


def _outputs_taking_labels(loaded: Any, loss: str | None) -> tuple[Any, ...]:
    """The outputs that take labels: every one under ``--loss NAME``; under the compiled loss,
    those it covers (an output compiled with no loss takes none, as in Keras)."""
    from gradinspect.losses import outputs_in_loss

    if loss not in (None, "compiled"):
        return tuple(loaded.outputs)
    covered = outputs_in_loss(loaded.compile_config, [o.name for o in loaded.outputs])
    return tuple(o for o, keep in zip(loaded.outputs, covered, strict=True) if keep)


def _scope(strategy: Any) -> Any:
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def _arrays_by_name(value: Any, names: Sequence[str], what: str, kind: str, *,
                    split: bool) -> list[np.ndarray]:
    """Arrays for the model's inputs or outputs: a dict by name, a list/tuple in order (when
    ``split``), or one array."""
    if isinstance(value, Mapping):
        missing = [n for n in names if n not in value]
        if missing:
            raise DataError(f"no {what} for model {kind}(s) {missing}",
                            f"pass keys {list(names)}")
        return [np.asarray(value[n]) for n in names]
    if split and isinstance(value, (list, tuple)):
        return [np.asarray(a) for a in value]
    return [np.asarray(value)]


def inspect(
    model: Any,
    x: Any,
    y: Any = None,
    *,
    loss: str | None = None,
    reduction: str | None = None,
    from_logits: bool | None = None,
    batch_size: int | None = None,
    samples: int | None = None,
    training: bool = False,
    thresholds: Thresholds | None = None,
    verify: bool = False,
    gradcheck: int = 0,
    per_sample: bool = False,
    seed: int = 0,
    layers: Sequence[str] = (),
    kinds: Sequence[str] = (),
    values: bool = False,
    memory_budget: int | None = None,
    loss_semantics: str | None = None,
    gradients: bool = False,
    strategy: Any = None,
    worker_timeout: float | None = None,
) -> Report:
    """Inspect a live Keras model on in-memory data.

    ``x`` is an array (single-input model), a list of arrays in model-input order, or a dict
    keyed by input name. Returns the same ``Report`` as the CLI.

    ``strategy``: a ``tf.distribute.MirroredStrategy`` or ``MultiWorkerMirroredStrategy``
    (typically the one the model was built and trained under): each batch is split over its
    replicas and merged; the report is the single-device one up to float32 summation order.
    Under ``MultiWorkerMirroredStrategy`` every worker calls ``inspect`` with the whole ``x``
    (arrays in memory) and gets the whole report; ``worker_timeout`` bounds each merge.
    """
    from gradinspect.io.data.select import validate_arrays

    loaded = live_model(model)
    names = [s.name for s in loaded.inputs]
    arrays = _arrays_by_name(x, names, "array", "input", split=True)
    labels = None
    if y is not None:
        labelled = _outputs_taking_labels(loaded, loss)
        labels = _arrays_by_name(y, [o.name for o in labelled], "labels", "output",
                                 split=len(labelled) > 1)
    data = validate_arrays(None, names, arrays, loaded.inputs, samples, labels=labels,
                           label_source="<labels>" if labels is not None else None)
    options = InspectOptions(
        loss=loss,
        reduction=reduction,
        from_logits=from_logits,
        batch_size=batch_size,
        samples=samples,
        training=training,
        thresholds=thresholds or Thresholds(),
        verify=verify,
        gradcheck=gradcheck,
        per_sample=per_sample,
        seed=seed,
        layers=tuple(layers),
        kinds=tuple(kinds),
        values=values,
        gradients=gradients,
        loss_semantics=loss_semantics,
        worker_timeout=worker_timeout,
        **({"memory_budget": memory_budget} if memory_budget is not None else {}),
    )
    return run_inspection(loaded, data, options, strategy=strategy)
