"""train.chip_augment: real chips remade as another chip-making pipeline would make them stay the same scene,
every remake changes the pixels, and the configured share of training chips is remade."""

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_chips(real256):
    """Twelve real Planet chips cut down to 48 px, model channel order, float32."""
    from amazonmine.neural.datasets import read_chip, resize_square

    paths = sorted((real256 / "train-jpg").glob("*.jpg"))[:12]
    return np.stack([resize_square(read_chip(p), 48) for p in paths])


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("kind, native", [("area", 0), ("bilinear", 0), ("bilinear_antialiased", 0), ("bicubic", 0),
                                          ("nearest", 0), ("blur", 0), ("sharpen", 0), ("jpeg", 0), ("jpeg", 32)])
def test_each_remake_changes_the_pixels_but_keeps_the_scene(real_chips, kind, native):
    import tensorflow as tf

    from amazonmine.neural.datasets import remake_chip

    changed, kept = [], []
    for i, chip in enumerate(real_chips):
        seed = tf.constant([7, i], tf.int64)
        out = remake_chip(tf.constant(chip), seed, 255.0, 3, kind=kind, native=native).numpy()
        again = remake_chip(tf.constant(chip), seed, 255.0, 3, kind=kind, native=native).numpy()
        np.testing.assert_array_equal(out, again)  # stateless: the same seed remakes the same chip
        assert out.shape == chip.shape and out.min() >= 0 and out.max() <= 255
        changed.append(np.abs(out - chip).mean())
        kept.append(correlation(out, chip))
    assert np.median(changed) > 0.3, f"{kind} hardly changed the chips: {np.round(changed, 2)}"
    assert min(kept) > 0.8, f"{kind} lost the scene: correlations {np.round(kept, 3)}"


def test_four_band_chips_are_remade_without_jpeg():
    import tensorflow as tf

    from amazonmine.neural.datasets import CHIP_REMAKES, remake_chip

    chip = tf.random.stateless_uniform([32, 32, 4], seed=[1, 2], maxval=4000.0)
    with pytest.raises(KeyError):
        remake_chip(chip, tf.constant([0, 0], tf.int64), 65535.0, 4, kind="jpeg")
    for i in range(20):  # every drawn remake works on 4 bands
        out = remake_chip(chip, tf.constant([3, i], tf.int64), 65535.0, 4).numpy()
        assert out.shape == (32, 32, 4)
    assert "jpeg" in CHIP_REMAKES


def test_the_configured_share_of_training_chips_is_remade(real256):
    from amazonmine.neural.datasets import Batching, TrainingStream, make_dataset, preflight

    paths = sorted((real256 / "train-jpg").glob("*.jpg"))[:200]
    chips = preflight(paths, 32, cache=True, progress=False)
    rows = np.arange(len(paths))

    def images(share: float) -> np.ndarray:
        ds = make_dataset(chips, rows, None, None, Batching(32, 50), stream=TrainingStream(11, chip_augment=share))
        return np.concatenate([b.numpy() for b in ds])

    plain, some, every = images(0.0), images(0.3), images(1.0)
    # Shuffle, views and jitter draw from the same stateless seeds, so only the remade chips differ.
    differs = np.abs(some - plain).reshape(len(rows), -1).max(axis=1) > 0
    assert 0.2 < differs.mean() < 0.4
    assert (np.abs(every - plain).reshape(len(rows), -1).max(axis=1) > 0).mean() > 0.95


def test_the_training_stream_is_a_function_of_the_seed_and_its_start():
    """What lets a resumed fold end with the uninterrupted one's weights: each pass is a permutation of the
    rows (every chip once), passes differ, and a stream started at chip k is the whole stream from chip k on."""
    from amazonmine.neural.datasets import Batching, ChipSet, TrainingStream, make_dataset

    n, batch = 12, 4
    pixels = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 8, 8, 3), np.uint8)
    chips = ChipSet(paths=[f"c{i}" for i in range(n)], channels=3, native_size=8, pixels=pixels)
    labels = np.eye(n, 17, dtype=np.float32)  # the label says which chip it is, whatever the augmentation

    def stream(start: int, batches: int):
        ds = make_dataset(chips, np.arange(n), labels, None, Batching(8, batch), stream=TrainingStream(3, start))
        parts = list(ds.take(batches))
        return (np.concatenate([y.numpy().argmax(axis=1) for _, y in parts]),
                np.concatenate([x.numpy() for x, _ in parts]))

    order, images = stream(0, 9)  # three passes
    passes = order.reshape(3, n)
    assert all(sorted(p) == list(range(n)) for p in passes)
    assert len({tuple(p) for p in passes}) == 3
    later_order, later_images = stream(5 * batch, 4)
    np.testing.assert_array_equal(later_order, order[5 * batch:])
    np.testing.assert_array_equal(later_images, images[5 * batch:])
    one_pass = make_dataset(chips, np.arange(n), labels, None, Batching(8, batch), stream=TrainingStream(3))
    np.testing.assert_array_equal(np.concatenate([y.numpy().argmax(axis=1) for _, y in one_pass]), passes[0])
