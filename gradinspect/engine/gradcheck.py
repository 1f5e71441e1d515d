"""Independent checks of the tape: activation'(z) by float64 central differences, and the loss's
central differences in float64 on sampled coordinates of every variable of every entry."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradinspect.engine.figures import tf_variable
from gradinspect.engine.walk import (
    Site,
    find_sites,
)
from gradinspect.losses import Loss


def fd_derivative(tf: Any, fn: Any, z: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    """activation'(z) by float64 central differences, and where it has a kink.

    Independent of any gradient the activation registers. ``(None, None)`` when the activation
    does not compute in float64 (finite differences in float32 would be too coarse to judge).
    ``z`` is a tensor or an array; the arithmetic runs as TensorFlow float64 ops (element-wise
    IEEE operations, so the same numbers numpy would give, on both cores).
    """
    z64 = tf.cast(z, tf.float64)
    h = 1e-5 * tf.maximum(tf.constant(1.0, tf.float64), tf.abs(z64))
    try:
        minus, mid, plus = [fn(v) for v in (z64 - h, z64, z64 + h)]
    except Exception:  # an activation that refuses float64 input
        return None, None
    if any(getattr(o, "dtype", None) != tf.float64 for o in (minus, mid, plus)):
        return None, None
    left = (mid - minus) / h
    right = (plus - mid) / h
    kink = tf.abs(right - left) > 1e-3 * tf.maximum(
        tf.constant(1.0, tf.float64), tf.maximum(tf.abs(left), tf.abs(right)))
    return np.asarray((plus - minus) / (2 * h)), np.asarray(kink)


def _float64_dtype(config: Any) -> Any:
    if isinstance(config, dict):
        if config.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
            return {**config, "config": {**config.get("config", {}), "name": "float64"}}
        return {
            k: "float64" if k == "dtype" and v in ("float32", "float16", "bfloat16",
                                                  "mixed_float16", "mixed_bfloat16")
            else _float64_dtype(v)
            for k, v in config.items()
        }
    if isinstance(config, list):
        return [_float64_dtype(v) for v in config]
    return config


@dataclass(frozen=True)
class GradcheckResult:
    """Per site (aligned with the sites given): coordinates tried, max errors."""

    coordinates: tuple[int, ...]
    max_rel_error: tuple[float, ...]
    max_abs_error: tuple[float, ...]
    samples: int


def gradcheck(
    model: Any,
    sites: Sequence[Site],
    loss: Loss,
    inputs: Sequence[np.ndarray],
    tape_grads: Sequence[Sequence[np.ndarray]],
    *,
    coordinates: int,
    seed: int,
    scale: float,
    labels: Sequence[np.ndarray] | None = None,
) -> GradcheckResult:
    """Central differences of the loss in float64 on sampled coordinates of every variable of
    every entry (any kind).

    The model is rebuilt from its config with a float64 dtype policy and the same weights, and
    run in inference mode (Dropout and other randomness off). ``tape_grads`` are the tape's
    gradients per site (aligned with ``site.variables``) on the same inputs; ``scale`` is the
    loss scale used for them.
    Raises ``ValueError`` when the model cannot be rebuilt in float64.
    """
    from gradinspect._tf import tf_modules

    tf, _keras = tf_modules()
    try:
        model64 = type(model).from_config(_float64_dtype(model.get_config()))
        model64.set_weights([np.asarray(w, dtype=np.float64) for w in model.get_weights()])
    except Exception as exc:
        raise ValueError(f"the model cannot be rebuilt in float64 ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    by_path = {s.path: s for s in find_sites(model64)}
    x64 = [tf.constant(np.asarray(a, dtype=np.float64)) for a in inputs]
    y64 = ([tf.constant(y if np.asarray(y).dtype.kind in "iu" else np.asarray(y, np.float64))
            for y in labels] if labels is not None else None)

    @tf.function(autograph=False)  # type: ignore[untyped-decorator]
    def total() -> Any:
        out = model64(x64 if len(x64) > 1 else x64[0], training=False)
        terms = loss.terms(tf, [tf.cast(o, tf.float64) for o in tf.nest.flatten(out)], y64)
        if terms.dtype != tf.float64:
            raise ValueError(f"the loss {loss.name!r} does not compute in float64")
        return tf.reduce_sum(terms) * tf.constant(scale, tf.float64)

    rng = np.random.default_rng(seed)
    counts, rels, abss = [], [], []
    for site, grads in zip(sites, tape_grads, strict=True):
        twin = by_path.get(site.path)
        if twin is None:
            raise ValueError(f"layer {site.path} not found in the float64 rebuild")
        twin_vars = {v.name: v.variable for v in twin.variables}
        if set(twin_vars) != {v.name for v in site.variables}:
            raise ValueError(f"layer {site.path} has other variables in the float64 rebuild")
        pairs = [(tf_variable(tf, twin_vars[v.name]), g)
                 for v, g in zip(site.variables, grads, strict=True)]
        floor = 0.01 * max((float(np.max(np.abs(g))) for _, g in pairs if np.size(g)),
                           default=0.0)
        n, worst_rel, worst_abs = 0, 0.0, 0.0
        for variable, tape in pairs:
            flat_size = int(np.prod(variable.shape))
            picks = rng.choice(flat_size, size=min(coordinates, flat_size), replace=False)
            base = variable.numpy()
            for flat in picks:
                idx = np.unravel_index(int(flat), base.shape)
                h = 1e-5 * max(1.0, abs(float(base[idx])))
                values = []
                for sign in (1.0, -1.0):
                    bumped = base.copy()
                    bumped[idx] += sign * h
                    variable.assign(bumped)
                    values.append(float(total()))
                variable.assign(base)
                fd = (values[0] - values[1]) / (2 * h)
                t = float(np.asarray(tape, dtype=np.float64)[idx])
                err = abs(fd - t)
                worst_abs = max(worst_abs, err)
                worst_rel = max(worst_rel, err / max(abs(fd), abs(t), floor, 1e-12))
                n += 1
        counts.append(n)
        rels.append(worst_rel)
        abss.append(worst_abs)
    return GradcheckResult(tuple(counts), tuple(rels), tuple(abss), int(inputs[0].shape[0]))
