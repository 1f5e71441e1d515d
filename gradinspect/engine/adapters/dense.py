"""``dense``: Dense and its subclasses. The best-served kind: the closed forms
z = xW + b, dL/dW = xᵀδ, dL/db = Σδ, dL/dx = δWᵀ are checked by ``--verify``, and per-sample
norms come from the same pass."""

from __future__ import annotations

from typing import Any

from gradinspect.engine.adapters.base import Adapter, Variables
from gradinspect.engine.persample import through_view
from gradinspect.engine.views import DenseView


def dense_variables(layer: Any) -> Variables:
    """``kernel`` (the stored variable behind a quantized/LoRA kernel property) and ``bias``."""
    kernel = getattr(layer, "_kernel", None)
    if kernel is None:
        kernel = layer.kernel
    found: Variables = []
    if getattr(kernel, "trainable", False):
        found.append(("kernel", kernel))
    bias = getattr(layer, "bias", None)
    if bias is not None and getattr(bias, "trainable", False):
        found.append(("bias", bias))
    return found


def dense_view(layer: Any) -> DenseView | None:
    kernel = getattr(layer, "_kernel", None)
    if kernel is None:
        kernel = layer.kernel
    n_in, n_out = (int(d) for d in kernel.shape)
    return DenseView(n_in=n_in, n_out=n_out, out_dims=(n_out,), bias_axes=(0,))


ADAPTER = Adapter(
    kind="dense",
    dense_view=dense_view,
    classes=("Dense",),
    variables=dense_variables,
    units=lambda layer: int(layer.units),
    activation_hook=True,
    closed_form="dense",
    per_sample=through_view,
    note="Dense: closed-form --verify and --per-sample",
)
