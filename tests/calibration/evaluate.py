"""Judge the corpus with gradinspect and print what a warning means today.

``judge`` inspects one model file with its data file (``gradinspect.inspect_files``, what the
CLI runs) and keeps every finding, or the refusal's exit status and message. ``healthy_ok``:
no finding at warning or above. ``sick_problems`` / ``sick_ok``: the planted cause is a root
at warning or above at its layer, and every other harmful finding follows from a cause.
``table`` groups the verdicts (healthy by family, sick by kind) and lists every failing file
with its harmful findings, so the engineer sees what to fix.

``python tests/calibration/evaluate.py [--quick] [--out DIR]`` builds and trains the whole
corpus (``--quick``: a few specs per group), judges every file (healthy: at initialisation and
trained; sick: the sick file), prints the table and the accuracies reached, and exits 0: it
is a report, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import gradinspect
from gradinspect.diagnose import CODES
from gradinspect.errors import GradInspectError

if not __package__:  # run as a script: make the ``calibration`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from calibration.builders import CorpusError
from calibration.healthy import HEALTHY, HealthySpec, TrainedCase, train
from calibration.sick import SICK, SickSpec

HARMFUL = frozenset({"warning", "error"})


@dataclass(frozen=True)
class Seen:
    """One finding as gradinspect reported it."""

    code: str
    severity: str
    layer: str | None
    """Entry path; ``None`` for a model-level finding."""
    root: bool
    caused_by: tuple[str, ...]
    message: str

    @property
    def harmful(self) -> bool:
        return self.severity in HARMFUL

    @property
    def where(self) -> str:
        return f"{self.code}@{self.layer or 'model'}"

    def line(self) -> str:
        """``code@layer [severity, root | <- causes]: message``, as the failure list prints."""
        link = "root" if self.root else "<- " + ", ".join(self.caused_by)
        return f"{self.where} [{self.severity}, {link}]: {self.message}"


@dataclass(frozen=True)
class Judgement:
    """What gradinspect said about one model file and its data file."""

    model_path: Path
    data_path: Path
    findings: tuple[Seen, ...] = ()
    entries: tuple[str, ...] = ()
    """The report's entry paths in forward order (where a run of findings is contiguous)."""
    exit_status: int | None = None
    """A refusal's exit status (``GradInspectError.status``); ``None`` when it reported."""
    error: str | None = None
    """A refusal's one-line message."""

    @property
    def harmful(self) -> tuple[Seen, ...]:
        """Findings at warning or error."""
        return tuple(f for f in self.findings if f.harmful)

    @property
    def roots(self) -> tuple[Seen, ...]:
        """Harmful findings that nothing explains: what gradinspect says to fix first."""
        return tuple(f for f in self.harmful if f.root)


def judge(model_path: Path, data_path: Path) -> Judgement:
    """Inspect the files as ``gradinspect MODEL DATA`` does (labels from the data file's
    ``y``, the compiled loss, inference mode) and keep every finding or the refusal."""
    try:
        report = gradinspect.inspect_files(model_path, data_path)
    except GradInspectError as exc:
        return Judgement(model_path, data_path, exit_status=int(exc.status),
                         error=exc.one_line())
    seen = tuple(Seen(f.code, f.severity.value, f.layer, f.root, tuple(f.caused_by), f.message)
                 for f in report.findings())
    return Judgement(model_path, data_path, seen, tuple(layer.path for layer in report.layers))


def healthy_ok(j: Judgement) -> bool:
    """A healthy file gets a report without a finding at warning or above."""
    return j.exit_status is None and not j.harmful


def planted_run(spec: SickSpec, j: Judgement) -> tuple[Seen, ...]:
    """The findings that name the planted cause: ``expect_code`` at model level, or on the
    run of consecutive entries that holds ``expect_layer``. A cause that spans layers (NaN in
    every layer, a stack whose gradient shrinks layer after layer) is one range, whichever of
    its layers gradinspect files the root at: the table prints such a run as one row."""
    same = [f for f in j.findings if f.code == spec.expect_code]
    if spec.expect_layer is None:
        return tuple(f for f in same if f.layer is None)
    position = {path: k for k, path in enumerate(j.entries)}
    taken = {position[f.layer] for f in same if f.layer in position}
    start = position.get(spec.expect_layer)
    if start not in taken:
        return ()
    first = last = start
    while first - 1 in taken:
        first -= 1
    while last + 1 in taken:
        last += 1
    return tuple(f for f in same if f.layer in position and first <= position[f.layer] <= last)


def sick_problems(spec: SickSpec, j: Judgement) -> tuple[str, ...]:
    """Why gradinspect's verdict on a sick file is not the planted cause (empty: it is)."""
    if spec.expect_error_exit is not None:
        if j.exit_status == spec.expect_error_exit:
            return ()
        got = f"exit {j.exit_status}: {j.error}" if j.exit_status is not None else "a report"
        return (f"expected a refusal with exit {spec.expect_error_exit}, got {got}",)
    if j.exit_status is not None:
        return (f"refused with exit {j.exit_status}: {j.error}",)
    run = planted_run(spec, j)
    problems = []
    if spec.expect_code not in CODES:
        problems.append(f"{spec.expect_code} is no gradinspect code yet: nothing names this "
                        "cause")
    elif not any(f.root and f.harmful for f in run):
        found = ", ".join(f"{f.where} ({f.severity}, {'root' if f.root else 'caused'})"
                          for f in run) or "no such finding"
        problems.append(f"{spec.expected} is not a root at warning or above: {found}")
    problems += [f"another root: {f.where} ({f.severity})" for f in j.roots if f not in run]
    return tuple(problems)


def sick_ok(spec: SickSpec, j: Judgement) -> bool:
    """The planted cause is a harmful root (the whole range of it, for a cause spanning
    consecutive layers) and every other harmful finding links to a cause."""
    return not sick_problems(spec, j)


@dataclass(frozen=True)
class Row:
    """One judged file for the table."""

    side: str
    """``healthy`` or ``sick``."""
    group: str
    """Family (healthy) or kind (sick)."""
    label: str
    """The model file's name."""
    judgement: Judgement
    ok: bool
    problems: tuple[str, ...] = ()
    expected: str = ""
    how: str = ""
    """Sick: how a real run gets there."""
    evidence: str = ""
    """Sick: the check's proof that the pathology is in the file."""


def healthy_rows(case: TrainedCase) -> list[Row]:
    """Both files of a trained healthy case, judged."""
    rows = []
    for path in (case.init_path, case.trained_path):
        j = judge(path, case.data_path)
        rows.append(Row("healthy", case.spec.family, path.name, j, healthy_ok(j)))
    return rows


def sick_row(spec: SickSpec, model_path: Path, data_path: Path, evidence: str) -> Row:
    j = judge(model_path, data_path)
    problems = sick_problems(spec, j)
    return Row("sick", spec.kind, model_path.name, j, not problems, problems, spec.expected,
               spec.how, evidence)


def _grouped(rows: Iterable[Row], side: str) -> dict[str, list[Row]]:
    groups: dict[str, list[Row]] = {}
    for row in rows:
        if row.side == side:
            groups.setdefault(row.group, []).append(row)
    return groups


def table(rows: Sequence[Row]) -> str:
    """Per group, the count against its goal; each sick file's checked pathology; then every
    failing file with its harmful findings (``code@layer [severity, root | <- causes]:
    message``)."""
    lines = ["HEALTHY: files with a warning (goal: 0)",
             f"  {'family':<24}{'with a warning':>16}"]
    healthy = _grouped(rows, "healthy")
    for group, members in healthy.items():
        bad = sum(not r.ok for r in members)
        lines.append(f"  {group:<24}{f'{bad}/{len(members)}':>16}")
    every = [r for members in healthy.values() for r in members]
    lines.append(f"  {'all':<24}{f'{sum(not r.ok for r in every)}/{len(every)}':>16}")
    lines += ["", "SICK: files whose root is the planted cause (goal: all)",
              f"  {'kind':<26}{'planted root':>13}  expected"]
    sick = _grouped(rows, "sick")
    for group, members in sick.items():
        good = sum(r.ok for r in members)
        expected = ", ".join(dict.fromkeys(r.expected for r in members))
        lines.append(f"  {group:<26}{f'{good}/{len(members)}':>13}  {expected}")
    every = [r for members in sick.values() for r in members]
    lines.append(f"  {'all':<26}{f'{sum(r.ok for r in every)}/{len(every)}':>13}")
    if every:
        lines += ["", "SICK FILES: how each got sick, and its pathology checked on the saved "
                  "file without gradinspect"]
        for r in every:
            lines += [f"  {r.label}: {r.how}", f"      checked: {r.evidence}"]
    failing = [r for r in rows if not r.ok]
    if failing:
        lines += ["", "FAILING FILES"]
    for row in failing:
        lines.append(f"- {row.side} {row.label} ({row.group})"
                     + (f": expected {row.expected}" if row.expected else ""))
        lines += [f"    problem: {p}" for p in row.problems]
        if row.judgement.error is not None and row.side == "healthy":
            lines.append(f"    refused (exit {row.judgement.exit_status}): {row.judgement.error}")
        lines += [f"    {f.line()}" for f in row.judgement.harmful]
    return "\n".join(lines)


def accuracies(cases: Sequence[TrainedCase]) -> str:
    """The test accuracy each healthy spec reached, against its target, and the lowest per
    family."""
    lines = ["ACCURACY REACHED (test split; every spec at or above its target)",
             f"  {'spec':<38}{'family':<20}{'keras':>5}{'accuracy':>10}{'target':>8}{'fit s':>7}"]
    lowest: dict[str, float] = {}
    for c in cases:
        s = c.spec
        lines.append(f"  {s.name:<38}{s.family:<20}{s.keras:>5}{c.accuracy:>10.3f}"
                     f"{s.target:>8.2f}{c.seconds:>7.1f}")
        lowest[s.family] = min(lowest.get(s.family, 1.0), c.accuracy)
    lines += ["", f"  {'family':<24}{'lowest accuracy':>16}"]
    lines += [f"  {family:<24}{acc:>16.3f}" for family, acc in lowest.items()]
    return "\n".join(lines)


Spec = TypeVar("Spec", HealthySpec, SickSpec)


def few(specs: Sequence[Spec], group: Callable[[Spec], str], per_group: int) -> list[Spec]:
    """The first ``per_group`` specs of every group, in corpus order (``--quick``)."""
    taken: dict[str, int] = {}
    chosen = []
    for spec in specs:
        key = group(spec)
        if taken.get(key, 0) < per_group:
            taken[key] = taken.get(key, 0) + 1
            chosen.append(spec)
    return chosen


def run(out_dir: Path, healthy: Sequence[HealthySpec], sick: Sequence[SickSpec]
        ) -> tuple[list[Row], list[TrainedCase], list[str]]:
    """Build, train and judge; corpus entries that are not what they claim are returned
    apart (``broken``), never judged. What Keras prints while building (TerminateOnNaN's
    notice) goes to stderr with the progress, so stdout carries the report only."""
    with contextlib.redirect_stdout(sys.stderr):
        return _run(out_dir, healthy, sick)


def _run(out_dir: Path, healthy: Sequence[HealthySpec], sick: Sequence[SickSpec]
         ) -> tuple[list[Row], list[TrainedCase], list[str]]:
    rows: list[Row] = []
    cases: list[TrainedCase] = []
    broken: list[str] = []
    for spec in healthy:
        print(f"healthy {spec.name}", flush=True)
        try:
            case = train(spec, out_dir)
        except CorpusError as exc:
            broken.append(str(exc))
            continue
        cases.append(case)
        rows += healthy_rows(case)
    for sick_spec in sick:
        print(f"sick {sick_spec.name}", flush=True)
        model_path, data_path = sick_spec.build_files(out_dir)
        try:
            evidence = sick_spec.confirm(model_path, data_path)
        except CorpusError as exc:
            broken.append(f"{sick_spec.name}: {exc}")
            continue
        rows.append(sick_row(sick_spec, model_path, data_path, evidence))
    return rows, cases, broken


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="two healthy specs per family and one sick spec per kind")
    parser.add_argument("--out", type=Path, help="keep the corpus files in this directory")
    args = parser.parse_args(argv)
    # Keras warns about some of the planted mistakes (a softmax under binary_crossentropy):
    # they are the corpus' point, and gradinspect's verdict on them is what is reported
    warnings.filterwarnings("ignore", category=UserWarning)
    healthy = few(HEALTHY, lambda s: s.family, 2) if args.quick else list(HEALTHY)
    sick = few(SICK, lambda s: s.kind, 1) if args.quick else list(SICK)
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        out_dir = args.out or Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="gradinspect-calibration-")))
        out_dir.mkdir(parents=True, exist_ok=True)
        rows, cases, broken = run(out_dir, healthy, sick)
    print(table(rows))
    print()
    print(accuracies(cases))
    if broken:
        print("\nBROKEN CORPUS ENTRIES (not judged)")
        print("\n".join(f"- {b}" for b in broken))
    where = f"; files in {args.out}" if args.out else ""
    print(f"\n{len(healthy)} healthy specs, {len(sick)} sick specs, "
          f"{time.perf_counter() - start:.0f} s wall time{where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
