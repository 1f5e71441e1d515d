"""Measurement: numbers from the engine's captures, in plain numpy.

``accumulators`` folds batches into the run's state (the same merges replicas and workers use),
``stats`` holds the tensor statistics, ``verify`` the closed-form checks, ``per_sample`` the
per-sample norms, and ``summary`` turns it all into records (running the diagnosis). Imports
records, ``config``, ``diagnose`` and ``io`` records; no TensorFlow and no renderer.
"""
