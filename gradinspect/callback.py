"""``GradInspectCallback``: gradient reports during ``model.fit``, as JSON lines.

Importing this module imports Keras (the base class needs it); ``import gradinspect`` does not
import it until ``gradinspect.GradInspectCallback`` is used.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO, Any

from gradinspect._tf import tf_modules
from gradinspect.config import Thresholds
from gradinspect.plaintext import plain
from gradinspect.report import Report

_, _keras = tf_modules()


class GradInspectCallback(_keras.callbacks.Callback):  # type: ignore[misc,name-defined]
    """Record a gradinspect report every ``every_n_batches`` training batches.

    Each record is one line of ``path`` (JSON lines): ``{"epoch", "step", "batch", "report"}``,
    where ``step`` is the number of training batches completed before the report (across
    epochs; 0 is the untrained state, recorded when ``record_first``) and ``report`` is the same
    JSON as ``gradinspect --json``. The first time a finding (code, layer) appears, one line is
    printed to ``stream`` (stderr by default): first saturation, first NaN, first dead units.

    ``x``/``y`` is a fixed probe sample (keep it small: it is inspected every time); ``y=None``
    with a compiled model uses the ``sum`` loss, with labels the compiled loss.

    An existing non-empty ``path`` is never truncated silently: ``append=True`` adds to it,
    ``overwrite=True`` replaces it, and without either the constructor raises
    ``FileExistsError``. Later fits with the same callback append (steps keep counting).
    ``epoch`` is Keras's epoch index (0 for the first), in the file and on ``stream`` alike.

    ``log_dir``: also write every record as TensorBoard events there (``gradinspect.tensorboard``;
    needs ``pip install 'gradinspect[tensorboard]'``), at the same ``step``.
    """

    def __init__(
        self,
        x: Any,
        y: Any = None,
        *,
        every_n_batches: int = 100,
        path: str | Path | None = "grads.jsonl",
        record_first: bool = True,
        loss: str | None = None,
        reduction: str | None = None,
        from_logits: bool | None = None,
        per_sample: bool = False,
        verify: bool = False,
        thresholds: Thresholds | None = None,
        stream: IO[str] | None = None,
        append: bool = False,
        overwrite: bool = False,
        log_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        if every_n_batches < 1:
            raise ValueError("every_n_batches must be at least 1")
        if append and overwrite:
            raise ValueError("append=True and overwrite=True contradict each other")
        if path is not None and Path(path).exists() and Path(path).stat().st_size > 0 \
                and not (append or overwrite):
            raise FileExistsError(f"{path} exists and holds records: pass append=True to add "
                                  "to it, or overwrite=True to replace it")
        self.x = x
        self.y = y
        self.every_n_batches = every_n_batches
        self.path = Path(path) if path is not None else None
        self.record_first = record_first
        self.options: dict[str, Any] = {
            "loss": loss, "reduction": reduction, "from_logits": from_logits,
            "per_sample": per_sample, "verify": verify, "thresholds": thresholds,
        }
        self.stream = stream
        self._tensorboard: Any = None
        if log_dir is not None:  # fails here, before training, when TensorBoard is missing
            from gradinspect.tensorboard import TensorBoardWriter

            self._tensorboard = TensorBoardWriter(log_dir)
            self.options["gradients"] = True  # the histograms' values, from the same pass
        self.step = 0
        self.epoch = 0
        self.reports: list[tuple[int, int, Report]] = []
        """(epoch, step, report) of every record, newest last."""
        self._seen: set[tuple[str, str]] = set()
        self._file: IO[str] | None = None
        self._started = append  # appending from the first fit on

    def on_train_begin(self, logs: Any = None) -> None:
        # a new file for this callback's first fit; later fits append (steps keep counting)
        if self.path is not None and self._file is None and self._chief():
            self._file = self.path.open("a" if self._started else "w", encoding="utf-8")
        self._started = True

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.epoch = epoch

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        # Recording at the *start* of a batch (after ``step`` completed batches) instead of at
        # the end keeps Keras' asynchronous batch dispatch on: an ``on_train_batch_end`` hook
        # would force a device sync on every batch and slow training by far more than the
        # inspections themselves.
        if self.step % self.every_n_batches == 0 and (self.step > 0 or self.record_first):
            self.record(batch)
        self.step += 1

    def on_train_end(self, logs: Any = None) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tensorboard is not None:
            self._tensorboard.flush()

    def record(self, batch: int = -1) -> Report:
        """Inspect the model now and record the report."""
        from gradinspect.api import inspect

        # a model built and fitted under a tf.distribute strategy is inspected on it
        report = inspect(self.model, self.x, self.y,
                         strategy=getattr(self.model, "distribute_strategy", None),
                         **self.options)
        chief = report.execution.worker == 0  # multi-worker: worker 0 writes, as Keras's own
        if self._tensorboard is not None and chief:
            self._tensorboard.write(report, self.step)
        if self._tensorboard is not None:
            report = report.without_values()  # the histograms' arrays stay out of the records
        self.reports.append((self.epoch, self.step, report))
        if self._file is not None and chief:
            line = {"epoch": self.epoch, "step": self.step, "batch": batch,
                    "report": report.to_dict()}
            self._file.write(json.dumps(line, allow_nan=False) + "\n")
            self._file.flush()
        self._announce(report)
        return report

    def _chief(self) -> bool:
        """This process writes: always, except on the workers after the first of a
        multi-worker strategy (each holds the same records)."""
        from gradinspect.distribute import describe

        return describe(getattr(self.model, "distribute_strategy", None)).worker == 0

    def _announce(self, report: Report) -> None:
        stream = self.stream or sys.stderr
        found = [("model", f) for f in report.warnings]
        found += [(layer.path, f) for layer in report.layers for f in layer.warnings]
        for where, finding in found:
            key = (where, finding.code)
            if key in self._seen:
                continue
            self._seen.add(key)
            stream.write(f"gradinspect: epoch {self.epoch} step {self.step}: first "
                         f"{finding.code} ({finding.severity.value}) at {plain(where)}: "
                         f"{plain(finding.message)}\n")
        stream.flush()
