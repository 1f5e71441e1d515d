"""The commands: ``gradinspect MODEL DATA`` (options -> one frozen config -> the API -> a
renderer -> an exit code), ``gradinspect diff`` and ``gradinspect timeline``, and ``main``.

TensorFlow is never imported at module level (nor by anything imported here at module level),
so ``--help`` and ``--version`` are instant."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from gradinspect.cli.options import (
    EXIT_CODES_HELP,
    GRADCHECK_DEFAULT,
    CliConfig,
    Distribute,
    FailOn,
    LossSemantics,
    Reduction,
    check_kinds,
    normalise_argv,
    parse_size,
    parse_thresholds,
    project_thresholds,
)
from gradinspect.cli.output import emit, exit_status, output_format, show
from gradinspect.cli.terminal import exit_with, fail, progress_hook, stderr
from gradinspect.config import InspectOptions, LoadOptions
from gradinspect.distribute import DEFAULT_TIMEOUT, DistributeOptions
from gradinspect.errors import ExitStatus
from gradinspect.version import __version__


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


def run(config: CliConfig) -> ExitStatus:
    """Inspect, print, and decide the exit status."""
    from gradinspect.api import inspect_files
    from gradinspect.distribute import check_options, make_strategy, supervised

    options = config.distribute
    check_options(options)
    if options.kind == "multiworker" and not _SUPERVISED:
        return ExitStatus(supervised(lambda beat: _child_status(config, beat), options.timeout))
    strategy = make_strategy(options)  # before TensorFlow runs anything
    hook, progress = progress_hook(config)

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
        exit_with(lambda: run(config), config.show_traceback)
    except SystemExit as exc:
        return int(exc.code or 0)


@app.command(epilog=EXIT_CODES_HELP)
def inspect(
    model: Annotated[Path, typer.Argument(
        metavar="MODEL", help="Keras model: .keras, .h5/.hdf5 (Keras 2 or 3), a Keras 2 "
        "SavedModel directory, or model.to_json() output with --weights.",
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
    per_sample: Annotated[bool, typer.Option("--per-sample", help="Per-sample gradient norms of "
                                             "every entry and of the whole model, outlier "
                                             "samples and the gradient signal-to-noise ratio, "
                                             "in the same pass.")] = False,
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
        thresholds = parse_thresholds(threshold or [], project_thresholds(Path.cwd()))
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
                kinds=check_kinds(kind or []), values=values,
                gradients=tensorboard is not None,
                memory_budget=parse_size(memory_budget, "--memory-budget"),
                worker_timeout=worker_timeout if distribute is not Distribute.NONE else None,
            ),
            output_format=output_format(json_out, markdown),
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

    exit_with(body, show_traceback)


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
        show(json_out, lambda: render_diff_json(result), lambda: diff_renderable(result))
        return ExitStatus.SUCCESS

    exit_with(body, show_traceback)


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
                                check_kinds(kind or []))
        if plot is not None:
            write_timeline_plot(result, plot)
        show(json_out, lambda: render_timeline_json(result),
              lambda: timeline_renderable(result))
        return ExitStatus.SUCCESS

    exit_with(body, show_traceback)


def main() -> None:
    """Console-script entry point: ``gradinspect MODEL DATA ...``, ``gradinspect diff A B`` or
    ``gradinspect timeline FILE.jsonl``."""
    from gradinspect._tf import cli_process

    argv = sys.argv[1:]
    with cli_process():
        try:
            if argv[:1] == ["diff"]:
                diff_app(args=argv[1:], prog_name="gradinspect diff")
            elif argv[:1] == ["timeline"]:
                timeline_app(args=argv[1:], prog_name="gradinspect timeline")
            else:
                app(args=normalise_argv(argv), prog_name="gradinspect")
        except KeyboardInterrupt:
            fail("interrupted", ExitStatus.INTERRUPTED)
