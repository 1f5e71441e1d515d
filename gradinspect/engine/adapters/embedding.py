"""``embedding``: Embedding. Its input is integer ids, so there is no dL/dinput."""

from __future__ import annotations

from gradinspect.engine.adapters.base import Adapter

ADAPTER = Adapter(kind="embedding", classes=("Embedding",), note="Embedding (no dL/dinput: ids)")
