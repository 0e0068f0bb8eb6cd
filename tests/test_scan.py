"""Scan stage: tiles cut where the chips are, scored as predict scores them, dissolved into sites that sit
where the model fired, the same map from Dask workers and after a kill, and bad scenes refused in one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from amazonmine.core.data import LABELS, read_image
from amazonmine.scanning.tiling import ChipLook, Grid, SceneError, jpeg_signature, open_scene, read_block, tile_to_chip

REPO = Path(__file__).resolve().parents[1]
MINE = "artisinal_mine"
TINY = ["dehaze.enabled=false", "data.chip_size=32", "split.folds=2", "split.rare_target=4",
        "train.backbone=densenet_mini", "train.mini_blocks=[1]", "train.mini_growth=8", "train.image_size=32",
        "train.batch_size=16", "train.epochs=1", "train.steps_per_epoch=1", "train.verbose=0", "train.cache=true",
        "train.bn_recalibration_batches=0", "predict.tta=1", "predict.batch_size=64", "train.folds=[0]"]


# --- a tiny trained run and a tiny scene with known chips ---------------------------------------------------

@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """A run trained for one step on 32-px synthetic chips, its predictor, and a 5x4 scene of other chips."""
    import warnings

    from amazonmine.core.config import load_config
    from amazonmine.neural.predictor import Predictor
    from amazonmine.stages.split import run_split
    from amazonmine.stages.synth import make_synthetic_scene, paint_dataset
    from amazonmine.stages.train import run_train
    from amazonmine.stages.tune import run_tune

    base = tmp_path_factory.mktemp("scan")
    paint_dataset(base / "data", n_train=24, n_test=0, size=32, seed=3, progress=False)
    sets = TINY + [f"data.root={base / 'data'}", f"run.dir={base / 'run'}"]
    cfg = load_config(None, sets)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_split(cfg)
        list(run_train(cfg, folds=[0]))
    run_tune(cfg)
    scene = make_synthetic_scene(base / "scene", cols=5, rows=4, size=32, seed=5)
    return {"base": base, "sets": sets, "cfg": cfg, "predictor": Predictor.from_run(cfg), "scene": scene}


def _cfg(mini, *extra):
    from amazonmine.core.config import load_config

    return load_config(None, mini["sets"] + list(extra))


def _tiles(out: Path) -> dict:
    features = json.loads((out / "tiles.geojson").read_text())["features"]
    return {(f["properties"]["row"], f["properties"]["col"]): f for f in features}


def _scan(mini, out, *extra, **kwargs):
    from amazonmine.stages.scan import run_scan

    kwargs.setdefault("predictor", mini["predictor"])
    return run_scan(_cfg(mini, *extra), [mini["scene"].tif], out=out, progress=False, **kwargs)


# --- scan agrees with predict, sites sit where the model fired ----------------------------------------------

@pytest.mark.slow
def test_aligned_tiles_score_like_predict_on_the_same_pixels(mini, tmp_path):
    import rasterio
    from rasterio.windows import Window

    from amazonmine.scanning.mosaic import chip_table

    summary = _scan(mini, tmp_path / "s", "scan.stride=1.0")
    chips, _ = chip_table(mini["scene"].tif)
    assert summary.tiles == len(chips) == 18 and summary.nodata == 2  # the two empty cells are nodata
    tiles = _tiles(tmp_path / "s")
    look = json.loads((tmp_path / "s" / "scan.json").read_text())["chip_look"]
    assert look["encoding"] == "ycbcr" and look["quality"] == 95  # read from the run's own training chips
    p = mini["predictor"]
    with rasterio.open(mini["scene"].tif) as src:
        windows = [np.moveaxis(src.read(window=Window(r.col_off, r.row_off, 32, 32)), 0, -1)
                   for r in chips.itertuples()]
    same_pixels = p.predict(np.stack([tile_to_chip(w, ChipLook(**look)) for w in windows]))
    from_files = p.predict(np.stack([read_image(mini["scene"].tif.parent / "synth_scene_chips" / "train-jpg"
                                                / f"{n}.jpg") for n in chips["image_name"]]))
    scanned = np.array([[tiles[(r.cell_row, r.cell_col)]["properties"][f"prob_{lab}"] for lab in LABELS]
                        for r in chips.itertuples()])
    np.testing.assert_allclose(scanned, same_pixels, atol=2e-6)  # geojson keeps 6 decimals
    # Against the chip files themselves the only difference is one more JPEG pass at the run's quality.
    assert np.abs(scanned - from_files).max() < 0.05


@pytest.mark.slow
def test_a_chip_meets_a_site_exactly_when_its_tile_clears_the_threshold(mini, tmp_path):
    import shapely
    from shapely.geometry import shape

    first = _scan(mini, tmp_path / "a", "scan.stride=1.0")
    probs = np.array([f["properties"][f"prob_{MINE}"] for f in _tiles(tmp_path / "a").values()])
    threshold = float(np.median(probs))  # half the tiles positive, whatever the tiny model learnt
    assert first.tiles == len(probs)
    _scan(mini, tmp_path / "b", "scan.stride=1.0", f"scan.min_probability={{{MINE}: {threshold}}}")
    tiles = _tiles(tmp_path / "b")
    sites = [shape(f["geometry"]) for f in json.loads((tmp_path / "b" / "sites.geojson").read_text())["features"]
             if f["properties"]["label"] == MINE]
    chips = json.loads(Path(str(mini["scene"].tif.with_suffix("")) + "_chips.geojson").read_text())["features"]
    union = shapely.union_all(sites) if sites else shapely.Polygon()
    checked = 0
    for chip in chips:
        p = chip["properties"]
        if not p["image_name"]:
            continue
        tile = tiles[(p["cell_row"], p["cell_col"])]["properties"]
        assert tile[f"has_{MINE}"] == (tile[f"prob_{MINE}"] >= threshold)
        overlap = union.intersection(shape(chip["geometry"])).area / shape(chip["geometry"]).area
        assert (overlap > 0.5) == tile[f"has_{MINE}"], p  # touching a neighbour's site along an edge is not "in"
        checked += 1
    assert checked == 18 and any(t["properties"][f"has_{MINE}"] for t in tiles.values())


@pytest.mark.slow
def test_geojson_is_lon_lat_and_areas_are_in_hectares_on_the_ground(mini, tmp_path):
    from shapely.geometry import shape

    from amazonmine.scanning.sites import area_ha

    _scan(mini, tmp_path / "s", "scan.stride=0.5", f"scan.min_probability={{{MINE}: 0.0}}")
    collection = json.loads((tmp_path / "s" / "tiles.geojson").read_text())
    assert collection["type"] == "FeatureCollection" and "crs" not in collection
    for f in collection["features"]:
        ring = np.array(f["geometry"]["coordinates"][0])
        assert np.all((-56.2 < ring[:, 0]) & (ring[:, 0] < -55.5) & (-6.7 < ring[:, 1]) & (ring[:, 1] < -6.0))
        assert shape(f["geometry"]).exterior.is_ccw  # RFC 7946 right-hand rule
        assert area_ha(shape(f["geometry"])) == pytest.approx(768 ** 2 / 1e4, rel=0.01)  # a tile is ~59 ha
    sites = json.loads((tmp_path / "s" / "sites.geojson").read_text())["features"]
    # Threshold 0 makes every scored tile a mine: one site per connected group, the union of its tiles.
    assert sites and all(0 < s["properties"]["area_ha"] <= 20 * 59 for s in sites)
    total = sum(s["properties"]["area_ha"] for s in sites if s["properties"]["label"] == MINE)
    assert total == pytest.approx(18 * 768 ** 2 / 1e4, rel=0.02)  # 18 chips' ground, overlaps counted once
    import rasterio

    with rasterio.open(tmp_path / "s" / f"{MINE}_probability.tif") as ras:
        cells = ras.read(1)
        assert ras.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert ras.crs.to_epsg() == 32721 and ras.res == (384.0, 384.0)  # one cell per stride, centred on a tile
        assert np.isnan(cells).sum() > 0 and np.nanmax(cells) <= 1  # tiles over nodata cells are not scored


@pytest.mark.slow
def test_since_lists_only_new_sites_and_growth(mini, tmp_path):
    from shapely.geometry import shape

    low, high = _quantiles(mini, tmp_path)
    _scan(mini, tmp_path / "before", "scan.stride=1.0", f"scan.min_probability={{{MINE}: {high}}}")
    summary = _scan(mini, tmp_path / "after", "scan.stride=1.0", f"scan.min_probability={{{MINE}: {low}}}",
                    since=tmp_path / "before")
    before = [shape(f["geometry"]) for f in json.loads((tmp_path / "before" / "sites.geojson").read_text())["features"]
              if f["properties"]["label"] == MINE]
    new = json.loads((tmp_path / "after" / "new_sites.geojson").read_text())["features"]
    assert summary.new_sites == len(new) > 0
    for f in new:
        geom = shape(f["geometry"])
        if f["properties"]["label"] != MINE:
            continue
        assert all(geom.intersection(b).area < 1e-12 for b in before)  # nothing already mapped is "new"
        assert f["properties"]["status"] in ("new", "growth")


def _quantiles(mini, tmp_path):
    _scan(mini, tmp_path / "q", "scan.stride=1.0")
    probs = np.array([f["properties"][f"prob_{MINE}"] for f in _tiles(tmp_path / "q").values()])
    return float(np.quantile(probs, 0.3)), float(np.quantile(probs, 0.8))


# --- the same map from Dask workers and after a kill ---------------------------------------------------------

def _same_outputs(a: Path, b: Path) -> None:
    import rasterio

    for name in ("tiles.geojson", "sites.geojson", "scan_report.html"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    for label in ("artisinal_mine", "conventional_mine"):
        with rasterio.open(a / f"{label}_probability.tif") as x, rasterio.open(b / f"{label}_probability.tif") as y:
            np.testing.assert_array_equal(x.read(), y.read())


@pytest.mark.slow
@pytest.mark.xdist_group("cluster")  # a Dask cluster of processes: not beside the multi-worker training tests
def test_a_local_dask_cluster_gives_the_local_map_and_loads_the_models_once_per_worker(mini, tmp_path):
    from distributed import Client, LocalCluster

    import amazonmine.stages.scan as scan

    extra = ("scan.stride=0.5", "scan.block_tiles=4")
    _scan(mini, tmp_path / "local", *extra)
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        summary = _scan(mini, tmp_path / "dask", *extra, scheduler=cluster.scheduler_address)
        loads = client.run(lambda: scan.LOADS["count"])
    assert summary.tiles > 0 and not summary.failed_blocks
    blocks = len(list((tmp_path / "dask" / "blocks").glob("*.npz")))
    assert blocks >= 6 and sorted(loads.values()) == [1, 1]  # both workers worked, each loaded the models once
    _same_outputs(tmp_path / "local", tmp_path / "dask")
    # scan.workers starts (and closes) a local cluster of its own: the same map again.
    summary = _scan(mini, tmp_path / "workers", *extra, "scan.workers=2")
    assert summary.tiles > 0 and not summary.failed_blocks
    _same_outputs(tmp_path / "local", tmp_path / "workers")


@pytest.mark.slow
def test_a_killed_scan_finishes_the_rest_and_writes_the_same_files(mini, tmp_path):
    extra = ["scan.stride=1.0", "scan.block_tiles=1"]
    _scan(mini, tmp_path / "whole", *extra)
    out, stopped = tmp_path / "killed", tmp_path / "stopped"
    # The child scores like the real stage, and stops for good in its second scoring call, once it said so:
    # the block of the first call is kept by then (a block is written before the next is scored), the others
    # are not. The kill then lands half-way however slow the machine, with no clock to race.
    child = textwrap.dedent(f"""
        import pathlib, threading
        from amazonmine.core.config import load_config
        from amazonmine.neural.predictor import Predictor
        from amazonmine.stages.scan import run_scan
        cfg = load_config(None, {mini['sets'] + extra!r})
        p = Predictor.from_run(cfg)
        real, calls = p.predict, []
        def predict(chips, dehazed=False):
            calls.append(len(chips))
            if len(calls) == 2:
                pathlib.Path({str(stopped)!r}).touch()
                threading.Event().wait()
            return real(chips, dehazed)
        p.predict = predict
        run_scan(cfg, [{str(mini['scene'].tif)!r}], out={str(out)!r}, predictor=p, progress=False)
    """)
    log = tmp_path / "child.txt"
    with open(log, "w") as sink:
        proc = subprocess.Popen([sys.executable, "-c", child], cwd=REPO, stdout=sink, stderr=subprocess.STDOUT)
    # Waits for the child to say it stopped; the bound only turns a hung child into a failure, never a pass.
    deadline = time.monotonic() + 900
    while not stopped.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert stopped.exists(), f"the child never reached its second block:\n{log.read_text()[-3000:]}"
    # Kept blocks: a file each for those with tiles scored, a record each in the scene's .empty file for the rest.
    done = len(list((out / "blocks").glob("*.npz"))) + sum(
        (len(data) - data.index(b"\n") - 1) // 24
        for data in (p.read_bytes() for p in (out / "blocks").glob("*.empty")))
    assert 1 <= done < 20 and not (out / "tiles.geojson").exists()
    summary = _scan(mini, out, *extra)
    assert summary.resumed_blocks == done and summary.tiles == 18
    _same_outputs(tmp_path / "whole", out)


# --- bad input: one line, or a listed skipped block ------------------------------------------------------------

def _write_tif(path, count=3, dtype="uint8", res=24.0, crs="EPSG:32721", size=96, **extra):
    import rasterio
    from rasterio.transform import from_origin

    profile = dict(driver="GTiff", width=size, height=size, count=count, dtype=dtype, **extra)
    if crs:
        profile.update(crs=crs, transform=from_origin(600000, 9310000, res, res))
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(rng.integers(1, 200, (count, size, size)).astype(dtype))
    return path


def test_bad_scenes_are_refused_in_one_line(tmp_path):
    import warnings

    import tifffile

    look = ChipLook("jpg", 32, "cmyk", 75)
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.full((64, 64, 3), 90, np.uint8))
    cases = [
        (plain, look, "not georeferenced"),
        (_write_tif(tmp_path / "coarse.tif", res=200.0), look, "resolution"),
        (_write_tif(tmp_path / "fine.tif", res=0.5, size=64), look, "resolution"),
        (_write_tif(tmp_path / "two.tif", count=2), look, "2 band(s)"),
        (_write_tif(tmp_path / "rgb16.tif", dtype="uint16", photometric="RGB"), ChipLook("tif", 32, "none", 0),
         "near-infrared"),
        (_write_tif(tmp_path / "rgb8.tif"), ChipLook("tif", 32, "none", 0), "16-bit"),
        (_write_tif(tmp_path / "float.tif", dtype="float32"), look, "float32"),
        (tmp_path / "missing.tif", look, "cannot open"),
    ]
    for path, chip_look, words in cases:
        with warnings.catch_warnings(), pytest.raises(SceneError) as err:
            warnings.simplefilter("ignore")
            open_scene(path, chip_look, 768.0, 4.0)
        message = str(err.value)
        assert words in message and str(path) in message and "\n" not in message, message


@pytest.mark.slow
def test_an_unreadable_block_is_skipped_and_listed(mini, tmp_path):
    import shutil

    scene = tmp_path / "damaged.tif"
    shutil.copy(mini["scene"].tif, scene)
    import rasterio

    with rasterio.open(scene) as src:  # garble the compressed bytes of the first internal tile
        offset = int(src.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
    with open(scene, "r+b") as fh:
        fh.seek(offset)
        fh.write(os.urandom(64))
    from amazonmine.stages.scan import run_scan

    summary = run_scan(_cfg(mini, "scan.stride=1.0", "scan.block_tiles=4"), [scene], out=tmp_path / "out",
                       predictor=mini["predictor"], progress=False)
    record = json.loads((tmp_path / "out" / "scan.json").read_text())
    assert summary.failed_blocks and record["failed_blocks"] == summary.failed_blocks
    assert "unreadable" in summary.failed_blocks[0] and "damaged.tif" in summary.failed_blocks[0]
    assert 0 < summary.tiles < 18  # the other blocks were scored
    assert "Skipped blocks" in (tmp_path / "out" / "scan_report.html").read_text()


# --- tiling without a model -----------------------------------------------------------------------------------

def test_blocks_cover_every_tile_once_and_windows_stay_inside():
    from amazonmine.scanning.tiling import Scene

    scene = Scene("x.tif", "x", "", (3.0, 0, 600000, 0, -3.0, 9310000), 1000, 700, "uint8", (3.0, 3.0), [1, 2, 3], "",
                  True)
    grid = Grid.for_scene(scene, 768.0, 0.5)
    assert (grid.tile_w, grid.stride_x, grid.cols, grid.rows) == (256, 128, 6, 4)
    seen = []
    for block in grid.blocks(5):
        col, row, w, h = grid.block_window(block)
        assert col + w <= scene.width and row + h <= scene.height
        seen += [(r, c) for r in range(block[0], block[1]) for c in range(block[2], block[3])]
    assert sorted(seen) == [(r, c) for r in range(grid.rows) for c in range(grid.cols)]
    t = grid.raster_transform(scene)  # cell (0, 0) is centred on tile (0, 0)'s centre
    assert (t.c + t.a / 2, t.f + t.e / 2) == (600000 + 128 * 3.0, 9310000 - 128 * 3.0)


def test_web_mercator_tiles_are_768_m_on_the_ground(tmp_path):
    from affine import Affine

    from amazonmine.scanning.tiling import ground_resolution

    # A NICFI-like quad at 6.3 S: 4.77 m of Web Mercator is 4.77 * cos(lat) ~ 4.74 m across on the ground.
    t = Affine(4.77, 0, -6_244_583.0, 0, -4.77, -696_157.0)
    rx, ry = ground_resolution("EPSG:3857", t, 4096, 4096)
    assert rx == pytest.approx(4.77 * np.cos(np.radians(6.32)), rel=2e-3)
    assert ry == pytest.approx(rx, rel=0.01)
    # Geographic coordinates: 0.0002 degree pixels are ~22 m across and ~22 m tall there, never "0.0002 m".
    gx, gy = ground_resolution("EPSG:4326", Affine(0.0002, 0, -56.0, 0, -0.0002, -6.0), 2000, 2000)
    assert gx == pytest.approx(0.0002 * 111_320 * np.cos(np.radians(6.2)), rel=0.01)
    assert gy == pytest.approx(0.0002 * 110_600, rel=0.01)


def test_the_tile_path_reproduces_the_public_thumbnails(real256):
    thumbs = REPO / "data" / "planet_32px" / "train-jpg"
    if not thumbs.is_dir():
        pytest.skip(f"{thumbs} not unpacked (scripts/bench_real32.py unpacks ../shared/data/planet_32px.tar.gz)")
    import cv2

    names = sorted(p.stem for p in (real256 / "train-jpg").glob("*.jpg"))[:60]
    sig = jpeg_signature((thumbs / f"{names[0]}.jpg").read_bytes())
    assert sig == {"components": 4, "quality": 75, "full_chroma": True}
    look = ChipLook("jpg", 32, "cmyk", 75)
    same = 0
    for name in names:
        rgb = np.ascontiguousarray(cv2.imread(str(real256 / "train-jpg" / f"{name}.jpg"))[..., ::-1])
        chip = tile_to_chip(rgb, look)
        thumb = cv2.imread(str(thumbs / f"{name}.jpg"))
        assert np.abs(chip.astype(int) - thumb).mean() < 0.05
        same += bool((chip == thumb).all())
    assert same >= 0.95 * len(names)


def test_analytic_scenes_give_tif_models_their_four_bands_and_jpeg_models_a_stretch(synth_root, tmp_path):
    import tifffile

    from amazonmine.scanning.mosaic import mosaic_scene

    tifs = sorted((synth_root / "train-tif-v2").glob("*.tif"))[:6]
    made = mosaic_scene(tifs, [""] * 6, tmp_path / "analytic.tif", cols=3, rows=2, kind="analytic")
    scene = open_scene(made.tif, ChipLook("tif", 64, "none", 0), 768.0, 4.0)
    assert scene.bands == [1, 2, 3, 4] and scene.stretch is None  # B, G, R, NIR by colour interpretation
    grid = Grid.for_scene(scene, 768.0, 1.0)
    tiles = read_block(scene, grid, (0, 2, 0, 3), ChipLook("tif", 64, "none", 0))
    chips = {(r, c): chip for r, c, chip in zip(tiles.rows, tiles.cols, tiles.chips)}
    from amazonmine.scanning.mosaic import chip_table

    table, _ = chip_table(made.tif)
    for row in table.itertuples():
        np.testing.assert_array_equal(chips[(row.cell_row, row.cell_col)],
                                      tifffile.imread(synth_root / "train-tif-v2" / f"{row.image_name}.tif"))
    jpeg = open_scene(made.tif, ChipLook("jpg", 64, "none", 0), 768.0, 4.0)
    assert jpeg.bands == [3, 2, 1] and len(jpeg.stretch) == 3  # R, G, B through a per-band 16 -> 8 bit stretch
    colour = read_block(jpeg, grid, (0, 2, 0, 3), ChipLook("jpg", 64, "none", 0))
    assert colour.chips.dtype == np.uint8 and colour.chips.shape == (6, 64, 64, 3)
