"""tf.data input pipeline: chips -> (optionally cached) pixels -> dihedral views + jitter -> batches.

Chips are decoded with the package's own checked reader (:func:`amazonmine.core.data.decode_image`, OpenCV) in
parallel ``tf.numpy_function`` calls, because TensorFlow cannot read the 4-band TIFs and because a truncated
JPEG must be an error, not a grey chip. All chips are checked once before training starts (``preflight``), so
a bad file stops the run in the first minute with its name, never hours into an epoch.

Channel order fed to the model: R, G, B (+ NIR for TIFs). Pixel values stay raw (0..255 or 16-bit counts);
the model's own first layer rescales them, so a saved model needs no outside preprocessing.

Dihedral numbering (shared with split and TTA): see :data:`amazonmine.core.data.DIHEDRAL_NAMES`.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from amazonmine.core.data import DataError, read_image

TTA_VIEWS = {1: (0,), 2: (0, 4), 4: (0, 1, 2, 3), 8: tuple(range(8))}


def to_model_channels(img: np.ndarray) -> np.ndarray:
    """OpenCV order (B, G, R[, NIR]) -> model order (R, G, B[, NIR])."""
    order = [2, 1, 0] + list(range(3, img.shape[-1]))
    return img[..., order]


def read_chip(path: str | Path, expected_size: int = 0) -> np.ndarray:
    """One chip in model channel order, float32, raw values."""
    return to_model_channels(read_image(path, expected_size)).astype(np.float32)


@dataclass
class ChipSet:
    """Checked chips: their paths, and (when cached) their pixels at the model's input size."""

    paths: list[str]
    channels: int
    native_size: int
    pixels: np.ndarray | None = None  # (N, S, S, C) uint8/uint16 when cached


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    """A square chip resized to ``size`` the way training feeds the model (the one place that decides it)."""
    import cv2

    if img.shape[0] == size:
        return img
    # INTER_AREA averages when shrinking (no aliasing); bilinear when enlarging small chips.
    interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
    out = cv2.resize(img, (size, size), interpolation=interp)
    return out if out.ndim == 3 else out[..., None]


def preflight(paths: Sequence[str | Path], image_size: int, cache: bool, expected_size: int = 0,
              progress: bool = True, desc: str = "checking chips") -> ChipSet:
    """Decode every chip once (threads: OpenCV releases the GIL), failing with the list of bad files.

    With ``cache`` the decoded chips are kept, resized to the model's input size, as one uint8/uint16 array
    so that each epoch reads memory instead of disk.
    """
    from amazonmine.core.logs import progress_bar

    paths = [str(p) for p in paths]
    if not paths:
        raise DataError("no chips to read")
    errors: list[str] = []
    shapes: set[tuple[int, int]] = set()
    pixels = None

    def load(i: int):
        try:
            img = to_model_channels(read_image(paths[i], expected_size))
        except DataError as exc:
            return i, None, str(exc)
        return i, img, None

    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        for i, img, err in progress_bar(pool.map(load, range(len(paths))), total=len(paths), desc=desc,
                                        unit="chip", enabled=progress):
            if err is not None:
                errors.append(err)
                continue
            shapes.add((img.shape[0], img.shape[2]))
            if cache:
                if pixels is None:
                    pixels = np.zeros((len(paths), image_size, image_size, img.shape[2]), dtype=img.dtype)
                pixels[i] = resize_square(img, image_size)
    if errors:
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise DataError(f"{len(errors)} unreadable chip(s): " + "; ".join(errors[:3]) + more)
    if len({c for _, c in shapes}) > 1:
        raise DataError(f"chips have different band counts: {sorted(shapes)}")
    # Mixed chip sizes are fine: every chip is resized to the model's input size on the way in.
    sizes = sorted({s for s, _ in shapes})
    return ChipSet(paths=paths, channels=next(iter(shapes))[1], native_size=sizes[-1], pixels=pixels)


# --- TensorFlow side ---------------------------------------------------------------------------------------

def dihedral_tf(image, k):
    """Dihedral transform k (0..7, tensor) of an (H, W, C) or (N, H, W, C) image, matching data.apply_dihedral."""
    import tensorflow as tf

    k = tf.cast(k, tf.int32)
    rotated = tf.image.rot90(image, k % 4)
    return tf.cond(k >= 4, lambda: tf.image.flip_left_right(rotated), lambda: rotated)


def _jitter(image, seed, brightness: float, contrast: float, scale: float):
    import tensorflow as tf

    # Relative jitter so that 8-bit JPEGs and 16-bit TIFs get the same mild change.
    if contrast > 0:
        image = tf.image.stateless_random_contrast(image, 1.0 - contrast, 1.0 + contrast, seed=seed)
    if brightness > 0:
        delta = tf.random.stateless_uniform([], seed=seed + 1, minval=-brightness, maxval=brightness)
        image = image + delta * scale
    return tf.clip_by_value(image, 0.0, scale)


def _gaussian_blur(image, sigma):
    """(H, W, C) image blurred by a 5x5 Gaussian of (tensor) ``sigma``, borders reflected, not darkened."""
    import tensorflow as tf

    taps = tf.exp(-tf.square(tf.range(-2.0, 3.0)) / (2.0 * tf.square(sigma)))
    taps = taps / tf.reduce_sum(taps)
    channels = tf.shape(image)[-1]
    kernel = tf.tile((taps[:, None] * taps[None, :])[:, :, None, None], [1, 1, channels, 1])
    padded = tf.pad(image[None], [[0, 0], [2, 2], [2, 2], [0, 0]], mode="REFLECT")
    return tf.nn.depthwise_conv2d(padded, kernel, strides=[1, 1, 1, 1], padding="VALID")[0]


RESAMPLINGS = ("area", "bilinear", "bilinear_antialiased", "bicubic", "nearest")
FOCUS = ("blur", "sharpen")
CHIP_REMAKES = RESAMPLINGS + FOCUS + ("jpeg",)


def remake_chip(image, seed, scale: float, channels: int, kind: str | None = None, native: int = 0):
    """The chip as another chip-making pipeline might have made it, in three random steps: resampling (none,
    or down to 50-90% of the side and back by area, bilinear with or without antialiasing, bicubic or
    nearest), focus (none, Gaussian blur of sigma 0.4-1.2 px, or unsharp masking), and for 3-band chips a JPEG
    round trip at quality 40-95 with halved chroma, half of the time (what cost the most F2 on real chips:
    scripts/bench_tile_match.py --f2).

    ``seed`` is a stateless seed pair; ``scale`` the full-scale pixel value; ``kind`` (one of
    :data:`CHIP_REMAKES`) applies that one step alone. ``native``: the chips' own size, when the image was
    enlarged from it: the JPEG round trip happens at that size, as it did to the chip file (its 8x8 blocks and
    halved chroma are chip pixels, not model pixels)."""
    import tensorflow as tf

    size = tf.shape(image)[0]
    side = image.shape[0]
    enlarged = bool(native) and side is not None and native < side

    def strength(step: int):
        return tf.random.stateless_uniform([], seed=seed + 10 + step)

    def resample(method: str, antialias: bool = False):
        def remade(img):
            small_side = tf.cast(tf.round(tf.cast(size, tf.float32) * (0.5 + 0.4 * strength(0))), tf.int32)
            small = tf.image.resize(img, [small_side, small_side], method=method, antialias=antialias)
            return tf.image.resize(small, [size, size], method="bilinear")
        return remade

    def blur(img):
        return _gaussian_blur(img, 0.4 + 0.8 * strength(1))

    def sharpen(img):
        return img + (0.3 + 0.7 * strength(1)) * (img - _gaussian_blur(img, 1.0))

    def jpeg(img):
        quality = 40 + tf.cast(strength(2) * 56.0, tf.int32)
        chip = tf.image.resize(img, [native, native], method="area") if enlarged else img
        chip = tf.image.adjust_jpeg_quality(tf.clip_by_value(chip / scale, 0.0, 1.0), quality) * scale
        return tf.image.resize(chip, [size, size], method="bilinear") if enlarged else chip

    steps = dict(zip(CHIP_REMAKES, [resample("area"), resample("bilinear"), resample("bilinear", antialias=True),
                                    resample("bicubic"), resample("nearest"), blur, sharpen, jpeg]))
    if channels != 3 and kind == "jpeg":
        raise KeyError("jpeg: JPEG holds 1 or 3 bands only")
    if kind is not None:
        out = steps[kind](image)
    else:
        def pick(names: tuple[str, ...], img, salt: int):
            branches = [lambda: img] + [lambda name=name: steps[name](img) for name in names]
            choice = tf.random.stateless_uniform([], seed=seed + salt, minval=0, maxval=len(branches),
                                                 dtype=tf.int32)
            remade = tf.switch_case(choice, branches)
            remade.set_shape(image.shape)
            return remade

        out = pick(FOCUS, pick(RESAMPLINGS, image, 2), 3)
        if channels == 3:
            encoded = tf.random.stateless_uniform([], seed=seed + 5) < 0.5
            out = tf.cond(encoded, lambda: jpeg(out), lambda: out)
    out.set_shape(image.shape)
    return tf.clip_by_value(out, 0.0, scale)


@dataclass(frozen=True)
class Batching:
    """What :func:`make_dataset`'s batches look like: the side chips are read at, chips per batch, the pixel
    scale of their format (255 for 8-bit chips), and a smaller side to shrink them to by area averaging before
    any augmentation (progressive resizing; 0 = none)."""

    image_size: int
    batch_size: int
    pixel_scale: float = 255.0
    resize_to: int = 0


@dataclass(frozen=True)
class TrainingStream:
    """A training input for :func:`make_dataset`: the seed of its order and augmentations, the chip it starts at
    (None: one pass), and how chips vary (``augment`` off: only the manifest's fixed transforms)."""

    seed: int = 0
    start: int | None = None
    augment: bool = True
    brightness: float = 0.05
    contrast: float = 0.1
    chip_augment: float = 0.0

    @classmethod
    def from_config(cls, train_cfg, seed: int, start: int | None = None) -> "TrainingStream":
        """The stream the ``train`` section describes (its augmentation settings), from ``seed`` and ``start``."""
        return cls(seed, start, train_cfg.augment, train_cfg.brightness_jitter, train_cfg.contrast_jitter,
                   train_cfg.chip_augment)


def make_dataset(chips: ChipSet, rows: np.ndarray, labels: np.ndarray | None, transforms: np.ndarray | None,
                 batching: Batching, stream: TrainingStream | None = None):
    """A batched, prefetched tf.data.Dataset over ``rows`` (indices into ``chips``), as ``batching`` says.

    Without ``stream``: the rows in order, unaugmented. With it (training): one shuffled pass over the rows
    or, with ``stream.start``, an endless stream of passes from its ``start``-th chip on. Pass p is the permutation
    seeded by (``seed``, p) and chip g of the stream is augmented with seed (``seed``, g), so the stream is a pure
    function of the seed: a resumed run that starts at chip (epochs done x steps x batch) sees exactly the chips, in the
    order and with the augmentations, the uninterrupted run saw. (Train's epochs are steps x batch chips of this stream,
    so they drift across passes rather than each being one pass with a short last batch.) Each chip gets the manifest's
    fixed dihedral transform for oversampled copies (transform > 0), a random D4 view for the others, mild
    brightness/contrast jitter, and for a ``chip_augment`` share of chips a random chip-making difference
    (:func:`remake_chip`). ``resize_to`` (progressive resizing) shrinks the chips from ``image_size`` by area averaging
    before any augmentation.
    Yields (x, y) when labels are given, else x.
    """
    import tensorflow as tf

    training = stream is not None
    stream = stream or TrainingStream(augment=False)
    seed, start, augment, chip_augment = stream.seed, stream.start, stream.augment, stream.chip_augment
    image_size, pixel_scale, resize_to = batching.image_size, batching.pixel_scale, batching.resize_to
    rows = np.asarray(rows, dtype=np.int64)
    transforms = np.zeros(len(rows), np.int64) if transforms is None else np.asarray(transforms, np.int64)
    n = len(rows)
    channels = chips.channels
    if training:
        ds = _shuffled_stream(rows, transforms, seed, 0 if start is None else start)
        if start is None:
            ds = ds.take(n)
    else:
        ds = tf.data.Dataset.from_tensor_slices((rows, transforms)).enumerate()

    if chips.pixels is not None:
        cache = tf.constant(chips.pixels)

        def load(i):
            return tf.cast(tf.gather(cache, i), tf.float32)
    else:
        paths = np.array(chips.paths)

        def _read(i):
            img = read_chip(paths[int(i)])
            return resize_square(img, image_size).astype(np.float32)

        def load(i):
            img = tf.numpy_function(_read, [i], tf.float32, stateful=False)
            img.set_shape([image_size, image_size, channels])
            return img

    def prepare(index, row, transform):
        img = load(row)
        img.set_shape([image_size, image_size, channels])
        if resize_to and resize_to != image_size:
            img = tf.image.resize(img, [resize_to, resize_to], method="area")
        if training and augment:
            seed_pair = tf.stack([tf.cast(seed, tf.int64), index])
            if chip_augment > 0:
                remade = tf.random.stateless_uniform([], seed=seed_pair + 4) < chip_augment
                img = tf.cond(remade, lambda: remake_chip(img, seed_pair, pixel_scale, channels,
                                                          native=chips.native_size), lambda: img)
            random_k = tf.random.stateless_uniform([], seed=seed_pair, minval=0, maxval=8, dtype=tf.int64)
            img = dihedral_tf(img, tf.where(transform > 0, transform, random_k))
            img = _jitter(img, seed_pair, stream.brightness, stream.contrast, pixel_scale)
        elif training:
            img = dihedral_tf(img, transform)
        return img

    if labels is not None:
        label_table = tf.constant(np.asarray(labels, np.float32))

        def with_label(index, pair):
            row, transform = pair
            return prepare(index, row, transform), tf.gather(label_table, row)

        ds = ds.map(with_label, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        ds = ds.map(lambda index, pair: prepare(index, pair[0], pair[1]), num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=True)
    return ds.batch(batching.batch_size).prefetch(tf.data.AUTOTUNE)


def _shuffled_stream(rows: np.ndarray, transforms: np.ndarray, seed: int, start: int):
    """(g, (row, transform)) for chip g = start, start+1, ... of endless passes over ``rows``, each pass a
    permutation seeded by (seed, pass). Only indices are skipped to reach ``start``: no chip is read for it."""
    import tensorflow as tf

    n = len(rows)
    if n == 0:
        return tf.data.Dataset.from_tensor_slices((rows, transforms)).enumerate()
    table = tf.constant(np.stack([rows, transforms], axis=1))
    seed64 = tf.constant(seed, tf.int64)

    def one_pass(p):
        order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=tf.stack([seed64, p]))
        picked = tf.gather(table, order)
        return tf.data.Dataset.from_tensor_slices((p * n + tf.range(n, dtype=tf.int64),
                                                   (picked[:, 0], picked[:, 1])))

    first_pass, offset = divmod(int(start), n)
    return tf.data.Dataset.range(first_pass, np.iinfo(np.int64).max).flat_map(one_pass).skip(offset)


def tta_predict_fn(model, tta: int, input_shape: tuple[int, int, int] | None = None):
    """A compiled function: batch -> probabilities averaged over the TTA dihedral views (all in one graph).

    Calling a tf.function per batch keeps memory flat, unlike ``model.predict`` in a Python loop. The input
    signature leaves the batch dimension open, so each model is traced once, not again for a last, shorter
    batch (tracing dominated predict on small sets).
    """
    import functools

    import tensorflow as tf

    shape = tuple(input_shape or model.input_shape[1:])
    # A partial, not a closure: TensorFlow counts traces per Python code object, so the closures of several
    # models (folds, before/after BatchNorm recalibration) added up to its "frequent retracing" warning.
    return tf.function(functools.partial(_tta_mean, model, TTA_VIEWS[tta]),
                       input_signature=[tf.TensorSpec((None, *shape), tf.float32)])


def _tta_mean(model, views, x):
    import tensorflow as tf

    outs = [tf.cast(model(dihedral_tf(x, k), training=False), tf.float32) for k in views]
    return tf.add_n(outs) / float(len(outs))


def predict_dataset(infer, dataset, total: int, progress: bool = True, desc: str = "predict") -> np.ndarray:
    """Run ``infer`` over a batched dataset of images, with a progress bar, into an (N, 17) array."""
    from amazonmine.core.logs import progress_bar

    out = []
    with progress_bar(total=total, desc=desc, unit="chip", enabled=progress) as bar:
        for batch in dataset:
            probs = infer(batch).numpy()
            out.append(probs)
            bar.update(len(probs))
    return np.concatenate(out, axis=0) if out else np.zeros((0, 17), np.float32)
