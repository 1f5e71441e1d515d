"""How the model is put together: a crossentropy and an output activation that disagree, an
output that cannot vary (a softmax over one unit), and a kernel that is exactly zero.

``CODES``: the codes this family emits, with what each means (``diagnose.CODES`` joins them).
"""

from __future__ import annotations

import math

from gradinspect.diagnose.figures import LayerFigures
from gradinspect.records import Finding, Severity

CODES: dict[str, str] = {
    "logits_mismatch": "a crossentropy loss expects logits but the output is a probability, "
    "or the reverse",
    "constant_output": "an output that cannot vary with the input (a softmax over one unit)",
    "loss_activation_mismatch": "a sigmoid output under categorical crossentropy, or a "
    "softmax over several units under binary crossentropy",
    "zero_kernel": "a layer's kernel is exactly zero: the layers before it get no gradient "
    "until its first update",
    "degenerate_normalization": "a normalisation over axes of one entry in all: its output "
    "does not depend on its input, so the layers behind it on that path get no gradient",
}

READS: frozenset[str] = frozenset({
    "activation", "activity", "kernel_zero", "logits_mismatch", "loss_activation",
    "single_unit_softmax", "weight_norm", "normalized", "weight_grad"
})
"""The fields of ``LayerFigures`` and ``RunFigures`` this family reads (a test checks it)."""


def logits_rule(layer: LayerFigures) -> list[Finding]:
    if layer.logits_mismatch is None:
        return []
    loss, from_logits = layer.logits_mismatch
    act = layer.activity.name if layer.activity is not None else (layer.activation or "linear")
    if from_logits:
        # Keras 3 notices a softmax/sigmoid-produced tensor and uses its logits (with a
        # warning); Keras 2 and hand-written losses squash the probabilities a second time.
        severity = Severity.INFO
        message = (f"{loss} is set to take logits (from_logits=True) but this output applies "
                   f"{act}; Keras 3 falls back to the logits it kept, Keras 2 would squash twice")
        hint = "make it explicit: drop the output activation, or set from_logits=False"
    else:
        severity = Severity.WARNING
        message = (f"{loss} expects probabilities (from_logits=False) but this output is "
                   "linear (logits): the loss clips them to [eps, 1-eps] and gradients vanish")
        hint = "add a softmax/sigmoid to the output, or use --from-logits / from_logits=True"
    return [Finding("logits_mismatch", severity, message, hint,
                    {"loss": loss, "from_logits": from_logits, "activation": act})]


def structure_rule(layer: LayerFigures) -> list[Finding]:
    """Causes visible in the model's structure: an output that cannot vary, a crossentropy
    that does not fit its activation, a kernel of zeros."""
    found = []
    if layer.single_unit_softmax:
        found.append(Finding(
            "constant_output", Severity.ERROR,
            "this output is a softmax over one unit: it is 1 for every input, so no loss of it "
            "can train the model (every gradient behind it is zero, or rounding noise)",
            "use one sigmoid unit for a binary output (with binary_crossentropy), or a softmax "
            "over one unit per class",
            {"activation": "softmax", "units": 1}))
    if layer.loss_activation is not None:
        found.append(_loss_activation(*layer.loss_activation))
    found += _degenerate_normalization(layer)
    if layer.kernel_zero and layer.weight_grad.norm == 0.0:  # stuck: relu'(0) = 0
        found.append(Finding(
            "zero_kernel", Severity.ERROR,
            "the kernel is exactly zero and so is its own gradient (the activation's "
            "derivative is 0 at its zero pre-activation, relu'(0) = 0, or nothing reaches "
            "it): it never leaves zero, this layer outputs a constant and the layers before "
            "it get no gradient, for good",
            "initialise the kernel (glorot_uniform, he_normal); a zero initialisation only "
            "works where the activation has a slope at 0 (tanh, linear)",
            {"weight_norm": layer.weight_norm, "stuck": True}))
    elif layer.kernel_zero:
        found.append(Finding(
            "zero_kernel", Severity.INFO,
            "the kernel is exactly zero: the layers before this one get zero gradient until "
            "its first update (after which the model trains normally)",
            "expected right after a zero initialisation; otherwise check the initializer and "
            "how the weights were loaded",
            {"weight_norm": layer.weight_norm, "stuck": False}))
    return found


def _loss_activation(act: str, loss: str, semantics: str) -> Finding:
    """A crossentropy that does not fit its output's activation. Under Keras 3's rule the loss
    is computed from the logits the activation keeps, as the other activation's crossentropy:
    training minimises a loss of another output than the one the model returns (a warning).
    Under Keras 2's rule the probabilities are taken as they are (categorical crossentropy
    renormalises sigmoid outputs to sum to 1; binary crossentropy scores each softmax
    probability against its 0/1 target): a proper loss of the outputs the model returns, so
    the model trains; what remains is that Keras 3 would train the same file differently
    (info)."""
    if loss == "categorical_crossentropy":
        fix = ("categorical_crossentropy takes a softmax over the classes (one label per "
               "sample); independent sigmoid outputs take binary_crossentropy")
        trained = "softmax(logits) over the classes"
        keras2 = ("renormalises the sigmoid outputs to sum to 1 and trains them as class "
                  "probabilities")
    else:
        fix = ("binary_crossentropy takes independent sigmoid outputs; a softmax over the "
               "classes takes categorical_crossentropy")
        trained = "an independent sigmoid(logit) per class"
        keras2 = ("scores each softmax probability against its 0/1 target, a proper loss of "
                  "the softmax")
    if semantics == "keras2":
        return Finding(
            "loss_activation_mismatch", Severity.INFO,
            f"a {act} output under {loss}: under the Keras 2 rule this file follows, the loss "
            f"{keras2}, so training is not harmed; Keras 3 computes it from the {act}'s logits "
            f"as {trained}, so the same file trains differently there",
            f"to make the file portable, match them: {fix}",
            {"activation": act, "loss": loss, "semantics": semantics})
    return Finding(
        "loss_activation_mismatch", Severity.WARNING,
        f"a {act} output under {loss}: Keras 3 computes this loss from the {act}'s logits, "
        f"so training minimises the crossentropy of {trained}, not of the {act} outputs this "
        "model returns: what it predicts is not what it is trained to predict",
        f"match them: {fix}",
        {"activation": act, "loss": loss, "semantics": semantics})


def _degenerate_normalization(layer: LayerFigures) -> list[Finding]:
    """A statistic over one entry: x - mean(x) is 0 (LayerNormalization, GroupNormalization
    with one channel per group and nothing else to average over outputs its beta) and
    x / rms(x) is the sign of x (RMS and unit normalisation): the output is the same whatever
    the input, so ∂L/∂input is 0 and what only reaches the loss through it never learns."""
    if layer.normalized is None:
        return []
    axes, sizes = layer.normalized
    if math.prod(sizes) != 1:
        return []
    where = ", ".join(f"{a} (size {s})" for a, s in zip(axes, sizes, strict=True))
    plural = "axes" if len(axes) > 1 else "axis"
    return [Finding(
        "degenerate_normalization", Severity.ERROR,
        f"this layer normalises over {plural} {where} of its input: one entry per statistic, "
        "so its output does not depend on its input (x - mean is 0: it outputs its beta) and "
        "every layer whose only path to the loss runs through it gets zero gradient",
        "normalise over an axis with more than one entry (a (time, 1) signal: over the time "
        "axis), or project to more features first (Dense/Conv1D to a width > 1)",
        {"axes": ",".join(map(str, axes)), "sizes": ",".join(map(str, sizes)),
         "entries": 1})]
