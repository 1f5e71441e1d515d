"""The allow-list judges what Keras will build, not how the config spells it (issue 30).

Every spelling Keras accepts for a refused class (bare, ``layers.X`` under ``keras``,
``keras.layers``, the ``keras.src`` module path, a registered name) and for a non-modelling
function (``datasets.mnist.load_data`` under ``keras``, ``load_data`` under
``keras.datasets.mnist``, the ``keras.src`` module …) is refused in one line, with the network
patched to raise and record, ``HOME``/``KERAS_HOME`` in empty temporary folders: nothing is
fetched, nothing is written, the file is unchanged. The resolver is checked against Keras' own
``_retrieve_class_or_fn`` on every exported class and function, and a control shows the issue's
file does try to download with ``--unsafe``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from refusals import rewrite_keras_config
from test_untrusted import invoke, one_plain_line, sha

from gradinspect.errors import ExitStatus


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, tfk: Any) -> dict[str, Path]:
    """Functional x(3) -> Dense 'd' -> Dense 'out', saved: the file to rewrite into hostile
    ones (a functional config calls an inserted layer on its node's arguments as it loads)."""
    _, keras = tfk
    tmp = tmp_path_factory.mktemp("spellings")
    keras.utils.set_random_seed(3)
    x = keras.Input((3,), name="x")
    model = keras.Model(x, keras.layers.Dense(2, name="out")(keras.layers.Dense(4, name="d")(x)))
    model.save(tmp / "m.keras")
    np.save(tmp / "x.npy", np.ones((5, 3), np.float32))
    return {"dir": tmp, "model": tmp / "m.keras", "x": tmp / "x.npy"}


def _lambda(spelling: dict[str, Any], function: dict[str, Any]) -> dict[str, Any]:
    """A layer entry as the issue's file writes it: a Lambda called on a string."""
    return {**spelling, "name": "gadget",
            "config": {"name": "gadget", "arguments": {}, "function": function},
            "inbound_nodes": [{"args": [], "kwargs": {"inputs": "mnist.npz"}}]}


LOAD_DATA = {"module": "keras", "class_name": "function", "config": "datasets.mnist.load_data",
             "registered_name": None}


def _spellings(cls: str, src_module: str) -> dict[str, dict[str, Any]]:
    """Every way Keras' deserializers accept to name the exported layer ``cls``."""
    return {
        "bare": {"class_name": cls},
        "dotted_under_keras": {"module": "keras", "class_name": f"layers.{cls}",
                               "registered_name": None},
        "keras_layers": {"module": "keras.layers", "class_name": cls, "registered_name": None},
        "keras_src_module": {"module": src_module, "class_name": cls, "registered_name": None},
        "keras_src_package": {"module": "keras.src.layers", "class_name": cls,
                              "registered_name": None},
    }


CLASS_ATTACKS: dict[str, tuple[dict[str, Any], str]] = {}
for _key, _spelled in _spellings("Lambda", "keras.src.layers.core.lambda_layer").items():
    CLASS_ATTACKS[f"lambda-{_key}"] = (_lambda(_spelled, LOAD_DATA), "Lambda")
for _key, _spelled in _spellings("TFSMLayer", "keras.src.export.tfsm_layer").items():
    CLASS_ATTACKS[f"tfsm-{_key}"] = ({**_spelled, "config": {
        "name": "saved", "filepath": "/tmp/attacker_savedmodel"}}, "TFSMLayer")
for _cls, _module in (("StringLookup", "keras.src.layers.preprocessing.string_lookup"),
                      ("IntegerLookup", "keras.src.layers.preprocessing.integer_lookup"),
                      ("TextVectorization",
                       "keras.src.layers.preprocessing.text_vectorization")):
    for _key, _spelled in _spellings(_cls, _module).items():
        CLASS_ATTACKS[f"{_cls}-{_key}"] = ({**_spelled, "config": {
            "name": "lookup", "vocabulary": "/etc/passwd"}}, "/etc/passwd")
CLASS_ATTACKS["torch-dotted"] = ({"module": "keras", "class_name": "layers.TorchModuleWrapper",
                                  "registered_name": None,
                                  "config": {"name": "torch", "module": "gASV"}},
                                 "TorchModuleWrapper")
CLASS_ATTACKS["utility-class"] = ({"module": "keras", "class_name": "utils.Progbar",
                                   "registered_name": None,
                                   "config": {"name": "bar", "target": 3}}, "Progbar")

FUNCTION_ATTACKS: dict[str, tuple[dict[str, Any], str]] = {
    "dotted_config": (LOAD_DATA, "load_data"),
    "module_path": ({"module": "keras.datasets.mnist", "class_name": "function",
                     "config": "load_data", "registered_name": None}, "load_data"),
    "src_module_path": ({"module": "keras.src.datasets.mnist", "class_name": "function",
                         "config": "load_data", "registered_name": "load_data"}, "load_data"),
    "builtins_dotted": ({"module": "builtins", "class_name": "function",
                         "config": "datasets.mnist.load_data", "registered_name": "function"},
                        "load_data"),
    "get_file": ({"module": "keras", "class_name": "function", "config": "utils.get_file",
                  "registered_name": None}, "get_file"),
    "keras_utils": ({"module": "keras.utils", "class_name": "function", "config": "get_file",
                     "registered_name": None}, "get_file"),
    "application": ({"module": "keras", "class_name": "function",
                     "config": "applications.mobilenet_v2.MobileNetV2",
                     "registered_name": None},
                    "MobileNetV2"),
    "load_model": ({"module": "keras.models", "class_name": "function",
                    "config": "load_model", "registered_name": None}, "load_model"),
    "saving": ({"module": "keras", "class_name": "function", "config": "saving.load_weights",
                "registered_name": None}, "load_weights"),
    "config_api": ({"module": "keras", "class_name": "function",
                    "config": "config.enable_unsafe_deserialization", "registered_name": None},
                   "enable_unsafe_deserialization"),
    "backend_api": ({"module": "keras.backend", "class_name": "function",
                     "config": "clear_session", "registered_name": None}, "clear_session"),
    "preprocessing": ({"module": "keras.preprocessing.image", "class_name": "function",
                       "config": "load_img", "registered_name": None}, "load_img"),
    "control_flow_op": ({"module": "keras.ops", "class_name": "function",
                         "config": "while_loop", "registered_name": None}, "while_loop"),
}


@pytest.fixture
def sealed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """HOME and KERAS_HOME empty; every way out to the network raises and is recorded."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KERAS_HOME", str(home / ".keras"))
    attempts: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(repr(args[:2]))
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return {"home": home, "attempts": attempts}


def _hostile(base: dict[str, Path], name: str, entry: dict[str, Any] | None = None,
             activation: dict[str, Any] | None = None) -> Path:
    def edit(config: dict[str, Any]) -> None:
        layers = config["config"]["layers"]
        if entry is not None:
            layers.insert(1, entry)
        if activation is not None:
            layers[1]["config"]["activation"] = activation

    return rewrite_keras_config(base["model"], base["dir"] / f"{name}.keras", edit)


def _refused(path: Path, base: dict[str, Path], sealed: dict[str, Any],
             *needles: str) -> None:
    before = sha(path)
    one_plain_line(invoke(path, base["x"]), ExitStatus.MODEL_ERROR, *needles)
    assert sha(path) == before
    assert list(sealed["home"].iterdir()) == [], "nothing may be written in HOME"
    assert sealed["attempts"] == [], "no network call may be attempted"


def test_the_issues_file_is_refused_naming_gadget_lambda_and_load_data(
        base: dict[str, Path], sealed: dict[str, Any]) -> None:
    hostile = _hostile(base, "gadget", _lambda(
        {"module": "keras", "class_name": "layers.Lambda", "registered_name": None},
        LOAD_DATA))
    _refused(hostile, base, sealed, "'gadget'", "Lambda", "load_data", "--unsafe")


def test_with_unsafe_the_same_file_reaches_for_the_network(
        base: dict[str, Path], sealed: dict[str, Any]) -> None:
    """The control: the payload is live, so the refusals above are what stops it."""
    hostile = _hostile(base, "gadget_control", _lambda(
        {"module": "keras", "class_name": "layers.Lambda", "registered_name": None},
        LOAD_DATA))
    result = invoke(hostile, base["x"], "--unsafe")
    assert result.exit_code == ExitStatus.MODEL_ERROR, result.stderr
    assert sealed["attempts"], "with --unsafe Keras tries to download mnist.npz"


@pytest.mark.parametrize("attack", sorted(CLASS_ATTACKS))
def test_every_spelling_of_a_refused_class(base: dict[str, Path], sealed: dict[str, Any],
                                           attack: str) -> None:
    entry, needle = CLASS_ATTACKS[attack]
    _refused(_hostile(base, attack, entry), base, sealed, needle, "--unsafe")


@pytest.mark.parametrize("attack", sorted(FUNCTION_ATTACKS))
def test_every_spelling_of_a_non_modelling_function(base: dict[str, Path],
                                                    sealed: dict[str, Any],
                                                    attack: str) -> None:
    function, needle = FUNCTION_ATTACKS[attack]
    _refused(_hostile(base, f"fn-{attack}", activation=function), base, sealed,
             "layer 'd'", needle, "--unsafe")


@pytest.fixture
def registered(tfk: Any) -> Iterator[dict[str, Any]]:
    """A Lambda subclass and a file-reading function in Keras' global registry, as an
    imported package could leave them; removed afterwards."""
    _, keras = tfk
    from keras.src.saving import object_registration

    class Sneaky(keras.layers.Lambda):
        pass

    def reader(x: Any) -> Any:
        raise AssertionError("a registered non-modelling function ran")

    entries = {"pkg>Sneaky": Sneaky, "pkg>reader": reader}
    object_registration.GLOBAL_CUSTOM_OBJECTS.update(entries)
    yield entries
    for key in entries:
        object_registration.GLOBAL_CUSTOM_OBJECTS.pop(key, None)


def test_registered_names_resolve_to_what_is_registered(
        base: dict[str, Path], sealed: dict[str, Any], registered: dict[str, Any]) -> None:
    # a Dense by its spelling, a Lambda subclass by its registered name
    entry = _lambda({"module": "keras.layers", "class_name": "Dense",
                     "registered_name": "pkg>Sneaky"}, LOAD_DATA)
    _refused(_hostile(base, "registered_class", entry), base, sealed, "'gadget'", "pkg>Sneaky",
             "runs code")
    function = {"module": "builtins", "class_name": "function", "config": "pkg>reader",
                "registered_name": "function"}
    _refused(_hostile(base, "registered_fn", activation=function), base, sealed, "pkg>reader",
             "not a modelling function")
    # the registered name as a plain string (initializers.get("pkg>reader") resolves it)
    _refused(_hostile(base, "registered_string", activation="pkg>reader"),  # type: ignore[arg-type]
             base, sealed, "'pkg>reader'")


def test_names_that_need_an_import_are_refused(base: dict[str, Path],
                                               sealed: dict[str, Any]) -> None:
    entry = {"module": "keras.src.not_a_loaded_module", "class_name": "Thing",
             "registered_name": None, "config": {"name": "thing"}}
    assert "keras.src.not_a_loaded_module" not in sys.modules
    _refused(_hostile(base, "needs_import", entry), base, sealed, "not_a_loaded_module",
             "not loaded")
    assert "keras.src.not_a_loaded_module" not in sys.modules


def test_the_resolver_finds_what_keras_finds(tfk: Any) -> None:
    """Every class and function Keras exports, spelled as ``module`` + ``class_name`` (dotted
    under ``keras``, by its export path, by its definition module): the resolver's main
    lookup returns the object Keras' own ``_retrieve_class_or_fn`` returns."""
    from keras.src import api_export
    from keras.src.saving import serialization_lib

    from gradinspect.io.resolve import Resolver

    resolver = Resolver()
    checked = 0
    for name, obj in sorted(api_export.REGISTERED_NAMES_TO_OBJS.items()):
        if not callable(obj) or name in serialization_lib.NON_MODELING_APIS:
            continue
        head, _, tail = name.rpartition(".")
        is_fn = not isinstance(obj, type)
        spellings = [("keras", name.removeprefix("keras.")), (head, tail)]
        if not is_fn:
            spellings.append((obj.__module__, obj.__name__))
        for module, spelled in spellings:
            node = ({"module": module, "class_name": "function", "config": spelled,
                     "registered_name": None} if is_fn else
                    {"module": module, "class_name": spelled, "config": {},
                     "registered_name": None})
            try:
                expected = serialization_lib._retrieve_class_or_fn(
                    spelled, None, module, "function" if is_fn else "class", node, {})
            except (TypeError, ValueError):
                expected = None
            main, needs = resolver.retrieve(node)
            assert needs is None, (module, spelled)
            got = main.obj if main else None
            assert got is expected, (module, spelled, got, expected)
            checked += 1
    assert checked > 2000


def test_every_admitted_function_is_a_modelling_function(tfk: Any) -> None:
    """The closed list holds activations, losses, metrics, initializers, regularizers,
    constraints, keras.ops and the merge functions: none from datasets, utils, models, saving,
    config, backend, applications, preprocessing, and none of the control-flow ops."""
    from keras.src import api_export

    from gradinspect.io.resolve import keras_tables

    tables = keras_tables()
    exported = api_export.REGISTERED_NAMES_TO_OBJS
    for admitted in ("keras.activations.relu", "keras.activations.gelu", "keras.ops.add",
                     "keras.ops.softmax", "keras.metrics.mean_squared_error",
                     "keras.layers.add", "keras.layers.concatenate"):
        assert id(exported[admitted]) in tables.functions, admitted
    for name in tables.functions.values():
        if name.startswith("keras.") and not name.startswith("keras.src."):
            assert name.split(".")[1] in ("activations", "losses", "metrics", "initializers",
                                          "regularizers", "constraints", "ops", "layers"), name
    import keras

    for refused in ("datasets.mnist.load_data", "utils.get_file", "models.load_model",
                    "saving.load_weights", "ops.while_loop", "ops.cond", "ops.scan",
                    "activations.deserialize", "losses.get", "applications.MobileNetV2",
                    "config.enable_unsafe_deserialization", "backend.clear_session",
                    "preprocessing.image.load_img", "layers.serialize", "layers.Input"):
        obj: Any = keras
        for part in refused.split("."):
            obj = getattr(obj, part)
        assert id(obj) not in tables.functions, refused


def test_a_cli_run_writes_nothing_in_home(base: dict[str, Path], tmp_path: Path) -> None:
    """In a fresh process (Keras not yet imported), with no keras.json anywhere: neither a
    refused file nor a normal run creates ~/.keras or $KERAS_HOME. (Keras imports matplotlib
    when it is installed, and matplotlib keeps its font cache in ~/.cache and ~/.config:
    that one cache is allowed.)"""
    home = tmp_path / "home"
    home.mkdir()
    hostile = _hostile(base, "gadget_subprocess", _lambda(
        {"module": "keras", "class_name": "layers.Lambda", "registered_name": None},
        LOAD_DATA))
    env = {**os.environ, "HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("KERAS_HOME", None)
    for model, status in ((hostile, ExitStatus.MODEL_ERROR), (base["model"], 0)):
        run = subprocess.run([sys.executable, "-m", "gradinspect", str(model), str(base["x"]),
                              "--json"], capture_output=True, text=True, env=env, check=False,
                             cwd=tmp_path)
        assert run.returncode == status, run.stderr
        written = [p.relative_to(home) for p in home.rglob("*") if p.is_file()]
        assert all(p.parts[1] == "matplotlib" for p in written), written
    assert json.loads(run.stdout)["layers"]
