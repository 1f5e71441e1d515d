"""Golden files for the table: fixed width, no colour. Regenerate on purpose with
``pytest tests/test_golden.py --update-golden`` and review the diff."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import gradinspect
from gradinspect.render.table import render_table

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["seed_a", "seed_b", "seed_c", "mnist_mlp", "cnn_small"])
def test_table_matches_golden(name: str, golden: Callable[[str, str], None],
                              monkeypatch: pytest.MonkeyPatch, tfk: object) -> None:
    monkeypatch.chdir(ROOT)
    report = gradinspect.inspect_files(f"samples/{name}.h5", f"samples/{name}_x.npy")
    text = render_table(report, width=100, color=False)
    golden(name, text)
    assert max(len(line) for line in text.splitlines()) <= 100
