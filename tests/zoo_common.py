"""The keras.io zoo's shared record: one architecture written the way its keras.io example
writes it (small sizes), compiled as the example compiles it, with a batch of inputs and labels.

Builders live in ``zoo_vision.py`` and ``zoo_text.py`` (``CASES``: name -> builder); the custom
layers each example defines live in ``zoo_vision_layers.py`` and ``zoo_text_layers.py``, files
passed to ``--custom-objects`` as a user keeps them. ``test_zoo.py`` saves each model, writes
an ``.npz`` of its inputs and labels and inspects it through the CLI.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


@dataclass
class ZooCase:
    """One keras.io architecture, ready to save and inspect."""

    model: Any
    """Compiled as the example compiles it, after one training step on ``inputs``/``labels``."""
    inputs: dict[str, np.ndarray]
    """By model input name (the ``.npz`` keys)."""
    labels: dict[str, np.ndarray]
    """``y`` for a model with one output in the loss, else ``y_<output name>``."""
    layers_file: Path | None
    """The ``--custom-objects`` file that defines its custom layers (``None``: none)."""
    healthy: bool = True
    """Trains well in its keras.io example: inspecting it must give no warning."""
    expect: tuple[str, ...] = ()
    """Finding codes a sick model must get as a root (what its defect is)."""
    notes: str = ""
    open_verdict: str = ""
    """A verdict on a healthy case that is still an open calibration question (issue 25):
    the warning it gets, and why it is not settled. The test expects exactly that warning."""
    extra: dict[str, Any] = field(default_factory=dict)


Builder = Callable[[Any], ZooCase]
"""keras -> the case (seeded inside, so a builder gives the same model every time)."""


def one_step(case: ZooCase, batch_size: int | None = None) -> ZooCase:
    """One ``fit`` step on the case's own batch, as the example trains (the saved model then
    carries a built optimizer, as every file a user saves after training does)."""
    model = case.model
    x = case.inputs if len(case.inputs) > 1 else next(iter(case.inputs.values()))
    names = [k.removeprefix("y_") for k in case.labels]
    if set(case.labels) == {"y"}:
        y: Any = case.labels["y"]
    else:
        y = dict(zip(names, case.labels.values(), strict=True))
    size = batch_size or len(next(iter(case.inputs.values())))
    model.fit(x, y, batch_size=size, epochs=1, verbose=0, shuffle=False)
    settle_batchnorm(model, x)
    return case


def settle_batchnorm(model: Any, x: Any) -> None:
    """Moving statistics that describe the data, as after the example's full training (one
    step with momentum 0.99 leaves them at about their initial values, which gradinspect
    rightly calls untrained): one training-mode call with momentum 0, which sets them to the
    batch's statistics and changes no weight. A frozen backbone's normalisations are settled
    too (in the example they come pretrained; here its weights are random)."""
    norms = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
             if hasattr(layer, "moving_mean") and hasattr(layer, "momentum")]
    if not norms:
        return
    saved = [(layer.momentum, layer.trainable) for layer in norms]
    for layer in norms:
        layer.momentum, layer.trainable = 0.0, True
    try:
        model(x, training=True)
    finally:
        for layer, (momentum, trainable) in zip(norms, saved, strict=True):
            layer.momentum, layer.trainable = momentum, trainable
