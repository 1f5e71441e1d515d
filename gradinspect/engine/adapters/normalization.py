"""``normalization``: BatchNormalization, LayerNormalization, GroupNormalization (gamma, beta),
and any other normalization layer with trainable weights."""

from __future__ import annotations

from gradinspect.engine.adapters.base import Adapter

ADAPTER = Adapter(
    kind="normalization",
    classes=("BatchNormalization", "LayerNormalization", "GroupNormalization",
             "UnitNormalization", "RMSNormalization", "SpectralNormalization"),
    note="Batch/Layer/Group/RMS normalization (gamma, beta)",
)
