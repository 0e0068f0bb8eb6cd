"""The classifier: a backbone from ``keras.applications`` (DenseNet121 by default), global pooling, dropout and
a sigmoid head of one unit per label of the run's vocabulary (17 for Planet's), with the weights policy in one
place (as timm's ``create_model`` does). :data:`HEAD_LAYERS` are the layers after the backbone: fine-tuning
(``train.init_from``) copies every other layer and keeps the head only when the vocabulary is the same.

* The model takes raw pixels (0..255 for JPEG, 16-bit counts for TIF) and rescales them itself, so a saved
  ``.h5`` needs no outside preprocessing.
* 4-band input (R, G, B, NIR): the backbone is built for 4 channels; with ImageNet weights the first
  convolution's RGB kernels are copied and its NIR kernel starts as their mean (a common adaptation that
  keeps the pretrained response to visible light and lets training learn what NIR adds).
* ``densenet_mini`` is a from-scratch DenseNet with tiny blocks for tests and the CPU demo; every layer is a
  stock Keras layer, so it saves and loads under ``safe_mode`` like the full model.
* Under ``mixed_float16`` the sigmoid head stays float32 (float16 sigmoids saturate and the loss goes NaN).
"""

from __future__ import annotations

from pathlib import Path

from amazonmine.core.config import NO_WEIGHTS
from amazonmine.core.data import LABELS
from amazonmine.core.errors import AmazonmineError

NUM_LABELS = len(LABELS)
# The layers a new vocabulary replaces (the Dense "logits"); the others carry no label-specific weights.
HEAD_LAYERS = ("logits",)
# ImageNet statistics (in 0..1 units) that keras.applications' DenseNet weights were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Planet's analytic TIFs hold reflectance-like counts; 1/10000 brings them to roughly 0..1.
TIF_SCALE = 10000.0


class WeightsError(AmazonmineError):
    pass


def pixel_scale(image_format: str) -> float:
    return TIF_SCALE if image_format == "tif" else 255.0


def resolve_weights(weights: str) -> str | None:
    """'none' -> None; 'imagenet' -> 'imagenet' (or a clear error when offline); a path must exist.

    The config stores every spelling of "no weights" (none, null, "") as ``NO_WEIGHTS``; only that is compared.
    """
    if weights == NO_WEIGHTS:
        return None
    if weights == "imagenet":
        return "imagenet"  # Keras tries its cache, then the download; build_backbone turns a failure into advice.
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"train.weights: {path} not found (give 'none', 'imagenet' or a local .h5 file)")
    return str(path)


# The mini network trains for a few dozen steps in tests and demos; Keras' default BatchNorm momentum (0.99)
# would leave the moving statistics near their initial values after so few steps, and validation would see a
# different network than training did.
BN_MOMENTUM = 0.9


def _mini_densenet(inputs, blocks: list[int], growth: int):
    """A small from-scratch DenseNet (BN-ReLU-Conv bottlenecks, concatenation, transitions) for tiny chips."""
    import keras
    from keras import layers

    x = layers.Conv2D(2 * growth, 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    for b, n_layers in enumerate(blocks):
        for i in range(n_layers):
            y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"b{b}_l{i}_bn1")(x)
            y = layers.Activation("relu", name=f"b{b}_l{i}_relu1")(y)
            y = layers.Conv2D(4 * growth, 1, use_bias=False, name=f"b{b}_l{i}_conv1")(y)
            y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"b{b}_l{i}_bn2")(y)
            y = layers.Activation("relu", name=f"b{b}_l{i}_relu2")(y)
            y = layers.Conv2D(growth, 3, padding="same", use_bias=False, name=f"b{b}_l{i}_conv2")(y)
            x = layers.Concatenate(name=f"b{b}_l{i}_concat")([x, y])
        if b < len(blocks) - 1:
            x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"t{b}_bn")(x)
            x = layers.Activation("relu", name=f"t{b}_relu")(x)
            x = layers.Conv2D(int(x.shape[-1]) // 2, 1, use_bias=False, name=f"t{b}_conv")(x)
            x = layers.AveragePooling2D(2, name=f"t{b}_pool")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="final_bn")(x)
    x = layers.Activation("relu", name="final_relu")(x)
    return keras.Model(inputs, x, name="densenet_mini")


def _application(backbone: str):
    import keras

    names = {"densenet121": "DenseNet121", "densenet169": "DenseNet169", "densenet201": "DenseNet201"}
    attr = names.get(backbone.lower(), backbone)
    fn = getattr(keras.applications, attr, None)
    if fn is None or not callable(fn):
        raise AmazonmineError(f"train.backbone: unknown backbone '{backbone}' (densenet121, densenet_mini, or a "
                              "keras.applications name such as ResNet50)")
    return fn


def _adapt_first_conv(rgb_model, model4) -> None:
    """Copy ImageNet weights from a 3-channel backbone into a 4-channel one; NIR kernel = mean of RGB."""
    import numpy as np

    first_done = False
    for src, dst in zip(rgb_model.layers, model4.layers):
        weights = src.get_weights()
        if not weights:
            continue
        if not first_done and weights[0].ndim == 4 and weights[0].shape[2] == 3:
            kernel = weights[0]
            weights[0] = np.concatenate([kernel, kernel.mean(axis=2, keepdims=True)], axis=2)
            first_done = True
        dst.set_weights(weights)


def check_backbone(train_cfg) -> None:
    """Fail on an unknown backbone, a missing weights file or weights for densenet_mini before any chip is read."""
    if train_cfg.backbone == "densenet_mini":
        if train_cfg.weights != NO_WEIGHTS:
            raise WeightsError(f"train.weights: densenet_mini has no pretrained weights; use '{NO_WEIGHTS}'")
        return
    _application(train_cfg.backbone)
    resolve_weights(train_cfg.weights)


def build_backbone(train_cfg, image_size: int, channels: int):
    import keras

    shape = (image_size, image_size, channels)
    if train_cfg.backbone == "densenet_mini":
        check_backbone(train_cfg)
        return _mini_densenet(keras.Input(shape), list(train_cfg.mini_blocks), train_cfg.mini_growth)
    app = _application(train_cfg.backbone)
    weights = resolve_weights(train_cfg.weights)
    local = weights not in (None, "imagenet")
    try:
        if weights == "imagenet" and channels != 3:
            rgb = app(include_top=False, weights="imagenet", input_shape=shape[:2] + (3,), pooling=None)
            model = app(include_top=False, weights=None, input_shape=shape, pooling=None)
            _adapt_first_conv(rgb, model)
            return model
        model = app(include_top=False, weights=None if local else weights, input_shape=shape, pooling=None)
    except Exception as exc:  # noqa: BLE001 - Keras raises several types for a failed download
        if weights == "imagenet":
            raise WeightsError(
                f"train.weights=imagenet: the ImageNet weights for {train_cfg.backbone} are not in the Keras cache "
                f"(~/.keras/models/) and could not be downloaded ({type(exc).__name__}). On a machine with internet, "
                f"run: python -c \"import keras; keras.applications.{app.__name__}(include_top=False)\" and copy "
                f"~/.keras/models/*notop.h5 here, or pass --set train.weights=/path/to/weights_notop.h5, "
                f"or --set train.weights=none to train from scratch."
            ) from None
        raise
    if local:
        try:
            model.load_weights(weights, skip_mismatch=False)
        except Exception as exc:  # noqa: BLE001
            raise WeightsError(f"train.weights: cannot load {weights} into {train_cfg.backbone} "
                               f"({str(exc).splitlines()[0][:200]}); expected a no-top weights .h5") from None
    return model


def build_model(train_cfg, channels: int = 3, image_format: str = "jpg", num_labels: int = NUM_LABELS):
    """Backbone + pooling + dropout + float32 sigmoid head of ``num_labels`` units, taking raw pixels at
    train.image_size (any size with progressive resizing, which trains on smaller chips first)."""
    from amazonmine.neural.tfquiet import import_tensorflow

    import_tensorflow()
    import keras
    from keras import layers

    size = None if train_cfg.small_size else train_cfg.image_size
    inputs = keras.Input((size, size, channels), name="chips")
    x = layers.Rescaling(1.0 / pixel_scale(image_format), name="to_unit")(inputs)
    if train_cfg.weights != NO_WEIGHTS and train_cfg.backbone != "densenet_mini":
        mean = list(IMAGENET_MEAN) + [sum(IMAGENET_MEAN) / 3] * (channels - 3)
        var = [s * s for s in IMAGENET_STD] + [(sum(IMAGENET_STD) / 3) ** 2] * (channels - 3)
        x = layers.Normalization(mean=mean, variance=var, name="imagenet_norm")(x)
    backbone = build_backbone(train_cfg, size, channels)
    x = backbone(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if train_cfg.dropout > 0:
        x = layers.Dropout(train_cfg.dropout, name="dropout")(x)
    x = layers.Dense(num_labels, name="logits")(x)
    outputs = layers.Activation("sigmoid", dtype="float32", name="probs")(x)
    return keras.Model(inputs, outputs, name=f"amazonmine_{train_cfg.backbone}")


def load_trained(path: str | Path):
    """Load a saved classifier for inference, refusing arbitrary code (safe_mode) and skipping compile."""
    from amazonmine.neural.tfquiet import import_tensorflow

    import_tensorflow()
    import keras

    path = Path(path)
    if not path.is_file():
        raise AmazonmineError(f"{path}: model file not found (run 'amazonmine train' first)")
    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001
        raise AmazonmineError(f"{path}: cannot load model ({str(exc).splitlines()[0][:200]})") from None
