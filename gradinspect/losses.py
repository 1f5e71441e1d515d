"""Losses the probe differentiates, as pluggable pieces.

A loss turns the model outputs of one batch into per-sample terms (shape ``(batch,)``); the
probe sums the terms and multiplies by a scale, 1 for ``reduction == "sum"`` and 1/N (N = all
samples of the run, not of the batch) for ``"mean"``, so that the gradients of the batches add
up exactly to the gradient of the loss over all samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from gradinspect.errors import UsageError


class Loss(Protocol):
    """What the probe needs from a loss."""

    @property
    def name(self) -> str:
        """Name shown in the report."""

    @property
    def reduction(self) -> str:
        """``sum`` or ``mean`` over samples."""

    def terms(self, tf: Any, outputs: list[Any], labels: Any) -> Any:
        """Per-sample loss terms, shape ``(batch,)``, from the flattened model outputs."""


def _flat_per_sample(tf: Any, outputs: list[Any]) -> list[Any]:
    """Outputs as (batch, entries), in float32 or, when they already are, float64 (gradcheck)."""
    dtype = tf.float64 if all(o.dtype == tf.float64 for o in outputs) else tf.float32
    return [tf.reshape(tf.cast(o, dtype), (tf.shape(o)[0], -1)) for o in outputs]


@dataclass(frozen=True)
class SumOfOutputs:
    """``sum``: the sum of every model output, as in ``tf.reduce_sum(model(x))``."""

    name: str = "sum"
    reduction: str = "sum"

    def terms(self, tf: Any, outputs: list[Any], labels: Any) -> Any:
        flat = _flat_per_sample(tf, outputs)
        return tf.add_n([tf.reduce_sum(f, axis=1) for f in flat])


@dataclass(frozen=True)
class MeanOfOutputs:
    """``mean``: the mean of every model output entry, as in ``tf.reduce_mean(model(x))``.

    With several outputs, the mean is over all their entries together.
    """

    name: str = "mean"
    reduction: str = "mean"

    def terms(self, tf: Any, outputs: list[Any], labels: Any) -> Any:
        flat = _flat_per_sample(tf, outputs)
        width = tf.add_n([tf.cast(tf.shape(f)[1], f.dtype) for f in flat])
        return tf.add_n([tf.reduce_sum(f, axis=1) for f in flat]) / width


BUILTIN_LOSSES: dict[str, Loss] = {"sum": SumOfOutputs(), "mean": MeanOfOutputs()}


def get_loss(name: str) -> Loss:
    """The loss for a ``--loss`` value."""
    try:
        return BUILTIN_LOSSES[name]
    except KeyError:
        raise UsageError(
            f"unknown loss {name!r}", f"choose one of: {', '.join(BUILTIN_LOSSES)}"
        ) from None
