"""Running the step: eagerly (one small batch: cheaper than tracing), as one compiled
``tf.function`` whose batch axis is left open, or under a ``tf.distribute`` strategy
(``strategy.run`` over contiguous shares of the batch); unpacking the figures into captures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from gradinspect.distribute import share
from gradinspect.engine.captures import BatchCapture, CallCapture, CallSummary, LayerCapture
from gradinspect.engine.figures import (
    COUNT_MERGES,
    DOUBLE_LAST,
    batch_tensor,
    replica_context,
    what_keras_said,
)
from gradinspect.engine.gradcheck import fd_derivative
from gradinspect.engine.hooks import instrumented
from gradinspect.engine.layout import Layout, merge_counts, merge_rows
from gradinspect.engine.seeding import (
    generator_states,
    set_generator_states,
)
from gradinspect.engine.step import TracedPass
from gradinspect.engine.walk import (
    Site,
    layer_classes,
)
from gradinspect.errors import ModelLoadError, ProbeError


class Probe(TracedPass):
    """A hooked forward/backward step over batches of one model, compiled with ``tf.function``
    (or run eagerly: cheaper for a single small batch than tracing).

    Use as a context manager: hooks are installed on enter and removed on exit, whatever
    happens in between. The step reduces everything it can on the device — gradient norms,
    maxima, NaN/Inf counts, saturated/dead unit counts, per-sample norms — and hands one small
    vector of figures to the host per batch; every owned variable's gradient is summed across
    batches on the device in float64 (``gradient_sums``, zeroed on enter and by ``reset``); full
    tensors cross only when ``full`` (``--verify``/``--values``). ``order`` is the forward order
    of the sites (by first call).
    """

    def __enter__(self) -> Probe:
        self._weights = None
        self.reset()
        self._cm = instrumented(self.tf, self.sites)
        self._slot = self._cm.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        cm, self._cm = self._cm, None
        if cm is not None:
            cm.__exit__(*exc)

    def _compile(self, tensors: list[Any], labels: list[Any] | None, params: Any,
                 counting: bool = False) -> Any:
        """One trace for every batch size: the batch axis is left open in the signature, so
        a last partial batch does not trace the graph again. The concrete function is called
        directly (no signature matching per batch)."""
        tf = self.tf

        def spec(t: Any) -> Any:
            return tf.TensorSpec((None, *t.shape[1:]), t.dtype)

        signature = [[spec(t) for t in tensors],
                     [spec(y) for y in labels] if labels is not None else None,
                     tf.TensorSpec(params.shape, params.dtype)]
        if self.strategy is not None:
            return self._compile_distributed(signature, counting)

        def traced(inputs: list[Any], labels: Any, params: Any) -> dict[str, Any]:
            return self._traced(inputs, labels, params, counting=counting)

        step = tf.function(traced, autograph=False).get_concrete_function(*signature)
        self._adopt_trace()
        return step

    def _compile_distributed(self, signature: list[Any], counting: bool) -> Any:
        """The step under ``self.strategy``: ``strategy.run`` gives each local replica its
        contiguous share of this worker's batch (rows ``bounds[r]:bounds[r + 1]``); every
        replica runs the same hooked pass and the same collectives, so each holds the merged
        results, and the step returns the first local replica's."""
        tf = self.tf
        strategy, first = self.strategy, self._first_replica

        def outer(inputs: list[Any], labels: Any, params: Any, bounds: Any) -> dict[str, Any]:
            def replica() -> dict[str, Any]:
                r = replica_context(tf).replica_id_in_sync_group - first
                lo, hi = bounds[r], bounds[r + 1]
                return self._traced([t[lo:hi] for t in inputs],
                                    [y[lo:hi] for y in labels] if labels is not None else None,
                                    params, counting=counting)

            result: dict[str, Any] = strategy.experimental_local_results(strategy.run(replica))[0]
            if not counting:
                self._add_to_sums(result.pop("grads"))
            return result

        step = tf.function(outer, autograph=False).get_concrete_function(
            *signature, tf.TensorSpec((self._replicas + 1,), tf.int32))
        self._adopt_trace()
        return step

    def _adopt_trace(self) -> None:
        """The order and layout the trace fixed (every replica's must be the same)."""
        traces = list(self._traces.values())
        self._traces = {}
        if not traces:
            return
        order, layout = traces[0]
        if any(o != order or (lay and lay.keys() != layout.keys()) for o, lay in traces[1:]):
            raise ProbeError("the replicas traced different passes",
                             "run without --distribute, and report this as a bug")
        self.order = order
        if layout:
            self._layout = layout

    def _param_tensor(self, scale: float, lows: Sequence[float], confidence: float) -> Any:
        """``[scale, confidence, *lows, *tail_a, *tail_b]`` as one tensor, made again only
        when they change."""
        bounds = [self._tail_bounds(i, low) for i, low in enumerate(lows)]
        key = (float(scale), float(confidence), *(float(v) for v in lows),
               *(a for a, _ in bounds), *(b for _, b in bounds))
        if self._param_cache is None or self._param_cache[0] != key:
            self._param_cache = (key, self.tf.constant(key, self.tf.float32))
        return self._param_cache[1]

    def _tail_bounds(self, i: int, low: float) -> tuple[float, float]:
        """Site ``i``'s low tails for the derivative threshold ``low`` (unused: +-inf)."""
        measured = self.sites[i].measured
        if not self._bounded[i] or measured is None or not measured.peak:
            return -math.inf, math.inf
        fraction = low / measured.peak
        bounds = measured.tail_bounds(fraction) or measured.tail_bounds(fraction, strict=False)
        return bounds if bounds is not None else (-math.inf, math.inf)

    def _run(self, counting: bool, tensors: list[Any], labels: list[Any] | None,
             params: Any, bounds: Any = None) -> dict[str, Any]:
        tf = self.tf
        try:
            if not self._compiled:
                eager = self._traced(tensors, labels, params, counting=counting)
                self._adopt_trace()
                return eager
            if counting not in self._steps:  # tracing runs the model: its errors are the pass's
                self._steps[counting] = self._compile(tensors, labels, params, counting)
            args = (tensors, labels, params) + ((bounds,) if self.strategy is not None else ())
            result: dict[str, Any] = self._steps[counting](*args)
            return result
        except (tf.errors.DeadlineExceededError, tf.errors.UnavailableError,
                tf.errors.CancelledError) as exc:
            if self.strategy is None:
                raise self._failed(exc) from exc
            waited = (f"did not answer within {self._timeout:g} s" if self._timeout
                      and isinstance(exc, tf.errors.DeadlineExceededError) else "is gone")
            raise ProbeError(
                f"a replica or worker {waited} during the pass ({type(exc).__name__})",
                "check that every worker in TF_CONFIG is running and reachable "
                "(--traceback shows TensorFlow's message); --worker-timeout sets how long to "
                "wait",
            ) from exc
        except (tf.errors.OpError, ValueError, TypeError) as exc:
            raise self._failed(exc) from exc

    @staticmethod
    def _failed(exc: BaseException) -> ProbeError:
        return ProbeError(f"the forward/backward pass failed: {what_keras_said(exc)}",
                          "run with --traceback for details")

    def _bounds(self, rows: int) -> Any:
        """Contiguous shares of ``rows`` for the local replicas, as ``[0, ..., rows]`` (the
        later ones get the extra rows when they do not divide evenly, as ``distribute.share``;
        the first ones may get none)."""
        edges = np.array([share(0, rows, r, self._replicas)[0]
                          for r in range(self._replicas)] + [rows])
        return self.tf.constant(edges, self.tf.int32)

    def step(
        self,
        inputs: Sequence[Any],
        labels: Any = None,
        scale: float = 1.0,
        low_thresholds: Sequence[float] | None = None,
        confidence: float = 0.99,
        fresh: Sequence[bool] | None = None,
        global_rows: int | None = None,
    ) -> BatchCapture:
        """Run one batch (numpy arrays or tensors). ``scale`` multiplies the summed per-sample
        loss terms; ``low_thresholds`` (per site) and ``confidence`` are the activity thresholds.
        ``fresh`` (per input): see ``batch_tensor``. Under a multi-worker strategy the arrays
        are this worker's share of the batch and ``global_rows`` the whole batch's rows; the
        capture describes the whole batch."""
        tf = self.tf
        tensors = [batch_tensor(tf, a, bool(fresh and fresh[k])) for k, a in enumerate(inputs)]
        label_tensors = [tf.convert_to_tensor(y) for y in labels] if labels is not None else None
        params = self._param_tensor(scale, low_thresholds if low_thresholds is not None
                                    else [0.0] * len(self.sites), confidence)
        replay = generator_states(self._generators) if self.training else None
        bounds = self._bounds(int(tensors[0].shape[0])) if self.strategy is not None else None
        result = self._run(False, tensors, label_tensors, params, bounds)
        if self._weights is None:  # the pass does not change them: read once per session
            self._weights = [tuple(v.numpy() for v in vs) for vs in self._tf_vars]
        layout = self._layout
        figures = merge_rows(np.asarray(result["figures"]), layout)

        def get(*key: Any) -> np.ndarray:
            part: np.ndarray = figures[layout[key].where]
            return part

        sums = [get(*key)[0] for key in layout if key[0] == "input_sum" or
                (key[0] == "gx" and key[3] == 0)]
        counts = None
        if not np.all(np.isfinite(sums)):  # something is NaN/Inf: the same pass, counting
            if replay is not None:
                set_generator_states(self._generators, replay)
            gathered = np.asarray(self._run(True, tensors, label_tensors, params,
                                            bounds)["counts"])
            counts = merge_counts(gathered, ("sum", *COUNT_MERGES * (gathered.shape[-1] // 3)))
        layers: list[LayerCapture] = []
        k = 0  # the entries with a float input, counted: their place in ``counts``
        for i, site in enumerate(self.sites):
            calls, k = self._call_summaries(i, site, get, layout, counts, k, result)
            layers.append(self._layer_capture(i, site, get, layout, calls, result))
        if not self.order:
            self.order = [i for i in range(len(self.sites)) if layers[i].calls]
        rows = int(inputs[0].shape[0]) if global_rows is None else global_rows
        kept_labels = result.get("labels")
        return BatchCapture(
            loss=float(get("loss")[0]),
            penalty=float(get("penalty")[0]) if ("penalty",) in layout else None,
            samples=rows,
            layers=tuple(layers),
            nonfinite=int(counts[0]) if counts is not None else 0,
            entries=rows * sum(math.prod(a.shape[1:]) for a in [*inputs, *(labels or [])]),
            input_stats=tuple(get("input_stats", k) * DOUBLE_LAST if ("input_stats", k) in layout
                              else None for k in range(len(inputs))),
            labels=(tuple(np.asarray(y) for y in kept_labels) if kept_labels is not None
                    else None),
        )

    def _call_summaries(self, i: int, site: Site, get: Any, layout: Layout,
                        counts: np.ndarray | None, k: int,
                        result: dict[str, Any]) -> tuple[tuple[CallSummary, ...], int]:
        """Entry ``i``'s calls from the unpacked figures (``get(*key)``); ``k`` counts the
        calls with a float input so far, whose NaN/Inf counts follow in ``counts`` (the
        counting pass, when something was not finite)."""
        calls = []
        j = 0
        while ("gout", i, j) in layout:
            input_grad = x_shape = None
            if ("gx", i, j, 0) in layout:
                x_shape = tuple(int(v) for v in get("x_shape", i, j))
                half, sum_abs, max_abs = (float(get("gx", i, j, n)[0]) for n in range(3))
                sumsq = 2.0 * half
                nan = inf = 0.0
                if counts is not None:
                    max_abs, nan, inf = (float(v) for v in counts[1 + 3 * k: 4 + 3 * k])
                input_grad = np.array([float(np.prod(x_shape)), sumsq, sum_abs,
                                       max(max_abs, 0.0), nan, inf])
                k += 1
            x_sq = 2.0 * float(get("x_sq", i, j)[0]) if ("x_sq", i, j) in layout else None
            out_sq = (2.0 * float(get("out_sq", i, j)[0]) if ("out_sq", i, j) in layout
                      else None)
            calls.append(CallSummary(
                x_shape=x_shape,
                out_shape=(tuple(int(v) for v in get("out_shape", i, j))
                           if ("out_shape", i, j) in layout else ()),
                input_grad=input_grad,
                output_grad_sumsq=2.0 * float(get("gout", i, j)[0]),
                full=self._full_capture(site, result["full"][i], j) if self.full else None,
                x_sumsq=x_sq, out_sumsq=out_sq,
            ))
            j += 1
        return tuple(calls), k

    def _layer_capture(self, i: int, site: Site, get: Any, layout: Layout,
                       calls: tuple[CallSummary, ...], result: dict[str, Any]) -> LayerCapture:
        """Entry ``i``'s capture: its calls, weights, activity and per-sample figures."""
        assert self._weights is not None
        low_per_unit = (get("low_per_unit", i).astype(np.int64)
                        if ("low_per_unit", i) in layout else None)
        return LayerCapture(
            names=tuple(v.name for v in site.variables),
            weights=self._weights[i],
            calls=calls,
            low_per_unit=low_per_unit,
            low_entries=int(low_per_unit.sum()) if low_per_unit is not None else 0,
            activity_rows=int(get("rows", i)[0]) if ("rows", i) in layout else 0,
            confident=int(get("confident", i)[0]) if ("confident", i) in layout else 0,
            per_sample_sq=(result["per_sample"][i].numpy()
                           if i in result["per_sample"] else None),
            confident_wrong=(int(get("confident_wrong", i)[0])
                             if ("confident_wrong", i) in layout else None),
            moving_moment=(get("moving_moment", i).copy()
                           if ("moving_moment", i) in layout else None),
            delta_sumsq=(2.0 * float(get("gz_sq", i)[0]) if ("gz_sq", i) in layout else None),
        )

    def _full_capture(self, site: Site, f: dict[str, Any], j: int) -> CallCapture:
        """``full``: call ``j``'s tensors as numpy arrays (and, for ``verify``, activation'(z)
        by float64 finite differences). The arrays are read-only views of the tensors
        (``np.asarray``), not copies: at batch 8192 the first layer's x and dL/dx are 25 MB each."""

        def present(t: Any) -> np.ndarray | None:
            return np.asarray(t) if int(np.size(t)) or len(t.shape) > 1 else None

        z = present(f["z"][j])
        derivative64 = kink = None
        if (self.verify and z is not None and site.profile is not None
                and site.profile.kind != "softmax"):
            derivative64, kink = fd_derivative(self.tf, site.layer.activation, f["z"][j])
        return CallCapture(
            x=present(f["x"][j]), z=z, out=np.asarray(f["out"][j]),
            g_out=np.asarray(f["g_out"][j]),
            g_z=present(f["g_z"][j]) if z is not None else None, g_x=present(f["g_x"][j]),
            derivative64=derivative64, kink=kink,
        )


def require_entries(model: Any, sites: Sequence[Site], label: str) -> None:
    """Refuse a model without trainable variables, listing what it has instead."""
    if sites:
        return
    classes = sorted(set(layer_classes(model))) or ["no layers"]
    raise ModelLoadError(
        f"{label}: the model has no trainable variables (it has: {', '.join(classes)})",
        "gradinspect inspects layers with trainable weights; pass a model that has some "
        "(layers with trainable=False are not inspected)",
    )
