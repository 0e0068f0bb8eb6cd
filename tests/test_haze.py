"""The mathematics of one chip (amazonmine.core.haze): dark channel, airlight, guided filter, the recovered chip.

The folder stage around it is tested in test_dehaze.py.
"""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from amazonmine.core import haze as hz


def psnr(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(peak ** 2 / mse))


def test_dark_channel_is_channel_min_then_window_min_inside_the_chip():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    got = hz.dark_channel(img, 5)
    mins = img.min(axis=2)
    want = np.array([[mins[max(0, y - 2):y + 3, max(0, x - 2):x + 3].min() for x in range(11)] for y in range(9)])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(hz.dark_channel(img.astype(np.float32), 5), want)


def test_airlight_is_brightest_pixel_among_top_dark_channel_with_ties():
    img = np.full((20, 20, 3), 50, dtype=np.uint8)
    img[2:5, 2:5] = (200, 200, 200)  # haze-like patch: high dark channel
    img[3, 3] = (210, 220, 230)  # the brightest pixel of that patch
    img[15, 15] = (255, 255, 0)  # bright but with a dark channel of 0: not airlight
    a = hz.atmospheric_light(img, hz.dark_channel(img, 3), top_fraction=0.0025)  # k = 1, but 9 tie at 200
    np.testing.assert_array_equal(a, [210, 220, 230])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("kind", ["spread", "near_top", "flat", "zeros"])
def test_airlight_matches_a_full_sort(dtype, kind):
    # Every branch of the k-th value search (window + partition, histogram for flat chips, plain partition
    # for floats) against the rule itself: sort, take the k-th largest, the brightest pixel at or above it.
    rng = np.random.default_rng(0)
    top = 1.0 if dtype == np.float32 else float(np.iinfo(dtype).max)
    n = 64 * 64
    dark = {"spread": rng.random(n) * top, "near_top": top - rng.integers(0, 6, n) * (top / 255),
            "flat": np.full(n, 0.7 * top), "zeros": np.zeros(n)}[kind].astype(dtype).reshape(64, 64)
    img = (rng.random((64, 64, 3)) * top).astype(dtype)
    for fraction in (0.001, 0.02, 1.0):
        k = max(1, round(fraction * n))
        kth = np.sort(dark.ravel())[::-1][k - 1]
        colours = img.reshape(-1, 3)[dark.ravel() >= kth].astype(np.float64)
        expected = colours[np.argmax(colours.sum(axis=1))]
        np.testing.assert_array_equal(hz.atmospheric_light(img, dark, fraction), expected)


def test_guided_filter_keeps_constants_and_edges_of_its_guide():
    flat = np.full((40, 40), 0.3, dtype=np.float32)
    guide = np.zeros((40, 40), dtype=np.float32)
    guide[:, 20:] = 1.0
    np.testing.assert_allclose(hz.guided_filter(guide, flat, 6, 1e-3), 0.3, atol=1e-5)
    # Filtering the step by itself with a small eps keeps the step; a plain box blur of the same radius smears it.
    out = hz.guided_filter(guide, guide, 6, 1e-4)
    blur = cv2.boxFilter(guide, -1, (13, 13))
    assert abs(out[20, 19] - 0.0) < 0.02 and abs(out[20, 20] - 1.0) < 0.02
    assert blur[20, 19] > 0.3


def test_subsampled_guided_filter_close_to_exact():
    rng = np.random.default_rng(1)
    guide = cv2.GaussianBlur(rng.random((128, 128)).astype(np.float32), (0, 0), 3)
    src = np.clip(guide + rng.normal(0, 0.05, guide.shape).astype(np.float32), 0, 1)
    exact = hz.guided_filter(guide, src, 12, 1e-3)
    fast = hz.guided_filter(guide, src, 12, 1e-3, subsample=2)
    assert fast.shape == exact.shape and fast.dtype == np.float32
    assert np.abs(fast - exact).max() < 0.05 and psnr(fast, exact, 1.0) > 35


def test_dehaze_image_rejects_unexpected_arrays():
    with pytest.raises(ValueError, match="uint16"):
        hz.dehaze_image(np.zeros((8, 8, 3), dtype=np.float32), hz.DehazeParams())


def test_black_chip_stays_black_and_finite():
    out = hz.dehaze_image(np.zeros((32, 32, 3), dtype=np.uint8), hz.DehazeParams(patch=7, guided_radius=8))
    assert out.image.max() == 0 and np.isfinite(out.t_mean)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_min_filter_is_the_minimum_over_the_part_of_the_patch_inside_the_chip(dtype):
    rng = np.random.default_rng(3)
    img = (rng.random((37, 29, 3)) * (250 if dtype == np.uint8 else 60000)).astype(dtype)
    patch = 7
    out = hz.min_filter(img, patch)
    half = patch // 2
    for y, x in [(0, 0), (0, 28), (36, 0), (36, 28), (18, 14), (2, 27)]:
        window = img[max(0, y - half):y + half + 1, max(0, x - half):x + half + 1]
        np.testing.assert_array_equal(out[y, x], window.reshape(-1, 3).min(axis=0))


@pytest.mark.parametrize("shape", [(1, 1), (4, 1), (1, 4), (3, 5)])
def test_tiny_chips_dehaze_without_error(shape):
    # OpenCV's wrapper can take a 1x1 or 4x1 array for a scalar: the math must not depend on that.
    rng = np.random.default_rng(0)
    img = rng.integers(40, 220, size=(*shape, 3), dtype=np.uint8)
    out = hz.dehaze_image(img, hz.DehazeParams())
    assert out.image.shape == img.shape and out.image.dtype == np.uint8
    assert 0.0 < out.t_mean <= 1.0


def test_the_math_imports_no_stage_no_process_plumbing_and_no_tensorflow():
    # The arrows point down: haze sits below every stage (only the config and the modules under it), and the
    # dehaze stage no longer reaches into synth.
    code = ("import sys, amazonmine.core.haze; print(' '.join(m for m in sys.modules if m.startswith('amazonmine.'))); "
            "import amazonmine.stages.dehaze; "
            "print('amazonmine.stages.synth' in sys.modules, 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    below, stage = out.stdout.strip().splitlines()
    allowed = {"amazonmine.core", "amazonmine.core.haze", "amazonmine.core.errors", "amazonmine.core.data"}
    # The config is four modules (the models, their errors, the YAML reader, the reference text).
    assert {m for m in below.split() if not m.startswith("amazonmine.core.config")} <= allowed, below
    assert stage == "False False"
