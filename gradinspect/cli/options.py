"""The command line's vocabulary: option enums, the one frozen ``CliConfig`` a command builds,
and the parsers of sizes, kinds and thresholds (``--threshold``, ``[tool.gradinspect]``)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from gradinspect.config import InspectOptions, LoadOptions, Thresholds
from gradinspect.distribute import DistributeOptions
from gradinspect.errors import UsageError
from gradinspect.render import OutputFormat

EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 findings at or above --fail-on; 2 bad usage; 3 model cannot be "
    "loaded; 4 data cannot be loaded or does not fit; 5 the pass failed; 6 output cannot be "
    "written; 130 interrupted."
)


GRADCHECK_DEFAULT = 5


def normalise_argv(argv: list[str]) -> list[str]:
    """``--gradcheck`` may come without K: give it the default count."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg == "--gradcheck":
            following = argv[i + 1] if i + 1 < len(argv) else ""
            if not following.isdigit():
                out.append(str(GRADCHECK_DEFAULT))
    return out


class FailOn(StrEnum):
    """Severity at which the exit code becomes 1."""

    NEVER = "never"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class LossSemantics(StrEnum):
    """Which Keras' crossentropy rules the loss follows."""

    KERAS2 = "keras2"
    KERAS3 = "keras3"


class Distribute(StrEnum):
    """Where the pass runs."""

    NONE = "none"
    MIRRORED = "mirrored"
    MULTIWORKER = "multiworker"


class Reduction(StrEnum):
    """How per-sample loss terms are combined."""

    SUM = "sum"
    MEAN = "mean"


@dataclass(frozen=True)
class CliConfig:
    """Everything one CLI run needs, parsed and checked."""

    model: Path
    data: str
    labels: str | None
    load: LoadOptions
    options: InspectOptions
    output_format: OutputFormat
    output: Path | None
    flow: bool
    plot: Path | None
    fail_on: FailOn
    details: bool | None
    show_traceback: bool
    tensorboard: Path | None = None
    step: int = 0
    distribute: DistributeOptions = field(default_factory=DistributeOptions)


_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1 << 10, "m": 1000**2,
               "mb": 1000**2, "mib": 1 << 20, "g": 1000**3, "gb": 1000**3, "gib": 1 << 30,
               "t": 1000**4, "tb": 1000**4, "tib": 1 << 40}


def parse_size(text: str, option: str = "--memory-budget") -> int:
    """``1GiB``, ``512MiB``, ``2G``, ``1e9``: a size in bytes (a whole number, at least 1)."""
    raw = text.strip().lower().replace(" ", "")
    number = raw.rstrip("kmgtib")
    unit = raw[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in _SIZE_UNITS or not value >= 1 or value * _SIZE_UNITS[unit] > 1 << 62:
        raise UsageError(f"{option} {text!r} is not a size",
                         "give bytes or a number with a unit: 512MiB, 2GiB, 1e9")
    return int(value * _SIZE_UNITS[unit])


def check_kinds(kinds: list[str]) -> tuple[str, ...]:
    from gradinspect.engine.adapters import KINDS

    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise UsageError(f"--kind {unknown[0]!r} is not a layer kind",
                         f"kinds: {', '.join(KINDS)}")
    return tuple(kinds)


def parse_thresholds(pairs: list[str], base: Thresholds) -> Thresholds:
    changes: dict[str, float] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(
                f"--threshold {pair!r}: expected NAME=VALUE", "e.g. vanishing_abs=1e-8"
            )
        try:
            changes[name.strip().replace("-", "_")] = float(value)
        except ValueError:
            raise UsageError(f"--threshold {pair!r}: {value!r} is not a number") from None
    try:
        return base.replace(**changes)
    except KeyError as exc:
        names = ", ".join(Thresholds.__dataclass_fields__)
        raise UsageError(f"unknown threshold {exc.args[0]!r}", f"known: {names}") from None


def project_thresholds(start: Path) -> Thresholds:
    """Thresholds from ``[tool.gradinspect.thresholds]`` of the nearest pyproject.toml."""
    for folder in (start, *start.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            try:
                with candidate.open("rb") as f:
                    table = tomllib.load(f).get("tool", {}).get("gradinspect", {})
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise UsageError(f"{candidate}: cannot read ({exc})") from exc
            values = table.get("thresholds", {})
            try:
                return Thresholds().replace(**{k: float(v) for k, v in values.items()})
            except (KeyError, TypeError, ValueError) as exc:
                raise UsageError(
                    f"{candidate}: bad [tool.gradinspect.thresholds] entry {exc}",
                    f"known: {', '.join(Thresholds.__dataclass_fields__)}",
                ) from None
    return Thresholds()
