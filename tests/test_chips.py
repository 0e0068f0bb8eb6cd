"""`amazonmine chips`: scenes + label polygons -> the Kaggle layout, cut exactly as scan cuts its tiles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from amazonmine.core.data import WEATHER_LABELS, read_image, read_labels
from amazonmine.scanning.tiling import Grid, chip_look, open_scene, read_block
from amazonmine.stages.chips import ChipsError, _keep_negative, run_chips

UTM = "EPSG:32721"
X0, Y0, RES = 600_000.0, 9_310_000.0, 3.0
# 96 m tiles at 3 m are 32 px: every chip rule of the 768 m / 256 px chips holds, at a sixty-fourth of the work.
SMALL = ["data.chip_ground_m=96", "data.chip_size=32"]
SIDE = 96.0
MINE = "artisinal_mine"


def write_scene(path: Path, width: int = 256, height: int = 192, nodata_cols: int = 0, seed: int = 0) -> Path:
    """An 8-bit R,G,B scene in UTM 21S at 3 m; the last ``nodata_cols`` pixel columns are masked out."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    # Smooth colour fields plus noise: varied pixels, like land, so the JPEG has something to keep.
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([80 + 60 * np.sin(xx / 23.0), 90 + 50 * np.cos(yy / 17.0), 70 + 40 * np.sin((xx + yy) / 31.0)])
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 1, 254).astype(np.uint8)
    profile = dict(driver="GTiff", width=width, height=height, count=3, dtype="uint8", crs=UTM,
                   transform=from_origin(X0, Y0, RES, RES), photometric="RGB", tiled=True, blockxsize=64,
                   blockysize=64)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels)
        if nodata_cols:
            mask = np.full((height, width), 255, np.uint8)
            mask[:, width - nodata_cols:] = 0
            dst.write_mask(mask)
    return path


def box(x0: float, y0: float, x1: float, y1: float) -> list:
    """A closed ring, counter-clockwise, in scene metres."""
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def tile_box(r: int, c: int, stride: float = SIDE) -> tuple[float, float, float, float]:
    return X0 + c * stride, Y0 - r * stride - SIDE, X0 + c * stride + SIDE, Y0 - r * stride


def write_labels(path: Path, features: list[tuple[str | None, list]], crs: str | None = UTM,
                 properties: dict | None = None) -> Path:
    """GeoJSON of polygons (label, ring); a 'crs' member unless crs is None (plain RFC 7946 lon/lat)."""
    out = {"type": "FeatureCollection", "features": []}
    if crs:
        out["crs"] = {"type": "name", "properties": {"name": crs}}
    for label, ring in features:
        props = dict(properties or {})
        if label is not None:
            props["label"] = label
        geometry = ring if isinstance(ring, dict) else {"type": "Polygon", "coordinates": [ring]}
        out["features"].append({"type": "Feature", "properties": props, "geometry": geometry})
    path.write_text(json.dumps(out))
    return path


def config(tmp_path: Path, *extra: str):
    from amazonmine.core.config import load_config

    return load_config(None, SMALL + [f"run.dir={tmp_path / 'run'}", *extra])


def table(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "chips.csv", dtype=str, keep_default_na=False)


def tagged(out: Path, label: str) -> set[tuple[int, int]]:
    t = table(out)
    return {(int(r), int(c)) for r, c, tags in zip(t["row"], t["col"], t["tags"]) if label in tags.split()}


# --- the labelling rule ----------------------------------------------------------------------------------------

def test_a_tile_takes_a_label_at_the_rule_edge_and_not_just_below_it(tmp_path):
    scene = write_scene(tmp_path / "scene.tif")
    # A strip across the edge between tiles (1, 1) and (1, 2): it covers exactly a quarter of each tile, and
    # each tile holds exactly half of it.
    x_edge = X0 + 2 * SIDE
    labels = write_labels(tmp_path / "labels.geojson",
                          [(MINE, box(x_edge - 24, Y0 - 2 * SIDE, x_edge + 24, Y0 - SIDE))])
    cfg = config(tmp_path, "scan.stride=1.0")
    cases = [((0.25, 0.9), {(1, 1), (1, 2)}), ((0.26, 0.9), set()),  # the tile-share edge
             ((0.9, 0.5), {(1, 1), (1, 2)}), ((0.9, 0.51), set())]  # the polygon-share edge
    for k, ((tile_share, polygon_share), expected) in enumerate(cases):
        out = tmp_path / f"out{k}"
        run_chips(cfg, [scene], labels, out, min_tile_share=tile_share, min_polygon_share=polygon_share)
        assert tagged(out, MINE) == expected, (tile_share, polygon_share)
        rule = json.loads((out / "chips.json").read_text())["rule"]
        assert (rule["min_tile_share"], rule["min_polygon_share"]) == (tile_share, polygon_share)
        assert "at least" in rule["text"]


def test_reprojected_polygons_land_on_the_same_tiles(tmp_path):
    import pyogrio
    import shapely
    from pyproj import Transformer

    scene = write_scene(tmp_path / "scene.tif")
    # Irregular polygons whose corners sit away from every tile edge (stride 0.5: edges every 48 m).
    rings = [(MINE, [[X0 + 40, Y0 - 50], [X0 + 170, Y0 - 70], [X0 + 120, Y0 - 190], [X0 + 40, Y0 - 50]]),
             ("conventional_mine", [[X0 + 400, Y0 - 300], [X0 + 700, Y0 - 310], [X0 + 650, Y0 - 500],
                                    [X0 + 450, Y0 - 520], [X0 + 400, Y0 - 300]]),
             ("road", box(X0 + 10, Y0 - 400, X0 + 740, Y0 - 380))]
    in_utm = write_labels(tmp_path / "utm.geojson", rings)
    to_lonlat = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
    to_mercator = Transformer.from_crs(UTM, "EPSG:3857", always_xy=True)
    lonlat = [(label, [list(to_lonlat.transform(x, y)) for x, y in ring]) for label, ring in rings]
    in_lonlat = write_labels(tmp_path / "lonlat.geojson", lonlat, crs=None)
    gpkg = tmp_path / "mercator.gpkg"
    geoms = [shapely.Polygon([to_mercator.transform(x, y) for x, y in ring]) for _, ring in rings]
    pyogrio.raw.write(gpkg, shapely.to_wkb(np.array(geoms, dtype=object)), [np.array([lab for lab, _ in rings])],
                      ["label"], geometry_type="Polygon", crs="EPSG:3857", driver="GPKG")
    cfg = config(tmp_path)
    outs = []
    for name, path in (("utm", in_utm), ("lonlat", in_lonlat), ("gpkg", gpkg)):
        run_chips(cfg, [scene], path, tmp_path / name)
        outs.append(tmp_path / name)
    first = (outs[0] / "train_v2.csv").read_bytes()
    assert tagged(outs[0], MINE) and tagged(outs[0], "conventional_mine") and tagged(outs[0], "road")
    for out in outs[1:]:
        assert (out / "train_v2.csv").read_bytes() == first, out


# --- the pixels are scan's ---------------------------------------------------------------------------------

@pytest.fixture(params=["synthetic", "real"])
def pixel_case(request, tmp_path):
    """(scene, config, label file): a synthetic 32-px-tile scene, or 2 x 2 real Planet chips mosaicked at 3 m."""
    if request.param == "synthetic":
        scene = write_scene(tmp_path / "scene.tif", width=160, height=128)
        cfg = config(tmp_path)
        labels = write_labels(tmp_path / "labels.geojson", [(MINE, box(X0 + 60, Y0 - 140, X0 + 200, Y0 - 40))])
        return scene, cfg, labels
    real = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "planet_real_256"
    if not (real / "train_v2.csv").is_file():
        pytest.skip(f"real Planet 256-px chips not found at {real}")
    from amazonmine.core.config import load_config
    from amazonmine.scanning.mosaic import Placement, mosaic_scene

    names = sorted(p.name for p in (real / "train-jpg").glob("*.jpg"))[:4]
    made = mosaic_scene([real / "train-jpg" / n for n in names], [""] * 4, tmp_path / "real.tif", cols=2, rows=2,
                        place=Placement(origin=(X0, Y0)))
    cfg = load_config(None, [f"run.dir={tmp_path / 'run'}"])  # Kaggle's chips: 768 m, 256 px
    labels = write_labels(tmp_path / "labels.geojson", [(MINE, box(X0 + 500, Y0 - 1000, X0 + 1000, Y0 - 500))])
    return made.tif, cfg, labels


def test_a_chip_file_reads_back_as_exactly_the_array_scan_scores(pixel_case, tmp_path):
    scene_path, cfg, labels = pixel_case
    out = tmp_path / "chips"
    summary = run_chips(cfg, [scene_path], labels, out)
    made = table(out)
    assert summary.chips == len(made) > 0
    size = int(cfg.data.chip_size or 256)
    # What scan does with the same config: the look it would measure from these very chips, its grid, its blocks.
    sample = out / "train-jpg" / f"{made['image_name'][0]}.jpg"
    look = chip_look("jpg", size, sample)
    assert (look.encoding, look.quality) == ("cmyk", 75)  # Kaggle's look, written and read back from the file
    scene = open_scene(scene_path, look, float(cfg.data.chip_ground_m), 4.0)
    grid = Grid.for_scene(scene, float(cfg.data.chip_ground_m), float(cfg.scan.stride))
    scanned = {}
    for block in grid.blocks(int(cfg.scan.block_tiles)):
        tiles = read_block(scene, grid, block, look)
        scanned.update({(int(r), int(c)): chip for r, c, chip in zip(tiles.rows, tiles.cols, tiles.chips)})
    assert len(scanned) == len(made)  # every tile scan scores is a chip (no negatives dropped, nothing ignored)
    for name, r, c in zip(made["image_name"], made["row"], made["col"]):
        written = read_image(out / "train-jpg" / f"{name}.jpg", expected_size=size)
        np.testing.assert_array_equal(written, scanned[(int(r), int(c))])  # bit for bit: no second JPEG pass


# --- stopping and resuming ---------------------------------------------------------------------------------

def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_killed_run_resumes_to_the_same_output_and_never_mixes_settings(tmp_path, monkeypatch):
    import amazonmine.stages.chips as chips

    scene = write_scene(tmp_path / "scene.tif")
    labels = write_labels(tmp_path / "labels.geojson", [(MINE, box(X0 + 100, Y0 - 300, X0 + 300, Y0 - 100))])
    cfg = config(tmp_path, "scan.block_tiles=16")  # 4 x 4 tiles a block: 12 blocks at stride 0.5
    clean = tmp_path / "clean"
    run_chips(cfg, [scene], labels, clean)

    real = chips._block_record
    calls = {"n": 0}

    def dies_on_the_fourth_block(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # as Ctrl-C or a kill would stop it, between two chip files
        return real(*args, **kwargs)

    out = tmp_path / "data"
    monkeypatch.setattr(chips, "_block_record", dies_on_the_fourth_block)
    with pytest.raises(KeyboardInterrupt):
        run_chips(cfg, [scene], labels, out)
    assert not out.exists()  # nothing half-written where a reader would look
    assert (tmp_path / ".data.chips-partial").is_dir()
    monkeypatch.setattr(chips, "_block_record", real)
    resumed = run_chips(cfg, [scene], labels, out)
    assert resumed.resumed_blocks == 3
    assert _files(out) == _files(clean)
    assert not (tmp_path / ".data.chips-partial").exists()

    # Killed under other settings, re-run under the first ones: the partial work is thrown away, not mixed in.
    out2 = tmp_path / "data2"
    calls["n"] = 0
    monkeypatch.setattr(chips, "_block_record", dies_on_the_fourth_block)
    with pytest.raises(KeyboardInterrupt):
        run_chips(cfg, [scene], labels, out2, negative_share=0.3)
    monkeypatch.setattr(chips, "_block_record", real)
    again = run_chips(cfg, [scene], labels, out2)
    assert again.resumed_blocks == 0
    assert _files(out2) == _files(clean)
    assert run_chips(cfg, [scene], labels, out2).already  # the same question twice: nothing redone
    with pytest.raises(ChipsError, match="--overwrite"):
        run_chips(cfg, [scene], labels, out2, negative_share=0.3)
    run_chips(cfg, [scene], labels, out2, negative_share=0.3, overwrite=True)
    assert len(table(out2)) < len(table(clean))


# --- what is left out, and the tables ----------------------------------------------------------------------

def test_ignore_zones_nodata_negatives_and_weather_polygons(tmp_path):
    import shapely
    from shapely.geometry import shape

    scene = write_scene(tmp_path / "scene.tif", nodata_cols=40)  # the last 40 px columns are nodata
    mine = box(X0 + 100, Y0 - 250, X0 + 250, Y0 - 100)
    ignore = box(X0 + 500, Y0 - 200, X0 + 600, Y0 - 100)
    haze = box(X0 + 0, Y0 - 576, X0 + 300, Y0 - 400)
    labels = write_labels(tmp_path / "labels.geojson", [(MINE, mine), ("ignore", ignore), ("haze", haze)])
    cfg = config(tmp_path, "run.seed=7")
    out = tmp_path / "data"
    summary = run_chips(cfg, [scene], labels, out, negative_share=0.5)
    made = table(out)
    record = json.loads((out / "chips.json").read_text())
    stride = SIDE / 2
    grid_rows, grid_cols = int((192 * RES - SIDE) // stride) + 1, int((256 * RES - SIDE) // stride) + 1

    def footprint(r, c):
        return shapely.box(*tile_box(r, c, stride))

    ignore_zone, mine_zone, haze_zone = (shapely.Polygon(g) for g in (ignore, mine, haze))
    nodata_x = X0 + (256 - 40) * RES
    expected_ignored = {(r, c) for r in range(grid_rows) for c in range(grid_cols)
                        if footprint(r, c).intersection(ignore_zone).area > 0}
    nodata = {(r, c) for r in range(grid_rows) for c in range(grid_cols)
              if tile_box(r, c, stride)[2] > nodata_x} - expected_ignored
    made_at = {(int(r), int(c)) for r, c in zip(made["row"], made["col"])}
    assert not made_at & expected_ignored and not made_at & nodata
    assert record["skipped"]["ignored"] == len(expected_ignored)
    assert record["skipped"]["nodata"] > 0
    # Every positive kept; a negative kept exactly when its seeded hash says so, whatever the order of the work.
    rows = list(zip(made["image_name"], made["tags"]))
    positives = {n for n, tags in rows if MINE in tags.split()}
    assert positives and len(positives) == summary.positives
    candidates = {f"scene_{r:04d}_{c:04d}" for r in range(grid_rows) for c in range(grid_cols)
                  if (r, c) not in expected_ignored}
    mine_tiles = {f"scene_{r:04d}_{c:04d}" for r in range(grid_rows) for c in range(grid_cols)
                  if footprint(r, c).intersection(mine_zone).area / footprint(r, c).area >= 0.1}
    kept_negatives = {n for n, tags in rows if n not in positives}
    assert kept_negatives == {n for n in candidates - mine_tiles if _keep_negative(n, 7, 0.5)} - {
        f"scene_{r:04d}_{c:04d}" for r, c in nodata}
    assert 0.3 < record["counts"]["negatives"] / (record["counts"]["negatives"] +
                                                  record["skipped"]["negatives_dropped"]) < 0.7
    assert record["negatives"]["share_kept"] == 0.5 and record["negatives"]["seed"] == 7
    # One weather label a chip: the haze polygon's where it covers enough of the tile, else the default.
    frame = read_labels(out / "train_v2.csv")  # the toolkit's own reader accepts the file
    for name, tags in zip(frame["image_name"], frame["tags"]):
        weather = [t for t in tags.split() if t in WEATHER_LABELS]
        assert len(weather) == 1, (name, tags)
    hazy = tagged(out, "haze")
    assert hazy and all(footprint(r, c).intersection(haze_zone).area > 0 for r, c in hazy)
    assert record["rule"]["default_weather"] == "clear"
    # chips.geojson: lon/lat footprints matching chips.csv, with scene, date (from the name: none here) and block.
    features = json.loads((out / "chips.geojson").read_text())["features"]
    assert [f["properties"]["image_name"] for f in features] == made["image_name"].tolist()
    for f, west in zip(features, made["west"].astype(float)):
        lon0, lat0, lon1, lat1 = shape(f["geometry"]).bounds
        assert -57 < lon0 < lon1 < -55 and -7 < lat0 < lat1 < -6 and lon0 == pytest.approx(west)
        assert f["properties"]["scene"] == "scene" and f["properties"]["block"].startswith("utm21S_")
    # Blocks are 10 chip sides (960 m): this 768 m x 576 m scene spans at most 2 x 2 of them.
    assert 1 <= made["block"].nunique() <= 4


def test_the_date_comes_from_a_tag_or_the_scene_name(tmp_path):
    import rasterio

    from amazonmine.stages.chips import scene_date

    named = write_scene(tmp_path / "20230115_133210_ssc1_u0001.tif")
    assert scene_date(str(named)) == ("2023-01-15", "file name")
    quad = write_scene(tmp_path / "planet_medres_normalized_analytic_2023-06_mosaic.tif")
    assert scene_date(str(quad)) == ("2023-06", "file name")
    tagged_scene = write_scene(tmp_path / "plain.tif")
    with rasterio.open(tagged_scene, "r+") as dst:
        dst.update_tags(TIFFTAG_DATETIME="2022:08:03 10:11:12")
    assert scene_date(str(tagged_scene)) == ("2022-08-03", "tag TIFFTAG_DATETIME")
    assert scene_date(str(write_scene(tmp_path / "scene.tif"))) == ("", "unknown")


# --- bad input: one line naming the file and the feature ---------------------------------------------------

def test_bad_input_is_one_line_naming_the_file_and_feature(tmp_path, monkeypatch):
    import tifffile

    from amazonmine.cli import main

    scene = write_scene(tmp_path / "scene.tif")
    inside = box(X0 + 100, Y0 - 300, X0 + 300, Y0 - 100)
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.full((64, 64, 3), 90, np.uint8))
    gpkg = tmp_path / "labels.gpkg"
    gpkg.write_bytes(b"")
    cases = [
        (write_labels(tmp_path / "typo.geojson", [(MINE, inside), ("artisanal_mine", inside)]), scene,
         ["feature 1", "'artisanal_mine'", "did you mean 'artisinal_mine'"]),
        (write_labels(tmp_path / "nolabel.geojson", [(None, inside)], properties={"name": "pit"}), scene,
         ["no 'label' property", "name"]),
        (write_labels(tmp_path / "far.geojson", [(MINE, box(X0 + 90_000, Y0 - 300, X0 + 90_300, Y0 - 100))]), scene,
         ["none of its 1 labelled polygon(s) lies in any"]),
        (write_labels(tmp_path / "ok.geojson", [(MINE, inside)]), plain, ["not georeferenced"]),
        (write_labels(tmp_path / "point.geojson", [(MINE, inside), (MINE, {"type": "Point", "coordinates": [1, 2]})]),
         scene, ["feature 1 is a Point"]),
        (write_labels(tmp_path / "flat.geojson",
                      [(MINE, [[X0, Y0], [X0 + 10, Y0 - 10], [X0 + 20, Y0 - 20], [X0, Y0]])]),
         scene, ["feature 0 is an invalid polygon", "no area once repaired"]),
        (write_labels(tmp_path / "nocrs.geojson", [(MINE, inside)], crs=None), scene,
         ["feature 0 has coordinates outside longitude/latitude"]),
        (gpkg, scene, ["needs pyogrio"]),
    ]
    monkeypatch.setitem(__import__("sys").modules, "pyogrio", None)  # as on a machine without it
    runner = CliRunner()
    for labels, scene_path, words in cases:
        out = tmp_path / f"out_{labels.stem}_{scene_path.stem}"
        result = runner.invoke(main, ["chips", str(scene_path), "--labels", str(labels), "--out", str(out),
                                      *sum((["--set", s] for s in SMALL), [])])
        message = result.output.strip()
        assert result.exit_code == 1, (labels, message)
        assert message.startswith("error: ") and "\n" not in message, message
        assert str(labels if "georeferenced" not in words[0] else scene_path) in message, message
        for w in words:
            assert w in message, message
        assert not out.exists() and not (tmp_path / f".{out.name}.chips-partial").exists()


def test_an_invalid_polygon_is_repaired_and_named(tmp_path):
    scene = write_scene(tmp_path / "scene.tif")
    # A bow tie: the ring crosses itself; repaired into two triangles.
    bowtie = [[X0 + 100, Y0 - 100], [X0 + 300, Y0 - 300], [X0 + 300, Y0 - 100], [X0 + 100, Y0 - 300],
              [X0 + 100, Y0 - 100]]
    labels = write_labels(tmp_path / "labels.geojson", [(MINE, bowtie)])
    summary = run_chips(config(tmp_path), [scene], labels, tmp_path / "data")
    record = json.loads((tmp_path / "data" / "chips.json").read_text())
    assert record["repaired_polygons"] and record["repaired_polygons"][0].startswith("feature 0 (Self-intersection")
    assert any("repaired 1 invalid polygon" in n for n in summary.notes)
    assert tagged(tmp_path / "data", MINE)


def test_the_cli_writes_the_layout_and_says_what_it_made(tmp_path):
    from amazonmine.cli import main

    scene = write_scene(tmp_path / "20240301_scene.tif")
    labels = write_labels(tmp_path / "labels.geojson", [(MINE, box(X0 + 100, Y0 - 300, X0 + 300, Y0 - 100)),
                                                        ("unlabelled", box(X0 + 500, Y0 - 300, X0 + 700, Y0 - 100))])
    out = tmp_path / "data"
    args = ["chips", str(scene), "--labels", str(labels), "--out", str(out), "--negative-share", "0.5",
            "--weather", "haze", *sum((["--set", s] for s in SMALL), [])]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "chips.json").read_text())
    assert f"wrote {record['counts']['chips']} chips of 1 scene(s)" in result.output
    assert f"{record['skipped']['ignored']} ignored" in result.output and record["skipped"]["ignored"] > 0
    assert sorted(p.name for p in out.iterdir()) == ["chips.csv", "chips.geojson", "chips.json", "train-jpg",
                                                     "train_v2.csv"]
    assert len(list((out / "train-jpg").glob("*.jpg"))) == record["counts"]["chips"]
    assert set(table(out)["date"]) == {"2024-03-01"}
    assert all("haze" in t.split() for t in table(out)["tags"])  # --weather: the chips' default weather label
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "already made" in again.output


def test_a_tif_run_gets_its_four_16_bit_bands_losslessly(tmp_path):
    import rasterio
    from rasterio.enums import ColorInterp
    from rasterio.transform import from_origin

    scene = tmp_path / "analytic.tif"  # B, G, R, NIR at 16 bit, as Planet's analytic products
    pixels = np.random.default_rng(2).integers(200, 9000, (4, 128, 160)).astype(np.uint16)
    with rasterio.open(scene, "w", driver="GTiff", width=160, height=128, count=4, dtype="uint16", crs=UTM,
                       transform=from_origin(X0, Y0, RES, RES)) as dst:
        dst.write(pixels)
        dst.colorinterp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.undefined]
    labels = write_labels(tmp_path / "labels.geojson", [(MINE, box(X0 + 60, Y0 - 140, X0 + 200, Y0 - 40))])
    cfg = config(tmp_path, "data.image_format=tif", "scan.stride=1.0")
    out = tmp_path / "data"
    run_chips(cfg, [scene], labels, out)
    made = table(out)
    assert not (out / "train-jpg").exists() and len(list((out / "train-tif-v2").glob("*.tif"))) == len(made) == 20
    for name, r, c in zip(made["image_name"], made["row"].astype(int), made["col"].astype(int)):
        chip = read_image(out / "train-tif-v2" / f"{name}.tif", expected_size=32)
        np.testing.assert_array_equal(chip, np.moveaxis(pixels[:, r * 32:(r + 1) * 32, c * 32:(c + 1) * 32], 0, -1))
