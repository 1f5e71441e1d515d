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

settings.register_profile(
    "ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow],
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


def pytest_configure(config: pytest.Config) -> None:
    settings.load_profile("thorough" if config.getoption("--thorough") else "ci")


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
