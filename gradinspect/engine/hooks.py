"""The hooks: every entry's ``call`` replaced, on the instance only, by a wrapper that taps its
input, pre-activation and outputs, so the gradients reaching them are reduced on the spot.

How a hook works. The wrapper (1) passes the layer's input, when that is a float tensor,
through an identity whose gradient hands dL/dinput to the recorder, and watches it, so
dL/dinput is this layer's own share even when the same tensor feeds several layers, and (2) for
kinds whose ``activation`` is their last, element-wise step (Dense, EinsumDense, convolutions),
swaps the activation for a function that records the pre-activation z and then applies the
original. The layer's own ``call`` still does all the arithmetic, so the model computes exactly
what it computed before. Everything is undone in ``finally``. Each pass (each replica's, under
a strategy) records into a recorder of its own, found in a thread-local slot."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from gradinspect.engine.figures import half_sumsq, nonfinite_counts, reductions
from gradinspect.engine.walk import (
    Site,
)


@dataclass
class CallRecord:
    x: Any = None
    x_source: Any = None
    """The input as the layer received it (before the tap): often another entry's output."""
    z: Any = None
    out: list[Any] = field(default_factory=list)
    gx: list[Any] | None = None
    """dL/dx reduced during the backward pass (``reductions``; ``nonfinite_counts`` when
    counting)."""
    gx_full: Any = None
    gout_sq: list[Any] = field(default_factory=list)
    """||dL/doutput||^2 of each float output that the loss reached."""
    gout_full: Any = None
    gz: Any = None
    """dL/dz (delta), when asked for."""
    gouts: dict[int, Any] | None = None
    """dL/doutput of each float output by position, whole (kept for per-sample forms that
    need it; ``None`` otherwise)."""
    call: tuple[Any, Any] | None = None
    """(the layer's own ``call``, (inputs, args, kwargs)): what this call was, so that a
    per-sample form can make it again on one sample (kept when asked for)."""


@dataclass
class Recorder:
    """Collects the symbolic tensors of one trace, per site index, in call order, and the
    gradients that reach them during the backward pass (through ``tap``)."""

    tf: Any = None
    tape: Any = None
    calls: dict[int, list[CallRecord]] = field(default_factory=dict)
    first_call: list[int] = field(default_factory=list)
    follower_calls: dict[int, list[CallRecord]] = field(default_factory=dict)
    want_z: frozenset[int] = frozenset()
    """Sites whose dL/dz (delta) is kept: per-sample norms, --verify, --values."""
    want_gout: frozenset[int] = frozenset()
    """Sites whose dL/doutput is kept whole (per-sample forms)."""
    want_call: frozenset[int] = frozenset()
    """Sites whose call arguments are kept (the per-sample fallback calls the layer again)."""
    full: bool = False
    counting: bool = False

    def new_call(self, index: int) -> CallRecord:
        record = CallRecord()
        if index not in self.calls:
            self.calls[index] = []
            self.first_call.append(index)
        self.calls[index].append(record)
        return record

    def tap(self, t: Any, record: CallRecord, role: str) -> Any:
        """``t`` through an identity whose gradient hands dL/dt to ``record`` as the backward
        pass produces it: reduced on the spot (kept whole only when ``full``), so no layer's
        input or output gradient outlives its use, as in a plain tape."""
        tf = self.tf

        @tf.custom_gradient  # type: ignore[untyped-decorator]
        def identity(v: Any) -> Any:
            def grad(dy: Any) -> Any:
                self._receive(record, role, dy)
                return dy

            # custom_gradient wraps what it returns in an identity op of its own
            return v, grad

        return identity(t)

    def _receive(self, record: CallRecord, role: str, dy: Any) -> None:
        tf = self.tf
        if role == "x":
            record.gx = nonfinite_counts(tf, dy) if self.counting else reductions(tf, dy)
            if self.full:
                record.gx_full = dy
        elif role == "z":
            record.gz = dy
        else:
            position = int(role[3:])
            if self.full and position == 0:
                record.gout_full = dy
            if record.gouts is not None:
                record.gouts[position] = dy
            record.gout_sq.append(half_sumsq(tf, dy))


def _replace_call(layer: Any, hooked: Any) -> Any:
    """Put ``hooked`` in place of ``layer.call`` on this instance only; return the undo."""
    had_instance_call = "call" in vars(layer)
    original_call = vars(layer).get("call")
    layer.call = hooked

    def undo() -> None:
        if had_instance_call:
            layer.call = original_call
        else:
            vars(layer).pop("call", None)

    return undo


KERAS_TENSOR_ATTRS = ("_keras_mask", "_keras_logits")
"""Attributes Keras sets on a layer's output that later layers and losses read."""


def _float_tensor(tf: Any, t: Any) -> bool:
    return isinstance(t, tf.Tensor) and t.dtype.is_floating


class Slot(threading.local):
    """The recorder of the pass running in this thread. Under ``tf.distribute`` every replica
    traces the model in a thread of its own, each with its own recorder: hooks read the
    recorder from here, so no hook state is shared by replicas."""

    recorder: Recorder | None = None


def _install(tf: Any, index: int, site: Site, slot: Slot) -> Any:
    layer = site.layer
    original_call = layer.call
    hook_activation = site.profile is not None
    original_activation: Any = layer.activation if hook_activation else None

    @functools.wraps(original_call)
    def hooked_call(inputs: Any, *args: Any, **kwargs: Any) -> Any:
        recorder = slot.recorder
        if recorder is None or recorder.tape is None:  # outside the probe's pass: leave it
            return original_call(inputs, *args, **kwargs)
        record = recorder.new_call(index)
        if index in recorder.want_call:
            record.call = (original_call, (inputs, args, kwargs))
        if index in recorder.want_gout:
            record.gouts = {}
        x = inputs
        if _float_tensor(tf, inputs):
            recorder.tape.watch(inputs)  # the backward pass reaches this input, no further
            x = recorder.tap(inputs, record, "x")
            record.x = x
            record.x_source = inputs
        if not hook_activation:
            out = original_call(x, *args, **kwargs)
        else:
            def capture(z: Any) -> Any:
                record.z = z
                if index in recorder.want_z:
                    z = recorder.tap(z, record, "z")
                return original_activation(z)

            layer.activation = capture
            try:
                out = original_call(x, *args, **kwargs)
            finally:
                layer.activation = original_activation
        flat = tf.nest.flatten(out)
        tapped = []
        for t in flat:
            if _float_tensor(tf, t):
                new = recorder.tap(t, record, f"out{len(record.out)}")
                # what Keras hangs on the tensor travels with it: the mask, and the logits a
                # softmax/sigmoid keeps (Keras 3 losses compute from them)
                for attr in KERAS_TENSOR_ATTRS:
                    value = getattr(t, attr, None)
                    if value is not None:
                        setattr(new, attr, value)
                record.out.append(new)
                tapped.append(new)
            else:
                tapped.append(t)
        return tf.nest.pack_sequence_as(out, tapped)

    restore_call = _replace_call(layer, hooked_call)

    def undo() -> None:
        if hook_activation:
            layer.activation = original_activation
        restore_call()

    return undo


def _install_follower(index: int, layer: Any, slot: Slot) -> Any:
    original_call = layer.call

    @functools.wraps(original_call)
    def hooked_call(inputs: Any, *args: Any, **kwargs: Any) -> Any:
        out = original_call(inputs, *args, **kwargs)
        recorder = slot.recorder
        if recorder is not None and recorder.tape is not None:
            recorder.follower_calls.setdefault(index, []).append(
                CallRecord(x=inputs, out=[out]))
        return out

    return _replace_call(layer, hooked_call)


@contextmanager
def instrumented(tf: Any, sites: Sequence[Site]) -> Iterator[Slot]:
    """Hooks on every site for the duration of the block; always removed on exit. A pass
    records by putting a recorder in the slot for its thread."""
    slot = Slot()
    undos = []
    try:
        for i, site in enumerate(sites):
            undos.append(_install(tf, i, site, slot))
            if site.follower is not None:
                undos.append(_install_follower(i, site.follower.layer, slot))
        yield slot
    finally:
        for undo in reversed(undos):
            undo()
