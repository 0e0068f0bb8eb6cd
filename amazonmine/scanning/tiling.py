"""From a georeferenced scene to tiles that look like the chips a run was trained on.

A Kaggle Planet chip covers about 768 m of ground (256 px at ~3 m). A scene is cut into tiles of that ground
size at the scene's own resolution (a 3 m scene gives 256 px tiles, a 4.77 m NICFI quad 161-162 px), with a
stride of a fraction of a tile, and every tile is then made into a chip *the way the training chips were made*:

* **Pixels.** Bands are picked by their colour interpretation (else by convention: 3 bands R,G,B, 4 bands of a
  16-bit product B,G,R,NIR as Planet's analytic scenes); a JPEG-trained model gets 8-bit colour (a 16-bit scene
  goes through a per-scene, per-band percentile stretch, :func:`stretch_from_overview`), a TIF-trained model
  the four 16-bit bands B,G,R,NIR. Arrays leave this module in the file band order of
  :func:`amazonmine.core.data.read_image` (B,G,R for JPEG chips; B,G,R,NIR for TIFs).
* **Look.** The competition's chips are JPEGs, and JPEG compression is part of how they look. Measured on the
  533 real chips that exist both at 256 px and as the public 32-px thumbnails (``scripts/bench_tile_match.py``):
  the thumbnails are Pillow's CMYK JPEGs at quality 75 of an 8x8 block mean (Pillow's draft/thumbnail), and
  every candidate reduction without that JPEG round trip keeps about 1.9x the thumbnails' Laplacian energy.
  Area-averaging the decoded pixels in CMYK (OpenCV INTER_AREA) and storing them as Pillow's CMYK JPEG at
  quality 75 reproduces 525 of the 533 thumbnails exactly (mean absolute error 0.0005 grey levels). So a tile is
  reduced and stored the way the run's own training chips were stored: :func:`chip_look` reads that from the
  JPEG header of one training chip (4 components = the Planet/Pillow CMYK kind; 3 = a YCbCr JPEG such as
  ``amazonmine synth`` writes), and :func:`tile_to_chip` does the same in memory.

Nothing here reads a scene whole: :func:`read_block` reads the window of one block of tiles, and the stretch
is computed from a decimated read.
"""

from __future__ import annotations

import io
import math
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from amazonmine.core.errors import AmazonmineError

# Every chip of the competition is 256 px across its ground size; the 32-px thumbnails were reduced from those.
# A scene finer than this source by more than the allowed ratio would be reduced further than any chip was.
PLANET_CHIP_PX = 256
# Longest side of the decimated read the stretch percentiles (and the report's preview) come from.
OVERVIEW_PX = 1024

# The IJG standard luminance quantisation table (natural order) that libjpeg scales by quality.
_STD_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99])
_ZIGZAG = np.array([
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14,
    21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53,
    60, 61, 54, 47, 55, 62, 63])


class SceneError(AmazonmineError):
    """A scene that cannot be scanned as it is."""


SHOWN_CHARS = 240  # longest path, URL or library reason an error line repeats whole (data.PATH_LIMIT's length)


def shown(value) -> str:
    """``value`` as an error line may repeat it: a long value cut in the middle (:func:`amazonmine.core.errors.shorten`,
    keeping the end: the file name), and control characters escaped, so one line stays one line."""
    from amazonmine.core.errors import shorten

    text = shorten(value, SHOWN_CHARS)
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


# --- how the training chips look ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ChipLook:
    """How a training chip was stored, so a tile can be made the same way.

    kind: "jpg" (8-bit colour) or "tif" (16-bit B,G,R,NIR); size: chip side in px; encoding: "cmyk" (4-component
    JPEG, every channel on the luminance table, no subsampling: Kaggle's chips and thumbnails), "ycbcr" (an
    ordinary colour JPEG), or "none" (kept as pixels); quality: the JPEG quality (IJG scale); full_chroma: a
    YCbCr JPEG without chroma subsampling; source: where this was read from.
    """

    kind: str = "jpg"
    size: int = 256
    encoding: str = "cmyk"
    quality: int = 75
    full_chroma: bool = True
    source: str = "default: Kaggle Planet chips (4-component JPEG, quality 75)"

    def to_dict(self) -> dict:
        return asdict(self)


def jpeg_signature(data: bytes) -> dict | None:
    """Components, quality and chroma sampling of a baseline/progressive JPEG, read from its headers.

    Quality is the IJG quality whose scaled luminance table equals the file's first table (None when no
    quality reproduces it: a JPEG written with custom tables).
    """
    if data[:2] != b"\xff\xd8":
        return None
    pos, table0, components, sampling = 2, None, None, None
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in (0xD9, 0xDA):
            break
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        seg = data[pos + 4:pos + 2 + length]
        if marker == 0xDB and table0 is None and seg and seg[0] >> 4 == 0:
            zigzag = np.frombuffer(seg[1:65], np.uint8).astype(int)
            table0 = np.zeros(64, int)
            table0[_ZIGZAG] = zigzag
        elif marker in (0xC0, 0xC1, 0xC2) and len(seg) >= 6:
            components = seg[5]
            sampling = [(seg[7 + 3 * k] >> 4, seg[7 + 3 * k] & 15) for k in range(components)]
        pos += 2 + length
    if components is None:
        return None
    quality = None
    if table0 is not None:
        for q in range(100, 0, -1):
            scale = 5000 // q if q < 50 else 200 - 2 * q
            if np.array_equal(np.clip((_STD_LUMA * scale + 50) // 100, 1, 255), table0):
                quality = q
                break
    full = all(s == sampling[0] for s in sampling)
    return {"components": int(components), "quality": quality, "full_chroma": bool(full)}


def chip_look(kind: str, size: int, sample_chip: Path | None) -> ChipLook:
    """The look of a run's training chips, read from the header of one of them (``sample_chip``).

    Without a readable sample (the training data is not on this machine) the Kaggle chips' look is assumed,
    and ``source`` says so: it is recorded in every scan's outputs.
    """
    if kind == "tif":
        return ChipLook("tif", size, "none", 0, False, "16-bit TIF chips: pixels kept as they are")
    if sample_chip is not None:
        try:
            data = Path(sample_chip).read_bytes()[:65536]
        except OSError:
            data = b""
        sig = jpeg_signature(data)
        if sig is not None and sig["quality"] is not None:
            encoding = "cmyk" if sig["components"] == 4 else "ycbcr"
            return ChipLook("jpg", size, encoding, sig["quality"], sig["full_chroma"],
                            f"measured from {sample_chip}")
    return ChipLook("jpg", size, source=f"assumed (no readable training chip at {sample_chip}): Kaggle Planet "
                                        f"chips, 4-component JPEG, quality 75")


# R -> C as Pillow would have held the value OpenCV decodes as R: C = 256 - R, clipped (R = 255 <- C = 0 or 1).
_TO_CMY = np.minimum(256 - np.arange(256), 255).astype(np.uint8)


def _resize_u8(rgb: np.ndarray, size: int) -> np.ndarray:
    import cv2

    h, w = rgb.shape[:2]
    if (h, w) == (size, size):
        return rgb
    interp = cv2.INTER_AREA if h > size or w > size else cv2.INTER_LINEAR
    return cv2.resize(rgb, (size, size), interpolation=interp)


def tile_to_chip(tile: np.ndarray, look: ChipLook) -> np.ndarray:
    """One tile -> one chip as the training data stored it, in file band order.

    ``tile``: uint8 (H, W, 3) R,G,B for a "jpg" look, uint16 (H, W, 4) B,G,R,NIR for a "tif" look. Returns
    uint8 (S, S, 3) B,G,R or uint16 (S, S, 4) B,G,R,NIR, S = ``look.size``.
    """
    return finish_chip(prepare_pixels(tile, look), look)


def prepare_pixels(pixels: np.ndarray, look: ChipLook) -> np.ndarray:
    """The per-pixel part of :func:`tile_to_chip`, done once for a whole block (tiles overlap: at stride 0.5
    every pixel is in four tiles)."""
    import cv2

    if look.kind == "jpg" and look.encoding == "cmyk":
        # OpenCV decodes these CMYK JPEGs (K = 0) as R = 256 - C (255 for C = 0), so that is inverted here and
        # the reduction and the JPEG work on the very values Pillow saw when it made the thumbnails.
        return cv2.LUT(pixels, _TO_CMY)
    return pixels


def finish_chip(tile: np.ndarray, look: ChipLook) -> np.ndarray:
    """A tile of :func:`prepare_pixels` output (a view into a block is fine) -> the chip."""
    import cv2

    size = look.size
    if look.kind == "tif":
        if tile.shape[:2] == (size, size):
            return np.ascontiguousarray(tile)
        interp = cv2.INTER_AREA if tile.shape[0] > size else cv2.INTER_LINEAR
        return cv2.resize(tile, (size, size), interpolation=interp)
    if look.encoding in ("cmyk", "ycbcr"):
        return cv2.imdecode(np.frombuffer(encode_chip(tile, look), np.uint8), cv2.IMREAD_COLOR)
    return np.ascontiguousarray(_resize_u8(tile, size)[..., ::-1])


def encode_chip(tile: np.ndarray, look: ChipLook) -> bytes:
    """A tile of :func:`prepare_pixels` output -> the bytes of the chip file a training set would hold.

    For a JPEG look these are the very JPEG bytes :func:`finish_chip` decodes, so a chip file written from them
    reads back as exactly the array scan gives the model (``amazonmine chips`` writes training chips this way);
    for a "tif" look, the chip as a 16-bit B,G,R,NIR TIF tagged like Kaggle's (lossless).
    """
    import cv2

    size = look.size
    if look.kind == "tif":
        from amazonmine.core.data import encode_tif

        return encode_tif(finish_chip(tile, look))
    if look.encoding == "cmyk":
        from PIL import Image

        # OpenCV's area average of the CMY values matches the thumbnails' 8x8 block means best (525 of the 533
        # chips identical after the JPEG, against 490 with Pillow's own BOX filter, at a tenth of its time).
        cmyk = np.zeros((size, size, 4), np.uint8)
        cmyk[..., :3] = _resize_u8(tile, size)
        buf = io.BytesIO()
        Image.frombytes("CMYK", (size, size), cmyk.tobytes()).save(buf, format="JPEG", quality=look.quality)
        return buf.getvalue()
    if look.encoding == "ycbcr":
        bgr = np.ascontiguousarray(_resize_u8(tile, size)[..., ::-1])
        params = [cv2.IMWRITE_JPEG_QUALITY, look.quality]
        if look.full_chroma:
            params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
        ok, buf = cv2.imencode(".jpg", bgr, params)
        return buf.tobytes()
    raise ValueError(f"a {look.kind!r} look with encoding {look.encoding!r} has no chip file format")


# --- scenes ------------------------------------------------------------------------------------------------

@dataclass
class Scene:
    """What scan needs to know about one scene file; everything is plain data so it travels to Dask workers."""

    path: str
    name: str
    crs_wkt: str
    transform: tuple  # affine (a, b, c, d, e, f)
    width: int
    height: int
    dtype: str
    res_m: tuple  # ground size of a pixel (x, y) in metres, geodesic, at the scene centre
    bands: list  # 1-based band indexes read, in the order the chips need (R,G,B or B,G,R,NIR)
    band_note: str
    declared_mask: bool  # nodata, alpha or mask band declared; else pixels 0 in every band are fill
    stretch: list | None = None  # [(lo, hi)] per band read, 16-bit -> 8-bit
    stretch_gamma: float = 1.0
    epsg: int | None = None

    @property
    def affine(self):
        from affine import Affine

        return Affine(*self.transform)

    def to_dict(self) -> dict:
        return asdict(self)


def ground_resolution(crs, transform, width: int, height: int) -> tuple[float, float]:
    """Geodesic length in metres of one pixel step in x and in y at the scene centre (any CRS)."""
    from pyproj import CRS, Geod, Transformer

    crs = CRS.from_user_input(crs)
    to_lonlat = Transformer.from_crs(crs, CRS.from_epsg(4326), always_xy=True)
    geod = Geod(ellps="WGS84")
    cx, cy = width / 2.0, height / 2.0
    out = []
    for dx, dy in ((1, 0), (0, 1)):
        x0, y0 = transform @ (cx - dx / 2, cy - dy / 2)
        x1, y1 = transform @ (cx + dx / 2, cy + dy / 2)
        (lon0, lon1), (lat0, lat1) = to_lonlat.transform([x0, x1], [y0, y1])
        out.append(abs(geod.inv(lon0, lat0, lon1, lat1)[2]))
    return out[0], out[1]


def _pick_bands(src, kind: str, path: str) -> tuple[list[int], str]:
    """1-based band indexes in the order the chips need, and how they were chosen."""
    from rasterio.enums import ColorInterp

    interp = list(src.colorinterp)
    descr = [(d or "").strip().lower() for d in src.descriptions]
    data_bands = [i + 1 for i, ci in enumerate(interp) if ci != ColorInterp.alpha]
    by_interp = {ci: i + 1 for i, ci in enumerate(interp)}
    named = {n: i + 1 for i, n in enumerate(descr) if n}
    nir = named.get("nir") or named.get("near-infrared") or named.get("near infrared")
    if all(c in by_interp for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue)):
        r, g, b = by_interp[ColorInterp.red], by_interp[ColorInterp.green], by_interp[ColorInterp.blue]
        note = "by colour interpretation"
        if nir is None:
            rest = [i for i in data_bands if i not in (r, g, b)]
            nir = rest[0] if len(rest) == 1 else None
    elif all(n in named for n in ("red", "green", "blue")):
        r, g, b = named["red"], named["green"], named["blue"]
        note = "by band description"
    elif len(data_bands) == 3:
        r, g, b = data_bands
        note = "3 bands without colour interpretation: assumed R,G,B (a 'visual' product)"
    elif len(data_bands) == 4 and src.dtypes[0] == "uint16":
        b, g, r, nir = data_bands
        note = "4 16-bit bands without colour interpretation: assumed B,G,R,NIR (Planet 'analytic' order)"
    else:
        raise SceneError(f"{shown(path)}: {len(data_bands)} band(s) of {src.dtypes[0]} without colour interpretation: "
                         f"cannot tell which are red, green and blue (expected R,G,B or B,G,R,NIR)")
    if kind == "tif":
        if nir is None:
            raise SceneError(f"{shown(path)}: the model was trained on 4-band chips (B,G,R,NIR) and this scene has no "
                             f"near-infrared band ({len(data_bands)} band(s) {note})")
        return [b, g, r, nir], note
    return [r, g, b], note


# A remote scene (a URL, /vsicurl/...) is opened without listing its folder and without probing for sidecar
# files (.aux.xml, .msk, .ovr): on an object store each of those is a request, often more than the COG's own.
# Local files keep GDAL's defaults, as a local .msk or .ovr beside a scene is part of it.
REMOTE_GDAL_OPTIONS = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff"}


def is_remote(path: str) -> bool:
    return "://" in str(path) or str(path).startswith("/vsi")


def require_regular_file(path: str, need: str) -> None:
    """The input-path rule of :mod:`amazonmine.core.data` for a file given by path (a scene, an earlier scan's
    sites): after links, a regular file, or refused by name saying what it is (a FIFO, a device, a folder, a
    link to nothing), never opened blind (opening a FIFO waits forever for a writer). ``need`` says what was
    expected, e.g. "scenes must be GeoTIFF files"."""
    import os
    import stat

    from amazonmine.core.data import file_kind

    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise AmazonmineError(f"{shown(path)}: a link to a missing file ({shown(os.readlink(path))})") from None
        raise AmazonmineError(f"{shown(path)}: not found") from None
    except OSError as exc:
        raise AmazonmineError(f"{shown(path)}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    if not stat.S_ISREG(info.st_mode):
        raise AmazonmineError(f"{shown(path)}: {file_kind(info.st_mode)}, not a regular file; {need}")


# GDAL paths and URL schemes that read a local file through an archive or a file:// URL: that file follows the
# input-path rule as any local scene does.
_ARCHIVE_PREFIXES = ("/vsizip/", "/vsitar/", "/vsigzip/", "/vsi7z/", "/vsirar/")
_LOCAL_SCHEMES = ("file", "zip", "tar", "gzip")


def local_container(path: str) -> str | None:
    """The local file a URL or GDAL virtual path reads (``file://PATH``, ``zip://ARCHIVE!/inner.tif``,
    ``/vsizip/ARCHIVE/inner.tif``...), or None for a remote one (http, s3, /vsicurl/...)."""
    import os

    text = str(path)
    if "://" in text:
        scheme, _, rest = text.partition("://")
        return (rest.split("!", 1)[0] or None) if scheme.lower() in _LOCAL_SCHEMES else None
    for prefix in _ARCHIVE_PREFIXES:
        if text.startswith(prefix):
            part = text[len(prefix):]
            if part.startswith("{") and "}" in part:  # GDAL's /vsizip/{ARCHIVE}/inner form
                part = part[1:part.index("}")]
            while part not in ("", "/") and not os.path.lexists(part):  # the archive: the part that exists
                part = os.path.dirname(part)
            return part if part not in ("", "/") and not os.path.isdir(part) else None
    return None


def open_raster(path: str):
    """rasterio.open, with :data:`REMOTE_GDAL_OPTIONS` for a remote scene (they matter when it is opened)."""
    import rasterio

    if not is_remote(path) or local_container(path) is not None:
        return rasterio.open(path)
    with rasterio.Env(**REMOTE_GDAL_OPTIONS):
        return rasterio.open(path)


def _open_checked(path: str):
    """The open dataset of a scene that is georeferenced north-up with 8- or 16-bit bands, or a SceneError."""
    import warnings

    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():  # said below in one line, with what to do
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = open_raster(path)
    except RasterioIOError as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SceneError(f"{shown(path)}: cannot open as a raster ({shown(reason)})") from None
    name = shown(path)
    try:
        if src.crs is None or src.transform.is_identity:
            extra = " (it has ground control points only: warp it first, e.g. gdalwarp)" if src.gcps[0] else ""
            raise SceneError(f"{name}: not georeferenced (no coordinate reference system or geotransform){extra}")
        t = src.transform
        if abs(t.b) > 1e-12 or abs(t.d) > 1e-12:
            raise SceneError(f"{name}: rotated or sheared geotransform: warp it north-up first (gdalwarp)")
        if src.dtypes[0] not in ("uint8", "uint16"):
            raise SceneError(f"{name}: {src.dtypes[0]} pixels; expected 8-bit or 16-bit unsigned bands")
        check_footprint(path, src.crs, t, src.width, src.height)
    except SceneError:
        src.close()
        raise
    return src


# Points along each edge of a scene whose coordinates are checked: enough to catch a footprint that leaves the
# projection's domain between its corners, few enough to cost nothing.
FOOTPRINT_POINTS = 17


def check_footprint(path: str, crs, transform, width: int, height: int) -> None:
    """Refuse (one line naming the scene) a scene that cannot be placed on the globe: its edges must have
    finite coordinates in its CRS, transform to finite longitudes and latitudes (|lat| <= 90, |lon| <= 180),
    and from there to finite metres in the UTM zone where its areas are measured
    (:func:`amazonmine.scanning.sites.area_ha`). A CRS that cannot be related to longitude and latitude at all (an
    engineering or LOCAL_CS one) is refused the same way, instead of the NaN resolutions and pyproj errors it gave
    further on."""
    from pyproj import CRS, Transformer
    from pyproj.exceptions import CRSError, ProjError
    from rasterio.errors import CRSError as RasterioCRSError

    from amazonmine.scanning.sites import utm_epsg

    name = shown(path)
    steps = np.linspace(0.0, 1.0, FOOTPRINT_POINTS)
    cols = np.concatenate([steps * width, np.full_like(steps, width), steps[::-1] * width, np.zeros_like(steps)])
    rows = np.concatenate([np.zeros_like(steps), steps * height, np.full_like(steps, height), steps[::-1] * height])
    with np.errstate(all="ignore"):
        xs = transform.a * cols + transform.b * rows + transform.c
        ys = transform.d * cols + transform.e * rows + transform.f
    if not (np.all(np.isfinite(xs)) and np.all(np.isfinite(ys))) or transform.a == 0 or transform.e == 0:
        raise SceneError(f"{name}: its geotransform {tuple(transform)[:6]} gives no finite footprint")
    try:
        scene_crs = CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
        to_lonlat = Transformer.from_crs(scene_crs, CRS.from_epsg(4326), always_xy=True)
        lon, lat = (np.asarray(v, np.float64) for v in to_lonlat.transform(xs, ys, errcheck=False))
    except (CRSError, ProjError, RasterioCRSError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SceneError(f"{name}: its coordinate reference system cannot be related to longitude and latitude "
                         f"({shown(reason)}); reproject it first (gdalwarp -t_srs EPSG:4326 or a UTM zone)") from None
    lost = ~np.isfinite(lon) | ~np.isfinite(lat) | (np.abs(lat) > 90.0) | (np.abs(lon) > 180.0)
    if lost.any():
        k = int(np.flatnonzero(lost)[0])
        raise SceneError(f"{name}: its footprint does not lie on the globe (pixel {cols[k]:g},{rows[k]:g} at "
                         f"{xs[k]:.6g}, {ys[k]:.6g} in its CRS is longitude {lon[k]:.6g}, latitude {lat[k]:.6g}): "
                         f"a wrong geotransform or coordinate reference system")
    try:
        to_metres = Transformer.from_crs(CRS.from_epsg(4326),
                                         CRS.from_epsg(utm_epsg(float(lon.mean()), float(lat.mean()))), always_xy=True)
        ux, uy = to_metres.transform(lon, lat, errcheck=False)
    except (CRSError, ProjError) as exc:  # not expected for any longitude and latitude; said rather than raised
        raise SceneError(f"{name}: its footprint cannot be measured in metres ({shown(exc)})") from None
    if not (np.all(np.isfinite(ux)) and np.all(np.isfinite(uy))):
        raise SceneError(f"{name}: its footprint cannot be measured in metres in the UTM zone of its centre")


def check_scene_file(path: str | Path) -> None:
    """What can be refused before any model is loaded: unreadable, not georeferenced, rotated, not 8/16-bit,
    not on the globe."""
    _open_checked(str(path)).close()


def open_scene(path: str | Path, look: ChipLook, chip_ground_m: float, max_ratio: float,
               stretch_percentiles: tuple[float, float] = (2.0, 98.0), stretch_gamma: float = 1.0) -> Scene:
    """Open and check one scene: georeferenced, usable bands and bit depth, resolution near the chips'."""
    path = str(path)
    name = shown(path)
    with _open_checked(path) as src:
        t = src.transform
        dtype = src.dtypes[0]
        if look.kind == "tif" and dtype != "uint16":
            raise SceneError(f"{name}: the model was trained on 16-bit 4-band chips and this scene is {dtype}")
        bands, note = _pick_bands(src, look.kind, path)
        res = ground_resolution(src.crs, t, src.width, src.height)
        if not all(np.isfinite(r) and r > 0 for r in res):
            raise SceneError(f"{name}: no ground size of a pixel at its centre ({res[0]:g} x {res[1]:g} m): a wrong "
                             f"geotransform or coordinate reference system")
        chip_res = chip_ground_m / look.size
        source_res = min(chip_res, chip_ground_m / PLANET_CHIP_PX)
        scene_res = max(res)
        if scene_res > chip_res * max_ratio or min(res) < source_res / max_ratio:
            raise SceneError(f"{name}: resolution {res[0]:.2f} x {res[1]:.2f} m is too far from the training chips' "
                             f"({chip_res:.2f} m per chip pixel, cut from ~{source_res:.2f} m imagery; allowed "
                             f"{source_res / max_ratio:.2f}-{chip_res * max_ratio:.2f} m, scan.max_resolution_ratio "
                             f"{max_ratio:g})")
        from rasterio.enums import MaskFlags

        flags = [src.mask_flag_enums[i - 1] for i in bands]
        declared = not all(f == [MaskFlags.all_valid] for f in flags)
        epsg = src.crs.to_epsg()
        scene = Scene(path=path, name=Path(path).stem, crs_wkt=src.crs.to_wkt(), transform=tuple(t)[:6],
                      width=src.width, height=src.height, dtype=dtype, res_m=(float(res[0]), float(res[1])),
                      bands=bands, band_note=note, declared_mask=declared, epsg=epsg)
        if look.kind == "jpg" and dtype != "uint8":
            scene.stretch = stretch_from_overview(src, scene, stretch_percentiles)
            scene.stretch_gamma = float(stretch_gamma)
            if scene.stretch is None:
                # Nothing valid to stretch from: the scene is (almost surely) all nodata, and its tiles are
                # counted as nodata like an 8-bit scene's, instead of the whole batch being refused for it.
                top = float(np.iinfo(np.dtype(dtype)).max)
                scene.stretch = [(0.0, top)] * len(bands)
                scene.band_note += "; no valid pixel in the overview: full-range stretch"
    return scene


def overview_shape(width: int, height: int, longest: int = OVERVIEW_PX) -> tuple[int, int]:
    scale = min(1.0, longest / max(width, height))
    return max(1, round(height * scale)), max(1, round(width * scale))


def read_masks(src, scene: Scene, window=None, out_hw: tuple[int, int] | None = None) -> np.ndarray:
    """(k, H, W) masks of the bands read: one read when the file's mask is shared by every band (a mask band or
    alpha: reading it per band would decode it once per band), one per band for per-band nodata values."""
    from rasterio.enums import MaskFlags, Resampling

    flags = src.mask_flag_enums[scene.bands[0] - 1]
    bands = [scene.bands[0]] if MaskFlags.per_dataset in flags or MaskFlags.alpha in flags else scene.bands
    if out_hw is None:
        return src.read_masks(bands, window=window)
    return src.read_masks(bands, window=window, out_shape=(len(bands), *out_hw), resampling=Resampling.nearest)


def valid_pixels(data: np.ndarray, masks: np.ndarray, declared: bool) -> np.ndarray:
    """(H, W) bool: a pixel is data when every band read is unmasked, and (when the file declares no nodata,
    alpha or mask) not 0 in every band: Planet and NICFI products fill outside the footprint with 0."""
    valid = np.all(masks > 0, axis=0)
    if not declared:
        valid &= np.any(data != 0, axis=0)
    return valid


def stretch_from_overview(src, scene: Scene, percentiles: tuple[float, float]) -> list | None:
    """Per band (lo, hi) of a 16-bit scene: the given percentiles of its valid pixels in a decimated read (None
    when the read has no valid pixel).

    The stretch maps lo..hi to 0..255 (clipped; linear, or with ``scan.stretch_gamma`` as a power 1/gamma), per
    band, the same for every tile of the scene, so a tile's colours do not depend on what else is in it.
    Planet's 'visual' products are made with a colour correction this only approximates (measured on the 8
    usable real TIF/JPEG pairs: ``scripts/bench_tile_match.py --analytic``); it is recorded in scan.json with
    the values used.
    """
    from rasterio.enums import Resampling

    h, w = overview_shape(scene.width, scene.height)
    data = src.read(scene.bands, out_shape=(len(scene.bands), h, w), resampling=Resampling.nearest)
    masks = read_masks(src, scene, out_hw=(h, w))
    valid = valid_pixels(data, masks, scene.declared_mask)
    if not valid.any():
        return None
    out = []
    for band in data:
        lo, hi = np.percentile(band[valid], percentiles)
        out.append((float(lo), float(max(hi, lo + 1))))
    return out


def to_8bit(data: np.ndarray, stretch: list | None, gamma: float = 1.0) -> np.ndarray:
    """(H, W, C) bands -> uint8 with the scene's stretch: lo..hi -> 0..255, clipped, raised to 1/gamma (1 =
    linear); 8-bit scenes pass through. A lookup table per band: one indexing pass over the pixels."""
    if stretch is None:
        return data.astype(np.uint8, copy=False)
    top = np.iinfo(data.dtype).max if data.dtype.kind == "u" else int(data.max())
    values = np.arange(top + 1, dtype=np.float64)
    out = np.empty(data.shape, np.uint8)
    for i, (lo, hi) in enumerate(stretch):
        unit = np.clip((values - lo) / (hi - lo), 0.0, 1.0)
        lut = (255.0 * unit ** (1.0 / gamma) + 0.5).astype(np.uint8)
        out[..., i] = lut[data[..., i]]
    return out


# --- the tile grid -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Grid:
    """Tiles of one scene: tile (r, c) covers pixels [r*sy, r*sy+th) x [c*sx, c*sx+tw). Only whole tiles inside
    the scene exist; the strip left at the right and bottom edges is narrower than one stride."""

    tile_w: int
    tile_h: int
    stride_x: int
    stride_y: int
    rows: int
    cols: int

    @classmethod
    def for_scene(cls, scene: Scene, ground_m: float, stride: float) -> "Grid":
        tw = max(1, round(ground_m / scene.res_m[0]))
        th = max(1, round(ground_m / scene.res_m[1]))
        sx, sy = max(1, round(tw * stride)), max(1, round(th * stride))
        if scene.width < tw or scene.height < th:
            raise SceneError(f"{shown(scene.path)}: {scene.width}x{scene.height} px is smaller than one tile "
                             f"({tw}x{th} px = {ground_m:g} m)")
        return cls(tw, th, sx, sy, (scene.height - th) // sy + 1, (scene.width - tw) // sx + 1)

    @property
    def n_tiles(self) -> int:
        return self.rows * self.cols

    def blocks(self, block_tiles: int) -> list[tuple[int, int, int, int]]:
        """Row-major blocks of about ``block_tiles`` tiles: (r0, r1, c0, c1), square-ish so that a block's window,
        and the memory it takes, do not grow with the scene's width."""
        side = max(1, math.isqrt(max(1, block_tiles)))
        return [(r0, min(r0 + side, self.rows), c0, min(c0 + side, self.cols))
                for r0 in range(0, self.rows, side) for c0 in range(0, self.cols, side)]

    def block_window(self, block: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """(col_off, row_off, width, height) in scene pixels of the tiles of a block."""
        r0, r1, c0, c1 = block
        return (c0 * self.stride_x, r0 * self.stride_y,
                (c1 - 1 - c0) * self.stride_x + self.tile_w, (r1 - 1 - r0) * self.stride_y + self.tile_h)

    def tile_bounds(self, scene: Scene, r: int, c: int) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) of a tile in the scene's CRS."""
        t = scene.affine
        x0, y0 = t @ (c * self.stride_x, r * self.stride_y)
        x1, y1 = t @ (c * self.stride_x + self.tile_w, r * self.stride_y + self.tile_h)
        return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)

    def raster_transform(self, scene: Scene):
        """Affine of the tile-grid raster: cell (r, c) is stride-sized and centred on tile (r, c)'s centre."""
        from affine import Affine

        t = scene.affine
        off_x = (self.tile_w - self.stride_x) / 2.0
        off_y = (self.tile_h - self.stride_y) / 2.0
        return t @ Affine.translation(off_x, off_y) @ Affine.scale(self.stride_x, self.stride_y)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class BlockTiles:
    """The chips of one block, ready for the model, and what was skipped."""

    rows: np.ndarray  # (n,) tile rows of the chips, in row-major order
    cols: np.ndarray
    chips: np.ndarray  # (n, S, S, C) in file band order; a list of chip file bytes from read_block(encode=True)
    nodata: int = 0
    blank: int = 0
    skipped: list = field(default_factory=list)


def read_block(scene: Scene, grid: Grid, block: tuple[int, int, int, int], look: ChipLook, src=None, *,
               wanted=None, encode: bool = False) -> BlockTiles:
    """Read one block's window and make its chips; nodata and blank tiles are counted, not scored.

    A tile is nodata when any of its pixels is (the model never saw a chip with a hole), blank when every value
    of every band is 0 or every one is the format's maximum (255 / 65535).

    ``wanted(r, c)``, when given, says which tiles to make (the others are neither made nor counted);
    ``encode`` makes each chip's file bytes (:func:`encode_chip`, a list) instead of the decoded chips.
    """
    import cv2
    from rasterio.windows import Window

    col_off, row_off, w, h = grid.block_window(block)
    dtype = np.dtype(scene.dtype)
    # Read straight into rows x columns x bands (GDAL writes with our strides): tiles are then plain views.
    data = np.empty((h, w, len(scene.bands)), dtype)
    own = src is None
    if own:
        src = open_raster(scene.path)
    try:
        window = Window(col_off, row_off, w, h)
        src.read(scene.bands, window=window, out=np.moveaxis(data, -1, 0))
        masks = read_masks(src, scene, window)
    finally:
        if own:
            src.close()
    # Per tile, counts from summed-area tables (four lookups a tile instead of passes over its pixels, which
    # at stride 0.5 would visit every pixel four times): pixels with a hole, pixels not all 0, not all top.
    top = np.iinfo(dtype).max
    high, low = data[..., 0].copy(), data[..., 0].copy()  # per pixel, over bands (elementwise: no slow reduce)
    for i in range(1, data.shape[2]):
        np.maximum(high, data[..., i], out=high)
        np.minimum(low, data[..., i], out=low)
    valid = np.all(masks > 0, axis=0)
    if not scene.declared_mask:  # see valid_pixels: all-zero pixels are fill when nothing is declared
        valid &= high > 0
    holes = cv2.integral((~valid).view(np.uint8))
    not_zero = cv2.integral((high > 0).view(np.uint8))
    not_top = cv2.integral((low < top).view(np.uint8))
    pixels = to_8bit(data, scene.stretch, scene.stretch_gamma) if look.kind == "jpg" else data
    pixels = prepare_pixels(pixels, look)
    th, tw = grid.tile_h, grid.tile_w

    def count(table, y, x):
        return table[y + th, x + tw] - table[y, x + tw] - table[y + th, x] + table[y, x]

    r0, r1, c0, c1 = block
    rows, cols, chips = [], [], []
    nodata = blank = 0
    for r in range(r0, r1):
        y = (r - r0) * grid.stride_y
        for c in range(c0, c1):
            x = (c - c0) * grid.stride_x
            if wanted is not None and not wanted(r, c):
                continue
            if count(holes, y, x):
                nodata += 1
                continue
            if not count(not_zero, y, x) or not count(not_top, y, x):
                blank += 1
                continue
            chips.append((encode_chip if encode else finish_chip)(pixels[y:y + th, x:x + tw], look))
            rows.append(r)
            cols.append(c)
    if encode:
        return BlockTiles(np.array(rows, np.int32), np.array(cols, np.int32), chips, nodata, blank)
    channels = 4 if look.kind == "tif" else 3
    stack = np.stack(chips) if chips else np.zeros((0, look.size, look.size, channels),
                                                   np.uint16 if look.kind == "tif" else np.uint8)
    return BlockTiles(np.array(rows, np.int32), np.array(cols, np.int32), stack, nodata, blank)
