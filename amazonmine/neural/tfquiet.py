"""Import TensorFlow without its C++ start-up chatter.

TensorFlow 2.2x prints oneDNN notices and CUDA probing lines through absl before any Python setting can
apply (``TF_CPP_MIN_LOG_LEVEL`` only governs messages after start-up), which buries the stage's own output
and progress bars on every CPU machine. The import runs with file descriptor 2 pointed at /dev/null; a
failing import still raises its Python exception as usual.
"""

from __future__ import annotations

import os
import sys


def import_tensorflow():
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras  # noqa: F401  (imports its TF backend under the same muted stderr)
        import tensorflow as tf
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    import absl.logging

    # Keras logs a "legacy HDF5" notice on every .h5 save: the .h5 name is the project's documented artifact.
    absl.logging.set_verbosity(absl.logging.ERROR)
    return tf
