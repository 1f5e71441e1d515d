"""Exit codes and the exception family that maps onto them.

Every failure the tool anticipates is a ``GradInspectError`` subclass that carries its exit
status, so ``cli.terminal`` maps errors to codes in one place and nothing else decides how to exit.
"""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """Process exit codes. Documented in the README; never renumber an existing member."""

    SUCCESS = 0
    """The run completed and no finding reached ``--fail-on``."""
    FINDINGS = 1
    """The run completed and at least one finding is at or above ``--fail-on``."""
    USAGE = 2
    """Bad command-line usage (unknown option, bad value). Also used by the option parser."""
    MODEL_ERROR = 3
    """The model file is missing, unreadable, corrupt, unsupported, or has no Dense layer."""
    DATA_ERROR = 4
    """The data (or labels) file is missing, unreadable, corrupt, or does not fit the model."""
    RUN_ERROR = 5
    """The forward/backward pass itself failed (an operation raised inside TensorFlow)."""
    OUTPUT_ERROR = 6
    """The report could not be written (``--output`` path not writable)."""
    INTERRUPTED = 130
    """Interrupted by Ctrl-C (SIGINT)."""


class GradInspectError(Exception):
    """Base of every anticipated failure: a one-line message and the exit status it maps to.

    ``message`` says what is wrong (naming the file), ``hint`` says what to do.
    """

    status: ExitStatus = ExitStatus.RUN_ERROR

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        """The message and hint as the single line the CLI prints."""
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(GradInspectError):
    """An option value that parses but makes no sense (e.g. an unknown loss name)."""

    status = ExitStatus.USAGE


class ModelLoadError(GradInspectError):
    """The model could not be loaded or cannot be inspected."""

    status = ExitStatus.MODEL_ERROR


class DataError(GradInspectError):
    """The data could not be loaded or does not fit the model."""

    status = ExitStatus.DATA_ERROR


class ProbeError(GradInspectError):
    """The instrumented forward/backward pass failed; the message names the layer and step."""

    status = ExitStatus.RUN_ERROR


class OutputError(GradInspectError):
    """The report could not be written."""

    status = ExitStatus.OUTPUT_ERROR
