"""The scan's HTML report: one self-contained page with an interactive map that opens offline.

The page is rendered from the Jinja2 template ``templates/scan_report.html`` (autoescaped; data reaches the
page's script through ``|tojson``) and carries everything it shows: Leaflet (vendored in
``templates/vendor/leaflet``, inlined), and every image as a data URI. It asks for no other file and no network.

The map: for each scene a preview (a decimated read, never the whole scene, nodata transparent) warped to Web
Mercator, the map's own projection, so that it lies exactly at the scene's place as an image layer; the
probability of each mine label on the tile grid as a coloured layer (off until switched on; the colour ramp of
the QGIS styles, :func:`amazonmine.scanning.gisfiles.probability_rgba`); the sites outlined in their label's colour,
with a popup (label, probabilities, hectares, tiles, first and last scene, a thumbnail of the real pixels); with
``--since``, the new sites and growth dashed and marked; a scale bar and the coordinates under the pointer.
Under the map: every site in a table sorted by confidence (a click shows it on the map), the operating point
(thresholds and where they came from, the isolated-site threshold, the minimum area), the chip look, and what
was skipped: nodata and blank tiles, unreadable blocks.

Once the scan is scored against known sites (``score-sites``, ``scan --truth``), :func:`add_site_scores` fills
the page's empty "Site scores" section (``templates/site_scores_section.html``): a table per target at the
operating point, and its curves along the threshold as inline SVG drawn by the template (no script).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from amazonmine.core.io import write_text_atomic
from amazonmine.scanning.gisfiles import COLOURS, NEW_COLOURS, OTHER_COLOUR, probability_ramp, probability_rgba

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

    from amazonmine.scanning.tiling import read_masks, to_8bit, valid_pixels

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

    from amazonmine.scanning.tiling import open_raster, overview_shape

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
    """Per label mapped into sites, the scene's probability grid as a coloured image layer (NaN cells clear); the
    label's column is the model's (``point.columns``: a vocabulary of its own), else its Planet one."""
    from affine import Affine

    from amazonmine.core.data import LABEL_INDEX

    grid, scene = job.grid, job.scene
    rows, cols, probs = job.assembled()
    # A grid wider than the preview is shown as the maximum of each block of cells (a hot cell stays visible).
    merge = max(1, -(-max(grid.rows, grid.cols) // PREVIEW_PX))
    repeat = max(1, min(PROBABILITY_CELL_PX, PREVIEW_PX // -(-max(grid.rows, grid.cols) // merge)))
    transform = grid.raster_transform(scene) @ Affine.scale(merge / repeat)
    layers = []
    for label, threshold in point.thresholds.items():
        cells = np.full((grid.rows, grid.cols), np.nan, np.float32)
        cells[rows, cols] = probs[:, {**LABEL_INDEX, **getattr(point, "columns", {})}[label]]
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

    from amazonmine.scanning.tiling import open_raster

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


@dataclass
class ScanReport:
    """What scan_report.html shows: the scenes scanned (``jobs``) and those that failed, each scene's tile
    counts, the sites by label, the operating point and chip look the tiles were decided with, the features of
    new_sites (``--since``; None without it) and what scored the tiles
    (:func:`amazonmine.stages.scan.model_summary`)."""

    jobs: list
    sites_by_label: dict
    point: Any
    look: Any
    failed: list
    counts: list
    new_sites: list | None = None
    model: dict | None = None


def write_report(path: Path, report: ScanReport) -> None:
    """Write ``report`` as the scan's HTML page (one file: the map library, previews and thumbnails inline)."""
    from shapely.geometry import shape

    from amazonmine.scanning.sites import feature

    jobs, sites_by_label, point, new_sites = report.jobs, report.sites_by_label, report.point, report.new_sites
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
    page = render("scan_report.html", jobs=jobs, rows=rows, point=point, look=report.look, failed=report.failed,
                  counts=report.counts, labels=labels, scenes=scenes, new_sites=new_sites, max_thumbs=MAX_THUMBS,
                  map_data=map_data, new_colours=NEW_COLOURS, leaflet_js=leaflet_js, leaflet_css=leaflet_css,
                  model=report.model)
    write_text_atomic(path, page)


# --- site scores (score-sites, scan --truth) ---------------------------------------------------------------------

REPORT_HTML = "scan_report.html"
# The report carries an empty section between these two comments; the site scores replace whatever lies between
# them. Escaped text can never contain "<!--", so nothing the page shows can fake a marker.
SITE_SCORES_START = "<!-- site-scores:start -->"
SITE_SCORES_END = "<!-- site-scores:end -->"
# One chart, in SVG user units (shown at this size, or narrower on a narrow page): two fit side by side in 700 px.
CHART_W, CHART_H = 330, 210
CHART_LEFT, CHART_RIGHT, CHART_TOP, CHART_BOTTOM = 52, 14, 22, 42
THRESHOLD_TICKS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _span(ci: list | None, percent: bool) -> str:
    """A 95% interval as text, or a dash when there is none (no draws, or nothing to draw from)."""
    if not ci or ci[0] is None:
        return "\u2013"
    return f"{_percent(ci[0])} to {_percent(ci[1])}" if percent else f"{ci[0]:.2f} to {ci[1]:.2f}"


def _score_rows(target: dict) -> list[dict]:
    """The table of one target at the operating point: figure, value, 95% interval, what it is made of."""
    ci = target.get("intervals_95") or {}
    tiles = target.get("tiles") or {}
    false_rate = target.get("false_sites_per_1000_km2")
    missed = target.get("missed_truth_features") or []
    return [
        {"figure": "truth sites found", "value": f"{target['found']} of {target['truth_sites']} "
                                                 f"({_percent(target.get('found_rate'))})",
         "interval": _span(ci.get("found_rate"), True),
         "detail": ("missed: feature " + ", ".join(str(m) for m in missed[:20]) + (" ..." if len(missed) > 20
                                                                                  else "")) if missed else ""},
        {"figure": "false sites per 1,000 km\u00b2", "value": "n/a" if false_rate is None else f"{false_rate:.2f}",
         "interval": _span(ci.get("false_sites_per_1000_km2"), False),
         "detail": f"{target['false_sites']} false of {target['predicted_sites']} predicted site(s); "
                   f"{target.get('sites_in_ignore_zones', 0)} in ignore zones"},
        {"figure": "tile precision", "value": _percent(target.get("tile_precision")),
         "interval": _span(ci.get("tile_precision"), True),
         "detail": f"{tiles.get('tp', 0)} true, {tiles.get('fp', 0)} false positive tiles"},
        {"figure": "tile recall", "value": _percent(target.get("tile_recall")),
         "interval": _span(ci.get("tile_recall"), True),
         "detail": f"{tiles.get('tp', 0)} of {tiles.get('tp', 0) + tiles.get('fn', 0)} truly positive tiles"},
    ]


def _axis(largest: float) -> tuple[float, list[float]]:
    """A y axis from 0 to a round number at or above ``largest``, and its ticks (two to five steps)."""
    import math

    if not largest or largest <= 0:
        return 1.0, [0.0, 0.5, 1.0]
    raw = largest / 4
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    steps = max(1, math.ceil(largest / step - 1e-9))
    return steps * step, [k * step for k in range(steps + 1)]


def _chart(curve: list[dict], key: str, top: float, ticks: list[float], operating: dict, words: dict) -> dict:
    """SVG coordinates of one curve: the points (x the threshold, y ``key`` scaled 0..``top``) with their
    tooltips, the axes' ticks, and the operating point (a line at each of its thresholds, and its figure
    ringed when it has one threshold). ``words``: title, y label, a formatter of a value, a point's tooltip."""
    plot_w, plot_h = CHART_W - CHART_LEFT - CHART_RIGHT, CHART_H - CHART_TOP - CHART_BOTTOM

    def x(threshold: float) -> float:
        return round(CHART_LEFT + plot_w * min(max(threshold, 0.0), 1.0), 1)

    def y(value: float) -> float:
        return round(CHART_TOP + plot_h * (1.0 - min(max(value / top, 0.0), 1.0)), 1)

    points = [{"x": x(p["threshold"]), "y": y(p[key]), "tooltip": words["tooltip"](p)}
              for p in curve if p.get(key) is not None]
    chart = {"width": CHART_W, "height": CHART_H, "left": CHART_LEFT, "right": CHART_W - CHART_RIGHT,
             "top": CHART_TOP, "bottom": CHART_TOP + plot_h, "title": words["title"], "y_label": words["y_label"],
             "points": points, "line": " ".join(f"{p['x']},{p['y']}" for p in points),
             "x_ticks": [{"at": x(t), "label": f"{t:g}"} for t in THRESHOLD_TICKS],
             "y_ticks": [{"at": y(v), "label": words["format"](v)} for v in ticks],
             "operating": [], "ring": None}
    for t in operating["thresholds"]:  # labelled above the plot; one close to the one before a line lower
        crowded = chart["operating"] and x(t) - chart["operating"][-1]["at"] < 30 and \
            chart["operating"][-1]["label_y"] < CHART_TOP
        chart["operating"].append({"at": x(t), "label": f"{t:.2f}", "label_y": CHART_TOP + (9 if crowded else -5)})
    if len(operating["thresholds"]) == 1 and operating["target"].get(key) is not None:
        value = operating["target"][key]
        chart["ring"] = {"x": x(operating["thresholds"][0]), "y": y(value),
                         "tooltip": f"operating point (threshold {operating['thresholds'][0]:.3f}): "
                                    f"{words['format'](value)}"}
    return chart


def _target_charts(target: dict, thresholds: list[float]) -> list[dict]:
    """The two curves of a target along the threshold: found rate, and false sites per 1,000 km²."""
    curve = target.get("curve") or []
    operating = {"target": target, "thresholds": thresholds}
    found = _chart(curve, "found_rate", 1.0, [0.0, 0.25, 0.5, 0.75, 1.0], operating, {
        "title": "truth sites found", "y_label": "found (% of truth sites)",
        "format": lambda v: f"{100 * v:.0f}%",
        "tooltip": lambda p: f"threshold {p['threshold']:.2f}: {p['found']} of {target['truth_sites']} found "
                             f"({100 * p['found_rate']:.0f}%), {p['sites']} site(s)"})
    rates = [p["false_sites_per_1000_km2"] for p in curve if p.get("false_sites_per_1000_km2") is not None]
    if target.get("false_sites_per_1000_km2") is not None:
        rates.append(target["false_sites_per_1000_km2"])
    top, ticks = _axis(max(rates, default=0.0))
    false = _chart(curve, "false_sites_per_1000_km2", top, ticks, operating, {
        "title": "false sites", "y_label": "false sites per 1,000 km\u00b2", "format": lambda v: f"{v:g}",
        "tooltip": lambda p: f"threshold {p['threshold']:.2f}: {p['false_sites']} false site(s) = "
                             f"{p['false_sites_per_1000_km2']:.2f} per 1,000 km\u00b2"})
    return [found, false]


def site_scores_view(scores: dict) -> dict:
    """What the site-scores section shows, from the contents of ``site_scores.json``: the truth file, the area,
    and per target its table at the operating point and its two curves along the threshold."""
    thresholds = {label: float(t) for label, t in (scores.get("operating_point") or {}).get("thresholds", {}).items()}
    targets = []
    for name, target in (scores.get("targets") or {}).items():
        # "any" mine is decided by any label: each label's threshold is an operating point of it.
        marks = sorted(set(thresholds.values())) if name not in thresholds else [thresholds[name]]
        targets.append({"name": name, "rows": _score_rows(target), "charts": _target_charts(target, marks),
                        "points": len(target.get("curve") or [])})
    bootstrap = scores.get("bootstrap") or {}
    return {"truth": scores.get("truth", ""), "area_km2": float(scores.get("area_km2") or 0.0),
            "draws": bootstrap.get("draws", 0), "targets": targets, "notes": scores.get("notes") or []}


def add_site_scores(report: str | Path, scores: dict) -> bool:
    """Put the site scores (the contents of ``site_scores.json``) into an existing scan report, in place of the
    section between its markers (empty, or an earlier scoring's), written atomically. A report from before the
    markers existed is left as it is, with a warning; returns whether the report was written."""
    import logging

    report = Path(report)
    page = report.read_text(encoding="utf-8")
    start = page.find(SITE_SCORES_START)
    end = page.find(SITE_SCORES_END, start) if start >= 0 else -1
    if end < 0:
        logging.getLogger(__name__).warning(
            "%s: no place for the site scores in this report (written by an older scan): left as it was; "
            "rescan to see the scores there", report)
        return False
    section = render("site_scores_section.html", **site_scores_view(scores))
    write_text_atomic(report, page[: start + len(SITE_SCORES_START)] + "\n" + section + page[end:])
    return True
