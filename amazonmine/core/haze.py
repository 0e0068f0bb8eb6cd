"""Haze removal for one Planet chip: the dark channel prior, refined with the guided filter.

**The problem.** Haze over the Amazon (smoke from fires, humid air) washes chips out towards a bright grey and
hides the small brown pits and ponds of artisanal gold mining. The atmospheric scattering model says a hazy
pixel is

    I(x) = J(x) t(x) + A (1 - t(x))

with J the haze-free scene, A the airlight (the colour of the haze) and t the share of scene light that reaches
the sensor. One image, three unknowns per pixel: something must be assumed.

**The prior.** He, Sun & Tang ("Single Image Haze Removal Using Dark Channel Prior", CVPR 2009 / TPAMI 2011)
observed that in haze-free outdoor patches some colour channel is almost black (shadows of the canopy, dark
water, saturated vegetation), so the *dark channel* ``min_patch min_colour I`` of a hazy image measures haze:

1. dark channel: per-pixel minimum over B, G, R, then a square minimum filter of side ``patch``;
2. airlight A: among the brightest ``top_fraction`` of dark-channel pixels, the colour of the input pixel with
   the highest intensity (B + G + R);
3. transmission: ``t = 1 - omega * dark_channel(I / A)`` (``omega`` < 1 keeps a trace of haze for depth);
4. refinement: the blocky t is smoothed along the image's own edges with the guided filter (He, Sun & Tang,
   "Guided Image Filtering", ECCV 2010), guided by the grey image, radius ``guided_radius``, ``guided_eps``.
   Its output is smooth at the scale of its radius, so the filter's coefficients are computed on a coarser grid
   and interpolated back (He & Sun, "Fast Guided Filter", 2015);
5. recovery: ``J = (I - A) / max(t, t0) + A``, clipped to the valid range.

``method: airlight_subtract`` is the simpler variant: the same airlight, but one transmission for the whole chip
(from the median dark channel of I / A): subtract the airlight's share ``A (1 - t)`` and stretch by ``1 / t``.
It cannot follow haze that varies across the chip, but it never invents structure.

**Bands and units.** 8-bit JPEG chips are B, G, R. 16-bit TIF chips are B, G, R, NIR: the visible bands are
dehazed and **NIR is copied unchanged** -- the prior is a statement about visible colours, and near-infrared
passes haze far better (which is why NIR is useful under haze in the first place). Everything is computed in the
chip's own units and saturated to its dtype's range (0..255, 0..65535), except the guided filter's grey guide,
which is divided by the chip's white (255, or a TIF's own maximum, since Planet counts use only part of
0..65535) so that ``guided_eps`` means the same for both formats.

**Speed.** Each step is written with OpenCV on the integer chip where the result is the same as the paper's
float arithmetic, in the order that shares the most work (the minimum filter once, for both the airlight and
the transmission). ``scripts/bench_dehaze.py`` times :func:`dehaze_image` against a plain float64 transcription
of the steps above and measures how far its output is from it; the README's "Benchmarks" section has the
figures behind each choice noted below.

This module is pure computation on arrays: no files, no processes (the folder stage is
:mod:`amazonmine.stages.dehaze`), and it never imports TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from amazonmine.core.config import DehazeConfig

# The fast guided filter's subsampling factor (coefficients on a grid this much coarser in each direction).
# bench_dehaze.py checks the output against the exact filter in float64. Chips smaller than SUBSAMPLE_MIN_SIDE
# are filtered at full size: their coarse grid would be only a few windows wide.
GUIDED_SUBSAMPLE = 4
SUBSAMPLE_MIN_SIDE = 128
# Floor for the airlight, as a fraction of the chip's white, so a black chip (the no-data edge of a scene)
# does not divide by zero.
_MIN_AIRLIGHT = 1.0 / 255.0
# Above this many pixels near the dark channel's maximum, the airlight's k-th value comes from a histogram.
_AIRLIGHT_PARTITION_MAX = 4096


@dataclass(frozen=True)
class DehazeParams:
    """The math's parameters only (picklable for worker processes); defaults are the config's."""

    method: str = DehazeConfig().method
    patch: int = DehazeConfig().patch
    omega: float = DehazeConfig().omega
    t0: float = DehazeConfig().t0
    top_fraction: float = DehazeConfig().top_fraction
    guided_radius: int = DehazeConfig().guided_radius
    guided_eps: float = DehazeConfig().guided_eps

    @classmethod
    def from_config(cls, dehaze_cfg) -> "DehazeParams":
        return cls(method=dehaze_cfg.method, patch=dehaze_cfg.patch, omega=dehaze_cfg.omega, t0=dehaze_cfg.t0,
                   top_fraction=dehaze_cfg.top_fraction, guided_radius=dehaze_cfg.guided_radius,
                   guided_eps=dehaze_cfg.guided_eps)


@dataclass
class DehazeResult:
    image: np.ndarray  # same shape and dtype as the input chip
    airlight: np.ndarray  # (3,) B, G, R in the chip's own pixel units (0..255 or 16-bit counts)
    t_mean: float  # mean refined transmission: 1 = clear, lower = hazier


# --- 1. the dark channel --------------------------------------------------------------------------------------

def min_filter(img: np.ndarray, patch: int) -> np.ndarray:
    """``patch`` x ``patch`` minimum filter of each channel, over the part of the patch inside the chip."""
    import cv2

    # Replicating the edge pads with pixels the window holds already, so the minimum is the in-chip one (as
    # with OpenCV's default +inf padding, bit for bit), and OpenCV's replicate path is the faster one.
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (patch, patch))
    return cv2.erode(img, kernel, borderType=cv2.BORDER_REPLICATE)


def _channel_min(img: np.ndarray) -> np.ndarray:
    import cv2

    # np.min(axis=2) reduces over a stride-3 axis, which is slow; contiguous planes and cv2.min also beat
    # np.minimum on the strided views.
    b, g, r = cv2.split(np.ascontiguousarray(img))[:3]
    return cv2.min(cv2.min(b, g), r)


def dark_channel(img: np.ndarray, patch: int) -> np.ndarray:
    """Per-pixel minimum over the 3 colour channels, then a ``patch`` x ``patch`` minimum filter.

    Works on uint8, uint16 or float32 (H, W, >=3) arrays and keeps their dtype. The filter ignores pixels
    outside the chip: a minimum over the part of the patch inside.
    """
    return min_filter(_channel_min(img), patch)


# --- 2. the airlight ------------------------------------------------------------------------------------------

def atmospheric_light(img: np.ndarray, dark: np.ndarray, top_fraction: float) -> np.ndarray:
    """Airlight: the brightest (B + G + R) input pixel among the top ``top_fraction`` of the dark channel.

    Pixels tied with the last one selected are included, so the choice does not depend on how a selection
    algorithm breaks ties (the dark channel of an 8-bit chip is full of ties). Returns float64 (3,) in the
    units of ``img``.
    """
    import cv2

    flat = dark.reshape(-1)
    k = min(flat.size, max(1, int(round(top_fraction * flat.size))))
    kth = candidates = None
    if flat.dtype.kind in "ui":
        # The k-th largest value. The 0.1% sought usually lie within a few levels of the maximum: widen a
        # window below it (4, 16, 64, ... levels; one pass each) until it holds k pixels, then partition those
        # few hundred values. Partitioning every pixel of the chip was a sizeable share of the math's time.
        top, width = int(flat.max()), 4
        while True:
            low = max(0, top - width + 1)
            near = np.flatnonzero(flat >= low)
            if near.size >= k or low == 0:
                break
            width *= 4
        if near.size <= _AIRLIGHT_PARTITION_MAX:
            values = flat[near]
            kth = values[np.argpartition(values, values.size - k)[values.size - k]]
            candidates = near[values >= kth]
        elif flat.dtype in (np.uint8, np.uint16) and flat.size < 2 ** 24:
            # A flat chip (cloud, haze): most pixels are near the top. One histogram pass instead; its counts
            # are float32, exact up to 2**24 pixels per level.
            levels = 256 if flat.dtype == np.uint8 else 65536
            hist = cv2.calcHist([np.ascontiguousarray(flat).reshape(1, -1)], [0], None, [levels], [0, levels])
            kth = levels - 1 - int(np.searchsorted(np.cumsum(hist.ravel()[::-1]), k))
    if kth is None:
        kth = flat[np.argpartition(flat, flat.size - k)[flat.size - k]]
    if candidates is None:
        candidates = np.flatnonzero(flat >= kth)
    colours = img.reshape(-1, img.shape[-1])[candidates, :3]
    # Intensity as an exact integer sum for integer chips (a matrix product: row sums of 3 are slow in NumPy).
    colours = colours.astype(np.float64 if colours.dtype.kind == "f" else np.int64)
    return colours[np.argmax(colours @ np.ones(3, colours.dtype))].astype(np.float64)


# --- the guided filter (step 4) -------------------------------------------------------------------------------

def _guided_coefficients(g: np.ndarray, p: np.ndarray, radius: int, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Window means of the guided filter's linear coefficients a, b (q = mean_a * guide + mean_b)."""
    import cv2

    ksize = (2 * radius + 1, 2 * radius + 1)

    def box(x: np.ndarray) -> np.ndarray:
        # Normalised box mean; the border is mirrored (OpenCV's default), not shrunk as in the paper's code.
        return cv2.boxFilter(x, -1, ksize)

    # In place where possible: fewer temporaries on the coarse grid.
    mean_g = box(g)
    mean_p = box(p)
    var_g = box(g * g)
    var_g -= mean_g * mean_g
    var_g += np.float32(eps)
    a = box(g * p)
    a -= mean_g * mean_p  # the covariance of guide and source ...
    a /= var_g  # ... over the regularised variance
    mean_g *= a
    b = np.subtract(mean_p, mean_g, out=mean_p)
    return box(a), box(b)


def _apply_coefficients(guide: np.ndarray, mean_a: np.ndarray, mean_b: np.ndarray) -> np.ndarray:
    """q = mean_a * guide + mean_b, float32, at the guide's size (any guide dtype: uint8, uint16, float32)."""
    import cv2

    if mean_a.shape != guide.shape:  # computed on the subsampled grid: bilinear back to the guide's size
        size = (guide.shape[1], guide.shape[0])
        mean_a = cv2.resize(mean_a, size, interpolation=cv2.INTER_LINEAR)
        mean_b = cv2.resize(mean_b, size, interpolation=cv2.INTER_LINEAR)
    q = cv2.multiply(mean_a, guide, dtype=cv2.CV_32F)
    return cv2.add(q, mean_b, dst=q)


def _shrink(x: np.ndarray, subsample: int, interpolation: int | None = None) -> np.ndarray:
    import cv2

    h, w = x.shape[:2]
    interpolation = cv2.INTER_AREA if interpolation is None else interpolation
    return cv2.resize(x, (max(1, w // subsample), max(1, h // subsample)), interpolation=interpolation)


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float, subsample: int = 1) -> np.ndarray:
    """He et al.'s guided filter of ``src`` by the grey ``guide`` (float32 (H, W) each): box windows of side
    2 * radius + 1, regulariser ``eps``. ``subsample`` > 1 computes the coefficients on a grid that much coarser
    and interpolates them back (He & Sun's fast guided filter); 1 is the exact filter.
    """
    guide = np.asarray(guide, dtype=np.float32)
    src = np.asarray(src, dtype=np.float32)
    if subsample <= 1:
        return _apply_coefficients(guide, *_guided_coefficients(guide, src, radius, eps))
    radius_small = max(1, int(round(radius / subsample)))
    coefficients = _guided_coefficients(_shrink(guide, subsample), _shrink(src, subsample), radius_small, eps)
    return _apply_coefficients(guide, *coefficients)


# --- 3 and 4. the transmission, raw and refined ---------------------------------------------------------------

def _scalar(values) -> tuple[float, float, float, float]:
    # OpenCV's per-channel scalar for 3-channel arithmetic (the 4th entry is unused).
    return (float(values[0]), float(values[1]), float(values[2]), 0.0)


def _raw_transmission(eroded: np.ndarray, airlight: np.ndarray, omega: float) -> np.ndarray:
    import cv2

    # dark_channel(I / A) = min_c(min_patch(I_c) / A_c): each A_c is a positive constant, so the window
    # minimum can come first, on the integer chip, shared with the airlight's dark channel.
    ratio = cv2.multiply(eroded, _scalar(omega / np.asarray(airlight, dtype=np.float64)), dtype=cv2.CV_32F)
    dark = _channel_min(ratio)
    return np.subtract(np.float32(1.0), dark, out=dark)


def transmission(visible: np.ndarray, airlight: np.ndarray, params: DehazeParams, white: float,
                 subsample: int | None = None, eroded: np.ndarray | None = None) -> np.ndarray:
    """Refined transmission, float32 (H, W) in [t0, 1], of the visible bands (uint8/uint16 (H, W, 3) B, G, R).

    ``airlight`` is in the chip's pixel units; ``white`` is the chip's white level: ``guided_eps`` is in units
    of a grey guide spanning [0, 1], i.e. ``guided_eps * white**2`` in the chip's own units. For
    ``airlight_subtract`` the map is the one global value ``median(1 - omega * dark_channel(I / A))``.
    ``eroded``: the per-channel ``patch`` minimum filter of ``visible``, if the caller has it already.
    ``subsample``: of the guided filter (default GUIDED_SUBSAMPLE).
    """
    import cv2

    if eroded is None:
        eroded = min_filter(visible, params.patch)
    if params.method == "airlight_subtract":
        t_global = float(np.median(_raw_transmission(eroded, airlight, params.omega)))
        return np.full(visible.shape[:2], min(max(t_global, params.t0), 1.0), dtype=np.float32)
    if subsample is None:
        subsample = GUIDED_SUBSAMPLE if min(visible.shape[:2]) >= SUBSAMPLE_MIN_SIDE else 1
    # The filter runs on the grey guide in the chip's own units, with eps scaled by white**2 to match: the same
    # coefficient b and a / white instead of a, without rescaling the guide (at full size it stays integer).
    grey = cv2.cvtColor(visible, cv2.COLOR_BGR2GRAY)
    if subsample > 1:
        # The coarse grid needs only the coarse raw transmission: shrink the eroded chip instead of computing
        # the ratio at full size and shrinking that. Both shrinks are bilinear (a 2x2 mean per 4x4 block):
        # cheaper than an area mean, and no further from bench_dehaze.py's float64 exact-filter reference.
        raw = _raw_transmission(_shrink(eroded, subsample, cv2.INTER_LINEAR), airlight, params.omega)
        coarse_grey = _shrink(grey, subsample, cv2.INTER_LINEAR)
        radius = max(1, int(round(params.guided_radius / subsample)))
    else:
        raw = _raw_transmission(eroded, airlight, params.omega)
        coarse_grey, radius = grey, params.guided_radius
    eps = params.guided_eps * white * white
    refined = _apply_coefficients(grey, *_guided_coefficients(coarse_grey.astype(np.float32), raw, radius, eps))
    return np.clip(refined, np.float32(params.t0), np.float32(1.0), out=refined)


# --- 5. the recovered scene -----------------------------------------------------------------------------------

def dehaze_image(img: np.ndarray, params: DehazeParams) -> DehazeResult:
    """Dehaze one chip as read by :func:`amazonmine.core.data.read_image`: uint8 (H, W, 3) B, G, R or uint16
    (H, W, 4) B, G, R, NIR. The result has the same shape and dtype; NIR is copied unchanged.
    """
    import cv2

    if img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3:
        visible, white, depth = img, 255.0, cv2.CV_8U
    elif img.dtype == np.uint16 and img.ndim == 3 and img.shape[2] == 4:
        visible, depth = np.ascontiguousarray(img[..., :3]), cv2.CV_16U
        # Planet counts fill a fraction of 0..65535: the chip's own maximum makes the guide span [0, 1] as an
        # 8-bit chip's does, so guided_eps means the same. Every other step is unchanged by the scale.
        white = float(max(int(visible.max()), 1))
    else:
        raise ValueError(f"expected uint8 (H, W, 3) or uint16 (H, W, 4), got {img.dtype} {img.shape}")
    # Minimum filter per channel first (the minima over the patch and over the channels commute); on the
    # integer chip the dark channel is exact, so the airlight's candidates are those of the float image.
    eroded = min_filter(visible, params.patch)
    airlight = atmospheric_light(visible, _channel_min(eroded), params.top_fraction)
    airlight = np.maximum(airlight, white * _MIN_AIRLIGHT)
    t = transmission(visible, airlight, params, white, eroded=eroded)
    # J = (I - A) / t + A in the chip's own units; the final add saturates to the dtype's range, which is the
    # clip and the rounding in one pass.
    a = _scalar(airlight)
    j = cv2.subtract(visible, a, dtype=cv2.CV_32F)
    cv2.divide(j, cv2.cvtColor(t, cv2.COLOR_GRAY2BGR), dst=j)
    recovered = cv2.add(j, a, dtype=depth)
    if img.dtype == np.uint8:
        out = recovered
    else:
        out = img.copy()
        out[..., :3] = recovered
    return DehazeResult(out, airlight, float(cv2.mean(t)[0]))
