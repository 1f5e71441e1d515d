"""Causes before consequences: link each finding to the findings it follows from.

A rule says "a finding with code C at entry k explains findings with codes D at entries where
``scope`` holds". The rules are the ones the backward and forward passes imply: NaN/Inf in the
weights or data poison every gradient; a layer whose units are dead or saturated passes (almost)
no gradient to the layers before it; untrained BatchNormalization statistics collapse the signal
after them; a collapsed forward signal makes the weight gradients after it tiny; a structural
cause (a constant output, a zero kernel) zeroes the gradients below it. Linking only adds
``caused_by``/``root`` and raises a root to the severity of the worst finding it explains; it
never drops a finding. Nothing here computes anything from arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from gradinspect.records import Finding, Severity
from gradinspect.report import reach_of

Scope = Callable[[int | None, int | None], bool]
"""(position of the cause, position of the consequence) in forward order -> linked?
``None`` is a model-level finding."""


def _anywhere(cause: int | None, effect: int | None) -> bool:
    return True


def _at_or_before(cause: int | None, effect: int | None) -> bool:
    """The backward pass: a cause at entry k reaches the entries before it and itself."""
    return cause is not None and effect is not None and effect <= cause


def _after(cause: int | None, effect: int | None) -> bool:
    """The forward pass: a cause at entry k reaches the entries after it."""
    return cause is not None and effect is not None and effect > cause


def _before(cause: int | None, effect: int | None) -> bool:
    return cause is not None and effect is not None and effect < cause


def _at_or_after(cause: int | None, effect: int | None) -> bool:
    return cause is not None and effect is not None and effect >= cause


def _first_entry(cause: int | None, effect: int | None) -> bool:
    return effect == 0


def _model_level(cause: int | None, effect: int | None) -> bool:
    return effect is None


@dataclass(frozen=True)
class Rule:
    """``cause`` explains ``effects`` where ``scope`` holds (and the cause is at least a
    warning, unless ``any_severity``)."""

    cause: str
    effects: frozenset[str]
    scope: Scope
    first_only: bool = False
    """Only the first cause finding in forward order explains (the others are its chain)."""
    any_severity: bool = False
    only_if: Callable[[Finding], bool] | None = None
    """A condition on the cause finding's figures."""


def _rule(cause: str, effects: str, scope: Scope, *, first_only: bool = False,
          any_severity: bool = False, only_if: Callable[[Finding], bool] | None = None) -> Rule:
    return Rule(cause, frozenset(effects.split()), scope, first_only, any_severity, only_if)


def _all_units(f: Finding) -> bool:
    """Every unit of the layer is dead or saturated: what follows it sees a constant."""
    fraction = f.figures.get("units_fraction")
    return isinstance(fraction, (int, float)) and fraction >= 1.0


_NAN = "nan_gradient inf_gradient"
_MAGNITUDE = "vanishing_gradient exploding_gradient zero_gradient signal_collapse"
RULES: tuple[Rule, ...] = (
    _rule("nonfinite_input", f"{_NAN} {_MAGNITUDE} constant_loss", _anywhere),
    _rule("nonfinite_weights", f"{_NAN} {_MAGNITUDE} constant_loss", _anywhere,
          first_only=True),
    _rule("untrained_batchnorm", "vanishing_activations dead_units saturated_units "
          "softmax_saturated", _after, first_only=True),
    _rule("untrained_batchnorm", "untrained_batchnorm", _after, first_only=True),
    _rule("untrained_batchnorm", "vanishing_gradient signal_collapse", _anywhere,
          first_only=True),
    _rule("constant_labels", "softmax_saturated saturated_units vanishing_gradient "
          "exploding_gradient", _anywhere),
    _rule("unscaled_input", "saturated_units dead_units exploding_gradient softmax_saturated",
          _first_entry, any_severity=True),
    _rule("constant_output", "zero_gradient signal_collapse", _anywhere, any_severity=True),
    _rule("constant_output", "constant_loss", _model_level, any_severity=True),
    _rule("degenerate_normalization", "zero_gradient vanishing_gradient signal_collapse "
          "vanishing_activations", _at_or_before),
    _rule("degenerate_normalization", "vanishing_activations", _after),
    _rule("zero_kernel", "zero_gradient", _before, any_severity=True),
    _rule("zero_kernel", "signal_collapse dead_units zero_gradient", _at_or_before,
          any_severity=True),
    _rule("zero_kernel", "vanishing_activations vanishing_gradient", _after, any_severity=True),
    _rule("constant_loss", "zero_gradient", _anywhere),
    _rule("dead_units", "vanishing_gradient zero_gradient signal_collapse", _at_or_before),
    _rule("saturated_units", "vanishing_gradient zero_gradient signal_collapse",
          _at_or_before),
    _rule("softmax_saturated", "vanishing_gradient zero_gradient signal_collapse",
          _at_or_before),
    _rule("dead_units", "vanishing_activations", _after),
    _rule("dead_units", "dead_units saturated_units softmax_saturated vanishing_gradient "
          "zero_gradient", _after, only_if=_all_units),
    _rule("saturated_units", "dead_units saturated_units vanishing_gradient zero_gradient",
          _after, only_if=_all_units),
    _rule("dead_units", "constant_loss", _model_level),
    _rule("saturated_units", "constant_loss", _model_level),
    _rule("vanishing_activations", "vanishing_gradient", _at_or_after),
    _rule("signal_collapse", "vanishing_gradient zero_gradient", _before),
    _rule("exploding_gradient", "softmax_saturated saturated_units", _at_or_after),
    _rule("logits_mismatch", "vanishing_gradient signal_collapse", _anywhere),
)
"""Every cause -> consequence link. A consequence may have several causes; each rule links
the nearest cause (in forward order) to each consequence it covers."""


EXACT = frozenset({"nonfinite_input", "nonfinite_weights", "constant_output",
                   "degenerate_normalization", "zero_kernel"})
"""Causes whose consequences follow by construction, not by degree: where one explains a
finding, the finding has no other cause."""


def _nearest(causes: list[tuple[int | None, Finding]], effect: int | None,
             scope: Scope) -> Finding | None:
    found = [(pos, f) for pos, f in causes if scope(pos, effect)]
    if not found:
        return None
    if effect is None:
        return found[0][1]
    return min(found, key=lambda pf: abs((pf[0] if pf[0] is not None else -1) - effect))[1]


def link(findings: Sequence[Finding], positions: dict[str, int]) -> list[Finding]:
    """``findings`` with ``caused_by``/``root`` set; roots take the severity of the worst
    finding they explain. ``positions``: each entry path's place in forward order (a
    finding's ``layer``; ``None`` = model level)."""

    def pos(f: Finding) -> int | None:
        return positions.get(f.layer) if f.layer is not None else None

    by_code: dict[str, list[tuple[int | None, Finding]]] = {}
    for f in findings:
        by_code.setdefault(f.code, []).append((pos(f), f))
    for entries in by_code.values():
        entries.sort(key=lambda pf: -1 if pf[0] is None else pf[0])
    causes_of: dict[str, list[str]] = {f.id: [] for f in findings}
    for rule in RULES:
        candidates = [(p, f) for p, f in by_code.get(rule.cause, [])
                      if (rule.any_severity or f.severity is not Severity.INFO)
                      and (rule.only_if is None or rule.only_if(f))]
        if rule.first_only:
            candidates = candidates[:1]
        if not candidates:
            continue
        for code in rule.effects:
            for p, f in by_code.get(code, []):
                cause = _nearest([c for c in candidates if c[1].id != f.id], p, rule.scope)
                if cause is not None and cause.id not in causes_of[f.id]:
                    causes_of[f.id].append(cause.id)
    _link_chains(findings, pos, causes_of)
    # an exact structural cause (it zeroes the gradient by construction) is the whole cause:
    # a sample that happens to saturate the softmax does not share the zero it explains
    codes = {f.id: f.code for f in findings}
    for fid, causes in causes_of.items():
        if any(codes[c] in EXACT for c in causes):
            causes_of[fid] = [c for c in causes if codes[c] in EXACT]
    # of two causes where one follows from the other, name the earlier one only: the zero
    # gradient below a dead layer follows from the dead units, not from the collapse they cause
    first = [replace(f, caused_by=tuple(causes_of[f.id])) for f in findings]
    reach = reach_of(first)
    for fid, causes in causes_of.items():
        causes_of[fid] = [c for c in causes
                          if not any(c in reach.get(other, ()) for other in causes if other != c)]
    linked = [replace(f, root=not causes_of[f.id], caused_by=tuple(causes_of[f.id]))
              for f in findings]
    severity = {f.id: f.severity for f in linked}
    reach = reach_of(linked)
    by_id = {f.id: f for f in linked}
    return [replace(f, severity=max([f.severity, *(severity[e] for e in reach[f.id])],
                                    key=lambda s: s.rank)) if f.root
            else replace(f, hint=_root_hint(f, by_id)) for f in linked]


BACKWARD_CHAINS = frozenset({"vanishing_gradient", "exploding_gradient"})
"""Symptoms of the backward pass: in a run of adjacent entries with one of these, the signal
shrinks (or grows) layer after layer on its way back from the output, so the entry nearest
the output is where it starts."""
FORWARD_CHAINS = frozenset({"dead_units", "saturated_units"})
"""Symptoms of the forward pass: in a run of adjacent entries, the first one feeds the rest."""


def _link_chains(findings: Sequence[Finding], pos: Callable[[Finding], int | None],
                 causes_of: dict[str, list[str]]) -> None:
    """One cause, one root: adjacent entries with the same harmful symptom and no other cause
    (a sigmoid stack's gradient shrinking by x0.2 per layer on the way back) follow from the
    first harmful one of the run in the direction the signal travels. A run of information
    is not chained (a few dead relu units in two adjacent layers are two facts, not one
    cause)."""
    for code in BACKWARD_CHAINS | FORWARD_CHAINS:
        placed = sorted(((p, f) for f in findings if f.code == code
                         and (p := pos(f)) is not None), key=lambda pf: pf[0])
        runs: list[list[Finding]] = []
        for k, (p, f) in enumerate(placed):
            if k and p == placed[k - 1][0] + 1:
                runs[-1].append(f)
            else:
                runs.append([f])
        for run in runs:
            if code in BACKWARD_CHAINS:
                run.reverse()  # in the direction the signal travels: from the output back
            harmful = [k for k, f in enumerate(run) if f.severity is not Severity.INFO]
            if not harmful:
                continue
            head = run[harmful[0]]
            for f in run[harmful[0] + 1:]:
                if not causes_of[f.id]:
                    causes_of[f.id].append(head.id)


def _root_hint(f: Finding, by_id: dict[str, Finding]) -> str:
    """A consequence's hint is its root's, so that no finding advises what its cause rules
    out (no "larger initialisation" for a gradient that an untrained BatchNormalization
    cuts): following the first cause back to a root."""
    seen = {f.id}
    cause = by_id[f.caused_by[0]]
    while not cause.root and cause.caused_by and cause.caused_by[0] not in seen:
        seen.add(cause.id)
        cause = by_id[cause.caused_by[0]]
    return f"fix {cause.id} first: {cause.hint}"
