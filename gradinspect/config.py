"""Options and thresholds as frozen records: what the CLI parses and the API accepts."""

from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass(frozen=True)
class Thresholds:
    """Where a number becomes a finding. Each is a ``--threshold NAME=VALUE`` on the CLI and a key
    of ``[tool.gradinspect.thresholds]`` in pyproject.toml. The README explains each choice."""

    saturation_derivative: float = 0.01
    """An entry is saturated (or dead) when activation'(z) < this fraction of the activation's
    largest derivative (sigmoid: |z| > 6; tanh: |z| > 3; relu: z < 0)."""
    saturated_entries: float = 0.5
    """Warn when at least this fraction of (sample, unit) entries is saturated (DeepDiagnosis)."""
    unit_always: float = 0.99
    """A unit counts as saturated/dead when low for at least this fraction of samples."""
    saturated_units: float = 0.25
    """Warn when at least this fraction of units is saturated for (nearly) all samples."""
    saturation_gain: float = 0.25
    """... and the saturation shrinks the backward signal below this factor of the
    activation's linear region (``derivative_gain``, where it is measured). Calibration
    corpus: the saturated layers of its sick models 0.007-0.14, every hidden tanh/sigmoid
    layer of its 134 healthy files 0.52 or more."""
    dead_units: float = 0.5
    """Warn when at least this fraction of rectifier units is dead on every sample."""
    dead_entries: float = 0.7
    """Report (info) when at least this fraction of rectifier entries has zero derivative,
    with no unit dead on every sample; a warning takes ``dead_units`` (the calibration
    corpus' relu MLPs on iris have 71% at initialisation and train to 0.92-0.97)."""
    min_samples: int = 8
    """With fewer samples, per-unit verdicts stay at ``info`` (too little evidence)."""
    softmax_confidence: float = 0.99
    """A softmax row is saturated when its largest probability is at least this."""
    softmax_saturated: float = 0.5
    """Warn when at least this fraction of samples has a saturated softmax."""
    softmax_wrong: float = 0.05
    """An output softmax with labels: warn when at least this fraction of samples is
    confident (``softmax_confidence``) on a class that is not their label's."""
    saturated_info: float = 0.01
    """Below this fraction of saturated entries (and with no saturated unit), no finding."""
    unscaled_input: float = 10.0
    """A float input whose root mean square (sqrt(mean^2 + std^2)) is above this is far from
    standardised (0..255 pixels: ~140), unless the model scales it before its first entry."""
    activation_collapse: float = 1e-3
    """The forward signal collapses at an entry whose input RMS is below this fraction of the
    largest output RMS of the entries before it (capped at 1: unit scale is never a
    collapse)."""
    batchnorm_copied_mismatch: float = 2.0
    """... and where gamma/beta are trained but the moving statistics are at their initial
    values (never computed: weights copied through trainable_variables), beyond this factor.
    Calibration corpus: such a copy misfits by 0.22-0.25 and loses 0.99 -> 0.83 accuracy;
    models at initialisation (gamma 1, beta 0) misfit as much and are not judged by it."""
    batchnorm_mismatch: float = 10.0
    """BatchNormalization in inference: its moving statistics do not describe the data when
    the RMS of (x - moving_mean) / sqrt(moving_variance) is above this or below its inverse
    (1 when they do)."""
    vanishing_abs: float = 1e-7
    """Vanishing when mean |dL/dW| per sample is below this (DeepDiagnosis' 1e-7)."""
    vanishing_rel: float = 1e-4
    """Vanishing when ||dL/dW|| is below this fraction of the largest layer's ||dL/dW||."""
    exploding_abs: float = 1e3
    """Exploding when ||dL/dW|| per sample is above this."""
    exploding_ratio: float = 10.0
    """Exploding when ||dL/dW|| / ||W|| (per sample under the sum loss) is above this: one step
    at learning rate 0.1 would change W by more than its own size."""
    collapse_gain: float = 1e-3
    """Backward signal collapses at a layer whose ||dL/dinput|| / ||dL/doutput|| is below this."""
    collapse_below: float = 1e-2
    """...and only when every entry before it receives less than this fraction of the signal
    that reaches it (||dL/doutput||): a parallel path that carries the signal past the layer
    (a residual, an added position embedding) is no collapse."""
    outlier_weight_ratio: float = 1e-3
    """``gradient_outliers`` names a sample only when its ||dl_i/dtheta|| reaches this fraction
    of the inspected weights' norm ||theta||: a step on it alone at learning rate 1 would move
    the weights by 0.1 %. A model that fits every sample (norms ~1e-6) has statistical
    outliers of no weight."""
    near_zero_weight: float = 0.1
    """Weights whose RMS is below this fraction of their Glorot scale sqrt(2 / (fan_in +
    fan_out)) are near zero (a zero initialisation and the first steps after it): their
    ||dL/dW|| / ||W|| is not a finding."""
    verify_tolerance: float = 1e-3
    """``--verify``: largest error relative to the reference's largest entry before a
    ``gradient_mismatch`` (float32 tape vs float64 closed form agree to ~1e-6)."""
    gradcheck_tolerance: float = 1e-2
    """``--gradcheck``: largest relative error of the tape against float64 finite differences
    before a ``gradcheck_mismatch``."""

    def replace(self, **changes: float) -> Thresholds:
        """A copy with some thresholds changed; unknown names raise ``KeyError``."""
        known = {f.name: f for f in fields(self)}
        values = {name: getattr(self, name) for name in known}
        for name, value in changes.items():
            if name not in known:
                raise KeyError(name)
            values[name] = int(value) if known[name].type in ("int", int) else float(value)
        return Thresholds(**values)


@dataclass(frozen=True)
class LoadOptions:
    """How to load the model file."""

    unsafe: bool = False
    """Allow model files whose config runs code on load (Lambda layers): trusted files only."""
    custom_objects: tuple[str, ...] = ()
    """Python files or module names defining the model's custom layers, losses, activations."""
    weights: str | None = None
    """Weights file for an architecture-JSON model."""
    max_model_bytes: int | None = None
    """Largest total of weight bytes a model may create while it is built (``None``: the
    memory the machine has available)."""


@dataclass(frozen=True)
class InspectOptions:
    """How to run one inspection (shared by the CLI and the Python API)."""

    loss: str | None = None
    """``sum``/``mean`` of all model outputs, a Keras loss name, ``compiled``, or ``None``:
    ``compiled`` when there are labels and the model has a compiled loss, else ``sum``."""
    reduction: str | None = None
    """``sum`` or ``mean`` over samples for Keras losses (default ``mean``, like Keras)."""
    from_logits: bool | None = None
    """Override ``from_logits`` of crossentropy losses."""
    loss_semantics: str | None = None
    """``keras2`` or ``keras3`` crossentropy rules; ``None`` = those of the Keras version that
    saved the model file (``keras2`` for 2.x, ``keras3`` otherwise)."""
    batch_size: int | None = None
    """Samples per forward/backward step; ``None`` = as many as fit ``memory_budget`` (all
    samples in one step when they fit)."""
    memory_budget: int = 1 << 30
    """Without ``batch_size``: the activation memory one step may use, in bytes (estimated
    from the layers' output sizes); the batch size is chosen to stay within it."""
    samples: int | None = None
    """Use only the first N samples."""
    training: bool = False
    """Run the model in training mode."""
    thresholds: Thresholds = field(default_factory=Thresholds)
    """Finding thresholds."""
    verify: bool = False
    """Check the tape against the closed-form formulas (float64): Dense entries; other kinds
    are listed as not available in ``checks``."""
    gradcheck: int = 0
    """Check the tape against float64 finite differences on this many coordinates of every
    variable of every entry (0 = off)."""
    gradcheck_samples: int = 256
    """``gradcheck`` uses at most this many samples (each coordinate costs two passes)."""
    per_sample: bool = False
    """Per-sample gradient norms and the gradient signal-to-noise ratio."""
    seed: int = 0
    """Seed for everything random (gradcheck coordinates, training-mode randomness)."""
    layers: tuple[str, ...] = ()
    """Glob patterns on layer name or path: inspect only the matching entries (all by
    default); the backward pass stops at the earliest selected entry."""
    kinds: tuple[str, ...] = ()
    """Layer kinds (``dense``, ``conv`` ...): inspect only entries of these kinds (all by
    default); combined with ``layers``, an entry must match both."""
    values: bool = False
    """Keep the gradient arrays themselves (dL/dW, dL/db; dL/dinput for the first
    ``values_samples`` samples) in the report."""
    values_samples: int = 1000
    """How many samples' dL/dinput ``values`` keeps."""
    worker_timeout: float | None = None
    """Under a ``tf.distribute`` strategy: seconds a step's merge waits for the other
    replicas and workers before the run fails (``None``: the strategy's own setting)."""
    gradients: bool = False
    """Keep each variable's gradient array (``values.variables``, summed over the batches the
    step already sums) without ``values``' capture of every tensor: for TensorBoard's
    histograms. ``values.input`` stays ``None``."""
