"""Scan outputs GIS users open (issue 33, item 5): sites and tiles as GeoJSON, GeoPackage or FlatGeobuf with
the same content, QGIS styles beside every layer, a STAC Item as a scene (local or by URL), and remote COGs
opened without directory listings. A stand-in model scores the tiles (tests/scan_standin.py): nothing trains."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from scan_standin import MINE, BrightnessModel, WebServer, median_threshold, scan, synthetic_scene

from amazonmine.core.errors import AmazonmineError


def _geojson(path: Path) -> list[dict]:
    return json.loads(path.read_text())["features"]


def _same_features(frame, features: list[dict]) -> None:
    """A GeoDataFrame read back from a GeoPackage/FlatGeobuf holds exactly the GeoJSON's features, in order."""
    import shapely
    from shapely.geometry import shape

    assert len(frame) == len(features) > 0
    assert frame.crs.to_epsg() == 4326
    for (_, row), f in zip(frame.iterrows(), features):
        for name, value in f["properties"].items():
            got = row[name]
            if isinstance(value, list):  # no list type there: JSON text
                got = json.loads(got)
            if isinstance(value, float):
                assert got == pytest.approx(value, abs=1e-12), name
            else:
                assert got == value, name
        assert shapely.equals(row.geometry, shape(f["geometry"]))  # a Polygon may come back as a MultiPolygon
    assert set(frame.columns) - {"geometry"} == {k for f in features for k in f["properties"]}


@pytest.mark.parametrize("fmt,driver", [("gpkg", "GPKG"), ("fgb", "FlatGeobuf")])
def test_gpkg_and_fgb_hold_the_same_sites_and_tiles_as_the_geojson(tmp_path, fmt, driver):
    pyogrio = pytest.importorskip("pyogrio")
    pytest.importorskip("geopandas")
    made = synthetic_scene(tmp_path / "scene")
    threshold = median_threshold(tmp_path, made.tif)
    setting = f"scan.min_probability={{{MINE}: {threshold}}}"
    scan(tmp_path, [made.tif], tmp_path / "geojson", setting)
    summary = scan(tmp_path, [made.tif], tmp_path / fmt, setting, out_format=fmt)
    out = tmp_path / fmt
    assert not (out / "sites.geojson").exists() and not (out / "tiles.geojson").exists()
    record = json.loads((out / "scan.json").read_text())["outputs"]
    assert (record["sites"], record["tiles"]) == (f"sites.{fmt}", f"tiles.{fmt}")
    sites = _geojson(tmp_path / "geojson" / "sites.geojson")
    assert sum(n["count"] for n in summary.sites.values()) == len(sites)
    assert pyogrio.read_info(out / f"sites.{fmt}")["driver"] == driver
    _same_features(pyogrio.read_dataframe(out / f"sites.{fmt}"), sites)
    tiles = _geojson(tmp_path / "geojson" / "tiles.geojson")
    frame = pyogrio.read_dataframe(out / f"tiles.{fmt}")
    if fmt == "fgb":  # its spatial index orders tiles by place: compare by (row, col)
        order = {(f["properties"]["row"], f["properties"]["col"]): k for k, f in enumerate(tiles)}
        frame = frame.iloc[np.argsort([order[(r, c)] for r, c in zip(frame["row"], frame["col"])])]
    _same_features(frame, tiles)


def test_the_cli_takes_format_by_name_or_extension_and_refuses_others_before_any_work(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import amazonmine.neural.predictor as predictor
    from amazonmine.cli import main

    made = synthetic_scene(tmp_path / "scene")
    monkeypatch.setattr(predictor.Predictor, "from_run", classmethod(lambda cls, cfg, **kw: BrightnessModel()))
    base = ["scan", str(made.tif), "--set", f"run.dir={tmp_path / 'run'}", "--set", f"data.root={tmp_path / 'nd'}",
            "--set", "data.chip_size=32", "--set", "scan.stride=1.0"]
    done = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "a"), "--format", ".GPKG"])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "a" / "sites.gpkg").is_file() and (tmp_path / "a" / "tiles.gpkg").is_file()
    refused = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "b"), "--format", "shp"])
    assert refused.exit_code != 0 and "--format shp" in refused.output and "geojson, gpkg, fgb" in refused.output
    assert not (tmp_path / "b").exists()


def test_qgis_styles_sit_beside_every_layer_and_say_what_the_map_says(tmp_path):
    from amazonmine.scanning.gisfiles import COLOURS, NEW_COLOURS, probability_ramp

    made = synthetic_scene(tmp_path / "scene")
    high = median_threshold(tmp_path, made.tif)
    scan(tmp_path, [made.tif], tmp_path / "before", f"scan.min_probability={{{MINE}: {high + 0.05}}}")
    setting = f"scan.min_probability={{{MINE}: {high}}}"
    scan(tmp_path, [made.tif], tmp_path / "after", setting, since=tmp_path / "before", out_format="fgb")
    out = tmp_path / "after"
    styles = sorted(p.name for p in out.glob("*.qml"))
    assert styles == sorted(["sites.qml", "tiles.qml", "new_sites.qml", f"{MINE}_probability.qml",
                             "conventional_mine_probability.qml"])
    for style in styles:  # each names a layer of the same base name: that is how QGIS finds it
        assert {p.suffix for p in out.glob(style[:-4] + ".*")} - {".qml"} in ({".fgb"}, {".tif"}), style
        root = ET.parse(out / style).getroot()
        assert root.tag == "qgis"
    sites = ET.parse(out / "sites.qml").getroot().find("renderer-v2")
    assert sites.get("type") == "categorizedSymbol" and sites.get("attr") == "label"
    values = [c.get("value") for c in sites.iter("category")]
    assert values == [MINE, "conventional_mine"]
    outlines = [o.get("value") for o in sites.iter("Option") if o.get("name") == "outline_color"]
    hex_to_rgb = lambda h: ",".join(str(int(h[i:i + 2], 16)) for i in (1, 3, 5))  # noqa: E731
    assert outlines == [f"{hex_to_rgb(COLOURS[v])},255" for v in values]
    new = ET.parse(out / "new_sites.qml").getroot().find("renderer-v2")
    assert new.get("attr") == "status" and [c.get("value") for c in new.iter("category")] == list(NEW_COLOURS)
    shader = ET.parse(out / f"{MINE}_probability.qml").getroot().find(".//colorrampshader")
    stops = [(float(i.get("value")), int(i.get("alpha"))) for i in shader.iter("item")]
    assert stops == [(pytest.approx(v, abs=1e-6), a) for v, (_, _, _, a) in probability_ramp(high)]
    assert stops[0] == (0.0, 0) and any(v == pytest.approx(high, abs=1e-6) for v, _ in stops)


def test_since_reads_an_earlier_scan_in_any_format(tmp_path):
    made = synthetic_scene(tmp_path / "scene")
    high = median_threshold(tmp_path, made.tif)
    before, after = f"scan.min_probability={{{MINE}: {high + 0.05}}}", f"scan.min_probability={{{MINE}: {high}}}"
    scan(tmp_path, [made.tif], tmp_path / "b_json", before)
    scan(tmp_path, [made.tif], tmp_path / "b_gpkg", before, out_format="gpkg")
    plain = scan(tmp_path, [made.tif], tmp_path / "a_json", after, since=tmp_path / "b_json")
    packed = scan(tmp_path, [made.tif], tmp_path / "a_gpkg", after, since=tmp_path / "b_gpkg", out_format="gpkg")
    assert plain.new_sites == packed.new_sites > 0
    import pyogrio.raw

    assert len(pyogrio.raw.read(tmp_path / "a_gpkg" / "new_sites.gpkg")[3][0]) == packed.new_sites


# --- STAC Items ------------------------------------------------------------------------------------------------

def _item(path: Path, assets: dict, item_id: str = "scene-item") -> Path:
    item = {"type": "Feature", "stac_version": "1.0.0", "id": item_id,
            "properties": {"datetime": "2024-01-01T00:00:00Z"},
            "geometry": {"type": "Polygon", "coordinates": [[[-56, -7], [-55, -7], [-55, -6], [-56, -6], [-56, -7]]]},
            "bbox": [-56, -7, -55, -6], "links": [],
            "assets": {k: {"href": v, "type": "image/tiff; application=geotiff; profile=cloud-optimized"}
                       for k, v in assets.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(item))
    return path


def test_a_stac_item_scans_to_the_same_sites_as_its_cog(tmp_path):
    made = synthetic_scene(tmp_path / "scene")
    threshold = median_threshold(tmp_path, made.tif)
    setting = f"scan.min_probability={{{MINE}: {threshold}}}"
    # The item lives in another folder and points at the scene by a relative href, with an analytic asset too.
    item = _item(tmp_path / "catalog" / "item.json", {"analytic": "../elsewhere.tif",
                                                      "visual": f"../scene/{made.tif.name}",
                                                      "thumbnail": "thumb.png"})
    direct = scan(tmp_path, [made.tif], tmp_path / "direct", setting)
    via_item = scan(tmp_path, [item], tmp_path / "item", setting)
    assert via_item.tiles == direct.tiles > 0 and via_item.sites == direct.sites
    assert _geojson(tmp_path / "item" / "sites.geojson") == _geojson(tmp_path / "direct" / "sites.geojson")
    scenes = json.loads((tmp_path / "item" / "scan.json").read_text())["scenes"]
    assert [s["path"] for s in scenes] == [str(made.tif.resolve())]


def test_a_stac_item_takes_visual_then_analytic_and_is_refused_in_one_line_otherwise(tmp_path):
    from amazonmine.stages.scan import list_scenes

    scene = tmp_path / "a.tif"
    scene.write_bytes(b"not read here")
    only_analytic = _item(tmp_path / "analytic.json", {"analytic": "a.tif", "udm": "udm.tif"})
    assert list_scenes([only_analytic]) == [str(scene.resolve())]
    cases = [
        (_item(tmp_path / "none.json", {"thumbnail": "t.png", "udm2": "u.tif"}, item_id="x-1"),
         ["'x-1'", "visual", "analytic", "thumbnail, udm2"]),
        (tmp_path / "missing.json", ["not found"]),
        (tmp_path / "catalog.json", ["not a STAC Item"]),
        (tmp_path / "broken.json", ["not JSON"]),
    ]
    (tmp_path / "catalog.json").write_text(json.dumps({"type": "Catalog", "stac_version": "1.0.0", "id": "c",
                                                       "description": "d", "links": []}))
    (tmp_path / "broken.json").write_text('{"type": "Feature", ')
    for path, words in cases:
        with pytest.raises(AmazonmineError) as refused:
            list_scenes([path])
        message = str(refused.value)
        assert "\n" not in message and str(path.name) in message, message
        for word in words:
            assert word in message, message


# --- remote COGs ------------------------------------------------------------------------------------------------

def test_remote_cogs_are_opened_without_directory_listings_or_sidecar_probes(tmp_path):
    import rasterio

    from amazonmine.scanning.tiling import ChipLook, open_raster, open_scene
    from amazonmine.stages.scan import list_scenes

    made = synthetic_scene(tmp_path / "site")
    for name in ("a.tif", "b.tif", "c.tif"):
        (tmp_path / "site" / name).write_bytes(made.tif.read_bytes())
    _item(tmp_path / "site" / "item.json", {"visual": "c.tif"})
    server = WebServer(tmp_path / "site", tmp_path / "server.log")
    try:
        with rasterio.open(server.url("b.tif")) as plain:  # GDAL's defaults: the folder and sidecars are asked for
            plain.read(1, window=((0, 8), (0, 8)))
        control = server.requests()
        assert "GET /" in control and any(".aux.xml" in r or ".msk" in r for r in control), control
        asked = len(control)
        with open_raster(server.url("a.tif")) as src:
            assert src.read(1, window=((0, 8), (0, 8))).shape == (8, 8)
        local = open_raster(str(made.tif))  # a local scene keeps GDAL's defaults
        local.close()
        # A STAC Item by URL: its relative href becomes a URL, opened the same way by the scan's own opener.
        (url,) = list_scenes([server.url("item.json")])
        assert url == server.url("c.tif")
        scene = open_scene(url, ChipLook("jpg", 32, "cmyk", 75), 768.0, 4.0)
        assert (scene.width, scene.height) == (160, 128)
        later = server.requests()[asked:]
        assert later and all(r.split()[1] in ("/a.tif", "/item.json", "/c.tif") for r in later), later
    finally:
        server.close()
