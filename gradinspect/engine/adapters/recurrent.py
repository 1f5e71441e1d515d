"""``recurrent``: LSTM, GRU, SimpleRNN and any keras.layers.RNN (also each direction inside
Bidirectional). The entry owns its cell's variables (kernel, recurrent_kernel, bias).
Per-sample norms: the layer called again on each sample in a loop."""

from __future__ import annotations

from typing import Any

from gradinspect.engine.adapters.base import Adapter, subtree_variables
from gradinspect.engine.persample import LOOPED
from gradinspect.engine.views import DenseView, PerSampleForm


def recurrent_per_sample(layer: Any, view: DenseView | None, training: bool) -> PerSampleForm:
    """The exact fallback one sample at a time: the layer's own loop over time steps sums
    each step's share of the sample's gradient."""
    return LOOPED


ADAPTER = Adapter(
    kind="recurrent",
    classes=("RNN",),
    variables=subtree_variables,
    owns_subtree=True,
    per_sample=recurrent_per_sample,
    note="LSTM, GRU, SimpleRNN, RNN (each direction of Bidirectional)",
)
