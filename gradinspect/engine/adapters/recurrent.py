"""``recurrent``: LSTM, GRU, SimpleRNN and any keras.layers.RNN (also each direction inside
Bidirectional). The entry owns its cell's variables (kernel, recurrent_kernel, bias)."""

from __future__ import annotations

from gradinspect.engine.adapters.base import Adapter, subtree_variables

ADAPTER = Adapter(
    kind="recurrent",
    classes=("RNN",),
    variables=subtree_variables,
    owns_subtree=True,
    note="LSTM, GRU, SimpleRNN, RNN (each direction of Bidirectional)",
)
