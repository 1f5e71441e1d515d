"""The calibration corpus' fast part: a warning must mean "this training is harmed".

A few healthy specs (fast ones of six families) are trained to their target accuracy and
must get no warning, at initialisation or trained, through the API and through the CLI's
``--fail-on warning``; a few sick specs must hold their pathology (checked on the saved file
without gradinspect) and get the planted cause as their root, every other harmful finding
linked to a cause. Some verdicts are expected to fail until gradinspect names them rightly:
the failures are the defects the calibration finds. The whole corpus (60+ healthy specs, every
sick kind) runs with ``python tests/calibration/evaluate.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from calibration.evaluate import Judgement, judge, planted_run, sick_problems
from calibration.healthy import HEALTHY, TrainedCase, train
from calibration.sick import SICK, SickSpec
from typer.testing import CliRunner

from gradinspect import cli
from gradinspect.errors import ExitStatus

HEALTHY_CI = ("k2_wine_relu_sgd", "k2_digits_tanh_sgd", "k2_wine_sigmoid_sgd",
              "breast_cancer_selu_sgd", "cnn_adam", "k2_lstm_adam")
"""A fast spec of six families (Keras 2 and 3), chosen by speed, not by verdict."""
SICK_CI = ("k2_diverged_sgd", "sigmoid_stack_init", "dead_bias", "unscaled_pixels_tanh",
           "zero_kernel_relu", "bn_init_pixels", "bn_trainable_copy", "one_based_labels",
           "constant_labels_in_file", "relu_stack_stddev3")
"""One spec of nine kinds: NaN weights (Keras 2), a chain of vanishing gradients, dead
units, a model-level cause, a structural cause, untrained BatchNormalization (at
initialisation on raw pixels, and trained weights copied without their statistics), a
refusal, labels of one class, an exploding initialisation."""

HEALTHY_SPECS = {s.name: s for s in HEALTHY}
SICK_SPECS = {s.name: s for s in SICK}


class Corpus:
    """The CI specs' files, each built on first use into one directory for the module (a
    case that fails to build fails only the tests that use it)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._trained: dict[str, TrainedCase] = {}
        self._sick: dict[str, tuple[Path, Path]] = {}
        self._judged: dict[tuple[Path, Path], Judgement] = {}

    def healthy(self, name: str) -> TrainedCase:
        if name not in self._trained:
            self._trained[name] = train(HEALTHY_SPECS[name], self.root)
        return self._trained[name]

    def sick(self, name: str) -> tuple[Path, Path]:
        if name not in self._sick:
            self._sick[name] = SICK_SPECS[name].build_files(self.root)
        return self._sick[name]

    def judge(self, model_path: Path, data_path: Path) -> Judgement:
        key = (model_path, data_path)
        if key not in self._judged:
            self._judged[key] = judge(model_path, data_path)
        return self._judged[key]


@pytest.fixture(scope="module")
def corpus(tfk: tuple[Any, Any], tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """``tfk``: TensorFlow and Keras imported once for the session (each build seeds itself)."""
    return Corpus(tmp_path_factory.mktemp("calibration"))


def _lines(j: Judgement) -> str:
    return "\n".join(f.line() for f in j.harmful) or "(none)"


@pytest.mark.parametrize("name", HEALTHY_CI)
def test_healthy_model_reaches_its_target(corpus: Corpus, name: str) -> None:
    case = corpus.healthy(name)  # raises CorpusError below the target
    assert case.accuracy >= case.spec.target


@pytest.mark.parametrize("stage", ["init", "trained"])
@pytest.mark.parametrize("name", HEALTHY_CI)
def test_healthy_file_gets_no_warning(corpus: Corpus, name: str, stage: str) -> None:
    case = corpus.healthy(name)
    path = case.init_path if stage == "init" else case.trained_path
    j = corpus.judge(path, case.data_path)
    assert j.exit_status is None, j.error
    assert not j.harmful, f"{path.name} (accuracy {case.accuracy:.3f}):\n{_lines(j)}"


def test_cli_fail_on_warning_passes_a_healthy_file(corpus: Corpus) -> None:
    case = corpus.healthy("cnn_adam")
    result = CliRunner().invoke(cli.app, [str(case.trained_path), str(case.data_path),
                                          "--fail-on", "warning"])
    assert result.exit_code == ExitStatus.SUCCESS, result.stdout + result.stderr


@pytest.mark.parametrize("name", SICK_CI)
def test_sick_file_has_its_pathology(corpus: Corpus, name: str) -> None:
    evidence = SICK_SPECS[name].confirm(*corpus.sick(name))  # raises CorpusError if absent
    assert evidence


def _judged_sick(corpus: Corpus, name: str) -> tuple[SickSpec, Judgement]:
    return SICK_SPECS[name], corpus.judge(*corpus.sick(name))


@pytest.mark.parametrize("name", SICK_CI)
def test_planted_cause_is_the_root(corpus: Corpus, name: str) -> None:
    spec, j = _judged_sick(corpus, name)
    if spec.expect_error_exit is not None:
        assert j.exit_status == spec.expect_error_exit, f"got a report:\n{_lines(j)}"
        return
    assert j.exit_status is None, j.error
    run = planted_run(spec, j)
    assert any(f.root and f.harmful for f in run), (
        f"expected {spec.expected} as a root at warning or above; "
        f"{'; '.join(p for p in sick_problems(spec, j))}\n{_lines(j)}")


@pytest.mark.parametrize("name", [n for n in SICK_CI if SICK_SPECS[n].expect_code])
def test_every_other_harmful_finding_follows_from_a_cause(corpus: Corpus, name: str) -> None:
    spec, j = _judged_sick(corpus, name)
    run = planted_run(spec, j)
    unexplained = [f.line() for f in j.harmful if f not in run and not f.caused_by]
    assert not unexplained, f"expected {spec.expected}; other roots:\n" + "\n".join(unexplained)
