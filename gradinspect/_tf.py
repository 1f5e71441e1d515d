"""The one door to TensorFlow and Keras: a lazy, quiet import.

TensorFlow costs seconds and hundreds of MiB to import, so nothing imports it at module level;
the two modules that need it (``loading``, ``probe``) call ``tf_modules()`` when they run.
TensorFlow's C++ runtime writes start-up chatter to file descriptor 2 before its own log level
is read, so the import runs with fd 2 redirected to a buffer that is replayed only on failure.
Importing Keras writes ``keras.json`` (and creates its folder) in ``$KERAS_HOME`` or
``~/.keras`` when there is none; the tool writes nothing outside its output, so where that file
does not exist Keras is pointed at a private temporary folder instead (its defaults are the
same either way) and the user's home is left as it was.
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from types import ModuleType

_FREEZE_ON_IMPORT = [False]
"""Set while ``cli_process`` has the cyclic collector paused for the imports."""


@contextmanager
def cli_process() -> Iterator[None]:
    """The command-line process's garbage collection. Python's cyclic collector scans every
    object it tracks as the heap grows, and importing TensorFlow and Keras makes about 400,000
    of them: in a MobileNetV2 run the collector took 0.7 s, most of it re-scanning what the
    imports made, and shutdown scanned the heap once more (0.9 s between the report and the
    process's end). So, when TensorFlow is not imported yet, the collector is paused until
    it is, what the imports made is frozen out of later collections (``gc.freeze``: it
    lives until the process ends anyway), and collection resumes for everything the run
    makes; on the way out the rest is frozen too, so shutdown skips the scan (files are
    written and closed by then; ``atexit`` still runs). The library does none of this: a
    host process's own objects would be frozen with ours."""
    cold = "tensorflow" not in sys.modules and gc.isenabled()
    if cold:
        gc.disable()
        _FREEZE_ON_IMPORT[0] = True
    try:
        yield
    finally:
        if cold:
            _FREEZE_ON_IMPORT[0] = False
            gc.enable()
            gc.freeze()


@cache
def tf_modules() -> tuple[ModuleType, ModuleType]:
    """Import and return ``(tensorflow, keras)``, silencing their start-up noise."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    # oneDNN's CPU kernels have crashed the process (heap corruption) on the gradient of a
    # 1x1 stride-2 convolution; TensorFlow's own kernels ran the same model correctly, and on
    # the benchmark models at the same speed. A value the user set is kept.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    _private_keras_home()
    with tempfile.TemporaryFile() as buffer:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(buffer.fileno(), 2)
        try:
            import keras
            import tensorflow as tf
        except BaseException:
            os.dup2(saved, 2)
            buffer.seek(0)
            sys.stderr.write(buffer.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    if _FREEZE_ON_IMPORT[0]:  # see ``cli_process``
        gc.freeze()
        gc.enable()
    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"keras(\..*)?$")
    return tf, keras


def _private_keras_home() -> None:
    """Point ``KERAS_HOME`` at a temporary folder (removed at exit) unless the Keras folder
    Keras would use already holds a ``keras.json`` (then Keras only reads it)."""
    if "keras" in sys.modules:
        return
    home = os.environ.get("KERAS_HOME")
    if home is None:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    if os.path.isfile(os.path.join(os.path.expanduser(home), "keras.json")):
        return
    private = tempfile.mkdtemp(prefix="gradinspect-keras-")
    atexit.register(shutil.rmtree, private, True)
    os.environ["KERAS_HOME"] = private
