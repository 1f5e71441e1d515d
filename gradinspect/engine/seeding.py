"""Randomness in the pass: the model's Keras seed generators, seeded for a run and replayed for
the counting pass; and the layers that make one sample's output depend on the others."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from gradinspect.engine.views import children


def seed_generators(model: Any) -> list[Any]:
    """Every Keras seed generator in the model (Dropout, GaussianNoise ...), each once."""
    generators: list[Any] = []
    seen: set[int] = set()
    flatten = getattr(model, "_flatten_layers", None)
    layers = list(flatten(include_self=True, recursive=True)) if flatten else [model]
    for layer in layers:
        for generator in getattr(layer, "_seed_generators", None) or []:
            if id(generator) not in seen:
                seen.add(id(generator))
                generators.append(generator)
    return generators


def generator_states(generators: Sequence[Any]) -> list[np.ndarray]:
    return [np.asarray(g.state.numpy()) for g in generators]


def set_generator_states(generators: Sequence[Any], states: Sequence[np.ndarray]) -> None:
    for g, state in zip(generators, states, strict=True):
        g.state.assign(state)


@contextmanager
def seeded(model: Any, seed: int) -> Iterator[int]:
    """Every Keras seed generator in the model set to a state derived from ``seed`` for the
    block, and restored afterwards. Yields how many were set."""
    generators = seed_generators(model)
    saved = generator_states(generators)
    try:
        for i, g in enumerate(generators):
            g.state.assign(np.array([seed, i], dtype=saved[i].dtype))
        yield len(generators)
    finally:
        set_generator_states(generators, saved)


def batch_interactions(model: Any, training: bool) -> list[str]:
    """Layers that make one sample's output depend on the others (BatchNormalization in
    training mode): per-sample gradients are not defined for them."""
    if not training:
        return []
    found: list[str] = []

    def walk(layer: Any, prefix: str) -> None:
        for child in children(layer):
            if type(child).__name__ in ("BatchNormalization", "SyncBatchNormalization"):
                found.append(f"{prefix}{child.name}")
            walk(child, f"{prefix}{child.name}/")

    walk(model, "")
    return found
