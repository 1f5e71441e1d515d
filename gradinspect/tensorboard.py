"""TensorBoard sink: a report's figures as ``tf.summary`` events in a run directory.

Per inspected entry and variable: ``gradinspect/<entry>/<variable>/grad_norm`` and
``.../grad_to_weight`` scalars and a ``.../grad`` histogram of the gradient (the values the
inspection summed, no second pass); per entry ``gradinspect/<entry>/input_grad_norm`` and
``gradinspect/<entry>/backward_gain``; per severity ``gradinspect/findings/<severity>`` (counts),
and each finding's text (``gradinspect/findings/text``) the first time it appears. TensorBoard is
an optional extra: ``tf.summary`` needs it. This sink writes events, so unlike the renderers it
uses TensorFlow (through the one lazy door), like the callback that drives it.
"""

from __future__ import annotations

import math
from pathlib import Path

from gradinspect.errors import OutputError, UsageError
from gradinspect.records import Finding, Severity
from gradinspect.report import Report


def require_tensorboard() -> None:
    """A one-line usage error naming the extra when TensorBoard is not installed."""
    try:
        import tensorboard  # noqa: F401
    except ImportError as exc:
        raise UsageError("TensorBoard output needs the tensorboard package, which is not "
                         "installed", "pip install 'gradinspect[tensorboard]'") from exc


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def summary_scalars(report: Report) -> dict[str, float]:
    """Every scalar tag and its value for one report (non-finite values are left out:
    TensorBoard cannot draw them)."""
    out: dict[str, float] = {}
    for layer in report.layers:
        base = f"gradinspect/{layer.path}"
        for name, grad in layer.grads.variables.items():
            if grad is None:
                continue
            weight = layer.weights.variables.get(name)
            if _finite(grad.norm):
                out[f"{base}/{name}/grad_norm"] = grad.norm
                if weight is not None and _finite(weight.norm) and weight.norm > 0:
                    out[f"{base}/{name}/grad_to_weight"] = grad.norm / weight.norm
        if layer.grads.input is not None and _finite(layer.grads.input.norm):
            out[f"{base}/input_grad_norm"] = layer.grads.input.norm
        if _finite(layer.backward_gain):
            out[f"{base}/backward_gain"] = layer.backward_gain
    found = report.findings()
    for severity in Severity:
        out[f"gradinspect/findings/{severity.value}"] = float(
            sum(f.severity is severity for f in found))
    return out


def _finding_text(f: Finding) -> str:
    where = f.layer if f.layer is not None else "model"
    cause = f" (follows from {', '.join(f.caused_by)})" if f.caused_by else ""
    return f"**{f.severity.value}** `{f.code}` at `{where}`: {f.message}{cause} — {f.hint}"


class TensorBoardWriter:
    """Writes reports as events into ``log_dir`` (a TensorBoard run directory)."""

    def __init__(self, log_dir: str | Path) -> None:
        require_tensorboard()
        from gradinspect._tf import tf_modules

        self._tf, _ = tf_modules()
        self.log_dir = Path(log_dir)
        try:
            self._writer = self._tf.summary.create_file_writer(str(self.log_dir))
        except Exception as exc:  # TensorFlow raises its own errors for unusable paths
            raise OutputError(f"{log_dir}: cannot write TensorBoard events ({exc})") from exc
        self._seen: set[str] = set()

    def write(self, report: Report, step: int) -> None:
        """One report at ``step``: scalars, histograms of the gradients the report holds
        (``values``), finding counts, and the text of findings new since the last write.

        Everything goes into one ``Summary`` protocol buffer built with TensorBoard's own
        ``*_pb`` helpers (histogram buckets computed by numpy) and written by a single
        ``write_raw_pb``: one TensorFlow op per record instead of one per tag, which kept the
        callback's overhead within its budget."""
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.plugins.histogram.summary_v2 import histogram_pb
        from tensorboard.plugins.scalar.summary_v2 import scalar_pb
        from tensorboard.plugins.text.summary_v2 import text_pb

        summary = Summary()
        for tag, value in summary_scalars(report).items():
            summary.value.extend(scalar_pb(tag, value).value)
        for layer in report.layers:
            values = layer.values
            if values is None:
                continue
            for name, array in values.variables.items():
                if array is not None:
                    summary.value.extend(histogram_pb(
                        f"gradinspect/{layer.path}/{name}/grad", array).value)
        new = [f for f in report.findings() if f.id not in self._seen]
        self._seen.update(f.id for f in new)
        if new:
            summary.value.extend(text_pb("gradinspect/findings/text", "\n\n".join(
                _finding_text(f) for f in new)).value)
        with self._writer.as_default(step=step):
            self._tf.summary.experimental.write_raw_pb(summary.SerializeToString(), step=step)
        self._writer.flush()  # visible in a running TensorBoard at once

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def write_report(log_dir: str | Path, report: Report, step: int) -> None:
    """One report into a run directory (``gradinspect MODEL DATA --tensorboard DIR``)."""
    writer = TensorBoardWriter(log_dir)
    try:
        writer.write(report, step)
    finally:
        writer.close()
