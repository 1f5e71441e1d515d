"""The corpus' data: scikit-learn's bundled datasets (shipped inside the package, so nothing is
downloaded), split once with a seeded permutation and standardised as a careful user does.

``load(name, view)`` gives a ``Split``; digits come in three views (flat 64 features, 8x8x1
images, 8 steps of 8 features), the tabular sets flat. Features are standardised with the
training split's mean and std; ``raw=True`` keeps the values as stored (digits: 0..16
pixel counts), which is what the unscaled-input sick cases start from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
from sklearn import datasets as sk

LOADERS: dict[str, Callable[..., Any]] = {
    "digits": sk.load_digits,
    "iris": sk.load_iris,
    "wine": sk.load_wine,
    "breast_cancer": sk.load_breast_cancer,
}
"""Dataset name -> scikit-learn loader (each reads a file inside the scikit-learn package)."""

VIEWS: dict[str, tuple[int, ...]] = {"flat": (64,), "image": (8, 8, 1), "sequence": (8, 8)}
"""The shapes a digit is seen as: 64 features, an 8x8 one-channel image, 8 rows as steps."""

SPLIT_SEED = 0
TRAIN_FRACTION = 0.75
SAMPLE = 64
"""Test samples written to each inspection file (fewer where the test split is smaller)."""


@dataclass(frozen=True)
class Split:
    """One dataset, split into train and test, in one view."""

    name: str
    x_train: np.ndarray
    """float32, (samples, *view)."""
    y_train: np.ndarray
    """int class ids."""
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int

    @property
    def binary(self) -> bool:
        """Two classes: the model has one sigmoid unit under binary_crossentropy."""
        return self.classes == 2

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])

    def targets(self, y: np.ndarray) -> np.ndarray:
        """Labels as the model's loss takes them: float (n, 1) for one sigmoid unit under
        binary_crossentropy, int32 class ids for sparse_categorical_crossentropy."""
        return y.astype(np.float32)[:, None] if self.binary else y.astype(np.int32)

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """The inspection sample: the first ``SAMPLE`` test samples (the split is already a
        random permutation) and their labels as the loss takes them."""
        return self.x_test[:SAMPLE], self.targets(self.y_test[:SAMPLE])


@cache
def _arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    bunch = LOADERS[name]()
    return np.asarray(bunch.data, dtype=np.float32), np.asarray(bunch.target, dtype=np.int64)


def load(name: str, view: str = "flat", *, raw: bool = False) -> Split:
    """The fixed split of ``name`` in ``view`` (only digits has other views than ``flat``).
    Standardised with the training split's statistics unless ``raw``; a feature constant on
    the training split (digits' corner pixels) is centred and left unscaled."""
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(LOADERS)}")
    if view != "flat" and name != "digits":
        raise ValueError(f"{name} has only the flat view, not {view!r}")
    x, y = _arrays(name)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    cut = int(TRAIN_FRACTION * len(x))
    train, test = order[:cut], order[cut:]
    if not raw:
        mean, std = x[train].mean(axis=0), x[train].std(axis=0)
        x = (x - mean) / np.where(std > 0, std, 1.0)
    shape = VIEWS[view] if name == "digits" else x.shape[1:]
    x = x.reshape((-1, *shape)).astype(np.float32)
    return Split(name, x[train], y[train], x[test], y[test], int(y.max()) + 1)


def input_shape(name: str, view: str = "flat") -> tuple[int, ...]:
    return load(name, view).input_shape


def classes(name: str) -> int:
    return int(_arrays(name)[1].max()) + 1
