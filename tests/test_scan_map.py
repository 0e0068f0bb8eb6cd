"""The scan report's interactive map (issue 33, item 6): the page asks for nothing outside itself, shows what it
is given escaped, draws every site in headless Chromium without a console message, and its image layers lie
where the scene is: the preview's pixels over the chips they came from, the probability layer's colour over
each tile. A stand-in model scores the tiles (tests/scan_standin.py): nothing trains."""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from scan_standin import MINE, SHARED, WebServer, median_threshold, real_scene, run_chromium, scan, synthetic_scene

ODD_NAME = 'odd<i>&"name'  # a scene name that is HTML: the page must show it, never run it


def _map_data(page: str) -> dict:
    found = re.search(r"var data = (\{.*?\});\n", page)
    assert found, "the page's map data is missing"
    return json.loads(found.group(1))


def _decode(uri: str) -> np.ndarray:
    """RGBA pixels of a data URI image."""
    import cv2

    raw = base64.b64decode(uri.split(",", 1)[1])
    bgra = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
    return bgra[..., [2, 1, 0, 3]]


def _mercator(lon: float, lat: float) -> tuple[float, float]:
    return math.radians(lon), math.log(math.tan(math.pi / 4 + math.radians(lat) / 2))


def _pixel(image: np.ndarray, bounds: list, lon: float, lat: float) -> tuple[int, int]:
    """(row, col) of lon/lat in an image layer placed at ``bounds`` as Leaflet places it: linear in Web
    Mercator between its corners."""
    west, south, east, north = bounds
    x0, y0 = _mercator(west, north)
    x1, y1 = _mercator(east, south)
    x, y = _mercator(lon, lat)
    h, w = image.shape[:2]
    return int((y0 - y) / (y0 - y1) * h), int((x - x0) / (x1 - x0) * w)


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    """The synthetic scene under a name that is HTML, scanned with --since an earlier, stricter scan: sites, and
    new sites among them. Returns (the scene's mosaic, the scan's folder); tests only read them."""
    base = tmp_path_factory.mktemp("scanmap")
    made = synthetic_scene(base / "scene")
    odd = made.tif.with_name(f"{ODD_NAME}.tif")
    shutil.copy(made.tif, odd)
    high = median_threshold(base, odd)
    scan(base, [odd], base / "before", f"scan.min_probability={{{MINE}: {high + 0.05}}}")
    scan(base, [odd], base / "out", f"scan.min_probability={{{MINE}: {high}}}", since=base / "before")
    return made, base / "out"


def test_the_page_refers_to_nothing_outside_itself_and_shows_names_escaped(scanned):
    _, out = scanned
    page = (out / "scan_report.html").read_text()
    # The markup (script bodies aside) loads data URIs only and links within the page only.
    markup = re.sub(r"(<script[^>]*>).*?(</script>)", r"\1\2", page, flags=re.S)
    assert "<link" not in markup and "http://" not in markup and "https://" not in markup
    sources = re.findall(r"""\bsrc\s*=\s*["']?([^"'\s>]*)""", markup)
    assert sources and all(s.startswith("data:image/") for s in sources), sources
    links = re.findall(r"""\bhref\s*=\s*["']([^"']*)""", markup)
    assert all(h.startswith("#") for h in links), links
    styles = re.findall(r"url\(\s*['\"]?([^)'\"]*)", markup)  # "#default#VML": an old IE property, not a file
    assert all(u.startswith(("data:", "#")) for u in styles), styles
    assert "<script src" not in markup and "<script " not in markup and "sourceMappingURL" not in page
    # The scripts name no address but those in Leaflet's own code (its SVG namespace, its home page as the
    # default attribution, which the page replaces); what a browser asks for is checked in Chromium below.
    from amazonmine.scanning.report_page import leaflet_assets

    vendored = set(re.findall(r"https?://[^\s\"'<>)]+", str(leaflet_assets()[0])))
    assert set(re.findall(r"https?://[^\s\"'<>)]+", page)) <= vendored
    # The odd name is text everywhere: escaped in the HTML, \u-escaped in the script's data.
    assert ODD_NAME not in page and "odd&lt;i&gt;&amp;&#34;name" in page
    data = _map_data(page)
    assert data["scenes"][0]["name"] == ODD_NAME and "odd\\u003ci\\u003e\\u0026" in page
    sites = json.loads((out / "sites.geojson").read_text())["features"]
    assert len(data["sites"]["features"]) == len(sites) > 0
    assert data["new_sites"]["features"] and len(data["new_sites"]["features"]) == len(
        json.loads((out / "new_sites.geojson").read_text())["features"])


def test_the_map_draws_every_site_in_headless_chromium_offline(scanned, tmp_path):
    _, out = scanned
    sites = json.loads((out / "sites.geojson").read_text())["features"]
    fresh = json.loads((out / "new_sites.geojson").read_text())["features"]
    assert sites and fresh
    server = WebServer(out, tmp_path / "server.log")
    try:
        dom, console = run_chromium(server.url("scan_report.html"), "--dump-dom")
        asked = server.requests()
    finally:
        server.close()
    assert console == [], console
    assert [r for r in asked if not r.endswith("/favicon.ico")] == ["GET /scan_report.html"], asked
    assert re.search(r'<p id="map-problem" hidden="">\s*</p>', dom), "the page reported a problem"
    outlines = re.findall(r'<path class="site-outline leaflet-interactive"[^>]*\bd="([^"]*)"', dom)
    assert len(outlines) == len(sites) and all(len(d) > 10 for d in outlines)  # drawn in view, not empty paths
    assert f'data-sites-drawn="{len(sites)}"' in dom
    assert len(re.findall(r'class="new-site-outline leaflet-interactive"', dom)) == len(fresh)
    assert len(re.findall(r'class="new-site-marker leaflet-interactive"', dom)) == len(fresh)
    assert len(re.findall(r'<img[^>]*class="[^"]*\bpreview\b', dom)) == 1
    assert "leaflet-control-scale-line" in dom and 'class="coordinates' in dom
    # Layer names are HTML in Leaflet's control: the odd name arrives there as text.
    assert "scene odd&lt;i&gt;&amp;\"name" in dom and "<i>&amp;" not in dom
    # What a person sees: the site outlines' colour on the screenshot.
    import cv2

    shot = tmp_path / "map.png"
    run_chromium((out / "scan_report.html").as_uri(), f"--screenshot={shot}", "--window-size=1280,900")
    pixels = cv2.imread(str(shot))[..., ::-1].astype(int)
    outline = np.all(np.abs(pixels - [0xFF, 0x2D, 0x55]) <= 12, axis=-1)  # artisinal_mine's colour
    assert outline.sum() > 200, outline.sum()


def test_a_broken_page_is_caught_by_the_same_checks(scanned, tmp_path):
    """The Chromium checks can fail: an uncaught error is a console line and is said on the page; a file the
    page asks for that is not there is said on the page."""
    _, out = scanned
    page = (out / "scan_report.html").read_text()
    broken = tmp_path / "broken.html"
    broken.write_text(page.replace("</body>", '<img src="missing.png"><script>null.oops();</script></body>'))
    dom, console = run_chromium(broken.as_uri(), "--dump-dom")
    assert any("oops" in line for line in console), console
    problem = re.search(r'<p id="map-problem"([^>]*)>([^<]*)</p>', dom)
    assert problem and "hidden" not in problem.group(1)
    assert "missing.png" in problem.group(2) and "oops" in problem.group(2)


def test_the_probability_layer_has_each_tiles_colour_at_its_centre(scanned):
    from amazonmine.scanning.gisfiles import probability_rgba

    made, out = scanned
    data = _map_data((out / "scan_report.html").read_text())
    layer = next(p for p in data["scenes"][0]["probabilities"] if p["label"] == MINE)
    image = _decode(layer["image"])
    threshold = json.loads((out / "scan.json").read_text())["operating_point"]["thresholds"][MINE]
    tiles = json.loads((out / "tiles.geojson").read_text())["features"]
    assert len(tiles) == 18
    for tile in tiles:
        ring = np.array(tile["geometry"]["coordinates"][0])
        row, col = _pixel(image, layer["bounds"], ring[:4, 0].mean(), ring[:4, 1].mean())
        expected = probability_rgba(np.array([[tile["properties"][f"prob_{MINE}"]]], np.float32), threshold)[0, 0]
        assert np.abs(image[row, col].astype(int) - expected).max() <= 1, (tile["properties"], image[row, col])
    # Where no tile was scored (the two nodata cells) the layer is clear.
    chips = json.loads(Path(str(made.tif.with_suffix("")) + "_chips.geojson").read_text())["features"]
    empty = [c for c in chips if not c["properties"]["image_name"]]
    assert len(empty) == 2
    for cell in empty:
        ring = np.array(cell["geometry"]["coordinates"][0])
        row, col = _pixel(image, layer["bounds"], ring[:4, 0].mean(), ring[:4, 1].mean())
        assert image[row, col, 3] == 0


def test_the_preview_lies_over_the_real_chips_it_shows(tmp_path):
    import cv2

    made = real_scene(tmp_path / "scene", cols=4, rows=3, empty=2)
    scan(tmp_path, [made.tif], tmp_path / "out")
    scene = _map_data((tmp_path / "out" / "scan_report.html").read_text())["scenes"][0]
    preview = _decode(scene["preview"])
    chips = json.loads(made.chips_geojson.read_text())["features"]
    checked = 0
    for cell in chips:
        ring = np.array(cell["geometry"]["coordinates"][0])
        lon, lat = ring[:4, 0], ring[:4, 1]
        # The middle half of the cell, well inside it: its border pixels mix with the neighbours'.
        r0, c0 = _pixel(preview, scene["bounds"], lon.min() + 0.25 * np.ptp(lon), lat.max() - 0.25 * np.ptp(lat))
        r1, c1 = _pixel(preview, scene["bounds"], lon.max() - 0.25 * np.ptp(lon), lat.min() + 0.25 * np.ptp(lat))
        patch = preview[r0:r1, c0:c1]
        assert patch.size
        name = cell["properties"]["image_name"]
        if not name:
            assert (patch[..., 3] == 0).all()  # nodata is see-through
            continue
        assert (patch[..., 3] == 255).all()
        chip = cv2.imread(str(SHARED / "planet_real_256" / "train-jpg" / f"{name}.jpg"))[..., ::-1]
        middle = chip[64:192, 64:192].reshape(-1, 3).mean(axis=0)
        assert np.abs(patch[..., :3].reshape(-1, 3).mean(axis=0) - middle).max() < 10, name
        checked += 1
    assert checked == 10


def test_a_grid_wider_than_the_preview_keeps_its_hot_cells():
    """A probability grid of thousands of cells is drawn as the maximum of each block of cells: the image stays
    about the preview's size and a single hot cell still shows, at its place."""
    from types import SimpleNamespace

    from pyproj import CRS

    from amazonmine.scanning.gisfiles import probability_rgba
    from amazonmine.scanning.report_page import PREVIEW_PX, _probability_layers, block_maximum
    from amazonmine.scanning.tiling import Grid, Scene

    cells = np.array([[0.2, np.nan, 0.1], [0.9, np.nan, np.nan], [np.nan, np.nan, np.nan]], np.float32)
    np.testing.assert_array_equal(block_maximum(cells, 2), np.array([[0.9, 0.1], [np.nan, np.nan]], np.float32))
    # 24 m pixels, 768 m tiles every 384 m: 1100 x 1100 cells, a 422 km square (a large mosaic), in UTM 21S.
    scene = Scene("wide.tif", "wide", CRS.from_epsg(32721).to_wkt(), (24.0, 0, 400000, 0, -24.0, 9500000),
                  16 * 1100 + 16, 16 * 1100 + 16, "uint8", (24.0, 24.0), [1, 2, 3], "", True)
    grid = Grid.for_scene(scene, 768.0, 0.5)
    assert (grid.rows, grid.cols) == (1100, 1100)
    rows, cols = np.array([5, 1000], np.int32), np.array([10, 1050], np.int32)
    probs = np.zeros((2, 17), np.float32)
    probs[:, 0] = [0.3, 0.95]  # label 0, agriculture: the operating point below says which label is drawn
    job = SimpleNamespace(grid=grid, scene=scene, assembled=lambda: (rows, cols, probs))
    point = SimpleNamespace(thresholds={"agriculture": 0.5})
    (layer,) = _probability_layers(job, point)
    image = _decode(layer["image"])
    assert image.shape[1] <= 1.1 * PREVIEW_PX
    hot = probability_rgba(np.array([[0.95]], np.float32), 0.5)[0, 0]
    lon, lat = _lonlat(scene, grid, 1000, 1050)
    row, col = _pixel(image, layer["bounds"], lon, lat)
    around = image[row - 1:row + 2, col - 1:col + 2].reshape(-1, 4).astype(int)  # a pixel is 2 cells across
    assert (np.abs(around - hot).max(axis=1) <= 1).any(), around
    assert 2 <= (image[..., 3] > 0).sum() < 0.001 * image[..., 3].size  # two scored cells, the rest clear


def _lonlat(scene, grid, r: int, c: int) -> tuple[float, float]:
    """The centre of tile (r, c) in lon/lat."""
    from pyproj import CRS, Transformer

    x0, y0, x1, y1 = grid.tile_bounds(scene, r, c)
    to_lonlat = Transformer.from_crs(CRS.from_wkt(scene.crs_wkt), CRS.from_epsg(4326), always_xy=True)
    return to_lonlat.transform((x0 + x1) / 2, (y0 + y1) / 2)
