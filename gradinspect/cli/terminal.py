"""What reaches the terminal's stderr: the one error -> exit-code wrapper (``exit_with``: every
error one plain line and its documented code, the traceback only with ``--traceback``) and the
progress bar (only when stderr is a terminal)."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any, NoReturn

from rich.console import Console

from gradinspect.cli.options import CliConfig
from gradinspect.errors import ExitStatus, GradInspectError
from gradinspect.plaintext import plain

stderr = Console(stderr=True, highlight=False)


def progress_hook(config: CliConfig) -> Any:
    """A stderr progress bar for multi-batch runs when stderr is a terminal, else nothing."""
    if not stderr.is_terminal:
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    progress = Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(), console=stderr, transient=True,
    )
    task = progress.add_task("samples", total=None)

    def hook(done: int, total: int) -> None:
        if done < total and not progress.live.is_started:
            progress.start()
        progress.update(task, completed=done, total=total)

    return hook, progress


def fail(message: str, status: ExitStatus) -> NoReturn:
    """One line on stderr and the exit code. The message carries file names and text from
    files: it is printed as plain text (no markup), control characters escaped."""
    from rich.text import Text

    stderr.print(Text.assemble(("gradinspect:", "bold red"), " ", plain(message)),
                 soft_wrap=True, highlight=False)
    raise SystemExit(int(status))


def exit_with(body: Callable[[], ExitStatus], show_traceback: bool) -> NoReturn:
    """Run a command's body and exit with its status; every error becomes one line on stderr
    and its documented exit code (the Python traceback only with ``--traceback``)."""
    try:
        status = body()
    except KeyboardInterrupt:
        fail("interrupted", ExitStatus.INTERRUPTED)
    except GradInspectError as exc:
        if show_traceback:
            traceback.print_exc()
        fail(exc.one_line(), exc.status)
    except Exception as exc:
        internal_error(exc, show_traceback)
    raise SystemExit(int(status))


def internal_error(exc: Exception, show_traceback: bool) -> NoReturn:
    """The last line of defence: one line, never a bare traceback."""
    if show_traceback:
        traceback.print_exc()
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    fail(f"internal error: {type(exc).__name__}: {first} (rerun with --traceback and report "
          "it)", ExitStatus.RUN_ERROR)
