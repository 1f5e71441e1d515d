"""One module per layer kind; ``ADAPTERS`` lists them in matching order (``generic`` last)."""

from __future__ import annotations

from gradinspect.engine.adapters import (
    conv,
    dense,
    einsum_dense,
    embedding,
    generic,
    normalization,
    recurrent,
)
from gradinspect.engine.adapters.base import Adapter

ADAPTERS: tuple[Adapter, ...] = (
    dense.ADAPTER,
    einsum_dense.ADAPTER,
    conv.ADAPTER,
    embedding.ADAPTER,
    recurrent.ADAPTER,
    normalization.ADAPTER,
    generic.ADAPTER,
)
KINDS: tuple[str, ...] = tuple(a.kind for a in ADAPTERS)
"""Every kind, for ``--kind`` and the README."""

__all__ = ["ADAPTERS", "KINDS", "Adapter"]
