"""The engine: which layers are inspected and how, and the hooked forward/backward pass.

``walk`` is the one walker over the model; it asks each adapter in ``adapters`` (one module per
layer kind), in order, whether a layer is its kind. ``hooks`` taps every entry's input, output
and pre-activation; ``step`` is the tape pass of one batch and ``figures`` what it reduces on
the device (each figure with its merge, ``layout``); ``runners`` runs the step (eager, compiled,
tf.distribute) and unpacks it into ``captures``; ``persample`` the per-sample gradient norms
(each kind's closed form, or the exact fallback), on the shapes in ``views`` that it shares
with the adapters; ``gradcheck`` and ``seeding`` are the float64 checks and the randomness of
a pass. TensorFlow is used here, through ``gradinspect._tf``; the
engine imports ``io`` records and ``losses``, nothing from measurement, diagnosis or rendering.
"""
