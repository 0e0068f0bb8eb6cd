"""The scan's HTML report: one self-contained page with an interactive map that opens offline.

The page is rendered from the Jinja2 template ``templates/scan_report.html`` (autoescaped; data reaches the
page's script through ``|tojson``) and carries everything it shows: Leaflet (vendored in
``templates/vendor/leaflet``, inlined), and every image as a data URI. It asks for no other file and no network.

The map: for each scene a preview (a decimated read, never the whole scene, nodata transparent) warped to Web
Mercator, the map's own projection, so that it lies exactly at the scene's place as an image layer; the
probability of each mine label on the tile grid as a coloured layer (off until switched on; the colour ramp of
the QGIS styles, :func:`amazonmine.gisfiles.probability_rgba`); the sites outlined in their label's colour, with a
popup (label, probabilities, hectares, tiles, first and last scene, a thumbnail of the real pixels); with
``--since``, the new sites and growth dashed and marked; a scale bar and the coordinates under the pointer.
Under the map: every site in a table sorted by confidence (a click shows it on the map), the operating point
(thresholds and where they came from, the isolated-site threshold, the minimum area), the chip look, and what
was skipped: nodata and blank tiles, unreadable blocks.
"""

from __future__ import annotations

import base64
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from amazonmine.gisfiles import COLOURS, NEW_COLOURS, OTHER_COLOUR, probability_ramp, probability_rgba
from amazonmine.io import write_text_atomic

PREVIEW_PX = 1024
# Sites are a tile or a few across (256 px and up at 3 m): 128 px is at least a 2x reduction, which GDAL serves
# from the scene's first overview when it has one, instead of decoding every full-resolution pixel.
THUMB_PX = 128
MAX_THUMBS = 200  # sites beyond this are listed without a thumbnail, so the page stays a few MB at most
# A probability cell is a stride (hundreds of metres): drawn at least this many preview pixels across, so the
# warp to Web Mercator keeps the cells square-edged instead of smearing them.
PROBABILITY_CELL_PX = 4
WEB_MERCATOR = "EPSG:3857"


# --- images ----------------------------------------------------------------------------------------------------

def _jpeg_uri(rgb: np.ndarray, quality: int = 85) -> str:
    import cv2

    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _rgba_uri(rgba: np.ndarray, lossy: bool) -> str:
    """RGBA as a data URI: lossy WebP for imagery (a tenth of a PNG's size, alpha kept), PNG for the few flat
    colours of a probability layer."""
    import cv2

    bgra = np.ascontiguousarray(rgba[..., [2, 1, 0, 3]])
    if lossy:
        ok, buf = cv2.imencode(".webp", bgra, [cv2.IMWRITE_WEBP_QUALITY, 85])
        mime = "image/webp"
    else:
        ok, buf = cv2.imencode(".png", bgra, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        mime = "image/png"
    return f"data:{mime};base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _read_rgb(src, scene, window=None, out_hw=None) -> tuple[np.ndarray, np.ndarray]:
    """8-bit R,G,B of a window (or the whole scene) at ``out_hw`` and where it is data; 16-bit scenes stretched
    with the scene's stretch (or their own 2-98 percentiles when the model took the bands as they are)."""
    from rasterio.enums import Resampling

    from amazonmine.tiling import read_masks, to_8bit, valid_pixels

    rgb_bands = [scene.bands[2], scene.bands[1], scene.bands[0]] if len(scene.bands) == 4 else scene.bands
    kwargs = {"window": window}
    if out_hw is not None:
        kwargs.update(out_shape=(3, *out_hw), resampling=Resampling.average)
    data = src.read(rgb_bands, **kwargs)
    masks = read_masks(src, scene, window=window, out_hw=out_hw or data.shape[1:])
    stretch = scene.stretch
    if data.dtype != np.uint8 and stretch is None:
        valid = masks.min(axis=0) > 0
        stretch = [tuple(np.percentile(b[valid], (2, 98))) if valid.any() else (0, 1) for b in data]
        stretch = [(lo, max(hi, lo + 1)) for lo, hi in stretch]
    rgb = to_8bit(np.moveaxis(data, 0, -1), stretch, scene.stretch_gamma if scene.stretch else 1.0).copy()
    valid = valid_pixels(data, masks, scene.declared_mask)
    rgb[~valid] = 40
    return rgb, valid


def to_web_mercator(image: np.ndarray, crs_wkt: str, transform, smooth: bool) -> tuple[np.ndarray, list]:
    """An (H, W, 4) RGBA image on ``transform`` in a scene's CRS, warped to Web Mercator (Leaflet's projection,
    in which an image layer is stretched linearly between its corners), and its [west, south, east, north] in
    degrees. Outside the source the result is transparent. ``smooth``: bilinear colours, else nearest."""
    from rasterio.crs import CRS
    from rasterio.enums import Resampling
    from rasterio.warp import calculate_default_transform, reproject, transform_bounds

    h, w = image.shape[:2]
    src_crs = CRS.from_wkt(crs_wkt)
    xs, ys = zip(*(transform @ corner for corner in ((0, 0), (w, 0), (0, h), (w, h))))
    dst_transform, dw, dh = calculate_default_transform(src_crs, WEB_MERCATOR, w, h, left=min(xs), bottom=min(ys),
                                                        right=max(xs), top=max(ys))
    out = np.zeros((4, dh, dw), np.uint8)
    bands = np.moveaxis(image, -1, 0)
    common = dict(src_transform=transform, src_crs=src_crs, dst_transform=dst_transform, dst_crs=WEB_MERCATOR)
    reproject(np.ascontiguousarray(bands[:3]), out[:3], resampling=Resampling.bilinear if smooth
              else Resampling.nearest, **common)
    reproject(np.ascontiguousarray(bands[3:]), out[3:], resampling=Resampling.nearest, **common)
    west, north = dst_transform @ (0, 0)
    east, south = dst_transform @ (dw, dh)
    bounds = transform_bounds(WEB_MERCATOR, "EPSG:4326", west, south, east, north)
    return np.moveaxis(out, 0, -1), [float(v) for v in bounds]


def _preview(job) -> dict:
    """The scene's preview layer: a data URI and its bounds, or why there is none."""
    from affine import Affine
    from rasterio.errors import RasterioError

    from amazonmine.tiling import open_raster, overview_shape

    scene = job.scene
    h, w = overview_shape(scene.width, scene.height, PREVIEW_PX)
    try:
        with open_raster(scene.path) as src:
            rgb, valid = _read_rgb(src, scene, out_hw=(h, w))
    except (RasterioError, OSError) as exc:  # the blocks that could be read are still worth a report
        return {"image": None, "bounds": None,
                "problem": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
    rgba = np.dstack([rgb, np.where(valid, 255, 0).astype(np.uint8)])
    transform = scene.affine @ Affine.scale(scene.width / w, scene.height / h)
    warped, bounds = to_web_mercator(rgba, scene.crs_wkt, transform, smooth=True)
    return {"image": _rgba_uri(warped, lossy=True), "bounds": bounds, "problem": None}


def _probability_layers(job, point) -> list[dict]:
    """Per mine label, the scene's probability grid as a coloured image layer (NaN cells clear)."""
    from affine import Affine

    from amazonmine.data import LABEL_INDEX

    grid, scene = job.grid, job.scene
    rows, cols, probs = job.assembled()
    # A grid wider than the preview is shown as the maximum of each block of cells (a hot cell stays visible).
    merge = max(1, -(-max(grid.rows, grid.cols) // PREVIEW_PX))
    repeat = max(1, min(PROBABILITY_CELL_PX, PREVIEW_PX // -(-max(grid.rows, grid.cols) // merge)))
    transform = grid.raster_transform(scene) @ Affine.scale(merge / repeat)
    layers = []
    for label, threshold in point.thresholds.items():
        cells = np.full((grid.rows, grid.cols), np.nan, np.float32)
        cells[rows, cols] = probs[:, LABEL_INDEX[label]]
        if merge > 1:
            cells = block_maximum(cells, merge)
        rgba = probability_rgba(cells, threshold).repeat(repeat, axis=0).repeat(repeat, axis=1)
        warped, bounds = to_web_mercator(rgba, scene.crs_wkt, transform, smooth=False)
        layers.append({"label": label, "image": _rgba_uri(warped, lossy=False), "bounds": bounds})
    return layers


def block_maximum(cells: np.ndarray, size: int) -> np.ndarray:
    """The maximum of each ``size`` x ``size`` block of a grid (NaN: not scored, ignored unless all are)."""
    h, w = -(-cells.shape[0] // size) * size, -(-cells.shape[1] // size) * size
    padded = np.full((h, w), np.nan, cells.dtype)
    padded[: cells.shape[0], : cells.shape[1]] = cells
    blocks = padded.reshape(h // size, size, w // size, size)
    return np.fmax.reduce(np.fmax.reduce(blocks, axis=3), axis=1)


def _thumbnail(job, site) -> str:
    """A JPEG data URI of the scene's pixels under a site (nodata dark grey), or "" when there are none."""
    from pyproj import CRS, Transformer
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    from amazonmine.tiling import open_raster

    scene = job.scene
    to_scene = Transformer.from_crs(CRS.from_epsg(4326), CRS.from_wkt(scene.crs_wkt), always_xy=True)
    lon0, lat0, lon1, lat1 = site.geometry.bounds
    xs, ys = to_scene.transform([lon0, lon1, lon0, lon1], [lat0, lat0, lat1, lat1])
    cols, rows = (~scene.affine) @ (np.asarray(xs), np.asarray(ys))
    c0, c1 = int(max(0, np.floor(cols.min()))), int(min(scene.width, np.ceil(cols.max())))
    r0, r1 = int(max(0, np.floor(rows.min()))), int(min(scene.height, np.ceil(rows.max())))
    if c1 <= c0 or r1 <= r0:
        return ""
    scale = min(1.0, THUMB_PX / max(c1 - c0, r1 - r0))
    out_hw = (max(1, round((r1 - r0) * scale)), max(1, round((c1 - c0) * scale)))
    try:
        with open_raster(scene.path) as src:
            rgb, _ = _read_rgb(src, scene, window=Window(c0, r0, c1 - c0, r1 - r0), out_hw=out_hw)
    except (RasterioError, OSError):
        return ""
    return _jpeg_uri(rgb)


# --- the page ----------------------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _environment():
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    return Environment(loader=PackageLoader("amazonmine", "templates"),
                       autoescape=select_autoescape(default=True, default_for_string=True),
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def render(template: str, **values) -> str:
    """A page from ``templates/<template>``, every value autoescaped unless it is :func:`markupsafe.Markup`."""
    return _environment().get_template(template).render(**values)


@lru_cache(maxsize=1)
def leaflet_assets() -> tuple[str, str]:
    """Leaflet's JS and CSS, ready to inline: the CSS's image references as data URIs, its comments (which
    name web pages) and the JS's source-map comment dropped, so the page refers to no other file."""
    from importlib.resources import files

    from markupsafe import Markup

    base = files("amazonmine") / "templates" / "vendor" / "leaflet"
    js = re.sub(r"//# sourceMappingURL=\S*\s*$", "", (base / "leaflet.js").read_text(encoding="utf-8"))
    if "</script" in js.lower():  # would end the inline script early
        raise RuntimeError("vendored leaflet.js contains '</script': it cannot be inlined")

    def inline(match: re.Match) -> str:
        data = (base / "images" / match.group(1)).read_bytes()
        return "url(data:image/png;base64," + base64.b64encode(data).decode("ascii") + ")"

    css = re.sub(r"/\*.*?\*/", "", (base / "leaflet.css").read_text(encoding="utf-8"), flags=re.S)  # comments
    css = re.sub(r"url\(images/([\w.-]+\.png)\)", inline, css)
    return Markup(js), Markup(css)


def _ramp_css(threshold: float) -> str:
    stops = ", ".join(f"rgba({r},{g},{b},{a / 255:.2f}) {v * 100:.1f}%" for v, (r, g, b, a) in
                      probability_ramp(threshold))
    return f"linear-gradient(to right, {stops})"


def write_report(path: Path, jobs, sites_by_label: dict, point, look, failed: list, counts: list,
                 new_sites: list | None) -> None:
    """scan_report.html. ``new_sites``: the features of new_sites (``--since``), else None."""
    from shapely.geometry import shape

    from amazonmine.sites import feature

    job_of = {j.scene.name: j for j in jobs}
    everything = sorted((s for sites in sites_by_label.values() for s in sites),
                        key=lambda s: (-s.max_probability, s.site_id))
    new_status = {}
    for f in new_sites or []:
        new_status.setdefault(f["properties"].get("site_id"), f["properties"].get("status"))
    rows, site_features = [], []
    for k, site in enumerate(everything):
        c = site.geometry.centroid
        rows.append({"index": k, "site": site, "lat": c.y, "lon": c.x, "new": new_status.get(site.site_id),
                     "colour": COLOURS.get(site.label, OTHER_COLOUR),
                     "thumb": _thumbnail(job_of[site.scenes[0]], site) if k < MAX_THUMBS else ""})
        site_features.append(feature(site.geometry, {
            "row": k, "site_id": site.site_id, "label": site.label, "max_probability": round(site.max_probability, 4),
            "mean_probability": round(site.mean_probability, 4), "area_ha": round(site.area_ha, 2),
            "tiles": site.tiles, "first_scene": site.scenes[0], "last_scene": site.scenes[-1],
            "status": new_status.get(site.site_id)}))
    fresh = []
    for f in new_sites or []:
        spot = shape(f["geometry"]).representative_point()
        p = f["properties"]
        fresh.append({**f, "properties": {"site_id": p.get("site_id"), "label": p.get("label"),
                                          "status": p.get("status"), "new_area_ha": p.get("new_area_ha"),
                                          "previous_sites": p.get("previous_sites") or [],
                                          "marker": [spot.y, spot.x]}})
    scenes = []
    for job in jobs:
        preview = _preview(job)
        scenes.append({"name": job.scene.name, "preview": preview["image"], "bounds": preview["bounds"],
                       "problem": preview["problem"], "probabilities": _probability_layers(job, point)})
    labels = [{"label": label, "colour": COLOURS.get(label, OTHER_COLOUR), "threshold": point.thresholds[label],
               "ramp": _ramp_css(point.thresholds[label]), "sites": len(sites_by_label.get(label, []))}
              for label in point.thresholds]
    map_data = {"scenes": scenes, "labels": labels, "sites": {"type": "FeatureCollection", "features": site_features},
                "new_sites": {"type": "FeatureCollection", "features": fresh} if new_sites is not None else None,
                "new_colours": NEW_COLOURS}
    leaflet_js, leaflet_css = leaflet_assets()
    page = render("scan_report.html", jobs=jobs, rows=rows, point=point, look=look, failed=failed, counts=counts,
                  labels=labels, scenes=scenes, new_sites=new_sites, max_thumbs=MAX_THUMBS, map_data=map_data,
                  new_colours=NEW_COLOURS, leaflet_js=leaflet_js, leaflet_css=leaflet_css)
    write_text_atomic(path, page)
