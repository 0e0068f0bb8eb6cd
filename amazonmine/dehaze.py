"""Haze removal for Planet chips: the dark channel prior with guided-filter refinement, and the folder runner.

Haze over the Amazon (smoke from fires, humid air) washes chips out towards a bright grey and hides the small
brown pits and ponds of artisanal gold mining. The atmospheric scattering model says a hazy pixel is

    I(x) = J(x) t(x) + A (1 - t(x))

with J the haze-free scene, A the airlight (the colour of the haze) and t the share of scene light that reaches
the sensor. He, Sun & Tang ("Single Image Haze Removal Using Dark Channel Prior", CVPR 2009 / TPAMI 2011)
observed that in haze-free outdoor patches some colour channel is almost black (shadows of the canopy, dark
water, saturated vegetation), so the *dark channel* ``min_patch min_colour I`` of a hazy image measures haze:

1. dark channel: per-pixel minimum over B, G, R, then a square minimum filter of side ``patch``;
2. airlight A: among the brightest ``top_fraction`` of dark-channel pixels, the colour of the input pixel with
   the highest intensity (B + G + R);
3. transmission: ``t = 1 - omega * dark_channel(I / A)`` (``omega`` < 1 keeps a trace of haze for depth);
4. refinement: the blocky t is smoothed along the image's own edges with the guided filter (He, Sun & Tang,
   "Guided Image Filtering", ECCV 2010), guided by the grey image, radius ``guided_radius``, ``guided_eps``;
5. recovery: ``J = (I - A) / max(t, t0) + A``, clipped to the valid range.

``method: airlight_subtract`` is the simpler variant: the same airlight, but one transmission for the whole chip
(from the median dark channel of I / A): subtract the airlight's share ``A (1 - t)`` and stretch by ``1 / t``.
It cannot follow haze that varies across the chip, but it never invents structure.

Bands: 8-bit JPEG chips are B, G, R. 16-bit TIF chips are B, G, R, NIR: the visible bands are dehazed and **NIR
is copied unchanged** -- the dark channel prior is a statement about visible colours, and near-infrared passes
haze far better (which is why NIR is useful under haze in the first place). Everything is computed in the
chip's own units and saturated to its dtype's range (0..255, 0..65535), except the guided filter's grey guide,
which is divided by the chip's white (255, or a TIF's own maximum, since Planet counts use only part of
0..65535) so that ``guided_eps`` means the same for both formats.

:func:`run_dehaze` processes a folder (or a Kaggle layout: train-jpg/, test-jpg/, test-jpg-additional/,
train-tif-v2/, mirrored under the output folder) in worker processes, skips chips already done (so a killed run
resumes), writes each output atomically, lists unreadable chips in ``dehaze_errors.csv`` and keeps per-chip
airlight and mean transmission in ``dehaze_stats.csv`` so users can see which chips were hazy.
This module and its workers never import TensorFlow.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from amazonmine.config import DehazeConfig
from amazonmine.data import CHIP_FORMATS, DataError, chip_format, decode_image, read_chip_bytes
from amazonmine.errors import AmazonmineError
from amazonmine.io import write_bytes_atomic, write_text_atomic
from amazonmine.synth import encode_jpeg, encode_tif

STATS_NAME = "dehaze_stats.csv"
ERRORS_NAME = "dehaze_errors.csv"
STATS_COLUMNS = ("file", "A_b", "A_g", "A_r", "t_mean", "method")
CHIP_SUFFIXES = {s for s, fmt in CHIP_FORMATS.items() if fmt in ("jpg", "tif")}  # the formats it writes back
JPEG_QUALITY = 95
# Dehazed JPEGs keep colour at full resolution, as Kaggle's chips store it (no chroma subsampling). OpenCV's
# default 4:2:0 halves it: on the 533 real 256 px chips the written chip was then 39.4 dB mean (33.9 dB worst)
# PSNR from the dehazed pixels, against 46.7 (41.7) dB at 4:4:4, and a mine is a few pixels of odd colour.
# The price: 26 instead of 17 KB per chip, and 0.28-0.30 instead of 0.16-0.18 ms to encode.
JPEG_FULL_CHROMA = True
# The guided filter's output is smooth at the scale of its radius, so its coefficients can be computed on a
# grid subsampled by this factor and interpolated back (He & Sun, "Fast Guided Filter", 2015): 16x fewer box
# filter pixels. On the 533 real 256 px chips the dehazed output stays above 48 dB PSNR from a float64
# transcription with the exact filter (scripts/bench_dehaze.py measures it); chips smaller than
# SUBSAMPLE_MIN_SIDE are filtered at full size.
GUIDED_SUBSAMPLE = 4
SUBSAMPLE_MIN_SIDE = 128
# Floor for the airlight, as a fraction of the chip's white, so a black chip (the no-data edge of a scene)
# does not divide by zero.
_MIN_AIRLIGHT = 1.0 / 255.0
# Above this many pixels near the dark channel's maximum, the airlight's k-th value comes from a histogram.
_AIRLIGHT_PARTITION_MAX = 4096
# A worker reads this many chips (or this many bytes, for big chips) before dehazing them: see _process_chunk.
_IO_GROUP_CHIPS = 16
_IO_GROUP_BYTES = 8 << 20
# While running, the stats CSV is rewritten this often so a killed run loses little of it.
_CHECKPOINT_SECONDS = 30.0


@dataclass(frozen=True)
class DehazeParams:
    """The math's parameters only (picklable for worker processes); defaults are the config's."""

    method: str = DehazeConfig.method
    patch: int = DehazeConfig.patch
    omega: float = DehazeConfig.omega
    t0: float = DehazeConfig.t0
    top_fraction: float = DehazeConfig.top_fraction
    guided_radius: int = DehazeConfig.guided_radius
    guided_eps: float = DehazeConfig.guided_eps

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


# --- the math (one chip) ------------------------------------------------------------------------------------

def min_filter(img: np.ndarray, patch: int) -> np.ndarray:
    """``patch`` x ``patch`` minimum filter of each channel, over the part of the patch inside the chip."""
    import cv2

    # Replicating the edge pads with pixels the window holds already, so the minimum is the in-chip one (as
    # with OpenCV's default +inf padding, bit for bit), and OpenCV's replicate path is a third faster.
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (patch, patch))
    return cv2.erode(img, kernel, borderType=cv2.BORDER_REPLICATE)


def _channel_min(img: np.ndarray) -> np.ndarray:
    import cv2

    # np.min(axis=2) reduces over a stride-3 axis and is ~20x slower; planes and cv2.min are ~2x faster
    # than np.minimum on the strided views.
    b, g, r = cv2.split(np.ascontiguousarray(img))[:3]
    return cv2.min(cv2.min(b, g), r)


def dark_channel(img: np.ndarray, patch: int) -> np.ndarray:
    """Per-pixel minimum over the 3 colour channels, then a ``patch`` x ``patch`` minimum filter.

    Works on uint8, uint16 or float32 (H, W, >=3) arrays and keeps their dtype. The filter ignores pixels
    outside the chip: a minimum over the part of the patch inside.
    """
    return min_filter(_channel_min(img), patch)


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
        # few hundred values. Partitioning all 65k pixels cost a fifth of the dehaze math.
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


def _guided_coefficients(g: np.ndarray, p: np.ndarray, radius: int, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Window means of the guided filter's linear coefficients a, b (q = mean_a * guide + mean_b)."""
    import cv2

    ksize = (2 * radius + 1, 2 * radius + 1)

    def box(x: np.ndarray) -> np.ndarray:
        # Normalised box mean; the border is mirrored (OpenCV's default), not shrunk as in the paper's code.
        return cv2.boxFilter(x, -1, ksize)

    # In place where possible: fewer temporaries on the (64 x 64) coarse grid.
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
        # the ratio at full size and shrinking that. Both shrinks are bilinear (a 2x2 mean per 4x4 block), a
        # quarter of an area mean's cost; on the 533 real chips the worst chip is 49.0 dB from the float64
        # exact-filter reference with them (48.6 dB with an area mean for the grey guide).
        raw = _raw_transmission(_shrink(eroded, subsample, cv2.INTER_LINEAR), airlight, params.omega)
        coarse_grey = _shrink(grey, subsample, cv2.INTER_LINEAR)
        radius = max(1, int(round(params.guided_radius / subsample)))
    else:
        raw = _raw_transmission(eroded, airlight, params.omega)
        coarse_grey, radius = grey, params.guided_radius
    eps = params.guided_eps * white * white
    refined = _apply_coefficients(grey, *_guided_coefficients(coarse_grey.astype(np.float32), raw, radius, eps))
    return np.clip(refined, np.float32(params.t0), np.float32(1.0), out=refined)


def dehaze_image(img: np.ndarray, params: DehazeParams) -> DehazeResult:
    """Dehaze one chip as read by :func:`amazonmine.data.read_image`: uint8 (H, W, 3) B, G, R or uint16
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


# --- one file ------------------------------------------------------------------------------------------------

def encode_output_jpeg(img: np.ndarray) -> bytes:
    """A dehazed chip as the stage writes it: JPEG quality JPEG_QUALITY, colour at full resolution."""
    return encode_jpeg(img, JPEG_QUALITY, JPEG_FULL_CHROMA)


def _encode(img: np.ndarray, fmt: str, name: str) -> bytes:
    try:
        return encode_tif(img) if fmt == "tif" else encode_output_jpeg(img)
    except DataError as exc:
        raise DataError(f"{name}: {exc}") from None


def _dehaze_bytes(data: bytes, src: str, params: DehazeParams, expected_size: int,
                  encode: bool) -> tuple[bytes | None, DehazeResult]:
    """Decode (with the reader's checks), dehaze and encode one chip's file bytes in the file's format."""
    fmt = chip_format(src)
    result = dehaze_image(decode_image(data, src, fmt, expected_size), params)
    return (_encode(result.image, fmt, src) if encode else None), result


def dehaze_file(src: str | Path, dst: str | Path | None, params: DehazeParams,
                expected_size: int = 0) -> DehazeResult:
    """Read, dehaze and (if ``dst`` is given) atomically write one chip in the input's format."""
    encoded, result = _dehaze_bytes(read_chip_bytes(src), str(src), params, expected_size, dst is not None)
    if dst is not None:
        write_bytes_atomic(dst, encoded)
    return result


# --- the folder runner -----------------------------------------------------------------------------------------

@dataclass
class _Job:
    key: str  # path relative to the source (and output) root, '/'-separated: the CSV key
    src: str
    dst: str | None  # None: stats only (output already present, its stats row was lost)


@dataclass
class DehazeSummary:
    src: Path
    dst: Path
    method: str
    processed: int = 0
    skipped: int = 0
    # (file relative to SRC, problem) for every chip that could not be read.
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    stats_csv: Path | None = None
    errors_csv: Path | None = None
    note: str = ""

    def headline(self) -> str:
        parts = [f"dehaze ({self.method}): {self.processed} chips done"]
        if self.skipped:
            parts.append(f"{self.skipped} already in {self.dst} skipped")
        if self.failed:
            parts.append(f"{len(self.failed)} failed (see {self.errors_csv})")
        text = ", ".join(parts) + f" -> {self.dst} in {self.seconds:.1f} s; airlight and transmission per chip in "
        text += str(self.stats_csv)
        return text + (f"; {self.note}" if self.note else "")


def _chip_files(folder: Path) -> list[str]:
    # Hidden names include the temporary files of an interrupted atomic write.
    return sorted(e.name for e in os.scandir(folder) if not e.name.startswith(".")
                  and os.path.splitext(e.name)[1].lower() in CHIP_SUFFIXES and e.is_file())


def _folder_pairs(cfg, src: Path, dst: Path) -> list[tuple[str, Path, Path]]:
    """(prefix, source folder, output folder): the Kaggle subfolders present, else SRC itself."""
    names = [cfg.data.train_dir, *cfg.data.test_dirs, cfg.data.tif_dir]
    subdirs = [n for i, n in enumerate(names) if n not in names[:i] and (src / n).is_dir()]
    if subdirs:
        return [(f"{n}/", src / n, dst / n) for n in subdirs]
    return [("", src, dst)]


def _remove_stale_temporaries(folder: Path) -> None:
    # A killed run (SIGKILL, power loss) leaves the temporary file of the write in flight (io's
    # ".<stem>.<pid or random>.tmp<ext>"): never a finished chip, so safe to delete before starting again.
    if folder.is_dir():
        for entry in os.scandir(folder):
            if entry.name.startswith(".") and ".tmp." in entry.name and entry.is_file():
                os.unlink(entry.path)


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:  # pragma: no cover - unresolvable paths cannot be the same folder
        return False


def _read_stats(path: Path) -> dict[str, dict[str, str]]:
    """Rows of a previous stats CSV by file; an unreadable or foreign file counts as no rows (they are rebuilt)."""
    if not path.is_file():
        return {}
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or any(c not in reader.fieldnames for c in STATS_COLUMNS):
                return {}
            return {row["file"]: {c: row[c] for c in STATS_COLUMNS} for row in reader if row.get("file")}
    except (OSError, UnicodeDecodeError, csv.Error):
        return {}


def _rows_csv(columns: Sequence[str], rows: Iterable[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _stats_row(key: str, airlight: np.ndarray, t_mean: float, method: str) -> dict[str, str]:
    return {"file": key, "A_b": f"{airlight[0]:.6g}", "A_g": f"{airlight[1]:.6g}", "A_r": f"{airlight[2]:.6g}",
            "t_mean": f"{t_mean:.4f}", "method": method}


def init_worker() -> None:
    """Set up a dehaze worker process: single-threaded OpenCV and an allocator that keeps chip-sized buffers.

    Each chip allocates a dozen arrays of 64-800 KB. glibc serves those with mmap/munmap by default (and trims
    the heap back on free), so every chip page-faults its buffers in anew: ~500 faults per 256 px chip, about
    half the time of the math. Raising the mmap and trim thresholds lets freed buffers be reused as they are.
    """
    import ctypes
    import cv2

    # One process per core already; OpenCV's own thread pool would only oversubscribe the cores.
    cv2.setNumThreads(1)
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): keep the platform's allocator as it is
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameters from glibc's malloc.h
    libc.mallopt(m_mmap_threshold, 32 << 20)
    libc.mallopt(m_trim_threshold, 128 << 20)


@contextlib.contextmanager
def _as_worker():
    """Run this process as a worker for a while (``--workers 1``). Without it the in-process loop was twice as
    slow: 2.5-2.8 vs 1.4-1.6 ms per real 256 px chip (output on tmpfs), all of it from glibc's allocator
    thresholds (OpenCV's thread count alone made no difference). Those thresholds stay raised for the rest of the
    process: up to 128 MB of freed memory is kept for reuse rather than returned to the system. OpenCV's thread
    count is restored.
    """
    import cv2

    threads = cv2.getNumThreads()
    init_worker()
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


def _pool_worker_init(parent_alive) -> None:
    import signal
    import threading
    from multiprocessing.connection import wait

    init_worker()
    # Ctrl-C reaches the whole process group: let the parent alone handle it (cancel, save the stats) instead
    # of every worker printing its own traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def exit_with_parent() -> None:
        # The parent never writes to this pipe: it becomes readable (EOF) only when the parent's end closes,
        # i.e. when the parent is gone. Pool workers otherwise outlive a killed parent, blocked on their queue.
        wait([parent_alive])
        os._exit(1)

    threading.Thread(target=exit_with_parent, name="exit-with-parent", daemon=True).start()


def _process_chunk(jobs: list[_Job], params: DehazeParams, expected_size: int) -> list[tuple]:
    """Worker body: ('ok', key, airlight, t_mean) or ('error', key, problem) per job, in order.

    A few chips at a time are read, then dehazed, then written, rather than one after the other: the math
    then runs between decodes and encodes, not between system calls, after which it ran slower. Measured on
    the 533 real 256 px chips, one process, tmpfs: 1.29-1.31 instead of 1.34-1.36 ms per chip.
    """
    out: list[tuple] = []
    start = 0
    while start < len(jobs):
        group: list[tuple[_Job, bytes | DataError]] = []
        size = 0
        while start < len(jobs) and len(group) < _IO_GROUP_CHIPS and size < _IO_GROUP_BYTES:
            job = jobs[start]
            start += 1
            try:
                data = read_chip_bytes(job.src)
            except DataError as exc:
                group.append((job, exc))
                continue
            group.append((job, data))
            size += len(data)
        processed: list[tuple[_Job, tuple | DataError]] = []
        for job, data in group:
            if not isinstance(data, DataError):
                try:
                    encoded, result = _dehaze_bytes(data, job.src, params, expected_size, job.dst is not None)
                    # Only what is written and reported is kept until the group's writes, not the pixels.
                    data = (encoded, tuple(result.airlight.tolist()), result.t_mean)
                except DataError as exc:
                    data = exc
            processed.append((job, data))
        for job, item in processed:
            if isinstance(item, DataError):
                out.append(("error", job.key, str(item).removeprefix(f"{job.src}: ")))
                continue
            encoded, airlight, t_mean = item
            if job.dst is not None:
                write_bytes_atomic(job.dst, encoded)
            out.append(("ok", job.key, airlight, t_mean))
    return out


def _resolve_workers(workers: int | None, cfg) -> int:
    n = cfg.dehaze.workers if workers is None else workers
    if n < 0:
        raise AmazonmineError(f"dehaze: --workers must be 0 (all cores) or more, got {n}")
    return n or (os.cpu_count() or 1)


def _chunks(jobs: list[_Job], workers: int) -> list[list[_Job]]:
    """Chunks of at most 64 chips that shrink towards the end (a share of what is left each), so the workers
    finish together instead of one idling while the other works through a last big chunk."""
    chunks, start = [], 0
    while start < len(jobs):
        size = max(1, min(64, -(-(len(jobs) - start) // (workers * 4))))
        chunks.append(jobs[start:start + size])
        start += size
    return chunks


def run_dehaze(cfg, src: str | Path | None = None, dst: str | Path | None = None, workers: int | None = None,
               overwrite: bool = False) -> DehazeSummary:
    """Dehaze every chip of ``src`` (default data.root) into ``dst`` (default the run's dehaze folder).

    A Kaggle-layout ``src`` has its chip subfolders mirrored under ``dst`` (``dst/train-jpg/...``, which is
    where :func:`amazonmine.data.chip_dir` looks); a plain folder of chips is processed into ``dst`` itself.
    Chips already in ``dst`` are skipped unless ``overwrite``. Unreadable chips are listed in
    ``dst/dehaze_errors.csv`` and in ``summary.failed``; the others are still processed.
    """
    start = time.perf_counter()
    params = DehazeParams.from_config(cfg.dehaze)
    src = Path(cfg.data.root if src is None else src)
    dst = Path(cfg.dehaze_dir if dst is None else dst)
    if not src.is_dir():
        raise DataError(f"{src}: source folder not found (give a folder of chips or a Kaggle-layout data root)")
    pairs = _folder_pairs(cfg, src, dst)
    for _, in_dir, out_dir in pairs:
        if _same_folder(in_dir, out_dir):
            raise AmazonmineError(f"{out_dir}: output folder is the source folder; choose another DST")
        if out_dir.exists() and not out_dir.is_dir():
            raise AmazonmineError(f"{out_dir}: output path exists and is not a folder")

    n_workers = _resolve_workers(workers, cfg)
    # The worker processes boot while the folders are scanned below (each takes ~25 ms to start).
    with _worker_pool(n_workers) as pool:
        summary = _dehaze_folders(cfg, params, src, dst, pairs, pool, n_workers, overwrite)
    summary.seconds = time.perf_counter() - start
    return summary


def _dehaze_folders(cfg, params: DehazeParams, src: Path, dst: Path, pairs: list[tuple[str, Path, Path]], pool,
                    n_workers: int, overwrite: bool) -> DehazeSummary:
    from tqdm import tqdm

    stats_path, errors_path = dst / STATS_NAME, dst / ERRORS_NAME
    for folder in {dst, *(out_dir for _, _, out_dir in pairs)}:
        _remove_stale_temporaries(folder)
    previous = _read_stats(stats_path)
    jobs: list[_Job] = []
    other_method = 0  # skipped chips an earlier run made with another dehaze.method
    summary = DehazeSummary(src=src, dst=dst, method=params.method, stats_csv=stats_path)
    for prefix, in_dir, out_dir in pairs:
        done = set(_chip_files(out_dir)) if out_dir.is_dir() else set()
        for name in _chip_files(in_dir):
            key = prefix + name
            if name in done and not overwrite:
                summary.skipped += 1
                other_method += key in previous and previous[key].get("method") != params.method
                if key not in previous:  # done by a run killed before it saved its stats: recompute them
                    jobs.append(_Job(key, str(in_dir / name), None))
                continue
            jobs.append(_Job(key, str(in_dir / name), str(out_dir / name)))
    if not jobs and not summary.skipped:
        where = ", ".join(f"{p}" for p, _, _ in pairs if p) or str(src)
        raise DataError(f"{src}: no .jpg or .tif chips found in {where}")
    dst.mkdir(parents=True, exist_ok=True)

    rows = dict(previous)
    n_workers = min(n_workers, max(1, len(jobs)))
    last_save = time.perf_counter()

    def save_stats() -> None:
        write_text_atomic(stats_path, _rows_csv(STATS_COLUMNS, (rows[k] for k in sorted(rows))))

    stats_only = {j.key for j in jobs if j.dst is None}

    def collect(results: list[tuple]) -> None:
        nonlocal last_save
        for item in results:
            if item[0] == "ok":
                _, key, airlight, t_mean = item
                rows[key] = _stats_row(key, airlight, t_mean, params.method)
                if key not in stats_only:  # those were counted as skipped
                    summary.processed += 1
            else:
                _, key, problem = item
                rows.pop(key, None)
                summary.failed.append((key, problem))
        if time.perf_counter() - last_save > _CHECKPOINT_SECONDS:
            save_stats()
            last_save = time.perf_counter()

    try:
        with tqdm(total=len(jobs), desc="dehaze", unit="chip", disable=None) as bar:
            if pool is None or n_workers == 1:
                with _as_worker():
                    for job in jobs:
                        collect(_process_chunk([job], params, cfg.data.chip_size))
                        bar.update(1)
            else:
                _run_chunks(pool, jobs, n_workers, params, cfg.data.chip_size, collect, bar)
    except OSError as exc:
        raise AmazonmineError(f"{exc.filename or dst}: cannot write dehazed chip ({exc.strerror or exc})") from None
    finally:
        # Also on Ctrl-C or a crash: the chips finished so far keep their stats for the resumed run.
        _drop_vanished(rows, pairs)
        save_stats()

    summary.failed.sort()
    if summary.failed:
        write_text_atomic(errors_path, _rows_csv(("file", "problem"),
                                                 ({"file": k, "problem": p} for k, p in summary.failed)))
        summary.errors_csv = errors_path
    elif errors_path.exists():
        errors_path.unlink()  # a stale list from an earlier run would name chips that are now fine
    notes = []
    if other_method:
        notes.append(f"{other_method} of the skipped chips were made with another method (see {STATS_NAME}); "
                     f"--overwrite redoes them with {params.method}")
    if not cfg.dehaze.enabled:
        notes.append("dehaze.enabled is false, so later stages read the original chips, not these")
    summary.note = "; ".join(notes)
    return summary


def _drop_vanished(rows: dict[str, dict[str, str]], pairs: list[tuple[str, Path, Path]]) -> None:
    """Keep the stats CSV in step with the output folder: drop rows whose dehazed chip is not there."""
    present = set()
    for prefix, _, out_dir in pairs:
        if out_dir.is_dir():
            present.update(prefix + n for n in _chip_files(out_dir))
    for key in [k for k in rows if k not in present]:
        # Rows of folders this run did not look at (another layout written to the same DST) are kept.
        prefix = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
        if any(prefix == p for p, _, _ in pairs):
            del rows[key]


@contextlib.contextmanager
def _worker_pool(n_workers: int):
    """A started process pool of ``n_workers`` dehaze workers (None for 1: the caller works in-process)."""
    if n_workers <= 1:
        yield None
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    # forkserver, not fork: workers start clean even if the parent has TensorFlow (or an OpenCV thread pool)
    # loaded. The server imports these once and each worker is a cheap fork of it; "__main__" (the default
    # preload) must stay, or every worker would re-run the parent's main script on start.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["__main__", "amazonmine.dehaze", "cv2", "numpy"])
    parent_alive, keep_alive = ctx.Pipe(duplex=False)
    pool = ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx, initializer=_pool_worker_init,
                               initargs=(parent_alive,))
    try:
        for _ in range(n_workers):  # each submission starts a process while none is idle: start them all now
            pool.submit(int)
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        keep_alive.close()
        parent_alive.close()


def _run_chunks(pool, jobs: list[_Job], n_workers: int, params: DehazeParams, expected_size: int, collect,
                bar) -> None:
    from concurrent.futures import as_completed

    futures = {pool.submit(_process_chunk, chunk, params, expected_size): len(chunk)
               for chunk in _chunks(jobs, n_workers)}
    for fut in as_completed(futures):
        collect(fut.result())
        bar.update(futures[fut])
