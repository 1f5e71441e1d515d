"""What reaches stdout and files: the report in the chosen format (matched exhaustively),
``--output`` written atomically, ``--plot``, and the exit status the findings decide."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, assert_never

from rich.console import Console

from gradinspect.cli.options import CliConfig, FailOn
from gradinspect.errors import ExitStatus, OutputError, UsageError
from gradinspect.records import Severity
from gradinspect.render import OutputFormat
from gradinspect.report import Report


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename: never a torn file."""
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror})", "check the folder") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def emit(report: Report, config: CliConfig) -> None:
    """Print the report on stdout in the chosen format, and write ``--output``."""
    from gradinspect.render.json import render_json

    if config.output is not None:
        try:
            write_atomic(config.output, render_json(report))
        except OSError as exc:
            raise OutputError(f"{config.output}: cannot write ({exc})") from exc
    if config.plot is not None:
        from gradinspect.render.flow import write_plot

        write_plot(report, config.plot)
    fmt = config.output_format
    if fmt is OutputFormat.JSON:
        sys.stdout.write(render_json(report))
    elif fmt is OutputFormat.MARKDOWN:
        from gradinspect.render.markdown import render_markdown

        sys.stdout.write(render_markdown(report))
    elif fmt is OutputFormat.TABLE:
        from gradinspect.render.table import report_renderable

        out = wide_console()
        out.print(report_renderable(report, details=config.details))
        if config.flow:
            from gradinspect.render.flow import flow_renderable

            out.print(flow_renderable(report))
    else:
        assert_never(fmt)
    sys.stdout.flush()


def output_format(json_out: bool, markdown: bool) -> OutputFormat:
    """``--json`` or ``--markdown`` (not both), else tables."""
    if json_out and markdown:
        raise UsageError("--json and --markdown both ask for stdout", "pass one of them")
    return (OutputFormat.JSON if json_out else OutputFormat.MARKDOWN if markdown
            else OutputFormat.TABLE)


def wide_console() -> Console:
    """stdout for tables: the terminal's width, at least 100 columns."""
    return Console(highlight=False, width=max(100, Console().width))


def show(json_out: bool, as_json: Callable[[], str], renderable: Callable[[], Any]) -> None:
    """A command's result on stdout: its JSON text, or its table."""
    if json_out:
        sys.stdout.write(as_json())
    else:
        wide_console().print(renderable())


def exit_status(report: Report, fail_on: FailOn) -> ExitStatus:
    """``FINDINGS`` when a finding reaches ``--fail-on``, else ``SUCCESS``."""
    if fail_on is FailOn.NEVER:
        return ExitStatus.SUCCESS
    threshold = Severity(fail_on.value).rank
    worst = report.worst_severity()
    return ExitStatus.FINDINGS if worst is not None and worst.rank >= threshold else (
        ExitStatus.SUCCESS
    )
