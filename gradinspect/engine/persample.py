"""Per-sample squared gradient norms, inside the step: ||dl_i/dvariables||^2 of every entry for
every sample i, where l_i is the sample's term of the loss.

Each kind's adapter names its form (``Adapter.per_sample``): a closed form on what the hooks
already hold (Dense and EinsumDense: x and dL/dz; convolutions: kernel windows of x and
dL/dz; Embedding: ids and dL/doutput; normalisations: x and dL/doutput), or ``None`` for the
exact fallback here, ``VECTORIZED``: the layer called again on each sample alone by
``tf.vectorized_map``, with the sample's dL/doutput, and differentiated (``LOOPED``: one sample
after another, for recurrent layers). The fallback is exact for every layer whose output row
depends on its input row only, which is every layer but BatchNormalization in training
(refused before the pass); its cost is the per-sample gradients themselves (batch x
parameters), so an entry whose per-sample gradients would not fit the memory budget is "not
available", with the figure.

The closed forms share ``rows_sq``: one sample's gradient of a Dense view is X_i^T D_i (rows of
x by rows of dL/dz), and its squared norm is taken the cheaper way for the shapes: row norms
when a sample is one row; the Gram form <X_i X_i^T, D_i D_i^T> when a sample has r rows and
``gram_is_cheaper`` (r^2 <= n_in x n_out); the product X_i^T D_i otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from gradinspect.engine.figures import widened
from gradinspect.engine.views import DenseView, PerSampleCall, PerSampleForm


def _rows(tf: Any, t: Any, batch: Any, width: int) -> Any:
    """(batch, positions, width): calls and positions of one sample become its rows. The
    positions are counted, not inferred (-1): a replica's share of a batch may be empty."""
    positions = tf.reduce_prod(tf.shape(t)[1:]) // width
    return tf.reshape(tf.cast(t, tf.float64), tf.stack([batch, positions, width]))


def gram_is_cheaper(rows: int, n_in: int, n_out: int) -> bool:
    """The Gram form (rows x rows per sample) holds no more numbers than the per-sample
    product (n_in x n_out): the rule every closed form with rows follows."""
    return rows * rows <= n_in * n_out


def rows_sq(tf: Any, xs: Sequence[Any], deltas: Sequence[Any], bias: DenseView | None,
            n_in: int, n_out: int) -> tuple[Any, str]:
    """||X_i^T D_i||_F^2 (+ ||dl_i/db||^2 when ``bias``) per sample, on a Dense view: x as rows
    of ``n_in``, dL/dz as rows of ``n_out`` (every call's rows of a sample together), and
    which way it was taken (``row norms``, ``gram``, ``product``)."""
    batch = tf.shape(xs[0])[0]
    full_bias = bias is None or len(bias.bias_axes) == len(bias.out_dims)
    if len(xs) == 1 and len(xs[0].shape) == 2 and len(deltas[0].shape) == 2 and full_bias:
        # row norms in the tensors' precision (one row is short) by one fused kernel (no
        # squared copy: x is the batch's largest tensor), squared and multiplied in float64
        xx, dd = (tf.square(tf.cast(tf.math.reduce_euclidean_norm(widened(tf, t), axis=1),
                                    tf.float64)) for t in (xs[0], deltas[0]))
        return dd * (xx + (1.0 if bias is not None else 0.0)), "row norms"
    big_x = tf.concat([_rows(tf, x, batch, n_in) for x in xs], axis=1)
    big_d = tf.concat([_rows(tf, d, batch, n_out) for d in deltas], axis=1)
    rows = sum(int(np.prod(x.shape[1:], dtype=np.int64)) // n_in
               if all(v is not None for v in x.shape[1:]) else 10**9 for x in xs)
    if gram_is_cheaper(rows, n_in, n_out):
        gx = tf.einsum("bri,bsi->brs", big_x, big_x)
        gd = tf.einsum("bro,bso->brs", big_d, big_d)
        sq, how = tf.reduce_sum(gx * gd, axis=[1, 2]), "gram"
    else:
        per = tf.einsum("bri,bro->bio", big_x, big_d)
        sq, how = tf.reduce_sum(per * per, axis=[1, 2]), "product"
    if bias is not None:
        s = tf.reduce_sum(big_d, axis=1)  # dl_i/db over every output entry
        other = [1 + k for k in range(len(bias.out_dims)) if k not in bias.bias_axes]
        if other:  # a bias over some output axes only: sum the others away
            s = tf.reduce_sum(tf.reshape(s, (batch, *bias.out_dims)), axis=other)
            s = tf.reshape(s, (batch, math.prod(
                d for k, d in enumerate(bias.out_dims) if k in bias.bias_axes)))
        sq = sq + tf.reduce_sum(s * s, axis=1)
    return sq, how


def dense_rows(tf: Any, call: PerSampleCall) -> tuple[Any, str]:
    """Dense and EinsumDense through their Dense view."""
    view = call.view
    assert view is not None
    return rows_sq(tf, [c.x for c in call.calls], call.deltas,
                   view if call.use_bias else None, view.n_in, view.n_out)


DENSE = PerSampleForm(method="dense", needs=frozenset({"z"}), compute=dense_rows)
"""The Dense closed form, for kinds with a Dense view."""


def through_view(layer: Any, view: DenseView | None, training: bool) -> PerSampleForm | None:
    """The Dense closed form where the layer has a Dense view, else the fallback."""
    return DENSE if view is not None else None


def _batched(tf: Any, t: Any, batch: Any) -> bool:
    """Whether an argument of the call carries the batch on its first axis (the input's
    leading size, static or both unknown)."""
    if not isinstance(t, tf.Tensor) or t.shape.rank is None or t.shape.rank == 0:
        return False
    return bool(t.shape[0] == batch) if batch is not None else t.shape[0] is None


def vectorized(tf: Any, call: PerSampleCall, looped: bool = False) -> tuple[Any, str]:
    """The exact fallback: per sample, the layer called on that sample alone (its arguments
    that carry the batch sliced, the others as they were), the sum of outputs times the
    sample's dL/doutput differentiated with respect to the entry's variables, and the squared
    norm of that, summed over the entry's calls first. ``tf.vectorized_map`` runs it over the
    batch as one computation (ops it cannot vectorise run in a loop over the samples)."""
    elems: list[Any] = []
    rebuilt: list[tuple[Any, Any, list[int | None], int]] = []
    for c, gouts in zip(call.calls, call.gouts, strict=True):
        fn, structure = c.call
        leaves = tf.nest.flatten(structure)
        first = next((t for t in tf.nest.flatten(structure[0]) if isinstance(t, tf.Tensor)),
                     None)
        batch = first.shape[0] if first is not None and first.shape.rank else None
        slots: list[int | None] = []
        for t in leaves:
            if _batched(tf, t, batch):
                slots.append(len(elems))
                elems.append(t)
            else:
                slots.append(None)
        rebuilt.append((fn, structure, slots, len(elems)))
        elems.extend(gouts)
    variables = call.variables

    def one(sample: list[Any]) -> Any:
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            for v in variables:
                tape.watch(v)
            terms = []
            for (fn, structure, slots, start), gouts in zip(rebuilt, call.gouts, strict=True):
                leaves = [sample[k][None] if k is not None else t
                          for k, t in zip(slots, tf.nest.flatten(structure), strict=True)]
                inputs, args, kwargs = tf.nest.pack_sequence_as(structure, leaves)
                outs = [t for t in tf.nest.flatten(fn(inputs, *args, **kwargs))
                        if isinstance(t, tf.Tensor) and t.dtype.is_floating]
                for out, g in zip(outs, sample[start:start + len(gouts)], strict=True):
                    o = widened(tf, out)
                    terms.append(tf.reduce_sum(o * tf.cast(g[None], o.dtype)))
            total = tf.add_n(terms)
        grads = tape.gradient(total, variables,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return tf.add_n([tf.reduce_sum(tf.square(tf.cast(tf.convert_to_tensor(g), tf.float64)))
                         for g in grads])

    if looped:  # one sample after another (the recurrent kinds: pfor's lists of a while
        # loop do not take every shape); a batch of no rows runs no step
        def loop() -> Any:
            return tf.map_fn(one, elems, fn_output_signature=tf.float64)

        # an eager step traces the loop once instead of running every sample's recurrence op
        # by op (a BiLSTM over 64 steps: 12 s for 32 samples eagerly)
        return (tf.function(loop)() if tf.executing_eagerly() else loop()), "loop over samples"

    def run() -> Any:
        return tf.vectorized_map(one, elems, fallback_to_while_loop=True, warn=False)

    if tf.executing_eagerly():
        return run(), "vectorized"
    # a replica's share of a batch may be empty: its loop over no samples is not run
    empty = tf.zeros((0,), tf.float64)
    return tf.cond(tf.shape(elems[0])[0] > 0, run, lambda: empty), "vectorized"


def looped(tf: Any, call: PerSampleCall) -> tuple[Any, str]:
    """The fallback one sample at a time (``tf.map_fn``)."""
    return vectorized(tf, call, looped=True)


LOOPED = PerSampleForm(method="loop over samples", needs=frozenset({"gout", "call"}),
                       compute=looped)
"""The exact fallback as a loop over the samples: layers with a loop of their own."""


VECTORIZED = PerSampleForm(method="vectorized", needs=frozenset({"gout", "call"}),
                           compute=vectorized)
"""The exact fallback, for every kind without a closed form (and layers a closed form does not
take)."""


def form_for(site: Any, training: bool, rows: int, budget: int) -> PerSampleForm | str:
    """The form that computes ``site``'s per-sample norms, or why there is none. ``rows``:
    the samples of a batch; ``budget``: the bytes the fallback's per-sample gradients may
    take."""
    form: PerSampleForm | str | None = site.adapter.per_sample(site.layer, site.dense_view,
                                                                training)
    if isinstance(form, str):
        return form
    if form is not None and "z" in form.needs and site.profile is None:
        form = None  # no activation to tap z at (a layer built without one): the fallback
    form = form or VECTORIZED
    if "call" not in form.needs:
        return form
    # the fallbacks call the layer again and hold the batch's per-sample gradients
    if training and _stateful(site.layer):
        return ("its call draws random numbers or updates state in training mode, so a "
                "second call is not the first; run without --training")
    need = 2 * rows * site.params * 4
    if need > budget:
        return (f"per-sample gradients of {site.params:,} parameters x {rows} samples take "
                f"{need / 2**20:,.0f} MiB, over the budget of {budget / 2**20:,.0f} MiB; "
                "lower --batch-size or raise --memory-budget")
    return form


def _stateful(layer: Any) -> bool:
    from gradinspect.engine.seeding import seed_generators

    return bool(seed_generators(layer)) or bool(getattr(layer, "non_trainable_weights", None))


def per_sample_sq(tf: Any, site: Any, form: PerSampleForm, calls: list[Any], has_x: bool,
                  has_z: bool, deltas: list[Any], scale: Any,
                  variables: list[Any]) -> tuple[Any, str] | str:
    """Entry ``site``'s per-sample squared norms by ``form`` and the method chosen, or why
    there are none (what the form needs did not reach the hooks, or the layer could not be
    called again on one sample)."""
    if "z" in form.needs and not (has_x and has_z):
        return "the closed form needs a float input and the pre-activation"
    if form.needs == frozenset({"gout"}) and not has_x:
        return "the closed form needs a float input"
    if "call" in form.needs and any(c.call is None for c in calls):
        return "a call the hooks did not see whole"
    gouts = []
    for c in calls:
        found = c.gouts or {}
        gouts.append([found[k] / tf.cast(scale, found[k].dtype) if k in found
                      else tf.zeros_like(o) for k, o in enumerate(c.out)])
    call = PerSampleCall(layer=site.layer, calls=calls,
                         deltas=[d / tf.cast(scale, d.dtype) for d in deltas], gouts=gouts,
                         variables=variables, names=tuple(v.name for v in site.variables),
                         view=site.dense_view, use_bias=site.use_bias)
    try:
        sq, method = form.compute(tf, call)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        return f"{form.method} failed ({type(e).__name__}: {first})"
    return sq, method
