"""What the layer kinds (``engine.adapters``) and the per-sample engine (``engine.persample``,
``engine.seeding``) share: a layer's direct sublayers, how a layer is a Dense layer in
disguise, and what a per-sample form is and receives. A leaf, so that each imports it without
importing the others (the kinds use the per-sample forms)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def children(layer: Any) -> list[Any]:
    flatten = getattr(layer, "_flatten_layers", None)
    if flatten is not None:
        return list(flatten(include_self=False, recursive=False))
    return list(getattr(layer, "layers", []))


@dataclass(frozen=True)
class DenseView:
    """How a layer is a Dense layer in disguise: x flattened to rows of ``n_in`` entries (the
    contracted trailing axes), the kernel to (``n_in``, ``n_out``), z to rows of ``n_out`` (the
    output's trailing axes ``out_dims``); the bias covers the output axes ``bias_axes``."""

    n_in: int
    n_out: int
    out_dims: tuple[int, ...]
    bias_axes: tuple[int, ...]

    def full_bias(self, bias: Any) -> Any:
        """The bias broadcast over every output axis and flattened to ``n_out`` entries."""
        import numpy as np

        b = np.asarray(bias, dtype=np.float64)
        shape = [d if k in self.bias_axes else 1 for k, d in enumerate(self.out_dims)]
        return np.broadcast_to(b.reshape(shape), self.out_dims).reshape(self.n_out)

    def reduce_bias(self, full: Any) -> Any:
        """dL/db over every output axis (``n_out`` entries) reduced to the bias's axes."""
        import numpy as np

        other = tuple(k for k in range(len(self.out_dims)) if k not in self.bias_axes)
        return np.asarray(full).reshape(self.out_dims).sum(axis=other)


@dataclass
class PerSampleCall:
    """What the step hands a kind's per-sample form: one entry over one batch, every
    gradient that of the per-sample loss terms (the loss scale divided out)."""

    layer: Any
    calls: list[Any]
    """The entry's ``engine.hooks.CallRecord`` of each call, in call order."""
    deltas: list[Any]
    """dL/dz of each call (forms that need ``z``)."""
    gouts: list[list[Any]]
    """dL/doutput of each call's float outputs, in order (forms that need ``gout``)."""
    variables: list[Any]
    """The entry's variables (``tf.Variable``), in the site's order."""
    names: tuple[str, ...]
    """Their short names (``kernel``, ``gamma`` ...), in the same order."""
    view: DenseView | None
    use_bias: bool


@dataclass(frozen=True)
class PerSampleForm:
    """How an entry's per-sample squared gradient norms are computed in the step."""

    method: str
    """Its name (``dense``, ``windows``, ``vectorized`` ...); the report shows the method as
    ``compute`` chose it for the shapes."""
    needs: frozenset[str]
    """What the hooks must keep: ``z`` (dL/dz), ``gout`` (dL/doutput, whole), ``call`` (the
    call's arguments, to call the layer again)."""
    compute: Callable[[Any, PerSampleCall], tuple[Any, str]]
    """(tf, call) -> (||dl_i/dvariables||^2 per sample as a float64 vector, the method as it
    was chosen for these shapes)."""
