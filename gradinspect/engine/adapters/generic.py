"""``generic``: any other layer that owns trainable variables (PReLU, custom layers ...):
dL/dvariable for each, and dL/dinput where its first input is a float tensor."""

from __future__ import annotations

from typing import Any

from gradinspect.engine.adapters.base import Adapter


class _Generic(Adapter):
    def matches(self, layer: Any, keras: Any) -> bool:
        return True


ADAPTER = _Generic(kind="generic", classes=(), note="any other layer with trainable variables")
