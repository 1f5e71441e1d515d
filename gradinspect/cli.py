"""The command line: options -> one frozen config -> the API -> a renderer -> an exit code.

The only module that prints to the terminal or exits. TensorFlow is never imported at module
level (nor by anything imported here at module level), so ``--help`` and ``--version`` are
instant.
"""

from __future__ import annotations

import os
import sys
import tempfile
import tomllib
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, assert_never

import typer
from rich.console import Console

from gradinspect import __version__
from gradinspect.config import InspectOptions, LoadOptions, Thresholds
from gradinspect.distribute import DEFAULT_TIMEOUT, DistributeOptions
from gradinspect.errors import ExitStatus, GradInspectError, OutputError, UsageError
from gradinspect.plaintext import plain
from gradinspect.render import OutputFormat
from gradinspect.report import Report, Severity

EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 findings at or above --fail-on; 2 bad usage; 3 model cannot be "
    "loaded; 4 data cannot be loaded or does not fit; 5 the pass failed; 6 output cannot be "
    "written; 130 interrupted."
)


GRADCHECK_DEFAULT = 5


def _normalise_argv(argv: list[str]) -> list[str]:
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


stderr = Console(stderr=True, highlight=False)

def _typer_app() -> typer.Typer:
    """One configuration for the three commands (inspect, diff, timeline)."""
    return typer.Typer(
        add_completion=False,
        rich_markup_mode=None,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )


app = _typer_app()


def _version_callback(value: bool) -> None:
    if value:
        print(f"gradinspect {__version__}")
        raise typer.Exit(0)


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


def _check_kinds(kinds: list[str]) -> tuple[str, ...]:
    from gradinspect.engine.adapters import KINDS

    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise UsageError(f"--kind {unknown[0]!r} is not a layer kind",
                         f"kinds: {', '.join(KINDS)}")
    return tuple(kinds)


def _parse_thresholds(pairs: list[str], base: Thresholds) -> Thresholds:
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

        out = _wide_console()
        out.print(report_renderable(report, details=config.details))
        if config.flow:
            from gradinspect.render.flow import flow_renderable

            out.print(flow_renderable(report))
    else:
        assert_never(fmt)
    sys.stdout.flush()


def _output_format(json_out: bool, markdown: bool) -> OutputFormat:
    """``--json`` or ``--markdown`` (not both), else tables."""
    if json_out and markdown:
        raise UsageError("--json and --markdown both ask for stdout", "pass one of them")
    return (OutputFormat.JSON if json_out else OutputFormat.MARKDOWN if markdown
            else OutputFormat.TABLE)


def _wide_console() -> Console:
    """stdout for tables: the terminal's width, at least 100 columns."""
    return Console(highlight=False, width=max(100, Console().width))


def _show(json_out: bool, as_json: Callable[[], str], renderable: Callable[[], Any]) -> None:
    """A command's result on stdout: its JSON text, or its table."""
    if json_out:
        sys.stdout.write(as_json())
    else:
        _wide_console().print(renderable())


def exit_status(report: Report, fail_on: FailOn) -> ExitStatus:
    """``FINDINGS`` when a finding reaches ``--fail-on``, else ``SUCCESS``."""
    if fail_on is FailOn.NEVER:
        return ExitStatus.SUCCESS
    threshold = Severity(fail_on.value).rank
    worst = report.worst_severity()
    return ExitStatus.FINDINGS if worst is not None and worst.rank >= threshold else (
        ExitStatus.SUCCESS
    )


def _progress_hook(config: CliConfig) -> Any:
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


def run(config: CliConfig) -> ExitStatus:
    """Inspect, print, and decide the exit status."""
    from gradinspect.api import inspect_files
    from gradinspect.distribute import check_options, make_strategy, supervised

    options = config.distribute
    check_options(options)
    if options.kind == "multiworker" and not _SUPERVISED:
        return ExitStatus(supervised(lambda beat: _child_status(config, beat), options.timeout))
    strategy = make_strategy(options)  # before TensorFlow runs anything
    hook, progress = _progress_hook(config)

    def on_batch(done: int, total: int) -> None:
        if _BEAT is not None:
            _BEAT(f"running the pass ({done:,} of {total:,} samples done)")
        if hook is not None:
            hook(done, total)

    if _BEAT is not None:
        _BEAT("loading the model and data and running the first step")
    try:
        report = inspect_files(config.model, config.data, config.options, progress=on_batch,
                               labels_path=config.labels, load=config.load,
                               strategy=strategy)
    finally:
        if progress is not None:
            progress.stop()
    execution = report.execution
    if execution.worker != 0:  # every worker holds the report; the chief writes it
        sys.stdout.write(f"gradinspect: worker {execution.worker} of {execution.workers} "
                         f"done ({report.data.samples:,} samples in {execution.replicas} "
                         "replicas); worker 0 writes the report\n")
        sys.stdout.flush()
        return exit_status(report, config.fail_on)
    if config.tensorboard is not None:
        from gradinspect.tensorboard import write_report

        write_report(config.tensorboard, report, config.step)
        if not config.options.values:  # kept for the histograms only
            report = report.without_values()
    emit(report, config)
    return exit_status(report, config.fail_on)


_SUPERVISED = False
"""In the child process of a supervised multi-worker run (``distribute.supervised``)."""
_BEAT: Callable[[str], None] | None = None
"""There: tells the parent what the child does next."""


def _child_status(config: CliConfig, beat: Callable[[str], None]) -> int:
    """The supervised child's run, with the same error handling and exit codes."""
    global _SUPERVISED, _BEAT
    _SUPERVISED, _BEAT = True, beat
    beat("waiting for every worker in TF_CONFIG to start")
    try:
        _exit_with(lambda: run(config), config.show_traceback)
    except SystemExit as exc:
        return int(exc.code or 0)


def _fail(message: str, status: ExitStatus) -> NoReturn:
    """One line on stderr and the exit code. The message carries file names and text from
    files: it is printed as plain text (no markup), control characters escaped."""
    from rich.text import Text

    stderr.print(Text.assemble(("gradinspect:", "bold red"), " ", plain(message)),
                 soft_wrap=True, highlight=False)
    raise SystemExit(int(status))


def _exit_with(body: Callable[[], ExitStatus], show_traceback: bool) -> NoReturn:
    """Run a command's body and exit with its status; every error becomes one line on stderr
    and its documented exit code (the Python traceback only with ``--traceback``)."""
    try:
        status = body()
    except KeyboardInterrupt:
        _fail("interrupted", ExitStatus.INTERRUPTED)
    except GradInspectError as exc:
        if show_traceback:
            traceback.print_exc()
        _fail(exc.one_line(), exc.status)
    except Exception as exc:
        _internal(exc, show_traceback)
    raise SystemExit(int(status))


def _internal(exc: Exception, show_traceback: bool) -> NoReturn:
    """The last line of defence: one line, never a bare traceback."""
    if show_traceback:
        traceback.print_exc()
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    _fail(f"internal error: {type(exc).__name__}: {first} (rerun with --traceback and report "
          "it)", ExitStatus.RUN_ERROR)


@app.command(epilog=EXIT_CODES_HELP)
def inspect(
    model: Annotated[Path, typer.Argument(
        metavar="MODEL", help="Keras model file (.keras, or .h5/.hdf5 from Keras 2 or 3).",
        show_default=False)],
    data: Annotated[str, typer.Argument(
        metavar="DATA", help="Input sample: .npy (streamed), .npz keyed by input name "
        "(or 'x'), HDF5 (.h5; FILE:/dataset picks one), or numeric .csv.",
        show_default=False)],
    weights: Annotated[str | None, typer.Option(
        metavar="FILE", show_default=False,
        help="Weights for a MODEL that is an architecture JSON (model.to_json()), Keras 2 or "
        "3.")] = None,
    custom_objects: Annotated[list[str] | None, typer.Option(
        "--custom-objects", metavar="PATH_OR_MODULE", show_default=False,
        help="Import a .py file or module that defines the model's custom layers, activations, "
        "losses (repeatable). Nothing is imported implicitly.")] = None,
    unsafe: Annotated[bool, typer.Option(
        "--unsafe", "--trust-model",
        help="Load models whose config runs code or reads other files (Lambda, TFSMLayer, "
        "file vocabularies, non-modelling functions, modules outside Keras), however their "
        "names are spelled. Only for files you trust.")] = False,
    max_model_bytes: Annotated[str | None, typer.Option(
        metavar="SIZE", show_default=False,
        help="Refuse a model whose weights need more than SIZE (2GiB ...) [default: the "
        "memory available].")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout "
                                           "instead of tables.")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the report as GitHub "
                                           "Markdown (tables and a findings list) for an issue "
                                           "or a pull request.")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Also write the JSON "
                                                "report to FILE (atomically).",
                                                metavar="FILE")] = None,
    labels: Annotated[str | None, typer.Option(
        "--labels", "-y", metavar="FILE", show_default=False,
        help="Labels for the loss (.npy, .npz, .h5, .csv; FILE:/dataset for HDF5). A 'y' array "
        "in the data file is used when this is not given.")] = None,
    loss: Annotated[str | None, typer.Option(
        metavar="NAME", show_default=False,
        help="sum or mean of all model outputs; compiled (the loss saved with the model); or a "
        "Keras loss: mse, mae, huber, binary_crossentropy, categorical_crossentropy, "
        "sparse_categorical_crossentropy, kl_divergence ... [default: compiled with labels "
        "when the model has one, else sum]")] = None,
    loss_semantics: Annotated[LossSemantics | None, typer.Option(
        show_default=False, help="Crossentropy rules: keras2 (clipped, renormalised "
        "probabilities, as Keras 2.x trained) or keras3 (the logits a softmax/sigmoid output "
        "keeps) [default: those of the Keras version that saved the file].")] = None,
    reduction: Annotated[Reduction | None, typer.Option(
        show_default=False, help="For Keras losses: sum or mean of the per-sample terms "
        "[default: mean, as Keras].")] = None,
    from_logits: Annotated[bool | None, typer.Option(
        "--from-logits/--from-probabilities", show_default=False,
        help="Override whether a crossentropy loss takes logits [default: the compiled "
        "loss's setting, else probabilities].")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Samples per forward/backward "
                                                   "step [default: as many as fit "
                                                   "--memory-budget].",
                                                   show_default=False)] = None,
    memory_budget: Annotated[str, typer.Option(
        metavar="SIZE", help="Without --batch-size, the activation memory one step may use "
        "(512MiB, 2GiB ...); the batch size is chosen to fit it.")] = "1GiB",
    samples: Annotated[int | None, typer.Option(min=1, help="Use only the first N samples.",
                                                show_default=False)] = None,
    training: Annotated[bool, typer.Option("--training", help="Run the model in training "
                                           "mode (Dropout active, BatchNorm on batch "
                                           "statistics).")] = False,
    fail_on: Annotated[FailOn, typer.Option(help="Exit with code 1 when a finding of this "
                                            "severity or worse exists.")] = FailOn.NEVER,
    threshold: Annotated[list[str] | None, typer.Option(
        help="Override a finding threshold, NAME=VALUE (repeatable); see the README.",
        metavar="NAME=VALUE", show_default=False)] = None,
    verify: Annotated[bool, typer.Option("--verify", help="Check the tape gradients of every "
                                         "Dense entry against the closed-form formulas in "
                                         "float64 (other kinds: see --gradcheck).")
                      ] = False,
    gradcheck: Annotated[int, typer.Option(
        "--gradcheck", min=0, metavar="[K]",
        help=f"Check the tape against float64 finite differences on K coordinates of every "
        f"variable of every entry (K defaults to {GRADCHECK_DEFAULT} when omitted).",
        show_default=False)] = 0,
    per_sample: Annotated[bool, typer.Option("--per-sample", help="Per-sample gradient norms, "
                                             "outlier samples and the gradient signal-to-noise "
                                             "ratio, from the same single pass.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for --gradcheck coordinates and training-mode "
                                      "randomness.")] = 0,
    layer: Annotated[list[str] | None, typer.Option(
        "--layer", metavar="PATTERN", show_default=False,
        help="Inspect only layers whose name or path matches this glob (repeatable); the "
        "backward pass stops at the earliest one.")] = None,
    kind: Annotated[list[str] | None, typer.Option(
        "--kind", metavar="KIND", show_default=False,
        help="Inspect only layers of this kind (repeatable): dense, einsum_dense, conv, "
        "embedding, recurrent, normalization, generic.")] = None,
    values: Annotated[bool, typer.Option("--values", help="Print the gradient arrays "
                                         "themselves (summarised when large; in the JSON as "
                                         "lists).")] = False,
    flow: Annotated[bool, typer.Option("--flow", help="Draw the gradient flow: per-layer bars "
                                       "of log10 norms, findings marked.")] = False,
    plot: Annotated[Path | None, typer.Option(
        "--plot", metavar="FILE.png", show_default=False,
        help="Write the gradient-flow chart as an image (pip install 'gradinspect[plot]')."
    )] = None,
    tensorboard: Annotated[Path | None, typer.Option(
        "--tensorboard", metavar="DIR", show_default=False,
        help="Also write the report as TensorBoard events into this run directory "
        "(pip install 'gradinspect[tensorboard]').")] = None,
    step: Annotated[int, typer.Option(min=0, help="The step of the --tensorboard events.")
                    ] = 0,
    distribute: Annotated[Distribute, typer.Option(
        help="Run the pass on tf.distribute: mirrored (MirroredStrategy over the GPUs, or "
        "--replicas logical CPUs) or multiworker (MultiWorkerMirroredStrategy configured by "
        "TF_CONFIG; each worker reads only its share of the rows, worker 0 writes the "
        "report).")] = Distribute.NONE,
    replicas: Annotated[int | None, typer.Option(
        min=1, metavar="N", show_default=False,
        help="With --distribute mirrored: use N devices (the first N GPUs; without GPUs, the "
        "CPU split into N logical devices).")] = None,
    worker_timeout: Annotated[float, typer.Option(
        min=1.0, metavar="SECONDS",
        help="With --distribute: how long a step's merge waits for the other replicas and "
        "workers before the run fails (a worker that died).")] = DEFAULT_TIMEOUT,
    details: Annotated[bool | None, typer.Option(
        "--details/--no-details", show_default=False,
        help="Show the per-gradient detail table (shape, max, mean, NaN, Inf) [default: for "
        "reports of at most 30 layers].")] = None,
    show_traceback: Annotated[bool, typer.Option("--traceback", help="Show the Python "
                                                 "traceback of an error.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version_callback,
                                          is_eager=True, help="Print the version and exit.")
                       ] = False,
) -> None:
    """Show the gradients of every layer with trainable weights of a saved Keras model (Dense,
    convolutions, attention, recurrent, normalization, embeddings, custom) on a data sample:
    dL/dW, dL/db (every variable) and dL/dinput, with verdicts (saturation, dead units,
    vanishing/exploding/NaN gradients).

    Compare two reports with: gradinspect diff A.json B.json; follow a run recorded by the
    callback with: gradinspect timeline grads.jsonl"""
    def body() -> ExitStatus:
        thresholds = _parse_thresholds(threshold or [], project_thresholds(Path.cwd()))
        config = CliConfig(
            model=model,
            data=data,
            labels=labels,
            load=LoadOptions(unsafe=unsafe, custom_objects=tuple(custom_objects or ()),
                             weights=weights,
                             max_model_bytes=parse_size(max_model_bytes, "--max-model-bytes")
                             if max_model_bytes is not None else None),
            options=InspectOptions(
                loss=loss, reduction=reduction.value if reduction else None,
                from_logits=from_logits,
                loss_semantics=loss_semantics.value if loss_semantics else None,
                batch_size=batch_size, samples=samples, training=training,
                thresholds=thresholds, verify=verify, gradcheck=gradcheck,
                per_sample=per_sample, seed=seed, layers=tuple(layer or ()),
                kinds=_check_kinds(kind or []), values=values,
                gradients=tensorboard is not None,
                memory_budget=parse_size(memory_budget, "--memory-budget"),
                worker_timeout=worker_timeout if distribute is not Distribute.NONE else None,
            ),
            output_format=_output_format(json_out, markdown),
            output=output,
            flow=flow,
            plot=plot,
            fail_on=fail_on,
            details=details,
            show_traceback=show_traceback,
            tensorboard=tensorboard,
            step=step,
            distribute=DistributeOptions(distribute.value, replicas, worker_timeout),
        )
        if tensorboard is not None:  # before the pass: a missing extra costs no inspection
            from gradinspect.tensorboard import require_tensorboard

            require_tensorboard()
        if unsafe:
            stderr.print("[yellow]gradinspect: warning:[/] --unsafe: code stored in the model "
                         "file (Lambda layers) may run; use it only on files you trust",
                         markup=True, soft_wrap=True)
        return run(config)

    _exit_with(body, show_traceback)


diff_app = _typer_app()


@diff_app.command(epilog="Exit codes: 0 ok; 2 bad usage; 4 a report cannot be read.")
def diff(
    a: Annotated[str, typer.Argument(metavar="A", help="Report: a --json/--output file, or "
                                     "FILE.jsonl:STEP (also :first, :last) from the callback.",
                                     show_default=False)],
    b: Annotated[str, typer.Argument(metavar="B", help="Report to compare with A.",
                                     show_default=False)],
    json_out: Annotated[bool, typer.Option("--json", help="Print the differences as JSON.")
                        ] = False,
    show_traceback: Annotated[bool, typer.Option("--traceback", help="Show the Python "
                                                 "traceback of an error.")] = False,
) -> None:
    """Compare two gradinspect reports layer by layer: the change of every norm (B/A and its
    log10) and the findings that appeared or went away."""
    from gradinspect.diff import diff_reports, read_report
    from gradinspect.render.diff import diff_renderable, render_diff_json

    def body() -> ExitStatus:
        a_name, a_doc = read_report(a)
        b_name, b_doc = read_report(b)
        result = diff_reports(a_doc, b_doc, a_name, b_name)
        _show(json_out, lambda: render_diff_json(result), lambda: diff_renderable(result))
        return ExitStatus.SUCCESS

    _exit_with(body, show_traceback)


timeline_app = _typer_app()


@timeline_app.command(epilog="Exit codes: 0 ok; 2 bad usage (--plot without matplotlib); 4 the "
                      "file cannot be read or no entry matches; 6 the plot cannot be written.")
def timeline(
    file: Annotated[Path, typer.Argument(metavar="FILE.jsonl", help="The JSON lines written "
                                         "by GradInspectCallback.", show_default=False)],
    layer: Annotated[list[str] | None, typer.Option(
        "--layer", metavar="PATTERN", help="Only entries whose path matches this glob "
        "(repeatable).", show_default=False)] = None,
    kind: Annotated[list[str] | None, typer.Option(
        "--kind", metavar="KIND", help="Only entries of this kind (repeatable).",
        show_default=False)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the series per entry as "
                                           "JSON.")] = False,
    plot: Annotated[Path | None, typer.Option(
        "--plot", metavar="FILE.png", help="Also draw ||dL/dW|| per entry over the steps "
        "(log axis) into a PNG (needs gradinspect[plot]).", show_default=False)] = None,
    show_traceback: Annotated[bool, typer.Option("--traceback", help="Show the Python "
                                                 "traceback of an error.")] = False,
) -> None:
    """How each entry's gradients evolved over a run recorded by the callback: per entry, in
    forward order, the trend of ||dL/dW|| (first, last, change in log10), of ||dL/dinput|| and
    of the gain, and the step at which each finding first appeared."""
    from gradinspect.diff import read_records
    from gradinspect.render.timeline import (
        render_timeline_json,
        timeline_renderable,
        write_timeline_plot,
    )
    from gradinspect.timeline import build_timeline

    def body() -> ExitStatus:
        result = build_timeline(read_records(file), str(file), tuple(layer or ()),
                                _check_kinds(kind or []))
        if plot is not None:
            write_timeline_plot(result, plot)
        _show(json_out, lambda: render_timeline_json(result),
              lambda: timeline_renderable(result))
        return ExitStatus.SUCCESS

    _exit_with(body, show_traceback)


def main() -> None:
    """Console-script entry point: ``gradinspect MODEL DATA ...``, ``gradinspect diff A B`` or
    ``gradinspect timeline FILE.jsonl``."""
    argv = sys.argv[1:]
    try:
        if argv[:1] == ["diff"]:
            diff_app(args=argv[1:], prog_name="gradinspect diff")
        elif argv[:1] == ["timeline"]:
            timeline_app(args=argv[1:], prog_name="gradinspect timeline")
        else:
            app(args=_normalise_argv(argv), prog_name="gradinspect")
    except KeyboardInterrupt:
        _fail("interrupted", ExitStatus.INTERRUPTED)
