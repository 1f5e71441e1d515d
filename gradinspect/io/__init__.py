"""Bytes to Keras objects and arrays: everything gradinspect reads comes in here.

``sniff`` says what a path holds; ``safety`` stops untrusted input (HDF5 rules, the config
allow-list judged by ``resolve``, size budgets) before Keras or h5py reads a byte it should not;
``models`` loads a model (with the Keras 2 repairs of ``legacy``); ``data`` reads the arrays
(one reader per format) and ``data.select`` matches them to the model's inputs and labels.
The records handed on are in ``loaded``. May import ``errors``, ``config`` and the TensorFlow
door ``_tf``; nothing from the engine, measurement, diagnosis or rendering.
"""
