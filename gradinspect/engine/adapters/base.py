"""What an adapter says about one layer kind, and the defaults most kinds share.

An adapter is data plus three small functions: which layers are its kind, which trainable
variables an entry of that kind owns (short name -> variable), and how many units its
element-wise activation acts on. The engine does the rest generically: the hook watches the
layer's input (when it is a float tensor), the tape differentiates the loss with respect to the
owned variables, and, where ``activation_hook`` is set, the layer's ``activation`` attribute is
swapped for one that records the pre-activation z, exactly as for Dense.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gradinspect.engine.views import DenseView, PerSampleForm, children

Variables = list[tuple[str, Any]]


def own_variables(layer: Any) -> Variables:
    """Trainable variables the layer created itself (``add_weight``), not its sublayers'."""
    inner = {id(v) for child in children(layer) for v in getattr(child, "weights", [])}
    found = [v for v in getattr(layer, "_trainable_variables", None) or []
             if id(v) not in inner and getattr(v, "trainable", False)]
    return _named(found)


def subtree_variables(layer: Any) -> Variables:
    """Every trainable variable of the layer and its sublayers (a recurrent layer's cell)."""
    return _named([v for v in getattr(layer, "trainable_weights", None) or []
                   if getattr(v, "trainable", False)])


def _named(variables: Sequence[Any]) -> Variables:
    """(short name, variable), short names made unique within the entry (``kernel``,
    ``kernel_1`` ...) in the layer's own order."""
    out: Variables = []
    used: set[str] = set()
    for v in variables:
        base = str(getattr(v, "name", "") or "variable").split("/")[-1].split(":")[0]
        name, k = base, 1
        while name in used or name == "input":  # ``input`` is dL/dinput's key in the report
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        out.append((name, v))
    return out


def last_axis_units(layer: Any) -> int | None:
    """Units an element-wise activation acts on: the channel axis of the layer's output."""
    nodes = getattr(layer, "_inbound_nodes", None) or []
    for node in nodes:
        outputs = getattr(node, "outputs", None) or []
        if outputs and getattr(outputs[0], "shape", None) is not None:
            shape = tuple(outputs[0].shape)
            axis = channel_axis(layer)
            if len(shape) > 1 and shape[axis] is not None:
                return int(shape[axis])
    return None


def channel_axis(layer: Any) -> int:
    """-1 for channels_last (and every non-convolution), 1 for channels_first."""
    return 1 if getattr(layer, "data_format", None) == "channels_first" else -1


def no_dense_view(layer: Any) -> DenseView | None:
    return None


Normalized = tuple[tuple[int, ...], tuple[int, ...]]
"""(axes counted from the end, their sizes): what one statistic of a normalisation layer is
taken over."""


def not_normalizing(layer: Any, input_shape: tuple[int | None, ...]) -> Normalized | None:
    return None


PerSamplePlan = Callable[[Any, "DenseView | None", bool], "PerSampleForm | str | None"]
"""(layer, its Dense view, training) -> its form, the reason it has none, or ``None``: the
exact fallback (``engine.persample.VECTORIZED``)."""


def fallback_form(layer: Any, view: DenseView | None, training: bool) -> PerSampleForm | None:
    return None


def keras_own_call(layer: Any) -> bool:
    """The layer computes what Keras' class computes: its ``call`` is Keras' own (a subclass
    that overrides it takes the exact fallback, not the class's closed form)."""
    return str(getattr(type(layer).call, "__module__", "")).startswith("keras.src.")


@dataclass(frozen=True)
class Adapter:
    """One layer kind."""

    kind: str
    """Stable name of the kind (``dense``, ``conv`` ...): ``layers[].kind`` and ``--kind``."""
    classes: tuple[str, ...]
    """Names in ``keras.layers`` whose instances (and subclasses) are this kind; empty for the
    catch-all ``generic`` kind."""
    variables: Callable[[Any], Variables] = own_variables
    """The trainable variables an entry of this kind owns, by short name."""
    units: Callable[[Any], int | None] = last_axis_units
    """Units of the element-wise activation (``None``: not measured)."""
    activation_hook: bool = False
    """The layer's ``activation`` attribute is the last, element-wise step of its ``call``, so
    z (the pre-activation) can be recorded by swapping it, and saturation measured."""
    owns_subtree: bool = False
    """The entry owns its sublayers' variables (a recurrent layer and its cell): the walker
    does not descend into it."""
    dense_view: Callable[[Any], DenseView | None] = no_dense_view
    """For layers that are a Dense layer in disguise (an EinsumDense contracting the input's
    trailing axes): the view under which ``--verify`` and ``--per-sample`` apply the Dense
    closed forms; ``None`` for a layer that is not."""
    closed_form: str | None = None
    """``--verify``: which closed form checks this kind (``dense``: the Dense identities,
    through ``dense_view`` where the layer is not a Dense), or ``None`` (not available)."""
    per_sample: PerSamplePlan = fallback_form
    """``--per-sample``: the kind's closed form for a layer (``None``: the exact fallback, the
    layer called again on each sample by ``tf.vectorized_map``)."""
    normalized: Callable[[Any, tuple[int | None, ...]], Normalized | None] = not_normalizing
    """(layer, input shape without the batch axis) -> the axes one statistic of the layer is
    taken over and their sizes, for the kinds that normalise (``None``: not one, or not
    known)."""
    note: str = ""
    """One line for the README/``--help`` listing of kinds."""

    def matches(self, layer: Any, keras: Any) -> bool:
        types = tuple(t for t in (getattr(keras.layers, name, None) for name in self.classes)
                      if isinstance(t, type))
        return bool(types) and isinstance(layer, types)
