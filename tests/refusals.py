"""Shared by the tests of refused and hostile files: a .keras archive with its config edited,
and the check that a refusal is one plain line with its documented exit code."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from gradinspect.errors import ExitStatus


def rewrite_keras_config(src: Path, dst: Path, edit: Any) -> Path:
    """A copy of a .keras archive whose config.json went through ``edit``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "config.json":
                config = json.loads(data)
                edit(config)
                data = json.dumps(config).encode()
            zout.writestr(info, data)
    return dst


def one_plain_line(result: Any, status: ExitStatus, *needles: str) -> str:
    """The documented exit code, one line on stderr, no traceback, no raw escape byte, each
    needle in that line; returns the line."""
    assert result.exit_code == status, (result.exit_code, result.stderr, result.stdout)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "\x1b" not in result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]
