"""``einsum_dense``: EinsumDense, including the query/key/value/output projections inside
MultiHeadAttention. Its activation (when set) is element-wise and last, like Dense's. When its
equation contracts the input's trailing axes with the kernel's leading ones (``in = P + C``,
``kernel = C + O``, ``out = P + O``, as every attention projection does), it is a Dense layer on
reshaped tensors, and ``--verify`` and ``--per-sample`` use the Dense closed forms."""

from __future__ import annotations

import re
from typing import Any

from gradinspect.engine.adapters.base import Adapter
from gradinspect.engine.persample import through_view
from gradinspect.engine.views import DenseView


def einsum_view(layer: Any) -> DenseView | None:
    """The Dense view of an EinsumDense layer, or ``None`` when its equation is not of the
    form ``P C, C O -> P O``."""
    equation = str(getattr(layer, "equation", "")).replace(" ", "")
    match = re.fullmatch(r"([a-z.]+),([a-z]+)->([a-z.]+)", equation)
    kernel = getattr(layer, "kernel", None)
    if match is None or kernel is None or "." in equation:
        return None
    lhs, rhs, out = match.groups()
    contracted = "".join(c for c in rhs if c in lhs and c not in out)
    free_out = rhs[len(contracted):]
    prefix = lhs[: len(lhs) - len(contracted)]
    if (not contracted or not lhs.endswith(contracted) or not rhs.startswith(contracted)
            or out != prefix + free_out or len(set(rhs)) != len(rhs)):
        return None
    shape = [int(d) for d in kernel.shape]
    c = len(contracted)
    n_in = 1
    for d in shape[:c]:
        n_in *= d
    out_dims = tuple(shape[c:])
    n_out = 1
    for d in out_dims:
        n_out *= d
    bias_letters = str(getattr(layer, "bias_axes", None) or "")
    if any(letter not in free_out for letter in bias_letters):
        return None  # a bias along an axis the kernel does not produce (the time axis)
    bias_axes = tuple(k for k, letter in enumerate(free_out) if letter in bias_letters)
    return DenseView(n_in=n_in, n_out=n_out, out_dims=out_dims, bias_axes=bias_axes)


ADAPTER = Adapter(
    kind="einsum_dense",
    classes=("EinsumDense",),
    activation_hook=True,
    dense_view=einsum_view,
    closed_form="dense",
    per_sample=through_view,
    note="EinsumDense (attention projections): Dense closed forms when the equation allows",
)
