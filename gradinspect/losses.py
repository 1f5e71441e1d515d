"""Losses the probe differentiates, as pluggable pieces.

A loss turns one batch of model outputs (and labels) into per-sample terms, shape ``(batch,)``;
the probe sums the terms and multiplies by a scale: 1 for ``reduction == "sum"``, 1/N for
``"mean"`` (N = all samples of the run, not of the batch), so that the gradients of the batches
add up exactly to the gradient of the loss over all samples.

Besides ``sum``/``mean`` of the outputs, any Keras loss by name or alias works, and ``compiled``
takes the loss (per output, with loss weights) that the model file was compiled with. TensorFlow
and Keras are used only inside ``terms``/``resolve_loss``, imported lazily.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gradinspect.errors import UsageError

OUTPUT_LOSSES = ("sum", "mean")
CROSSENTROPY = ("categorical_crossentropy", "sparse_categorical_crossentropy",
                "binary_crossentropy", "binary_focal_crossentropy",
                "categorical_focal_crossentropy")


class Loss(Protocol):
    """What the probe needs from a loss."""

    @property
    def name(self) -> str:
        """Name shown in the report."""

    @property
    def reduction(self) -> str:
        """``sum`` or ``mean`` over samples."""

    @property
    def needs_labels(self) -> bool:
        """Whether ``terms`` uses labels."""

    def terms(self, tf: Any, outputs: list[Any], labels: Any) -> Any:
        """Per-sample loss terms, shape ``(batch,)``, from the flattened model outputs."""


def _flat_per_sample(tf: Any, outputs: list[Any]) -> list[Any]:
    """Outputs as (batch, entries), in float32 or, when they already are, float64 (gradcheck)."""
    dtype = tf.float64 if all(o.dtype == tf.float64 for o in outputs) else tf.float32
    return [tf.reshape(tf.cast(o, dtype), (tf.shape(o)[0], -1)) for o in outputs]


@dataclass(frozen=True)
class SumOfOutputs:
    """``sum``: the sum of every model output, as in ``tf.reduce_sum(model(x))``."""

    name: str = "sum"
    reduction: str = "sum"
    needs_labels: bool = False

    def terms(self, tf: Any, outputs: list[Any], labels: Any) -> Any:
        flat = _flat_per_sample(tf, outputs)
        return tf.add_n([tf.reduce_sum(f, axis=1) for f in flat])


@dataclass(frozen=True)
class MeanOfOutputs:
    """``mean``: the mean of every model output entry, as in ``tf.reduce_mean(model(x))``.

    With several outputs, the mean is over all their entries together.
    """

    name: str = "mean"
    reduction: str = "mean"
    needs_labels: bool = False

    def terms(self, tf: Any, outputs: list[Any], labels: Any) -> Any:
        flat = _flat_per_sample(tf, outputs)
        width = tf.add_n([tf.cast(tf.shape(f)[1], f.dtype) for f in flat])
        return tf.add_n([tf.reduce_sum(f, axis=1) for f in flat]) / width


@dataclass(frozen=True)
class OutputLoss:
    """One Keras loss function applied to one model output."""

    name: str
    """Canonical Keras name, e.g. ``categorical_crossentropy``."""
    fn: Callable[..., Any] = field(repr=False, compare=False)
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Keyword arguments (``from_logits``, ``label_smoothing``, ``delta`` ...)."""
    weight: float = 1.0

    @property
    def builtin(self) -> bool:
        """Whether the function is one of Keras' own (Keras 3 or tf.keras), whose label shapes
        are known; a custom loss takes whatever labels its code reads."""
        return _builtin_module(self.fn)

    @property
    def from_logits(self) -> bool | None:
        """The effective ``from_logits`` (given, or the function's default); ``None`` when the
        loss has no such parameter."""
        if "from_logits" in self.kwargs:
            return bool(self.kwargs["from_logits"])
        param = inspect.signature(self.fn).parameters.get("from_logits")
        return bool(param.default) if param is not None else None


SEMANTICS = ("keras2", "keras3")
"""How crossentropy losses treat a probability output: ``keras2`` clips the probabilities to
[eps, 1 - eps] (and renormalises them for categorical crossentropy), as Keras 2.x computed the
loss its files were trained with; ``keras3`` takes the logits a softmax/sigmoid activation keeps
on its output, as Keras 3 does (whatever the activation: a sigmoid under categorical
crossentropy too)."""
KERAS2_EPSILON = 1e-7
KERAS2_RULES = ("binary_crossentropy", "categorical_crossentropy",
                "sparse_categorical_crossentropy")


def keras2_crossentropy(tf: Any, name: str, y: Any, p: Any, label_smoothing: float = 0.0,
                        axis: int = -1) -> Any:
    """Keras 2's crossentropy of probabilities ``p`` (never from cached logits), per sample:
    clipped to [eps, 1 - eps]; categorical renormalised first; binary with eps inside the
    logs and averaged over the last axis; sparse as a softmax crossentropy of log(p)."""
    eps = tf.constant(KERAS2_EPSILON, p.dtype)
    one = tf.constant(1.0, p.dtype)
    if name == "sparse_categorical_crossentropy":
        logits = tf.math.log(tf.clip_by_value(p, eps, one - eps))
        ids = tf.cast(tf.reshape(y, tf.shape(p)[:-1]), tf.int64)
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=ids, logits=logits)
    y = tf.cast(y, p.dtype)
    if name == "categorical_crossentropy":
        if label_smoothing:
            classes = tf.cast(tf.shape(y)[-1], p.dtype)
            y = y * (one - label_smoothing) + label_smoothing / classes
        p = p / tf.reduce_sum(p, axis=axis, keepdims=True)
        p = tf.clip_by_value(p, eps, one - eps)
        return -tf.reduce_sum(y * tf.math.log(p), axis=axis)
    if label_smoothing:
        y = y * (one - label_smoothing) + 0.5 * label_smoothing
    p = tf.clip_by_value(p, eps, one - eps)
    bce = y * tf.math.log(p + eps) + (one - y) * tf.math.log(one - p + eps)
    return -tf.reduce_mean(bce, axis=axis)


@dataclass(frozen=True)
class KerasLoss:
    """Keras losses with labels: ``sum_k weight_k * loss_k(y_k, output_k)`` per sample."""

    name: str
    reduction: str
    per_output: tuple[OutputLoss, ...]
    """One loss per output in the loss (``covered``), in that order."""
    source: str
    """``flag`` (``--loss``) or ``compiled`` (from the model file)."""
    needs_labels: bool = True
    semantics: str = "keras3"
    """``keras2`` or ``keras3``: see ``SEMANTICS``."""
    covered: tuple[int, ...] | None = None
    """Indices of the model outputs in the loss (``None``: every output). An output compiled
    with no loss (``loss=[fn, None]``, or left out of a dict) takes no labels and adds
    nothing, as in Keras."""

    def output_indices(self) -> tuple[int, ...]:
        return self.covered if self.covered is not None else tuple(range(len(self.per_output)))

    def spec_for(self, output_index: int) -> OutputLoss | None:
        """The loss of model output ``output_index``; ``None`` when it is not in the loss."""
        indices = self.output_indices()
        return self.per_output[indices.index(output_index)] if output_index in indices \
            else None

    def terms(self, tf: Any, outputs: list[Any], labels: Any) -> Any:
        total = None
        chosen = [outputs[k] for k in self.output_indices()]
        for output, y, spec in zip(chosen, labels, self.per_output, strict=True):
            if self.semantics == "keras2" and spec.name in KERAS2_RULES \
                    and not spec.from_logits:
                values = keras2_crossentropy(
                    tf, spec.name, y, output,
                    float(spec.kwargs.get("label_smoothing", 0.0) or 0.0),
                    int(spec.kwargs.get("axis", -1)))
            else:
                values = spec.fn(tf.cast(y, output.dtype) if not _sparse(spec.name) else y,
                                 output, **spec.kwargs)
            mask = getattr(output, "_keras_mask", None)
            if mask is not None:
                values = masked(tf, values, mask, self.reduction)
            if values.shape.rank == 0:  # a custom loss that reduces the batch itself
                values = tf.fill(tf.shape(output)[:1], values)
            if len(values.shape) > 1:
                values = tf.reduce_mean(tf.reshape(values, (tf.shape(values)[0], -1)), axis=1)
            values = values * tf.cast(spec.weight, values.dtype)
            total = values if total is None else total + values
        return total


def masked(tf: Any, values: Any, mask: Any, reduction: str) -> Any:
    """Loss values with an output's Keras mask applied, as Keras' compiled loss applies it
    (``keras.losses.Loss.__call__``): masked entries weigh 0, and under ``mean`` the others
    weigh ``entries / unmasked entries`` of the batch, so that the batch's mean is the mean over
    its unmasked entries (a decoder's padding adds nothing). With several batches, each batch
    is normalised by its own count, as Keras does for each training step."""
    weight = tf.cast(mask, values.dtype)
    if weight.shape.rank == values.shape.rank + 1 and weight.shape[-1] == 1:
        weight = tf.squeeze(weight, -1)
    elif values.shape.rank == weight.shape.rank + 1 and values.shape[-1] == 1:
        values = tf.squeeze(values, -1)
    elif values.shape.rank == weight.shape.rank - 1:
        values = values[..., None]
    if reduction == "mean":
        total = tf.cast(tf.size(weight), values.dtype)
        weight = weight * tf.math.divide_no_nan(total, tf.reduce_sum(weight))
    return values * weight


def _sparse(name: str) -> bool:
    return name.startswith("sparse_")


def _snake(class_name: str) -> str:
    special = {"KLDivergence": "kl_divergence", "MeanSquaredError": "mean_squared_error"}
    if class_name in special:
        return special[class_name]
    return re.sub(r"(?<!^)(?=[A-Z])", "_", class_name).lower()


def _keras_function(keras: Any, name: str, custom: Mapping[str, Any] | None = None,
                    config: Mapping[str, Any] | None = None) -> Callable[..., Any]:
    """A loss function by name: one of the user's (``--custom-objects``, by name or by its
    registered ``package>name``), one registered with Keras, or a built-in Keras loss. A
    ``Loss`` class of the user's is built from its ``config`` and gives its unreduced
    ``call``, which the probe masks and reduces as Keras' ``Loss.__call__`` does."""
    short = name.rpartition(">")[2]
    fn = (custom or {}).get(name) or (custom or {}).get(short)
    if fn is None and ">" in name:
        fn = keras.saving.get_registered_object(name)
    if fn is None:
        try:
            fn = keras.losses.get(name)
        except (ValueError, TypeError):
            fn = None
    if isinstance(fn, type):  # a Loss class: its instance carries the function
        fn = _instance(fn, config)
    if fn is None or not callable(fn):
        raise UsageError(
            f"unknown loss {name!r}",
            "use sum, mean, compiled, or a Keras loss name such as mse, mae, huber, "
            "binary_crossentropy, categorical_crossentropy, sparse_categorical_crossentropy, "
            "kl_divergence; for a custom loss, pass --custom-objects FILE that defines it",
        )
    if hasattr(fn, "fn"):  # a Loss object (LossFunctionWrapper): use its function
        fn = fn.fn
    elif hasattr(fn, "call") and hasattr(fn, "reduction"):  # a Loss subclass of the user's
        fn = _unreduced(fn)
    return fn


def _instance(cls: type, config: Mapping[str, Any] | None) -> Any:
    """A Loss class built from its stored config (a custom one's arguments matter: a focal
    loss' gamma), or with its defaults where the config does not fit; ``None`` if neither."""
    if config is not None and not _builtin_module(cls) and hasattr(cls, "from_config"):
        try:
            return cls.from_config(dict(config))
        except (TypeError, ValueError):
            pass
    try:
        return cls()
    except TypeError:
        return None


def _builtin_module(obj: Any) -> bool:
    module = str(getattr(obj, "__module__", "") or "")
    return module.split(".", maxsplit=1)[0] in ("keras", "tf_keras", "tensorflow")


def _unreduced(loss: Any) -> Callable[..., Any]:
    """A ``keras.losses.Loss`` subclass as a function of its unreduced values (its ``call``),
    named and placed as its class (a custom loss: its labels are not shape-checked)."""
    def values(y_true: Any, y_pred: Any) -> Any:
        return loss.call(y_true, y_pred)

    values.__name__ = _snake(type(loss).__name__)
    values.__module__ = type(loss).__module__
    return values


def _accepted(fn: Callable[..., Any], config: Mapping[str, Any]) -> dict[str, Any]:
    params = inspect.signature(fn).parameters
    return {k: v for k, v in config.items() if k in params and k not in ("y_true", "y_pred")}


def _output_loss(keras: Any, spec: Any, weight: float, from_logits: bool | None,
                 custom: Mapping[str, Any] | None = None) -> OutputLoss:
    """A loss from a name, or from a serialized Keras 2/3 loss object or function config."""
    if isinstance(spec, str):
        fn = _keras_function(keras, spec, custom)
        kwargs: dict[str, Any] = {}
    elif isinstance(spec, Mapping) and spec.get("class_name") == "function" \
            and isinstance(spec.get("config"), str):
        fn = _keras_function(keras, spec["config"], custom)  # Keras 3: a function by name
        kwargs = {}
    elif isinstance(spec, Mapping) and "class_name" in spec:
        raw = spec.get("config")
        config = dict(raw) if isinstance(raw, Mapping) else {}
        candidates = [config.get("fn"), config.get("name"), str(spec["class_name"]),
                      _snake(str(spec["class_name"]))]
        found: Callable[..., Any] | None = None
        for candidate in candidates:
            if isinstance(candidate, str):
                try:
                    found = _keras_function(keras, candidate, custom, config)
                    break
                except UsageError:
                    continue
        if found is None:
            raise UsageError(
                f"the compiled loss {spec['class_name']!r} is not a built-in Keras loss",
                "pass --custom-objects FILE that defines it, or --loss with a built-in name",
            )
        fn = found
        kwargs = _accepted(fn, config)
    else:
        raise UsageError(f"cannot understand the compiled loss {spec!r}", "pass --loss NAME")
    if from_logits is not None and "from_logits" in inspect.signature(fn).parameters:
        kwargs["from_logits"] = from_logits
    return OutputLoss(name=str(getattr(fn, "__name__", "loss")), fn=fn, kwargs=kwargs,
                      weight=float(weight))


def outputs_in_loss(compile_config: Mapping[str, Any] | None,
                    output_names: Sequence[str]) -> tuple[bool, ...]:
    """Which model outputs the compiled loss covers: every one, except where the loss is a list
    with ``None`` entries or a dict that leaves outputs out (Keras trains those without a
    loss: the miniature GPT's ``loss=[loss_fn, None]``)."""
    loss = (compile_config or {}).get("loss")
    if isinstance(loss, Mapping) and "class_name" not in loss:
        return tuple(loss.get(n) is not None for n in output_names)
    if isinstance(loss, list | tuple) and len(loss) == len(output_names):
        return tuple(v is not None for v in loss)
    return (True,) * len(output_names)


def _per_output(value: Any, output_names: Sequence[str], what: str) -> list[Any]:
    if isinstance(value, Mapping) and "class_name" not in value:
        return [value.get(n) for n in output_names]  # a missing output: no loss for it
    if isinstance(value, (list, tuple)):
        if len(value) != len(output_names):
            raise UsageError(
                f"the compiled {what} has {len(value)} entries for {len(output_names)} outputs",
                "pass --loss NAME to use one loss for every output",
            )
        return list(value)
    return [value] * len(output_names)


@dataclass(frozen=True)
class LossRequest:
    """What the user asked for: ``--loss``, ``--reduction``, ``--from-logits``."""

    name: str | None = None
    """``None`` = automatic: ``compiled`` with labels and a compile config, else ``sum``."""
    reduction: str | None = None
    """``sum``/``mean`` over samples for Keras losses (default ``mean``, as Keras does)."""
    from_logits: bool | None = None
    """Override ``from_logits`` of crossentropy losses."""


def resolve_loss(
    request: LossRequest,
    compile_config: Mapping[str, Any] | None,
    output_names: Sequence[str],
    has_labels: bool,
    custom_objects: Mapping[str, Any] | None = None,
    semantics: str = "keras3",
) -> Loss:
    """The loss to differentiate, from the request, the model's compile config and the labels.
    ``custom_objects``: the user's (``--custom-objects``), where custom losses are looked up."""
    name = request.name
    if name is None:
        name = "compiled" if has_labels and compile_config and compile_config.get("loss") \
            else "sum"
    if name in OUTPUT_LOSSES:
        if request.reduction is not None and request.reduction != name:
            raise UsageError(f"--loss {name} has a fixed reduction ({name})",
                             "drop --reduction, or use a Keras loss with labels")
        return SumOfOutputs() if name == "sum" else MeanOfOutputs()
    from gradinspect._tf import tf_modules

    _, keras = tf_modules()
    reduction = request.reduction or "mean"
    if reduction not in ("sum", "mean"):
        raise UsageError(f"unknown reduction {reduction!r}", "use sum or mean")
    if name == "compiled":
        if not compile_config or not compile_config.get("loss"):
            raise UsageError("--loss compiled: the model file has no compiled loss",
                             "pass --loss NAME (e.g. --loss categorical_crossentropy)")
        specs = _per_output(compile_config["loss"], output_names, "loss")
        weights_cfg = compile_config.get("loss_weights")
        weights = _per_output(weights_cfg, output_names, "loss_weights") if weights_cfg \
            else [1.0] * len(output_names)
        covered = tuple(k for k, spec in enumerate(specs) if spec is not None)
        if not covered:
            raise UsageError("the compiled loss covers none of the model's outputs",
                             "pass --loss NAME")
        per = tuple(_output_loss(keras, specs[k], 1.0 if weights[k] is None else weights[k],
                                 request.from_logits, custom_objects) for k in covered)
        return KerasLoss(name="+".join(dict.fromkeys(p.name for p in per)), reduction=reduction,
                         per_output=per, source="compiled", semantics=semantics,
                         covered=None if len(covered) == len(specs) else covered)
    one = _output_loss(keras, name, 1.0, request.from_logits, custom_objects)
    return KerasLoss(name=one.name, reduction=reduction, per_output=(one,) * len(output_names),
                     source="flag", semantics=semantics)


def get_loss(name: str) -> Loss:
    """A loss that needs no labels and no model config (``sum``, ``mean``)."""
    if name in OUTPUT_LOSSES:
        return SumOfOutputs() if name == "sum" else MeanOfOutputs()
    raise UsageError(f"the loss {name!r} needs labels and a model", "use resolve_loss")
