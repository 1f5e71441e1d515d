"""The tape pass: one step over one batch (of one replica, under a strategy), traced once.

The tape watches only the entries' variables and inputs (so with ``--kind``/``--layer`` the
backward pass stops at the earliest selected entry); the hooks (``engine.hooks``) hand over the
gradients of the loss with respect to every layer input and output (and pre-activation, when
needed) as the backward pass produces them, and activation'(z) comes from a second tape. Inside
the step the variable gradients are added to float64 sums on the device and every other
gradient is reduced to a few figures (``engine.figures``), handed to the host as one small
vector per batch; full tensors only for ``--verify``/``--values``.

Under a ``tf.distribute`` strategy the same step runs once per replica on that replica's rows:
the variables' gradients are all-reduced, and each replica's vector of figures, per-sample rows
and full tensors are all-gathered; the host merges the vectors as each figure declares
(``engine.layout``), so what follows sees one batch, as from one device. How the step is run
(eager, compiled, distributed) is ``engine.runners``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from gradinspect.distribute import first_replica
from gradinspect.engine.figures import (
    GX_MERGES,
    EagerSum,
    Packer,
    axis_last,
    below,
    half_sumsq,
    moving_statistics,
    outside,
    replica_context,
    row_count,
    shape_of,
    tf_variable,
    unit_counts,
    units_last,
    widened,
)
from gradinspect.engine.hooks import CallRecord, Recorder, Slot
from gradinspect.engine.layout import Layout
from gradinspect.engine.persample import form_for, per_sample_sq
from gradinspect.engine.seeding import (
    seed_generators,
)
from gradinspect.engine.views import PerSampleForm
from gradinspect.engine.walk import (
    Site,
)
from gradinspect.losses import Loss


class TracedPass:
    """The state and the body of one step: the sites, the loss, the variables watched and the
    device-side gradient sums; ``_traced`` is what a compiled function (or an eager call)
    runs. ``engine.runners.Probe`` runs it."""

    def __init__(
        self,
        model: Any,
        sites: Sequence[Site],
        loss: Loss,
        *,
        training: bool = False,
        compiled: bool = True,
        verify: bool = False,
        full: bool = False,
        per_sample: bool = False,
        per_sample_rows: int = 1,
        per_sample_budget: int = 1 << 28,
        strategy: Any = None,
        timeout: float | None = None,
    ) -> None:
        from gradinspect._tf import tf_modules

        self.tf, _ = tf_modules()
        self.model = model
        self.sites = list(sites)
        self.loss = loss
        self.training = training
        self.verify = verify
        self.full = full or verify
        self.per_sample = per_sample
        self.order: list[int] = []
        self._slot: Slot | None = None
        self._cm: Any = None
        # Under a tf.distribute strategy every batch is split over the replicas: always one
        # compiled step (strategy.run), merged with the strategy's collectives
        self.strategy = strategy
        self._replicas = (len(strategy.extended.worker_devices) if strategy is not None
                          else 1)
        self._first_replica = first_replica(strategy)
        self._timeout = timeout
        self._compiled = compiled or strategy is not None
        self._steps: dict[bool, Any] = {}
        self._traces: dict[int, tuple[list[int], Layout]] = {}
        """Per tracing thread (one per replica under a strategy): the forward order of the
        sites and the figures' layout its trace fixed."""
        self._generators = seed_generators(model)
        self._layout: Layout = {}
        # --per-sample: each entry's form (engine.persample), or why it has none
        found = {i: form_for(s, training, per_sample_rows, per_sample_budget)
                 for i, s in enumerate(self.sites)} if per_sample else {}
        self.per_sample_forms: dict[int, PerSampleForm] = {
            i: f for i, f in found.items() if isinstance(f, PerSampleForm)}
        self.per_sample_reasons: dict[int, str] = {
            i: f for i, f in found.items() if isinstance(f, str)}
        """Why an entry has no per-sample figure (also a fallback that failed to trace)."""
        self.per_sample_methods: dict[int, str] = {}
        """The method each entry's form chose for its shapes, as traced."""
        needs = {k: frozenset(i for i, f in self.per_sample_forms.items() if k in f.needs)
                 for k in ("z", "gout", "call")}
        self._want_gout, self._want_call = needs["gout"], needs["call"]
        self._want_z = frozenset(i for i, s in enumerate(self.sites) if s.profile is not None
                                 and (self.full or i in needs["z"] or s.saturating_inside))
        self._param_cache: tuple[tuple[float, ...], Any] | None = None
        self._weights: list[tuple[np.ndarray, ...]] | None = None
        self._sums: list[list[Any]] | None = None
        self._tf_vars = [[tf_variable(self.tf, v.variable) for v in s.variables]
                         for s in self.sites]
        # Where activation'(z) is low exactly on two tails of z (relu, relu6, sigmoid, tanh,
        # elu ...), the step counts low entries by comparing z with the tails' bounds instead of
        # differentiating the activation again: one read of z instead of a second tape.
        self._bounded = [s.measured is not None and s.measured.kind not in ("softmax", "linear")
                         and s.measured.tails_only() for s in self.sites]
        # BatchNormalization in inference normalises with its moving statistics: the step
        # measures how well they describe the data it sees
        self._moving = [moving_statistics(s.layer) if not training else None
                        for s in self.sites]

    def _label_ids(self, site: Site, labels: Any, units: int) -> Any:
        """The class id of each row of an output's labels (one-hot or sparse), or ``None``
        when the site is not an output with labels."""
        tf = self.tf
        k = site.output_index
        if labels is None or k is None or k >= len(labels):
            return None
        y = labels[k]
        if y.dtype.is_integer:
            return tf.reshape(tf.cast(y, tf.int64), (-1,))
        if units < 2 or y.shape[-1] != units:
            return None
        return tf.argmax(tf.reshape(y, (-1, units)), axis=1, output_type=tf.int64)

    def reset(self) -> None:
        """Zero the device-side gradient sums (float64 variables for the compiled step; an
        eager step keeps plain tensors and skips creating variables, which costs a single-batch
        run from the command line about 20 ms of first-use setup)."""
        tf = self.tf
        if self._sums is None:  # made at zero: nothing to reset yet
            self._sums = [[tf.Variable(tf.zeros(v.shape, tf.float64), trainable=False)
                           if self._compiled else EagerSum(tuple(int(d) for d in v.shape))
                           for v in vs] for vs in self._tf_vars]
            return
        for total in (t for per in self._sums for t in per):
            if isinstance(total, EagerSum):
                total.value = None
            else:
                total.assign(tf.zeros(total.shape, tf.float64))

    def gradient_sums(self) -> list[tuple[np.ndarray, ...]]:
        """Per site, the gradient of every owned variable (aligned with ``site.variables``)
        summed over the steps since the last reset, in float64."""
        assert self._sums is not None
        return [tuple(t.numpy() for t in per) for per in self._sums]

    def _measured(self, recorder: Recorder,
                  calls: dict[int, list[CallRecord]]) -> dict[int, list[Any]]:
        """Per site, per call, units on the last axis: the measured activation's input (sites
        whose low set is two tails, see ``_bounded``), its derivative there (the others), or
        its output probabilities (softmax). Derivatives come from one second tape for all
        sites (element-wise activations: the gradient of the summed outputs is the
        derivative)."""
        tf = self.tf
        found: dict[int, list[Any]] = {i: [] for i in range(len(self.sites))}
        watched: list[tuple[int, Any, Any]] = []
        for i, site in enumerate(self.sites):
            measured = site.measured
            if measured is None:
                continue
            if site.follower is not None:
                pairs = [(c.x, c.out[0]) for c in recorder.follower_calls.get(i, [])]
                fn = site.follower.layer.call
            else:
                pairs = [(c.z, c.out[0]) for c in calls[i] if c.z is not None and c.out]
                fn = site.layer.activation
            for x, out in pairs:
                if measured.kind == "softmax":
                    found[i].append(units_last(tf, out, site.channel_axis))
                elif self._bounded[i]:
                    found[i].append(units_last(tf, x, site.channel_axis))
                else:
                    watched.append((i, x, fn))
        if watched:
            with tf.GradientTape() as tape:
                outs = []
                for _, x, fn in watched:
                    tape.watch(x)
                    outs.append(fn(x))
            derivatives = tape.gradient(outs, [x for _, x, _ in watched],
                                        unconnected_gradients=tf.UnconnectedGradients.ZERO)
            for (i, _, _), d in zip(watched, derivatives, strict=True):
                found[i].append(units_last(tf, d, self.sites[i].channel_axis))
        return found

    def _add_to_sums(self, grads: list[list[Any]]) -> None:
        tf = self.tf
        assert self._sums is not None
        for sums, gs in zip(self._sums, grads, strict=True):
            for total, g in zip(sums, gs, strict=True):
                if isinstance(total, EagerSum):
                    total.assign_add(tf.convert_to_tensor(g))  # dense, float64 on the host
                elif isinstance(g, tf.IndexedSlices):  # Embedding: only the rows looked up
                    total.scatter_add(tf.IndexedSlices(tf.cast(g.values, tf.float64),
                                                       g.indices, g.dense_shape))
                else:
                    total.assign_add(tf.cast(g, tf.float64))

    def _traced(self, inputs: list[Any], labels: Any, params: Any,
                counting: bool = False) -> dict[str, Any]:
        """One step (of one replica, under a strategy), with a recorder of its own in this
        thread's slot."""
        slot = self._slot
        assert slot is not None, "Probe used outside its context"
        slot.recorder = Recorder(tf=self.tf, want_z=self._want_z, full=self.full,
                                  counting=counting, want_gout=self._want_gout,
                                  want_call=self._want_call)
        try:
            return self._recorded(slot.recorder, inputs, labels, params, counting)
        finally:
            slot.recorder = None

    def _recorded(self, recorder: Recorder, inputs: list[Any], labels: Any, params: Any,
                  counting: bool) -> dict[str, Any]:
        """One step. ``params`` is float32 ``[scale, confidence, low_0 ..., a_0 ..., b_0 ...]``
        (per site: the derivative threshold, and the z bounds of its low tails).
        ``counting``: the same pass, returning only the NaN/Inf counts (and adding nothing
        to the gradient sums). Under a strategy the variables' gradients are all-reduced and
        the figures, per-sample rows and full tensors gathered from every replica, each
        replica doing the same collectives in the same order."""
        tf = self.tf
        scale, confidence, *rest = tf.unstack(params)  # one op, not a slice per figure
        n_sites = len(self.sites)
        low, tail_a, tail_b = (rest[:n_sites], rest[n_sites:2 * n_sites],
                               rest[2 * n_sites:])
        total, var_grads, penalty = self._tape_pass(recorder, inputs, labels, scale)
        calls = {i: recorder.calls.get(i, []) for i in range(len(self.sites))}
        has_xs = [bool(calls[i]) and all(c.x is not None for c in calls[i]) for i in calls]
        order = list(recorder.first_call)
        checked = [t for t in [*inputs, *(labels or [])] if t.dtype.is_floating]
        if counting:
            return self._counted(calls, has_xs, checked, order)
        if self.strategy is None:
            self._add_to_sums(var_grads)
        else:  # every replica gets the sum of all replicas' gradients (the outer step adds it)
            var_grads = replica_context(tf).all_reduce(
                tf.distribute.ReduceOp.SUM, [[tf.convert_to_tensor(g) for g in gs]
                                             for gs in var_grads], options=self._options())
        pack = Packer(tf)
        out_sq = self._pack_inputs(pack, total, inputs, checked)
        if penalty is not None:  # weighted by the batch's rows: their mean over the batches
            pack.add(("penalty",), penalty * tf.cast(tf.shape(inputs[0])[0], penalty.dtype),
                     "sum")
        measured = self._measured(recorder, calls)
        out_sq.update({id(c.out[0]): half_sumsq(tf, c.out[0]) for i in range(len(self.sites))
                       for c in calls[i] if c.out})
        per_sample: dict[int, Any] = {}
        full: dict[int, Any] = {}
        for i, site in enumerate(self.sites):
            cs, has_x = calls[i], has_xs[i]
            self._pack_calls(pack, i, cs, has_x, out_sq)
            self._pack_activity(pack, i, measured[i], labels, confidence,
                                (low[i], tail_a[i], tail_b[i]))
            self._pack_moving(pack, i, cs, has_x)
            has_z = bool(cs) and i in recorder.want_z and all(c.z is not None for c in cs)
            deltas = [c.gz if c.gz is not None else tf.zeros_like(c.z) for c in cs] if has_z \
                else []
            if deltas and site.saturating_inside:  # |dL/dz|, beside |dL/doutput|
                pack.add(("gz_sq", i), tf.add_n([half_sumsq(tf, d) for d in deltas]), "sum")
            form = self.per_sample_forms.get(i)
            if form is not None and cs:
                got = per_sample_sq(tf, site, form, cs, has_x, has_z, deltas, scale,
                                    self._tf_vars[i])
                if isinstance(got, str):
                    self.per_sample_reasons[i] = got
                else:
                    per_sample[i], self.per_sample_methods[i] = got
            if self.full:
                full[i] = self._full_tensors(cs, has_x, has_z, deltas)
        figures, layout = pack.packed()
        self._traces[threading.get_ident()] = (order, layout)
        if self.strategy is None:
            return {"figures": figures, "per_sample": per_sample, "full": full}
        return {"figures": self._gathered(figures[None]), "grads": var_grads,
                "per_sample": {i: self._gathered(v) for i, v in per_sample.items()},
                "full": tf.nest.map_structure(self._gathered_rows, full),
                "labels": ([self._gathered(y) for y in labels]
                           if labels is not None and self.full else None)}

    def _tape_pass(self, recorder: Recorder, inputs: list[Any], labels: Any,
                   scale: Any) -> tuple[Any, Any, Any]:
        """The forward pass under the tape and the backward pass: the scaled loss, the
        gradients of every owned variable (the layers' input, output and pre-activation
        gradients reach the records through the taps while this runs), and the sum of the
        model's ``losses`` (regularisation penalties, ``add_loss``), which Keras adds to the
        training loss and the inspected loss does not hold (``None``: the model has none)."""
        tf = self.tf
        # Only what is inspected is watched: the tape records no op upstream of the earliest
        # selected entry, so a filtered run's backward pass stops there.
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            for vs in self._tf_vars:
                for v in vs:
                    tape.watch(v)
            recorder.tape = tape
            try:
                outputs = self.model(call_structure(self.model, inputs), training=self.training)
            finally:
                recorder.tape = None
            terms = self.loss.terms(tf, tf.nest.flatten(outputs), labels)
            total = tf.reduce_sum(terms)
            total = total * tf.cast(scale, total.dtype)  # float64 and float16 models too
        penalties = [tf.reduce_sum(tf.cast(p, tf.float64)) for p in self.model.losses]
        var_grads = tape.gradient(total, self._tf_vars,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return total, var_grads, tf.add_n(penalties) if penalties else None

    def _counted(self, calls: dict[int, list[CallRecord]], has_xs: list[bool],
                 checked: list[Any], order: list[int]) -> dict[str, Any]:
        """The counting pass's result: NaN/Inf in the inputs and labels, then per call of an
        entry with a float input the counts of its dL/dinput (``figures._counts``)."""
        tf = self.tf
        zero = tf.zeros((), tf.float64)
        fixed = [tf.add_n([zero] + [tf.reduce_sum(tf.cast(~tf.math.is_finite(t), tf.float64))
                                    for t in checked])]
        for i in range(len(self.sites)):
            if has_xs[i]:
                for c in calls[i]:
                    fixed += [tf.cast(v, tf.float64) for v in (c.gx or [zero] * 3)]
        self._traces[threading.get_ident()] = (order, {})
        return {"counts": self._gathered(tf.stack(fixed)[None])}

    def _pack_inputs(self, pack: Packer, total: Any, inputs: list[Any],
                     checked: list[Any]) -> dict[int, Any]:
        """The loss, the sums of the checked inputs and labels (NaN/Inf show there), and the
        forward statistics of each float model input; returns the inputs' half sums of squares
        by tensor id (an entry's input is often a model input: taken once)."""
        tf = self.tf
        pack.add(("loss",), total, "sum")
        for k, t in enumerate(checked):
            pack.add(("input_sum", k), tf.reduce_sum(t), "sum")
        out_sq: dict[int, Any] = {}
        for k, t in enumerate(inputs):
            if t.dtype.is_floating:
                wide = widened(tf, t)
                out_sq[id(t)] = half_sumsq(tf, wide)
                pack.add(("input_stats", k), tf.stack([
                    tf.reduce_min(wide), tf.reduce_max(wide), tf.reduce_sum(wide),
                    tf.cast(out_sq[id(t)], wide.dtype)]), ("min", "max", "sum", "sum"))
        return out_sq

    def _pack_calls(self, pack: Packer, i: int, cs: list[CallRecord], has_x: bool,
                    out_sq: dict[int, Any]) -> None:
        """Per call of entry ``i``: shapes, the forward signal (sums of squares of input and
        output: shared with the entry whose output this input is) and the reduced input and
        output gradients."""
        tf = self.tf
        for j, c in enumerate(cs):
            if has_x:
                pack.add(("x_shape", i, j), shape_of(tf, c.x), "rows")
                shared = out_sq.get(id(c.x_source))
                pack.add(("x_sq", i, j), shared if shared is not None
                         else half_sumsq(tf, c.x), "sum")
                g_x = c.gx or [tf.zeros((), c.x.dtype)] * 3  # the loss never reached it
                for n, value in enumerate(g_x):
                    pack.add(("gx", i, j, n), value, GX_MERGES[n])
            if c.out:
                pack.add(("out_shape", i, j), shape_of(tf, c.out[0]), "rows")
                pack.add(("out_sq", i, j), out_sq[id(c.out[0])], "sum")
            pack.add(("gout", i, j), tf.add_n(c.gout_sq) if c.gout_sq
                     else tf.zeros((), tf.float32), "sum")

    def _pack_activity(self, pack: Packer, i: int, measured: list[Any], labels: Any,
                       confidence: Any, bounds: tuple[Any, Any, Any]) -> None:
        """Entry ``i``'s activation: confident rows of a softmax (and, with labels, the
        confident wrong ones), or per unit the entries whose derivative is low (by the z
        bounds of its low tails where it has them: ``bounds`` = low, tail a, tail b)."""
        tf = self.tf
        site = self.sites[i]
        profile = site.measured
        units = site.units or 1
        low, tail_a, tail_b = bounds
        if not measured:
            return
        if profile is not None and profile.kind == "softmax":
            probs = [tf.reshape(widened(tf, p), (-1, units)) for p in measured]
            confident_rows = [tf.reduce_max(p, axis=1) >= tf.cast(confidence, p.dtype)
                              for p in probs]
            pack.add(("confident", i), tf.add_n([tf.reduce_sum(tf.cast(c, tf.int32))
                                                 for c in confident_rows]), "sum")
            pack.add(("rows", i), tf.add_n([tf.shape(p)[0] for p in probs]), "sum")
            ids = self._label_ids(site, labels, units)
            if ids is not None and len(probs) == 1:
                wrong = tf.logical_and(confident_rows[0], tf.argmax(
                    probs[0], axis=1, output_type=tf.int64) != ids)
                pack.add(("confident_wrong", i), tf.reduce_sum(tf.cast(wrong, tf.int32)),
                         "sum")
            return
        if self._bounded[i]:
            lows = [outside(tf, z, tail_a, tail_b) for z in measured]
        else:
            lows = [below(tf, widened(tf, d), low) for d in measured]
        pack.add(("low_per_unit", i), tf.add_n([unit_counts(tf, m) for m in lows]), "sum")
        pack.add(("rows", i), row_count(tf, lows), "sum")

    def _pack_moving(self, pack: Packer, i: int, cs: list[CallRecord], has_x: bool) -> None:
        """BatchNormalization in inference: per channel, the sum of (x - moving_mean)^2."""
        tf = self.tf
        moving = self._moving[i]
        if moving is None or not has_x:
            return
        mean, _, axis = moving
        mean = tf_variable(tf, mean)
        # two kernels per call (a fused squared difference, one reduction): an eager step
        # pays per op, and a MobileNet has 52 of these layers
        moments = []
        for c in cs:
            x = axis_last(tf, widened(tf, c.x), axis)
            m = mean if mean.dtype == x.dtype else tf.cast(mean, x.dtype)
            moments.append(tf.reduce_sum(tf.math.squared_difference(x, m),
                                         axis=list(range(len(x.shape) - 1))))
        pack.add(("moving_moment", i), tf.add_n(moments) if len(moments) > 1 else moments[0],
                 "sum")

    def _full_tensors(self, cs: list[CallRecord], has_x: bool, has_z: bool,
                      deltas: list[Any]) -> dict[str, list[Any]]:
        """``full`` (``--verify``/``--values``): every call's tensors, with a static empty
        stand-in for what a call does not have."""
        tf = self.tf
        empty = tf.zeros((0,))
        return {
            "x": [c.x if has_x else empty for c in cs],
            "z": [c.z if has_z else empty for c in cs],
            "out": [c.out[0] if c.out else empty for c in cs],
            "g_out": [(c.gout_full if c.gout_full is not None
                       else tf.zeros_like(c.out[0])) if c.out else empty for c in cs],
            "g_z": deltas if has_z else [empty for _ in cs],
            "g_x": [(c.gx_full if c.gx_full is not None else tf.zeros_like(c.x))
                    if has_x else empty for c in cs],
        }

    def _options(self) -> Any:
        """The collectives' options: a timeout, so a worker that died is an error, not a
        hang."""
        return (self.tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=self._timeout) if self._timeout else None)

    def _gathered(self, t: Any) -> Any:
        """``t`` of every replica (every worker's included), concatenated along axis 0 in
        replica order; ``t`` itself without a strategy."""
        if self.strategy is None:
            return t
        # an identity first: a tensor every replica shares (captured from outside the
        # replica function) would be gathered once instead of once per replica
        return replica_context(self.tf).all_gather(self.tf.identity(t), axis=0,
                                                    options=self._options())

    def _gathered_rows(self, t: Any) -> Any:
        """A full tensor of every replica; the static empty stand-in for a tensor a call does
        not have stays as it is (all-gathering a tensor of static size 0 crashes TensorFlow
        2.21's local collectives)."""
        if t.shape.rank == 1 and t.shape[0] == 0:
            return t
        return self._gathered(t)


def call_structure(model: Any, inputs: list[Any]) -> Any:
    """The model's inputs in the structure it was built with: a dict keyed by input name for a
    model built on ``{"token_ids": ..., "padding_mask": ...}`` (keras-hub backbones and tasks),
    any nesting a functional model declares, else one tensor or the flat list. ``inputs`` are
    in the order of ``model.inputs``, which is that structure flattened."""
    from keras import tree

    struct = getattr(model, "_inputs_struct", None)
    nested = isinstance(struct, dict) or (
        isinstance(struct, list | tuple)
        and any(isinstance(s, dict | list | tuple) for s in struct))
    if nested:
        try:
            return tree.pack_sequence_as(struct, inputs)
        except (ValueError, TypeError):
            pass  # a structure that does not take these inputs: Keras says why below
    return inputs if len(inputs) > 1 else inputs[0]
