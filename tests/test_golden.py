"""Golden files for the table: fixed width, no colour. Regenerate on purpose with
``pytest tests/test_golden.py --update-golden`` and review the diff."""

from __future__ import annotations

from pathlib import Path

import pytest

import gradinspect
from gradinspect.render.table import render_table

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"


@pytest.mark.parametrize("name", ["seed_a", "seed_b", "seed_c", "mnist_mlp", "cnn_small"])
def test_table_matches_golden(name: str, update_golden: bool, monkeypatch: pytest.MonkeyPatch,
                              tfk: object) -> None:
    monkeypatch.chdir(ROOT)
    report = gradinspect.inspect_files(f"samples/{name}.h5", f"samples/{name}_x.npy")
    text = render_table(report, width=100, color=False)
    golden = GOLDEN / f"{name}.txt"
    if update_golden or not golden.exists():
        golden.write_text(text, encoding="utf-8")
        if not update_golden:
            pytest.fail(f"{golden} did not exist; written now, review and commit it")
    assert text == golden.read_text(encoding="utf-8")
    assert max(len(line) for line in text.splitlines()) <= 100
