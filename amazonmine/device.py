"""Where TensorFlow computes: the CPU unless ``--gpu``; with ``--gpu``, every GPU it sees.

Shared by the stages that run a model (train, predict) and the benchmark scripts, so they all compute the same
way: float32 on the CPU; mixed float16 on GPUs, mirrored over several. Training across machines would swap the
strategy for ``tf.distribute.MultiWorkerMirroredStrategy`` (TF_CONFIG) here and nowhere else.
"""

from __future__ import annotations

from amazonmine.errors import AmazonmineError


def setup_device(gpu: bool):
    """CPU unless --gpu. With --gpu: require a GPU, mixed precision, MirroredStrategy over several GPUs.

    Returns the ``tf.distribute`` strategy to build models under.
    """
    from amazonmine.tfquiet import import_tensorflow

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
        return tf.distribute.get_strategy()
    if not gpus:
        raise AmazonmineError("--gpu given but TensorFlow sees no GPU (check `nvidia-smi`, and install "
                              "`pip install 'tensorflow[and-cuda]'`); run without --gpu to train on the CPU")
    for device in gpus:
        try:
            tf.config.experimental.set_memory_growth(device, True)
        except RuntimeError:  # already initialised: growth can no longer be changed, and need not be
            pass
    keras.mixed_precision.set_global_policy("mixed_float16")
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
