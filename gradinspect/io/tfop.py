"""Keras 2 tensor-operator layers rewritten as the op layers Keras 3 itself saves.

tf.keras saved a TensorFlow function called on a functional model's tensors (``h + i``,
``h[:, 0]``) as a ``TFOpLambda`` (indexing: ``SlicingOpLambda``) layer naming the function,
which Keras 3 cannot load. ``translate_tf_ops`` rewrites each into the entry Keras 3 writes for
the same ``keras.ops`` call: the Operation's ``module``/``class_name``, its constructor
arguments as ``config``, a dict-form node ``{"args": [...], "kwargs": {}}`` (read beside list-form
ones) of ``__keras_tensor__`` references, whose ``shape`` ``[]`` and ``dtype`` ``"float32"`` are
placeholders (unknown in Keras 2; Keras 3 swaps the stand-in for the ``keras_history`` tensor).

tf.keras writes a node as the first argument, the others (named by the function's signature)
in a dict appended to each of its tensors: ``["dense", 0, 0, {"y": ["dense_1", 0, 0]}]`` for
``h + i``, a list of those for a list (``tf.concat``), ``["_CONSTANT_VALUE", -1, 2.0, {...}]``
for a constant (``2.0 - h``: reflected operators are the function with a constant first). In
the arguments a tensor is ``[layer, node, tensor]``, a constant array a nested list.

Run before ``legacy._fix_keras2_node_indices`` (before or after its other repairs): that skips
dict-form nodes, so the shift of a nested model's node index (Keras 2 counted its own input
call as node 0) is done here, by its rule, for the references written here (after it, tensor
lists would shift twice; a reference to node 0 of a nested model is refused).
Names from the file are only looked up in the closed table ``TRANSLATIONS``; walks use
explicit stacks and values are bounded, so no input recurses deeply.
"""

from __future__ import annotations

import math
import reprlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from gradinspect.errors import ModelLoadError

_NUMPY, _NN, _MATH, _CORE = (f"keras.src.ops.{m}" for m in ("numpy", "nn", "math", "core"))
_OP_CLASSES, _GETITEM = ("TFOpLambda", "SlicingOpLambda"), "__operators__.getitem"
_MAX_ITEMS, _MAX_DEPTH = 64, 8
_DTYPES = frozenset({"float16", "bfloat16", "float32", "float64", "int8", "int16", "int32",
                     "int64", "uint8", "uint16", "uint32", "uint64", "bool", "complex64",
                     "complex128"})
_HINT = "rebuild that step with keras.ops or a custom layer (--custom-objects) and save again"
_CORRUPT = "the model config is corrupt or was not written by tf.keras"
_DOTS = object()  # ``...`` in an index, before it is written out
REQUIRED: Any = type("Required", (), {"__repr__": lambda self: "REQUIRED"})()  # no default


class _Refused(Exception):
    """An argument the table does not translate."""


class _Malformed(_Refused):
    """A node unlike what tf.keras writes."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -2**63 <= v < 2**63


def _is_number(v: Any) -> bool:
    return _is_int(v) or (isinstance(v, float) and math.isfinite(v))


def _is_ints(v: Any) -> bool:
    return isinstance(v, list) and len(v) <= _MAX_ITEMS and all(_is_int(x) for x in v)


def _kind(test: Callable[[Any], bool], what: str,
          convert: Callable[[Any], Any] = lambda v: v) -> Callable[[Any], Any]:
    """The converter of a static argument: ``convert(v)`` when ``test(v)``, else refused."""

    def check(v: Any) -> Any:
        if not test(v):
            raise _Refused(f"{what} was expected")
        return convert(v)

    return check


def _only(expected: Any) -> Callable[[Any], Any]:
    """An argument translated only at its default: the Keras 3 op has no such option."""
    exact = isinstance(expected, bool) or expected is None
    return _kind(lambda v: v is expected if exact else _is_number(v) and v == expected,
                 f"only {expected!r}")


_INT, _INTS = _kind(_is_int, "an integer"), _kind(_is_ints, "a list of integers")
_AXES = _kind(lambda v: v is None or _is_int(v) or _is_ints(v), "None or integers")
_PERM = _kind(lambda v: v is None or _is_ints(v), "None or a list of integers")
_FLAG = _kind(lambda v: isinstance(v, bool), "true or false")
_NUMBER = _kind(_is_number, "a finite number")
_DTYPE = _kind(lambda v: isinstance(v, str) and v in _DTYPES, "a dtype name")
# tf.nn.softmax's axis=None is the last axis; Keras 3's None would be every axis.
_LAST_AXIS = _kind(lambda v: v is None or _is_int(v), "None or an integer",
                   lambda v: -1 if v is None else v)


@dataclass(frozen=True)
class Arg:
    """A static argument: TF name, op config key (None: only checked), converter, TF default."""

    name: str
    key: str | None
    convert: Callable[[Any], Any]
    default: Any = REQUIRED


@dataclass(frozen=True)
class Translation:
    """A Keras 3 op: module, class, TF names of the tensors after the first, args, config."""

    module: str
    class_name: str
    tensors: tuple[str, ...] = ()
    args: tuple[Arg, ...] = ()
    fixed: Mapping[str, Any] = field(default_factory=dict)


def _t(module: str, cls: str, *args: Arg, tensors: tuple[str, ...] = (),
       fixed: Mapping[str, Any] | None = None) -> Translation:
    return Translation(module, cls, tensors, args, MappingProxyType(dict(fixed or {})))


_BINARY = {"__operators__.add": "Add", "compat.v1.floor_div": "FloorDivide", **{
    f"math.{tf}": k3 for tf, k3 in (
        ("add", "Add"), ("subtract", "Subtract"), ("multiply", "Multiply"),
        ("truediv", "TrueDivide"), ("divide", "Divide"), ("floordiv", "FloorDivide"),
        ("floormod", "Mod"), ("pow", "Power"), ("maximum", "Maximum"), ("minimum", "Minimum"),
        ("greater", "Greater"), ("greater_equal", "GreaterEqual"), ("less", "Less"),
        ("less_equal", "LessEqual"), ("equal", "Equal"), ("not_equal", "NotEqual"),
        ("logical_and", "LogicalAnd"), ("logical_or", "LogicalOr"), ("logical_xor", "LogicalXor"))}}
_UNARY = {"negative": "Negative", "exp": "Exp", "log": "Log", "sqrt": "Sqrt", "square": "Square",
          "abs": "Absolute", "tanh": "Tanh", "sin": "Sin", "cos": "Cos", "tan": "Tan",
          "sinh": "Sinh", "cosh": "Cosh", "asin": "Arcsin", "acos": "Arccos", "atan": "Arctan",
          "asinh": "Arcsinh", "acosh": "Arccosh", "atanh": "Arctanh", "log1p": "Log1p",
          "reciprocal": "Reciprocal", "expm1": "Expm1", "floor": "Floor", "ceil": "Ceil",
          "sign": "Sign", "logical_not": "LogicalNot", "is_nan": "Isnan", "is_inf": "Isinf",
          "is_finite": "Isfinite"}
_REDUCE = {"mean": "Mean", "sum": "Sum", "std": "Std", "variance": "Var", "any": "Any",
           "all": "All"}
_MATMUL_FLAGS = ("adjoint_a", "adjoint_b", "a_is_sparse", "b_is_sparse", "grad_a", "grad_b")
_TRANSPOSE = Arg("perm", "axes", _PERM, None), Arg("conjugate", None, _only(False), False)
_SQUEEZE = Arg("axis", "axis", _AXES, None)
_REDUCE_ARGS = _SQUEEZE, Arg("keepdims", "keepdims", _FLAG, False)

TRANSLATIONS: Mapping[str, Translation] = MappingProxyType({
    **{tf: _t(_NUMPY, k3, tensors=("y",)) for tf, k3 in _BINARY.items()},
    "math.atan2": _t(_NUMPY, "Arctan2", tensors=("x",)),
    **{f"math.{tf}": _t(_NUMPY, k3) for tf, k3 in _UNARY.items()},
    "math.round": _t(_NUMPY, "Round", fixed={"decimals": 0}),
    "math.rsqrt": _t(_MATH, "Rsqrt"), "math.erf": _t(_MATH, "Erf"),
    "math.sigmoid": _t(_NN, "Sigmoid"), "math.softplus": _t(_NN, "Softplus"),
    "math.log_sigmoid": _t(_NN, "LogSigmoid"), "nn.softsign": _t(_NN, "Softsign"),
    "nn.relu": _t(_NN, "Relu"), "nn.relu6": _t(_NN, "Relu6"), "nn.selu": _t(_NN, "Selu"),
    "nn.elu": _t(_NN, "Elu", fixed={"alpha": 1.0}),
    "nn.gelu": _t(_NN, "Gelu", Arg("approximate", "approximate", _FLAG, False)),
    "nn.softmax": _t(_NN, "Softmax", Arg("axis", "axis", _LAST_AXIS, None)),
    "nn.log_softmax": _t(_NN, "LogSoftmax", Arg("axis", "axis", _LAST_AXIS, None)),
    **{f: _t(_NN, "Silu", Arg("beta", None, _only(1.0), 1.0)) for f in ("nn.silu", "nn.swish")},
    "nn.leaky_relu": _t(_NN, "LeakyRelu", Arg("alpha", "negative_slope", _NUMBER, 0.2)),
    **{f"math.reduce_{tf}": _t(_NUMPY, k3, *_REDUCE_ARGS, fixed=fixed) for tf, k3, fixed in (
        *((tf, k3, {}) for tf, k3 in _REDUCE.items()), ("max", "Max", {"initial": None}),
        ("min", "Min", {"initial": None}), ("prod", "Prod", {"dtype": None}))},
    "math.reduce_logsumexp": _t(_MATH, "Logsumexp", *_REDUCE_ARGS),
    "reshape": _t(_NUMPY, "Reshape", Arg("shape", "newshape", _INTS)),
    "concat": _t(_NUMPY, "Concatenate", Arg("axis", "axis", _INT)),
    "stack": _t(_NUMPY, "Stack", Arg("axis", "axis", _INT, 0)),
    **dict.fromkeys(("compat.v1.transpose", "transpose"), _t(_NUMPY, "Transpose", *_TRANSPOSE)),
    "expand_dims": _t(_NUMPY, "ExpandDims", Arg("axis", "axis", _INT)),
    "compat.v1.squeeze": _t(_NUMPY, "Squeeze", _SQUEEZE,
                            Arg("squeeze_dims", None, _only(None), None)),
    "squeeze": _t(_NUMPY, "Squeeze", _SQUEEZE),
    "tile": _t(_NUMPY, "Tile", Arg("multiples", "repeats", _INTS)),
    "cast": _t(_CORE, "Cast", Arg("dtype", "dtype", _DTYPE)),
    "clip_by_value": _t(_NUMPY, "Clip", Arg("clip_value_min", "x_min", _NUMBER),
                        Arg("clip_value_max", "x_max", _NUMBER)),
    "where": _t(_NUMPY, "Where", tensors=("x", "y")),
    "linalg.matmul": _t(_NUMPY, "Matmul", Arg("transpose_a", "transpose_a", _FLAG, False),
                        Arg("transpose_b", "transpose_b", _FLAG, False),
                        Arg("output_type", None, _only(None), None),
                        *(Arg(f, None, _only(False), False) for f in _MATMUL_FLAGS),
                        tensors=("b",)),
    _GETITEM: _t(_NUMPY, "GetItem"),
})
"""Keras 2 function -> the Operation ``keras.ops.<fn>`` creates, TensorFlow's argument names and
defaults mapped onto Keras 3's; the same computation by other ops for matmul with ``transpose_a``
or ``_b`` (``Einsum``) and an index with integers after ``...`` (``Moveaxis`` + ``GetItem``).
getitem is read only from a ``SlicingOpLambda``, every other function only from a ``TFOpLambda``."""


def _text(value: Any) -> str:
    """A value from the file for a message: bounded, control characters escaped."""
    return repr(value[:80] if isinstance(value, str) else reprlib.repr(value))[1:-1]


def _is_ref(v: Any) -> bool:
    """A tensor reference as tf.keras reads one: ``[layer, node, tensor]`` (+ kwargs)."""
    return isinstance(v, list) and len(v) in (3, 4) and isinstance(v[0], str)


@dataclass
class _Scope:
    """One model config: layer names, nested models owning a Keras 2 node 0, op layers' node
    counts, new names of their nodes after the first, and the new names taken."""

    layers: frozenset[str]
    built: frozenset[str]
    op_nodes: dict[str, int] = field(default_factory=dict)
    renamed: dict[tuple[str, int], str] = field(default_factory=dict)
    taken: set[str] = field(default_factory=set)

    def fresh(self, base: str) -> str:
        """A layer name not yet used in this model, from ``base``."""
        new, n = base, 0
        while new in self.layers or new in self.taken:
            n += 1
            new = f"{base}_{n}"
        self.taken.add(new)
        return new

    def tensor(self, ref: list[Any]) -> dict[str, Any]:
        """The Keras 3 ``__keras_tensor__`` of a Keras 2 reference."""
        name, node, tensor = ref[0], ref[1], ref[2]
        if not (_is_int(node) and _is_int(tensor)) or node < 0 or tensor < 0:
            raise _Malformed(f"its reference to {_text(name)!r} has a bad index")
        if name not in self.layers:
            raise _Malformed(f"it refers to a missing layer {_text(name)!r}")
        if name in self.op_nodes and node >= self.op_nodes[name]:
            raise _Malformed(f"it refers to node {node} of {_text(name)!r}, which has none")
        if (name, node) in self.renamed:
            name, node = self.renamed[(name, node)], 0
        elif name in self.built:
            if node == 0:
                raise _Malformed(f"it refers to node 0 of the nested model {_text(name)!r} "
                               "(run before _fix_keras2_node_indices)")
            node -= 1
        return _tensor([name, node, tensor])


def _tensor(history: list[Any]) -> dict[str, Any]:
    return {"class_name": "__keras_tensor__",
            "config": {"shape": [], "dtype": "float32", "keras_history": history}}


def _constant(value: Any) -> Any:
    """A Python scalar (kept, as Keras 3 keeps it) or a rectangular nested list of numbers (a
    ``__tensor__`` of the dtype TensorFlow infers from the list: int32 or float32)."""
    if isinstance(value, bool) or _is_number(value):
        return value
    level: list[Any] = [value]
    for _ in range(_MAX_DEPTH):  # one level of the array at a time, while it is rectangular
        if not all(isinstance(x, list) for x in level) or len({len(x) for x in level}) > 1:
            break
        level = [y for x in level for y in x]
    if not all(_is_number(x) for x in level):
        raise _Refused("a tensor argument that is not a tensor, number or array of numbers")
    dtype = "int32" if level and all(_is_int(x) for x in level) else "float32"
    return {"class_name": "__tensor__", "config": {"value": value, "dtype": dtype}}


def _index_item(item: Any) -> Any:
    keys = ("start", "stop", "step")
    if item is None or _is_int(item):
        return item
    if item == {"class_name": "__ellipsis__"}:
        return _DOTS
    if isinstance(item, dict) and set(item) == set(keys) and all(
            item[k] is None or _is_int(item[k]) for k in keys):
        return {"class_name": "__slice__", "config": {k: item[k] for k in keys}}
    raise _Refused("an index that is not an integer, a slice, None or ...")


def _index(spec: Any) -> tuple[int, Any]:
    """(trailing axes to move to the front first, the key: an int or a list, as Keras 3's
    GetItem takes) of a ``slice_spec``. Keras 3's .h5 loader turns ``__ellipsis__`` into a
    ``...`` it cannot read, so none is written: a last ``...`` is dropped; before k integers
    only, the last k axes move to the front (``h[a, ..., i] == moveaxis(h, -1, 0)[i, a]``)."""
    if _is_int(spec):
        return 0, spec
    if _is_ref(spec) or (isinstance(spec, list) and len(spec) > _MAX_ITEMS):
        raise _Refused("an index that is a tensor or too long")
    key = [_index_item(x) for x in (spec if isinstance(spec, list) else [spec])]
    dots = [n for n, x in enumerate(key) if x is _DOTS]
    if not dots:
        return 0, key
    after = key[dots[0] + 1:]
    if len(dots) > 1 or not all(_is_int(x) for x in after):
        raise _Refused("an index with '...' before a slice or new axis, which Keras 3's .h5 "
                       "loader cannot read")
    return len(after), after + key[:dots[0]]


def _inputs(node: Any, first_is_list: bool, scope: _Scope) -> tuple[Any, list[Any]]:
    """(the Keras 3 first argument, each entry's Keras 2 arguments) of one Keras 2 node."""
    if not isinstance(node, list) or not node or first_is_list == isinstance(node[0], str):
        raise _Malformed("its inbound node is not the tensor or tensor list tf.keras writes for "
                       "this function")
    firsts: list[Any] = []
    kwargs: list[Any] = []
    for entry in node if first_is_list else [node]:
        if not _is_ref(entry):
            raise _Malformed("an inbound tensor is not [layer, node, tensor, kwargs]")
        kwargs.append(entry[3] if len(entry) == 4 else {})
        constant = entry[0] == "_CONSTANT_VALUE"  # [_CONSTANT_VALUE, -1, value, kwargs]
        firsts.append(_constant(entry[2]) if constant else scope.tensor(entry))
    if not isinstance(kwargs[0], dict):
        raise _Malformed("its call arguments are not a dict")
    return (firsts if first_is_list else firsts[0]), kwargs


def _node_call(spec: Translation, node: Any, scope: _Scope) -> tuple[list[Any], dict[str, Any]]:
    """(positional args of the Keras 3 call, Keras 3 op config entries) for one Keras 2 node."""
    index = spec.class_name == "GetItem"  # its slice_spec is the second positional argument
    first, seen = _inputs(node, spec.class_name in ("Concatenate", "Stack"), scope)
    kwargs: dict[Any, Any] = seen[0]
    known = {a.name for a in spec.args} | set(spec.tensors) | {"name"}
    known |= {"slice_spec", "var"} if index else set()
    unknown = [k for k in kwargs if k not in known]
    if unknown:
        raise _Refused(f"the argument {_text(unknown[0])!r}")
    if not isinstance(kwargs.get("name"), str | None):  # ignored, as TFOpLambda ignores it
        raise _Refused("a name that is not text")
    args = [first]
    for tensor in spec.tensors:
        if tensor not in kwargs:
            raise _Refused(f"no {tensor!r} argument")
        value = kwargs[tensor]
        args.append(scope.tensor(value) if _is_ref(value) else _constant(value))
    if index:
        if "slice_spec" not in kwargs or kwargs.get("var") is not None:
            raise _Refused("no 'slice_spec' or a 'var' argument")
        args.append(kwargs["slice_spec"])  # converted by _op_entries
    config: dict[str, Any] = {}
    for arg in spec.args:
        value = kwargs.get(arg.name, arg.default)
        if value is REQUIRED:
            raise _Refused(f"no {arg.name!r} argument")
        try:
            converted = arg.convert(value)
        except _Refused as error:
            raise _Refused(f"{arg.name}={_text(value)} ({error})") from None
        if arg.key is not None:
            config[arg.key] = converted
    if any(k != kwargs for k in seen[1:]):  # after the checks, which bound their depth
        raise _Malformed("the entries of its tensor list carry different arguments")
    return args, config


def _entry(module: str, class_name: str, name: str, config: Mapping[str, Any],
           args: list[Any]) -> dict[str, Any]:
    """A Keras 3 op layer entry, as Keras 3's functional ``get_config`` writes one."""
    return {"module": module, "class_name": class_name, "config": {"name": name, **config},
            "registered_name": class_name, "name": name,
            "inbound_nodes": [{"args": args, "kwargs": {}}]}


def _op_entries(fn: str, name: str, node: Any, scope: _Scope) -> list[dict[str, Any]]:
    """The Keras 3 entries for one node of a Keras 2 op layer (two for a moved index)."""
    spec = TRANSLATIONS[fn]
    args, config = _node_call(spec, node, scope)
    module, class_name = spec.module, spec.class_name
    if class_name == "Matmul":
        ta, tb = config.pop("transpose_a"), config.pop("transpose_b")
        if ta or tb:  # the same product, as keras.ops.einsum writes it
            subscripts = f"...{'ji' if ta else 'ij'},...{'kj' if tb else 'jk'}->...ik"
            class_name, config = "Einsum", {"subscripts": subscripts}
    if class_name != "GetItem":
        return [_entry(module, class_name, name, {**config, **spec.fixed}, args)]
    moved, key = _index(args[1])
    if not moved:
        return [_entry(module, class_name, name, config, [args[0], key])]
    mover = scope.fresh(f"{name}_moveaxis")
    axes = {"source": list(range(-moved, 0)), "destination": list(range(moved))}
    return [_entry(_NUMPY, "Moveaxis", mover, axes, args[:1]),
            _entry(module, class_name, name, config, [_tensor([mover, 0, 0]), key])]


def _owns_input_node(layer: Any) -> bool:
    """``_fix_keras2_node_indices``'s rule: a nested Functional, or Sequential whose first layer
    has an input shape (or is the InputLayer ``_keras2_sequential_inputs`` makes), owns node 0."""
    if not isinstance(layer, dict) or layer.get("class_name") not in (
            "Functional", "Model", "Sequential"):
        return False
    layers = layer["config"].get("layers") if isinstance(layer.get("config"), dict) else None
    first = layers[0] if isinstance(layers, list) and layers else None
    first = first if isinstance(first, dict) else {}
    first_config = first.get("config")
    shaped = isinstance(first_config, dict) and any(
        k in first_config for k in ("batch_input_shape", "input_shape", "input_dim"))
    return layer["class_name"] != "Sequential" or first.get("class_name") == "InputLayer" or shaped


def _is_op(layer: Any) -> bool:
    return isinstance(layer, dict) and layer.get("class_name") in _OP_CLASSES


def _scope(layers: list[Any], label: str) -> _Scope:
    """The scope of one model's layers; each node after an op layer's first gets a new name."""
    names: list[Any] = [x.get("name") if isinstance(x, dict) else None for x in layers]
    counts = Counter(n for n in names if isinstance(n, str))
    scope = _Scope(frozenset(counts), frozenset(n for n, x in zip(names, layers, strict=True)
                                                if isinstance(n, str) and _owns_input_node(x)))
    for name, layer in zip(names, layers, strict=True):
        if not _is_op(layer):
            continue
        nodes = layer.get("inbound_nodes")
        if not isinstance(name, str) or not name or "/" in name or counts[name] > 1 or (
                not isinstance(nodes, list)):
            raise ModelLoadError(f"{label}: op layer {_text(name)!r} has no valid unique name "
                                 "or no inbound node list", _CORRUPT)
        scope.op_nodes[name] = len(nodes)
        for k in range(1, len(nodes)):
            scope.renamed[(name, k)] = scope.fresh(f"{name}_{k}")
    return scope


def _translate_layer(layer: dict[str, Any], scope: _Scope, label: str) -> list[dict[str, Any]]:
    """The Keras 3 entries (one per node) replacing one Keras 2 op layer."""
    name: str = layer["name"]  # checked by _scope
    config = layer.get("config")
    fn = config.get("function") if isinstance(config, dict) else None
    if not isinstance(fn, str) or fn not in TRANSLATIONS or (fn == _GETITEM) != (
            layer["class_name"] == "SlicingOpLambda"):
        raise ModelLoadError(
            f"{label}: layer {_text(name)!r} calls the TensorFlow function 'tf.{_text(fn)}', "
            "which has no Keras 3 equivalent gradinspect translates; refused", _HINT)
    entries = []  # none for a layer never called: nothing can refer to it
    for k, node in enumerate(layer["inbound_nodes"]):
        try:
            entries += _op_entries(fn, scope.renamed.get((name, k), name), node, scope)
        except _Refused as error:
            if isinstance(error, _Malformed):
                raise ModelLoadError(f"{label}: layer {_text(name)!r} has a malformed inbound "
                                     f"node: {error}", _CORRUPT) from None
            raise ModelLoadError(
                f"{label}: layer {_text(name)!r} calls 'tf.{_text(fn)}' with {error}, which "
                "gradinspect does not translate; refused", _HINT) from None
    return entries


def _walk(root: Any) -> Iterator[Any]:
    """Every dict and list in ``root``, each once (so shared or cyclic parts end)."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        item = stack.pop()
        if isinstance(item, dict | list) and id(item) not in seen:
            seen.add(id(item))
            yield item
            stack.extend(item.values() if isinstance(item, dict) else item)


def _translated(model: dict[str, Any], label: str) -> tuple[list[Any], _Scope] | None:
    """(the new layer list, the scope) of one model config, or None if it has no op layer."""
    layers: list[Any] = model["config"]["layers"]
    if not any(_is_op(x) for x in layers):
        return None
    scope = _scope(layers, label)
    out: list[Any] = []
    for layer in layers:
        out += _translate_layer(layer, scope, label) if _is_op(layer) else [layer]
    return out, scope


def _rename_refs(model: dict[str, Any], renamed: Mapping[tuple[str, int], str]) -> None:
    """Point references to node k > 0 of a split op layer (in layers' nodes, the model's inputs
    and outputs) at node 0 of its new layer."""
    inner = model["config"]
    roots = [x.get("inbound_nodes") for x in inner["layers"] if isinstance(x, dict)]
    for item in _walk([*roots, inner.get("input_layers"), inner.get("output_layers")]):
        if _is_ref(item) and _is_int(item[1]) and (item[0], item[1]) in renamed:
            item[0], item[1] = renamed[(item[0], item[1])], 0


def translate_tf_ops(config: Any, label: str) -> bool:
    """Rewrite every TFOpLambda/SlicingOpLambda in ``config`` (in place, any nesting) into a
    Keras 3 op layer; True if any changed. ``label`` (the file) starts every message.

    Raises ``ModelLoadError``, leaving ``config`` as it was, for a function outside
    ``TRANSLATIONS`` (naming the layer and function), an argument it does not know, a malformed
    node, an op layer outside a functional model's layers (in a Sequential, in a wrapper). Run
    before ``_fix_keras2_node_indices``; nothing that drops ``module`` keys may run after."""
    items = list(_walk(config))
    models = [x for x in items if isinstance(x, dict) and isinstance(x.get("config"), dict)
              and isinstance(x["config"].get("layers"), list) and x.get("class_name") in (
                  "Functional", "Model")]  # a Keras 3 Sequential holds no op
    in_models = {id(x) for m in models for x in m["config"]["layers"]}
    for op in items:
        if _is_op(op) and id(op) not in in_models:
            raise ModelLoadError(f"{label}: layer {_text(op.get('name'))!r} is a TensorFlow "
                                 "op outside a functional model's layers; refused", _HINT)
    done = [(m, t) for m in models if (t := _translated(m, label)) is not None]
    for model, (layers, scope) in done:  # only now that every op layer has translated
        if scope.renamed:
            _rename_refs(model, scope.renamed)  # before the op layers' entries go in
        model["config"]["layers"][:] = layers
    return bool(done)
