"""Shared fixtures: TensorFlow imported once, samples built once per session, golden-file and
hypothesis options."""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CI_EXAMPLES = 40
settings.register_profile(
    "ci", max_examples=CI_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
settings.register_profile(
    "thorough", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
GOLDEN = Path(__file__).resolve().parent / "golden"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite tests/golden/*.txt from the current output")
    parser.addoption("--thorough", action="store_true",
                     help="run property tests with many more hypothesis examples")


LOGICAL_CPUS = 3
"""The CPU split into this many logical devices before TensorFlow runs anything, so that
tests can run MirroredStrategy over 2 and 3 replicas (other tests use the first one, as
TensorFlow's default device)."""


def pytest_configure(config: pytest.Config) -> None:
    settings.load_profile("thorough" if config.getoption("--thorough") else "ci")
    from gradinspect._tf import tf_modules

    tf, _ = tf_modules()
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(LOGICAL_CPUS)])


def slow_examples() -> Any:
    """Hypothesis settings for the slowest property tests (each example runs one pass per
    sample, finite differences on every variable, or float64 closed forms of every tensor):
    half the CI profile's examples, all of the thorough profile's. Decorators run at
    collection, after ``pytest_configure`` loaded the profile."""
    current = settings.default.max_examples
    return settings(max_examples=current if current > CI_EXAMPLES else current // 2)


def relu_classifier(keras: Any, seed: int, bias_shift: float) -> Any:
    """6 -> Dense(8, relu) 'hidden' -> Dense(3) 'logits', compiled with SGD and sparse
    crossentropy from logits; the hidden bias shifted by ``bias_shift`` (negative: some units
    dead from the start). For tests that record a real ``fit``."""
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    model = keras.Sequential([keras.Input((6,)),
                              layers.Dense(8, activation="relu", name="hidden"),
                              layers.Dense(3, name="logits")])
    w, b = model.get_layer("hidden").get_weights()
    model.get_layer("hidden").set_weights([w, b + bias_shift])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@pytest.fixture(scope="session")
def tfk() -> tuple[Any, Any]:
    """(tensorflow, keras), imported once for the whole run."""
    from gradinspect._tf import tf_modules

    return tf_modules()


@pytest.fixture(scope="session")
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    return SAMPLES


@pytest.fixture
def golden(update_golden: bool) -> Callable[[str, str], None]:
    """``golden(name, text)``: compare ``text`` with ``tests/golden/<name>.txt`` (written when
    ``--update-golden`` is given, or when the file does not exist yet, which then fails)."""

    def check(name: str, text: str) -> None:
        path = GOLDEN / f"{name}.txt"
        if update_golden or not path.exists():
            path.write_text(text, encoding="utf-8")
            if not update_golden:
                pytest.fail(f"{path} did not exist; written now, review and commit it")
        assert text == path.read_text(encoding="utf-8")

    return check


@pytest.fixture
def hide_module(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """``hide_module("matplotlib")``: from now on in this test, importing that package (or a
    submodule) raises ImportError, as when an optional extra is not installed."""

    def hide(prefix: str) -> None:
        real_import = builtins.__import__

        def fake(name: str, *args: Any, **kwargs: Any) -> Any:
            if name == prefix or name.startswith(prefix + "."):
                raise ImportError(f"No module named {prefix!r}")
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", fake)

    return hide
