"""The scan's HTML report: one self-contained page that opens offline (images are embedded data URIs).

For each scene a preview (a decimated read, never the whole scene) with the sites drawn over it as SVG
polygons (hover for the site), then one table of every site sorted by confidence with a thumbnail of the real
pixels it covers, then the operating point (thresholds and where they came from, the isolated-site threshold,
the minimum area), the chip look, and what was skipped: nodata and blank tiles, unreadable blocks.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from amazonmine.io import write_text_atomic

PREVIEW_PX = 1024
# Sites are a tile or a few across (256 px and up at 3 m): 128 px is at least a 2x reduction, which GDAL serves
# from the scene's first overview when it has one, instead of decoding every full-resolution pixel.
THUMB_PX = 128
MAX_THUMBS = 200  # sites beyond this are listed without a thumbnail, so the page stays a few MB at most
COLOURS = {"artisinal_mine": "#ff2d55", "conventional_mine": "#ffcc00"}
OTHER_COLOUR = "#00e5ff"


def _data_uri(rgb: np.ndarray, quality: int = 85) -> str:
    import cv2

    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _read_rgb(src, scene, window=None, out_hw=None) -> np.ndarray:
    """8-bit R,G,B of a window (or the whole scene) at ``out_hw``, nodata dark grey; 16-bit scenes stretched with
    the scene's stretch (or their own 2-98 percentiles when the model took the bands as they are)."""
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
    rgb[~valid_pixels(data, masks, scene.declared_mask)] = 40
    return rgb


def _scene_svg(job, sites_by_label) -> str:
    import rasterio
    from pyproj import CRS, Transformer
    from rasterio.errors import RasterioError

    from amazonmine.tiling import overview_shape

    scene = job.scene
    h, w = overview_shape(scene.width, scene.height, PREVIEW_PX)
    try:
        with rasterio.open(scene.path) as src:
            preview = _read_rgb(src, scene, out_hw=(h, w))
    except (RasterioError, OSError) as exc:  # the blocks that could be read are still worth a report
        return f"<p>(no preview: {html.escape(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)})</p>"
    to_scene = Transformer.from_crs(CRS.from_epsg(4326), CRS.from_wkt(scene.crs_wkt), always_xy=True)
    inverse = ~scene.affine
    sx, sy = w / scene.width, h / scene.height
    shapes = []
    for label, sites in sites_by_label.items():
        colour = COLOURS.get(label, OTHER_COLOUR)
        for site in sites:
            if scene.name not in site.scenes:
                continue
            for poly in getattr(site.geometry, "geoms", [site.geometry]):
                lon, lat = np.asarray(poly.exterior.coords).T
                x, y = to_scene.transform(lon, lat)
                cols, rows = inverse @ (np.asarray(x), np.asarray(y))
                points = " ".join(f"{c * sx:.1f},{r * sy:.1f}" for c, r in zip(cols, rows))
                tip = html.escape(f"{site.site_id}: p max {site.max_probability:.3f}, {site.area_ha:.1f} ha")
                shapes.append(f'<polygon points="{points}" fill="none" stroke="{colour}" stroke-width="2">'
                              f"<title>{tip}</title></polygon>")
    return (f'<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" style="max-width:100%;height:auto">'
            f'<image href="{_data_uri(preview)}" width="{w}" height="{h}"/>{"".join(shapes)}</svg>')


def _thumbnail(job, site) -> str:
    import rasterio
    from pyproj import CRS, Transformer
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

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
        with rasterio.open(scene.path) as src:
            rgb = _read_rgb(src, scene, window=Window(c0, r0, c1 - c0, r1 - r0), out_hw=out_hw)
    except (RasterioError, OSError):
        return "(unreadable)"
    return f'<img src="{_data_uri(rgb)}" alt="{html.escape(site.site_id)}">'


def write_report(path: Path, jobs, sites_by_label: dict, point, look, failed: list, counts: list,
                 new_sites: int | None) -> None:
    esc = html.escape
    job_of = {j.scene.name: j for j in jobs}
    everything = sorted((s for sites in sites_by_label.values() for s in sites),
                        key=lambda s: (-s.max_probability, s.site_id))
    rows = []
    for k, site in enumerate(everything):
        thumb = _thumbnail(job_of[site.scenes[0]], site) if k < MAX_THUMBS else ""
        c = site.geometry.centroid
        rows.append(f"<tr><td>{thumb}</td><td>{esc(site.site_id)}</td><td>{esc(site.label)}</td>"
                    f"<td>{site.max_probability:.3f}</td><td>{site.mean_probability:.3f}</td><td>{site.tiles}</td>"
                    f"<td>{site.area_ha:.1f}</td><td>{c.y:.5f}, {c.x:.5f}</td>"
                    f"<td>{esc(site.scenes[0])}{' &rarr; ' + esc(site.scenes[-1]) if len(site.scenes) > 1 else ''}"
                    f"</td></tr>")
    op_rows = "".join(
        f"<tr><td>{esc(label)}</td><td>{point.thresholds[label]:.3f}</td><td>{esc(point.sources[label])}</td>"
        f"<td>{point.isolated[label]:.3f}</td><td>{len(sites_by_label.get(label, []))}</td></tr>"
        for label in point.thresholds)
    count_rows = "".join(
        f"<tr><td>{esc(c['scene'])}</td><td>{c['tiles_in_grid']}</td><td>{c['scored']}</td><td>{c['nodata']}</td>"
        f"<td>{c['blank']}</td><td>{c['failed_blocks']}</td></tr>" for c in counts)
    grids = "".join(
        f"<li>{esc(j.scene.name)}: {j.scene.width}x{j.scene.height} px, {j.scene.res_m[0]:.2f} x "
        f"{j.scene.res_m[1]:.2f} m per pixel, tiles {j.grid.tile_w}x{j.grid.tile_h} px, stride "
        f"{j.grid.stride_x}x{j.grid.stride_y} px; bands {esc(j.scene.band_note)}"
        + (f"; 16-bit stretch per band (lo, hi) {esc(str([(round(a), round(b)) for a, b in j.scene.stretch]))}"
           if j.scene.stretch else "") + "</li>" for j in jobs)
    failed_html = ("<h2>Skipped blocks</h2><ul>" + "".join(f"<li>{esc(m)}</li>" for m in failed) + "</ul>"
                   if failed else "")
    previews = "".join(f"<h3>{esc(j.scene.name)}</h3>{_scene_svg(j, sites_by_label)}" for j in jobs)
    legend = " ".join(f'<span style="color:{COLOURS.get(label, OTHER_COLOUR)}">&#9632; {esc(label)}</span>'
                      for label in point.thresholds)
    new_line = (f"<p>New since the previous scan: <b>{new_sites}</b> site(s) or growth (new_sites.geojson).</p>"
                if new_sites is not None else "")
    more = (f"<p>Thumbnails for the first {MAX_THUMBS} sites only.</p>" if len(everything) > MAX_THUMBS else "")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>amazonmine scan</title>
<style>body{{font-family:sans-serif;margin:1.5em;max-width:1200px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:middle}} th{{background:#eee}}
img{{display:block}}</style></head><body>
<h1>Scan: mine sites</h1>
<p>{len(everything)} site(s) in {len(jobs)} scene(s). Sites are the tiles decided positive for a label, dissolved
where they touch or overlap; a single-tile site must clear the isolated threshold. Areas in hectares, measured in
the UTM zone of each site.</p>{new_line}
<h2>Scenes</h2><p>{legend}</p>{previews}
<h2>Sites, most confident first</h2>{more}
<table><tr><th>pixels</th><th>site</th><th>label</th><th>max p</th><th>mean p</th><th>tiles</th><th>ha</th>
<th>lat, lon</th><th>scenes</th></tr>{''.join(rows) or '<tr><td colspan="9">no site</td></tr>'}</table>
<h2>Operating point</h2>
<table><tr><th>label</th><th>threshold</th><th>source</th><th>isolated-site threshold</th><th>sites</th></tr>
{op_rows}</table>
<p>Minimum site area: {point.min_site_ha:g} ha. Chip look: {esc(look.kind)} {look.size} px, {esc(look.encoding)}
{f'quality {look.quality}' if look.encoding != 'none' else ''} ({esc(look.source)}).</p>
<ul>{grids}</ul>
<h2>Tiles scored and skipped</h2>
<table><tr><th>scene</th><th>tiles in grid</th><th>scored</th><th>nodata</th><th>blank</th><th>unreadable blocks</th></tr>
{count_rows}</table>{failed_html}
</body></html>
"""
    write_text_atomic(path, page)
