"""What Keras will build from each name in a model config, and whether that object is admitted.

The allow-list is applied to the object a name *resolves to*, never to how the name is spelled:
``{"module": "keras", "class_name": "layers.Lambda"}``, ``keras.src.layers.core.lambda_layer``
+ ``Lambda`` and the Keras 2 bare ``Lambda`` are one class, and it is refused the same way.

Resolution follows Keras' own lookup rules (``keras/src/saving/serialization_lib.py``:
``deserialize_keras_object`` and ``_retrieve_class_or_fn``; the legacy ``.h5`` deserializer in
``keras/src/legacy/saving/serialization.py``; the ``module_objects`` path that
``activations.get`` / ``initializers.get`` … take), with one difference: where Keras would
import a module named by the config, this module only looks in modules that are already
imported, and a name that needs an import is refused. Since a config can reach Keras by more
than one of these paths, every object any path yields must be admitted.

Admitted:

- **classes** that Keras or its model packages (keras-hub, keras-cv, keras-nlp: the packages
  Keras' own safe mode takes classes from) define and that are modelling objects: layers and
  models (keras-hub's backbones, tasks, tokenizers and preprocessors among them), losses,
  metrics, optimizers and learning-rate schedules, initializers, regularizers, constraints,
  dtype policies, quantizers — except ``Lambda``, ``TFSMLayer``, ``TorchModuleWrapper``,
  ``JaxLayer``/``FlaxLayer`` (each runs code the file names or holds), and layers whose
  vocabulary, merges or proto argument is a file path (lookup layers, tokenizers; a saved
  model keeps these among its own assets);
- **operations**: the classes Keras saves for ``x + y``, ``x[:, 0]`` or a ``keras.ops`` call in
  a functional model (``Add``, ``GetItem``, ``Mean`` from ``keras.src.ops``), each admitted
  through its function (below), so the control-flow ops stay out;
- **functions** from a closed list: Keras activations, losses, metrics, initializers,
  regularizers and constraints, ``keras.ops`` (without the control-flow ops, which call
  functions they are given) and the functional forms of the merge layers; nothing in Keras'
  ``NON_MODELING_APIS``, no ``get``/``serialize``/``deserialize``;
- everything the user passed with ``--custom-objects`` (their own code, trusted by passing it).

Anything else — ``keras.datasets.*``, ``keras.utils.*``, ``keras.applications.*``, an object
from any other module, a name nothing resolves — is refused. Imports Keras (the caller has
already brought TensorFlow in through ``gradinspect._tf``).
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

KERAS_PACKAGES = ("keras", "keras_hub", "keras_cv", "keras_nlp")
"""Packages whose modules Keras' deserializer imports by the name a config gives."""
FUNCTION_NAMESPACES = ("activations", "losses", "metrics", "initializers", "regularizers",
                       "constraints", "ops")
"""``keras.<namespace>.*``: where admitted functions are exported."""
CALLBACK_OPS = frozenset({"associative_scan", "cond", "custom_gradient", "fori_loop", "jvp",
                          "map", "scan", "switch", "vectorized_map", "while_loop"})
"""``keras.ops`` that call functions they are given: control flow, not a modelling step."""
OPS_PREFIX = "keras.src.ops."
"""Where Keras defines its operations; a functional model saves ``x + y`` as ``Add`` from here."""
FILE_ARGUMENTS = frozenset({"vocabulary", "merges", "proto"})
"""Config keys of lookup layers and tokenizers (Keras' and keras-hub's) that take either the data
itself or the path of a file to read it from; a string there is a path."""
NOT_MODELLING_NAMES = frozenset({"get", "serialize", "deserialize"})
MERGE_FUNCTIONS = ("add", "average", "concatenate", "dot", "maximum", "minimum", "multiply",
                   "subtract")
"""``keras.layers.add`` …: in the legacy deserializer's table, and modelling functions."""
DATA_CLASSES = frozenset({"__keras_tensor__", "__tensor__", "__numpy__", "__bytes__",
                          "__ellipsis__", "__slice__"})
"""Serialized values, not objects: Keras turns them into tensors, arrays, bytes, slices."""


@dataclass(frozen=True)
class Found:
    """One object a config entry resolves to, and the rule that found it."""

    obj: Any
    """The class or function Keras would use."""
    how: str
    """Which lookup found it, for messages: ``keras.layers.Lambda``, ``registered 'pkg>X'``."""


@dataclass(frozen=True)
class Refusal:
    """Why an entry is refused."""

    reason: str
    """What is wrong with it, as the end of a sentence: ``runs code …``."""
    resolved: str = ""
    """The dotted path it resolved to; empty when nothing resolved."""
    unknown: bool = False
    """Nothing resolved it: an object the user may own (then ``--custom-objects`` is the fix)."""
    hint: str = ""
    """What to do instead of the usual hint, when that is known (install a package)."""


class Keras:
    """Keras' own tables, read once: exported names, the custom-object registry, the legacy
    layer table, the ``module_objects`` tables, and the classes the rules test against."""

    def __init__(self) -> None:
        import keras
        from keras.src import (
            activations,
            api_export,
            constraints,
            dtype_policies,
            initializers,
            layers,
            losses,
            metrics,
            models,
            optimizers,
            quantizers,
            regularizers,
        )
        from keras.src.export.tfsm_layer import TFSMLayer
        from keras.src.layers.preprocessing.index_lookup import IndexLookup
        from keras.src.layers.preprocessing.text_vectorization import TextVectorization
        from keras.src.saving import object_registration, serialization_lib
        from keras.src.saving.keras_saveable import KerasSaveable

        self.symbols: Mapping[str, Any] = api_export.REGISTERED_NAMES_TO_OBJS
        self.saveable: type = KerasSaveable  # what Keras takes from an imported module
        self.registry: Mapping[str, Any] = object_registration.GLOBAL_CUSTOM_OBJECTS
        self.builtin_modules = tuple(sorted(serialization_lib.BUILTIN_MODULES))
        self.non_modelling = frozenset(serialization_lib.NON_MODELING_APIS)
        self.legacy_objects: dict[str, Any] = {
            **vars(layers), "InputLayer": layers.InputLayer, "Functional": models.Functional,
            "Model": models.Model, "Sequential": models.Sequential}
        self.module_objects: tuple[Mapping[str, Any], ...] = tuple(
            m.ALL_OBJECTS_DICT for m in (activations, constraints, dtype_policies, initializers,
                                         losses, metrics, optimizers, quantizers, regularizers))
        self.layer: type = keras.layers.Layer
        self.operation: type = keras.Operation  # layers, models and the op layers
        self.modelling_bases: tuple[type, ...] = (
            keras.layers.Layer, keras.losses.Loss, keras.metrics.Metric,
            keras.optimizers.Optimizer, keras.optimizers.schedules.LearningRateSchedule,
            keras.initializers.Initializer, keras.regularizers.Regularizer,
            keras.constraints.Constraint, keras.dtype_policies.DTypePolicy,
            keras.quantizers.Quantizer)
        code: list[type] = [keras.layers.Lambda, TFSMLayer, keras.layers.TorchModuleWrapper]
        for name in ("JaxLayer", "FlaxLayer"):
            if isinstance(getattr(keras.layers, name, None), type):
                code.append(getattr(keras.layers, name))
        self.code_classes = tuple(code)
        self.lookup_classes: tuple[type, ...] = (IndexLookup, TextVectorization)
        self.functions = self._modelling_functions()
        self.operations = self._modelling_operations()

    def _modelling_functions(self) -> dict[int, str]:
        """id -> exported name of every admitted function."""
        admitted: dict[int, str] = {}
        for name, obj in self.symbols.items():
            parts = name.split(".")
            if (len(parts) >= 3 and parts[1] in FUNCTION_NAMESPACES and callable(obj)
                    and not inspect.isclass(obj) and name not in self.non_modelling
                    and parts[-1] not in NOT_MODELLING_NAMES
                    and not (parts[1] == "ops" and parts[-1] in CALLBACK_OPS)):
                admitted.setdefault(id(obj), name)
        for table in self.module_objects:
            for key, obj in table.items():
                if inspect.isfunction(obj):
                    admitted.setdefault(id(obj), f"{obj.__module__}.{key}")
        for key in MERGE_FUNCTIONS:
            obj = self.legacy_objects.get(key)
            if inspect.isfunction(obj):
                admitted.setdefault(id(obj), f"keras.layers.{key}")
        return admitted

    def _modelling_operations(self) -> dict[int, str]:
        """id -> the admitted function behind each operation class Keras saves for a tensor
        operator or a ``keras.ops`` call in a functional model (``Add`` is what ``ops.add``
        creates on a symbolic tensor). A class is admitted through its function: the function of
        its module whose name, without underscores, is the class name (``GetItem`` ->
        ``get_item``, ``RGBToHSV`` -> ``rgb_to_hsv``) and that is itself admitted, so the
        control-flow ops (``Cond``, ``WhileLoop`` ...), which call functions they are given, and
        everything on Keras' non-modelling list stay out."""
        from keras.src.ops.operation import Operation

        admitted: dict[int, str] = {}
        for name, module in list(sys.modules.items()):
            if not name.startswith(OPS_PREFIX) or module is None:
                continue
            members = vars(module)
            by_key = {k.replace("_", "").lower(): v for k, v in members.items()
                      if inspect.isfunction(v) and id(v) in self.functions}
            for cls_name, cls in members.items():
                if inspect.isclass(cls) and issubclass(cls, Operation) and \
                        cls.__module__ == name and not issubclass(cls, self.layer):
                    fn = by_key.get(cls_name.lower())
                    if fn is not None:
                        admitted[id(cls)] = self.functions[id(fn)]
        return admitted

    def path(self, obj: Any) -> str:
        """The public dotted name of ``obj`` where Keras exports it, else its definition."""
        from keras.src import api_export

        name = api_export.get_name_from_symbol(obj)
        if name:
            return str(name)
        module = getattr(obj, "__module__", None) or type(obj).__module__
        return f"{module}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


PACKAGE_DISTRIBUTIONS = {"keras_hub": "pip install keras-hub", "keras_cv": "pip install keras-cv",
                         "keras_nlp": "pip install keras-nlp"}


def import_model_packages(config: Any) -> None:
    """Import the Keras model packages (keras-hub, keras-cv, keras-nlp) that ``config`` names in
    a ``module`` or ``registered_name`` and that are installed: their classes register and their
    modules load, so the allow-list finds them where Keras' loader would. Installed packages
    are the user's own code; the file only picks among them."""
    import importlib
    import importlib.util

    wanted: set[str] = set()
    stack: list[Any] = [config]
    budget = 1_000_000  # entries looked at; a bigger config is refused by the scan anyway
    while stack and budget > 0:
        node = stack.pop()
        budget -= 1
        if isinstance(node, dict):
            for key in ("module", "registered_name"):
                value = node.get(key)
                if isinstance(value, str):
                    wanted.add(value.split(">", 1)[0].split(".", 1)[0])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    for package in sorted(wanted & set(KERAS_PACKAGES) - {"keras"}):
        if package not in sys.modules and importlib.util.find_spec(package) is not None:
            importlib.import_module(package)


@functools.cache
def keras_tables() -> Keras:
    """The tables of the Keras that is imported (read once per process)."""
    return Keras()


def _file_argument(inner: Any) -> tuple[str, str] | None:
    """The first of ``FILE_ARGUMENTS`` that ``inner`` (an object's config) sets to a string."""
    if not isinstance(inner, dict):
        return None
    for key in sorted(FILE_ARGUMENTS):
        if isinstance(inner.get(key), str):
            return key, inner[key]
    return None


class Resolver:
    """Resolves config entries to objects and judges them, for one load: ``custom`` are the
    objects passed with ``--custom-objects`` (name -> object), trusted along with everything
    defined in their modules."""

    def __init__(self, custom: Mapping[str, Any] | None = None) -> None:
        self.keras = keras_tables()
        self.custom = dict(custom or {})
        self.custom_ids = {id(o) for o in self.custom.values()}
        self.custom_modules = {str(getattr(o, "__module__", "")) for o in self.custom.values()}
        self.custom_modules.discard("")

    # ------------------------------------------------------------ lookups

    def _registered(self, key: Any) -> Any:
        """Keras' ``get_registered_object(key, custom_objects)``: the user's objects and the
        global registry of ``register_keras_serializable``."""
        if not isinstance(key, str):
            return None
        if key in self.keras.registry:
            return self.keras.registry[key]
        return self.custom.get(key)

    def _loaded_module_attr(self, module: str, name: str) -> tuple[Any, bool]:
        """``vars(importlib.import_module(module)).get(name)`` without importing: (object,
        whether the module had to be imported)."""
        mod = sys.modules.get(module)
        if mod is None:
            return None, True
        return vars(mod).get(name), False

    def retrieve(self, node: Mapping[str, Any]) -> tuple[Found | None, str | None]:
        """``serialization_lib._retrieve_class_or_fn``: the first lookup that succeeds, or the
        module it would have had to import."""
        cls = node["class_name"]
        module = node.get("module")
        is_fn = cls == "function"
        name = node.get("config") if is_fn else cls
        if cls == "__typespec__":
            name = node.get("spec_name")
        if not isinstance(name, str):
            return None, None
        key = name if is_fn else node.get("registered_name", cls)
        obj = self._registered(key)
        if obj is not None:
            return Found(obj, f"registered {key!r}"), None
        if not isinstance(module, str) or not module:
            return None, None
        if module == "keras" or module.startswith("keras."):
            api_name = f"{module}.{name}"
            obj = self.keras.symbols.get(api_name)
            if obj is not None or api_name in self.keras.non_modelling:
                return Found(obj, api_name), None
        if is_fn and module == "builtins":
            for mod in self.keras.builtin_modules:
                obj = self.keras.symbols.get(f"keras.{mod}.{name}")
                if obj is not None:
                    return Found(obj, f"keras.{mod}.{name}"), None
            if ">" not in name:  # Keras <= 3.6 saved registered functions by bare name
                for key2, obj in {**self.custom, **self.keras.registry}.items():
                    if key2.endswith(f">{name}"):
                        return Found(obj, f"registered {key2!r}"), None
        if module.split(".", 1)[0] in KERAS_PACKAGES:
            obj, needs_import = self._loaded_module_attr(module, name)
            if needs_import:
                return None, module
            if isinstance(obj, type) and issubclass(obj, self.keras.saveable):
                return Found(obj, f"{module}.{name}"), None
        return None, None

    def _other_paths(self, node: Mapping[str, Any]) -> list[Found]:
        """The legacy deserializer (``class_name`` in the registry, then in Keras' layer table)
        and the ``module_objects`` path of ``activations.get`` & co."""
        cls = node["class_name"]
        inner = node.get("config")
        found: list[Found] = []
        keys = {cls, node.get("registered_name"), inner if isinstance(inner, str) else None}
        for name in sorted(k for k in keys if isinstance(k, str)):
            obj = self._registered(name)
            if obj is not None:
                found.append(Found(obj, f"registered {name!r}"))
        key: Any
        if cls == "function":
            module = node.get("module")
            key = inner if module == "builtins" else node.get("registered_name")
        else:
            key = cls
            if key in self.keras.legacy_objects:
                found.append(Found(self.keras.legacy_objects[key], f"keras.layers.{key}"))
        if isinstance(key, str):
            for table in self.keras.module_objects:
                if key in table:
                    found.append(Found(table[key], self.keras.path(table[key])))
        return found

    def resolve(self, node: Mapping[str, Any]) -> tuple[list[Found], str | None]:
        """Every object Keras could build from ``node`` (a dict with a string ``class_name``),
        and the module the main lookup would have had to import (``None`` if none)."""
        main, needs = self.retrieve(node)
        found = [main] if main is not None else []
        seen = {id(f.obj) for f in found}
        for other in self._other_paths(node):
            if id(other.obj) not in seen:
                seen.add(id(other.obj))
                found.append(other)
        return found, needs

    # ------------------------------------------------------------ judging

    def _trusted(self, obj: Any) -> bool:
        return id(obj) in self.custom_ids or \
            str(getattr(obj, "__module__", "")) in self.custom_modules

    def judge_object(self, obj: Any, inner: Any) -> Refusal | None:
        """``None`` if ``obj`` (with its ``config`` ``inner``) is admitted, else why not."""
        k = self.keras
        if obj is None:
            return Refusal("is not a modelling API (Keras' own list of non-modelling APIs)")
        if self._trusted(obj):
            return None
        where = k.path(obj)
        if inspect.isclass(obj):
            if issubclass(obj, k.code_classes):
                return Refusal("runs code stored in or named by the file when the model is "
                               "loaded or called", where)
            named_file = _file_argument(inner)
            if named_file is not None and issubclass(obj, k.layer):
                key, value = named_file
                return Refusal(f"reads its {key} from the file {value!r} (no file outside the "
                               "model is read; a saved model keeps it among its own assets)",
                               where)
            if id(obj) in k.operations:
                return None  # the class behind an admitted keras.ops function
            package = str(obj.__module__).split(".", 1)[0]
            if package in KERAS_PACKAGES and "." in str(obj.__module__) and issubclass(
                    obj, k.modelling_bases):
                return None
            return Refusal("is not a Keras layer, model, operation, loss, metric, optimizer, "
                           "initializer, regularizer, constraint or dtype policy", where)
        if callable(obj) and id(obj) in k.functions:
            return None
        if callable(obj):
            return Refusal("is not a modelling function (Keras activations, keras.ops, losses, "
                           "metrics, initializers, regularizers, constraints)", where)
        return Refusal(f"is a {type(obj).__name__}, not a class or function", where)

    def judge(self, node: Mapping[str, Any]) -> tuple[list[Found], Refusal | None]:
        """Resolve ``node`` and judge every object it may become."""
        cls = node["class_name"]
        if cls in DATA_CLASSES:
            return [], None
        if cls == "__lambda__":
            return [], Refusal("is Python bytecode stored in the file (a lambda)")
        found, needs = self.resolve(node)
        if not found:
            if needs is not None:
                package = needs.split(".", 1)[0]
                if package in KERAS_PACKAGES and package not in sys.modules:
                    return [], Refusal(
                        f"comes from {package}, which is not installed",
                        hint=f"install it ({PACKAGE_DISTRIBUTIONS.get(package, package)}; "
                             "pip install 'gradinspect[hub]' brings keras-hub)")
                return [], Refusal(f"can only be found by importing the module {needs!r}, "
                                   "which is not loaded (nothing a config names is imported)")
            return [], Refusal("resolves to nothing Keras or --custom-objects provides",
                               unknown=True)
        for f in found:
            refusal = self.judge_object(f.obj, node.get("config"))
            if refusal is not None:
                where = refusal.resolved or f.how
                if f.how.startswith("registered"):
                    where = f"{where} ({f.how})"
                return found, Refusal(refusal.reason, where)
        return found, None

    def judge_string(self, value: str, config_value: bool) -> Refusal | None:
        """A string Keras may turn into an object: a name in the custom-object registry
        (anywhere: ``initializers.get("pkg>X")`` resolves it), and, for a direct value of an
        object's config (``config_value``, the key not ``name``), a function of Keras' legacy
        layer table (the ``.h5`` deserializer swaps such strings for the function)."""
        obj = self._registered(value)
        if obj is None and config_value:
            legacy = self.keras.legacy_objects.get(value)
            obj = legacy if inspect.isfunction(legacy) else None
        return None if obj is None else self.judge_object(obj, None)

    def is_layer(self, found: Iterable[Found]) -> bool:
        """Whether an entry builds a layer, model or operation of a functional graph (its
        ``name`` then names it in messages)."""
        return any(inspect.isclass(f.obj) and issubclass(f.obj, self.keras.operation)
                   for f in found)
