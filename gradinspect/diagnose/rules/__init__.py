"""The finding rules, one module per family; each declares the codes it emits in ``CODES``.

``nonfinite`` (NaN/Inf anywhere), ``magnitude`` (zero, vanishing, exploding gradients),
``flow`` (the backward signal across the model, a constant loss), ``activity`` (saturated and
dead units, confident softmax), ``structure`` (loss and activation pairings, zero kernels),
``forward`` (input scale, activations, BatchNormalization statistics) and ``checks``
(``--verify``, ``--gradcheck``); ``common`` is their shared wording. A rule reads the frozen
figures of ``diagnose.figures`` and returns ``Finding`` records; a new finding is a new rule in
its family's module (or a new module) and its code in that module's ``CODES``.
"""
