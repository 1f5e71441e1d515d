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
import logging
import os
import shutil
import sys
import tempfile
import warnings
from functools import cache
from types import ModuleType


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
