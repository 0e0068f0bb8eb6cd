"""Where TensorFlow computes: the CPU unless ``--gpu``; with ``--gpu``, every GPU it sees.

Shared by the stages that run a model (train, predict) and the benchmark scripts, so they all compute the same
way: float32 on the CPU; mixed float16 on GPUs, mirrored over several. Training across machines configures
the same devices (:func:`configure_devices`) under ``tf.distribute.MultiWorkerMirroredStrategy`` instead
(:mod:`amazonmine.neural.cluster`).
"""

from __future__ import annotations

from amazonmine.core.errors import AmazonmineError


def setup_device(gpu: bool):
    """CPU unless --gpu. With --gpu: require a GPU, mixed precision, MirroredStrategy over several GPUs.

    Returns the ``tf.distribute`` strategy to build models under.
    """
    gpus = configure_devices(gpu)  # imports TensorFlow quietly first
    import tensorflow as tf

    return tf.distribute.MirroredStrategy() if gpus > 1 else tf.distribute.get_strategy()


def configure_devices(gpu: bool) -> int:
    """Hide the GPUs and compute in float32 (no --gpu), or require a GPU and compute in mixed float16 on all
    of them (--gpu). Returns the number of GPUs in use. Touches only settings that must precede TensorFlow's
    start-up, so a distribution strategy can still be created afterwards (the multi-worker one needs that).
    """
    from amazonmine.neural.tfquiet import import_tensorflow

    import_tensorflow()
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpu:
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:  # devices already initialised in this process; stays as it was
            pass
        keras.mixed_precision.set_global_policy("float32")
        return 0
    if not gpus:
        raise AmazonmineError("--gpu given but TensorFlow sees no GPU (check `nvidia-smi`, and install "
                              "`pip install 'tensorflow[and-cuda]'`); run without --gpu to train on the CPU")
    for device in gpus:
        try:
            tf.config.experimental.set_memory_growth(device, True)
        except RuntimeError:  # already initialised: growth can no longer be changed, and need not be
            pass
    keras.mixed_precision.set_global_policy("mixed_float16")
    return len(gpus)


def set_op_determinism(deterministic: bool) -> None:
    """Same seed, same data -> same numbers (tf.data order and kernels included), or not."""
    import tensorflow as tf

    if deterministic:
        tf.config.experimental.enable_op_determinism()
    else:
        # The setting is process-wide: an earlier run in this process (a notebook, the tests) may have turned
        # it on, and it would turn this run's XLA off.
        from tensorflow.python.framework import config as tf_config

        tf_config.disable_op_determinism()
