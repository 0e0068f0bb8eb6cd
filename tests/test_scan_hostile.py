"""Scan under hostile input (issue 35): every input is checked before any work, a scan's outputs are replaced as
a set, scenes follow the input-path rule, a scene must lie on the globe, an empty scene writes next to nothing,
and long values are cut in error lines.

The model is not under test here: a stand-in scores a chip by its mean brightness (every finding of the issue
is about what scan does around the model), so these tests train nothing and import no TensorFlow."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from amazonmine.core.errors import AmazonmineError
from amazonmine.scanning.tiling import ChipLook, SceneError, check_scene_file, open_scene

LOOK = ChipLook("jpg", 32, "cmyk", 75)


class BrightnessModel:
    """A stand-in for a run's Predictor with what scan reads of one: every label's probability is the chip's
    mean brightness, so tiles differ and some clear the 0.2 fallback threshold. Counts the chips it scored."""

    image_format = "jpg"
    chip_size = 32
    image_size = 32
    channels = 3
    chip_ground_m = 768.0
    model_paths: list = []
    tta = 1
    dehaze = None
    thresholds = None
    weather_decoding = False

    def __init__(self):
        self.scored = 0

    def predict(self, chips, dehazed=False):
        self.scored += len(chips)
        mean = chips.reshape(len(chips), -1).mean(axis=1) / 255.0
        return np.repeat(mean[:, None], 17, axis=1).astype(np.float32)


def _scene(path: Path, size: int = 96, res: float = 24.0, crs="EPSG:32721", origin=(600000.0, 9310000.0),
           count: int = 3, dtype: str = "uint8", nodata=None, data=True, **extra) -> Path:
    """A small georeferenced scene (24 m pixels: a 768 m tile is 32 px) with a brightness ramp, written with
    rasterio; ``data=False`` writes no pixels at all (a sparse file: every pixel is nodata)."""
    import rasterio
    from rasterio.transform import from_origin

    profile = dict(driver="GTiff", width=size, height=size, count=count, dtype=dtype, crs=crs,
                   transform=from_origin(origin[0], origin[1], res, res), tiled=True, blockxsize=32,
                   blockysize=32, **extra)
    if nodata is not None:
        profile["nodata"] = nodata
    top = 250 if dtype == "uint8" else 4000
    with rasterio.open(path, "w", SPARSE_OK="TRUE", **profile) as dst:
        if data:
            ramp = np.linspace(20, top, size)[None, :] * np.linspace(0.3, 1.0, size)[:, None]
            dst.write(np.stack([ramp + 5 * k for k in range(count)]).astype(dtype))
    return path


def _cfg(tmp_path, *extra):
    from amazonmine.core.config import load_config

    return load_config(None, [f"run.dir={tmp_path / 'run'}", f"data.root={tmp_path / 'no-data'}",
                              "data.chip_size=32", *extra])


def _scan(tmp_path, scenes, out, *extra, model=None, **kwargs):
    from amazonmine.stages.scan import run_scan

    return run_scan(_cfg(tmp_path, *extra), [str(s) for s in scenes], out=out, progress=False,
                    predictor=model or BrightnessModel(), **kwargs)


def _snapshot(folder: Path) -> dict:
    """Every file of a scan's folder but its resume cache and lock: name -> bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.parts[len(folder.parts)] != "blocks" and p.name != ".lock"}


def _one_line(exc_info, *words) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and len(message) < 1200, message[:2000]
    for word in words:
        assert word in message, message
    return message


# --- 1. everything checked before any work ---------------------------------------------------------------

MALFORMED_SITES = {
    "no properties": {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}}]},
    "string coordinates": {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"label": "artisinal_mine"},
         "geometry": {"type": "Polygon", "coordinates": "[[0, 0], [1, 0], [1, 1]]"}}]},
    "features not a list": {"type": "FeatureCollection", "features": {"0": "a site"}},
    "a point": {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"label": "artisinal_mine"},
         "geometry": {"type": "Point", "coordinates": [-55.9, -6.3]}}]},
}


@pytest.mark.parametrize("case", sorted(MALFORMED_SITES))
def test_a_malformed_previous_scan_is_refused_before_any_work(tmp_path, case):
    scene = _scene(tmp_path / "scene.tif")
    out = tmp_path / "out"
    _scan(tmp_path, [scene], out)
    before = _snapshot(out)
    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / "sites.geojson").write_text(json.dumps(MALFORMED_SITES[case]))
    model = BrightnessModel()
    with pytest.raises(AmazonmineError) as refused:
        _scan(tmp_path, [scene], out, "scan.stride=1.0", since=previous, model=model)
    _one_line(refused, str(previous / "sites.geojson"))
    assert model.scored == 0  # refused before a single block was scored
    assert _snapshot(out) == before  # and the previous scan's files are untouched


def test_a_fifo_as_the_previous_scan_is_refused_by_name(tmp_path):
    previous = tmp_path / "previous"
    previous.mkdir()
    os.mkfifo(previous / "sites.geojson")
    with pytest.raises(AmazonmineError) as refused:
        _scan(tmp_path, [_scene(tmp_path / "scene.tif")], tmp_path / "out", since=previous)
    _one_line(refused, "sites.geojson", "a FIFO")


def test_the_cli_says_a_malformed_previous_scan_in_one_line_before_loading_models(tmp_path):
    from click.testing import CliRunner

    from amazonmine.cli import main

    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / "sites.geojson").write_text(json.dumps(MALFORMED_SITES["no properties"]))
    result = CliRunner().invoke(main, ["scan", str(_scene(tmp_path / "scene.tif")), "--set",
                                       f"run.dir={tmp_path / 'run'}", "--out", str(tmp_path / "out"),
                                       "--since", str(previous)])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and "sites.geojson" in lines[0] and "properties" in lines[0]
    assert not (tmp_path / "out").exists()


def test_an_unknown_scheduler_address_is_refused_before_any_work(tmp_path):
    from amazonmine.stages.scan import check_scheduler_address

    scene = _scene(tmp_path / "scene.tif")
    for address in ("foo://x", "http://10.0.0.5:8786", "tcp://", "tcp://host", "host:port", "host:99999",
                    "10.0.0.5", "tcp://a b:1"):
        model = BrightnessModel()
        with pytest.raises(AmazonmineError) as refused:
            _scan(tmp_path, [scene], tmp_path / "out", scheduler=address, model=model)
        _one_line(refused, "--scheduler")
        assert model.scored == 0 and not (tmp_path / "out").exists(), address
    for address in ("tcp://10.0.0.5:8786", "tls://sched.example.org:8786", "ucx://10.0.0.5:13337",
                    "inproc://10.0.0.5/4242/1", "10.0.0.5:8786", "localhost:8786", "[::1]:8786",
                    "tcp://[fe80::1]:8786"):
        assert check_scheduler_address(address) == address


# --- 2. a scan's outputs are replaced as a set -------------------------------------------------------------

def test_a_failed_report_leaves_the_previous_scan_byte_identical(tmp_path, monkeypatch):
    import amazonmine.scanning.report_page as scanmap

    scene = _scene(tmp_path / "scene.tif")
    out = tmp_path / "out"
    first = _scan(tmp_path, [scene], out, "scan.stride=1.0")
    assert first.tiles == 9
    before = _snapshot(out)
    assert {"tiles.geojson", "sites.geojson", "scan_report.html", "scan.json",
            "artisinal_mine_probability.tif"} <= set(before)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device", str(out / "scan_report.html"))

    monkeypatch.setattr(scanmap, "write_report", full_disk)
    with pytest.raises(OSError):
        _scan(tmp_path, [scene], out, "scan.stride=0.5")  # other tiles, rasters and sites: a different set
    assert _snapshot(out) == before
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".scan")) == [".scan-outputs.json"]
    monkeypatch.undo()
    second = _scan(tmp_path, [scene], out, "scan.stride=0.5")
    assert second.tiles == 25 and second.out_dir == out
    assert len(json.loads((out / "tiles.geojson").read_text())["features"]) == 25


def test_reusing_an_output_folder_without_since_drops_the_old_new_sites(tmp_path):
    scene = _scene(tmp_path / "scene.tif")
    _scan(tmp_path, [scene], tmp_path / "before", "scan.stride=1.0", "scan.min_probability={artisinal_mine: 0.9}")
    out = tmp_path / "after"
    summary = _scan(tmp_path, [scene], out, "scan.stride=1.0", since=tmp_path / "before")
    assert summary.new_sites and (out / "new_sites.geojson").is_file()
    assert json.loads((out / "scan.json").read_text())["outputs"]["new_sites"] == "new_sites.geojson"
    (out / "notes.txt").write_text("a person's own file in the folder")
    _scan(tmp_path, [scene], out, "scan.stride=1.0")
    assert not (out / "new_sites.geojson").exists()
    assert json.loads((out / "scan.json").read_text())["outputs"]["new_sites"] is None
    assert (out / "tiles.geojson").is_file() and (out / "notes.txt").read_text().startswith("a person")


def test_a_swap_killed_half_way_is_completed_before_the_next_scan_writes(tmp_path):
    """The staged set is committed by one marker; a scan killed after it (some files moved, some not) leaves a
    folder that the next scan (under the folder's lock, before it writes) makes whole: never a mix."""
    from amazonmine.core.io import finish_staged_set

    scene = _scene(tmp_path / "scene.tif")
    out = tmp_path / "out"
    _scan(tmp_path, [scene], out, "scan.stride=1.0")
    newer = tmp_path / "newer"
    _scan(tmp_path, [scene], newer, "scan.stride=0.5")
    stage = out / ".scan-staging"  # as a swap killed after its commit marker and its first move leaves it
    stage.mkdir()
    names = sorted(json.loads((newer / ".scan-outputs.json").read_text())["outputs"])
    assert "tiles.geojson" in names and "scan.json" in names
    for name in names:
        (stage / name).write_bytes((newer / name).read_bytes())
    (stage / ".complete").write_text(json.dumps({"outputs": names}))
    os.replace(stage / "tiles.geojson", out / "tiles.geojson")
    (out / "new_sites.geojson").write_text("{}")  # an earlier scan's output the new set does not have
    finish_staged_set(out, "scan", legacy=("new_sites.geojson",), keep=("blocks", ".lock"))
    assert not stage.exists() and not (out / "new_sites.geojson").exists()
    assert _snapshot(out) == _snapshot(newer)


# --- 3. special files, and outputs inside a scanned folder -----------------------------------------------

def test_special_files_given_as_scenes_are_refused_by_name(tmp_path):
    from amazonmine.stages.scan import list_scenes

    os.mkfifo(tmp_path / "fifo.tif")
    (tmp_path / "zero.tif").symlink_to("/dev/zero")
    (tmp_path / "gone.tif").symlink_to(tmp_path / "missing.tif")
    for name, words in (("fifo.tif", "a FIFO, not a regular file"), ("zero.tif", "a device, not a regular file"),
                        ("gone.tif", "missing")):
        with pytest.raises(AmazonmineError) as refused:
            list_scenes([tmp_path / name])
        _one_line(refused, str(tmp_path / name), words)
    with pytest.raises(AmazonmineError) as refused:
        list_scenes([f"file://{tmp_path / 'fifo.tif'}"])
    _one_line(refused, "a FIFO")


def test_a_folder_listing_refuses_a_special_tif_by_name_instead_of_hanging(tmp_path):
    from amazonmine.stages.scan import list_scenes

    folder = tmp_path / "scenes"
    folder.mkdir()
    _scene(folder / "good.tif")
    os.mkfifo(folder / "stuck.tif")
    with pytest.raises(AmazonmineError) as refused:
        list_scenes([folder])
    _one_line(refused, str(folder / "stuck.tif"), "a FIFO")
    (folder / "stuck.tif").unlink()
    (folder / "nested.tif").mkdir()
    with pytest.raises(AmazonmineError) as refused:
        list_scenes([folder])
    _one_line(refused, str(folder / "nested.tif"), "a folder")
    (folder / "nested.tif").rmdir()
    assert list_scenes([folder]) == [str((folder / "good.tif").resolve())]


def test_an_output_folder_inside_a_scanned_folder_is_refused(tmp_path):
    from amazonmine.stages.scan import plan_scan

    folder = tmp_path / "scenes"
    folder.mkdir()
    _scene(folder / "good.tif")
    for out in (folder, folder / "scan", folder / "deeper" / "scan"):
        with pytest.raises(AmazonmineError) as refused:
            plan_scan(_cfg(tmp_path), [folder], out=out, predictor=BrightnessModel())
        _one_line(refused, "--out", str(folder))
        assert not (folder / "scan").exists()
    assert plan_scan(_cfg(tmp_path), [folder], out=tmp_path / "scan", predictor=BrightnessModel()).jobs


# --- 4. a scene must lie on the globe ----------------------------------------------------------------------

def test_scenes_that_cannot_be_placed_on_the_globe_are_refused_in_one_line(tmp_path):
    cases = {
        "latitude 200": dict(crs="EPSG:4326", origin=(-56.0, 200.0), res=0.0002),
        "utm far away": dict(crs="EPSG:32721", origin=(1e12, 9310000.0)),
        "local": dict(crs='LOCAL_CS["a site grid",UNIT["metre",1],AXIS["X",EAST],AXIS["Y",NORTH]]',
                      origin=(0.0, 0.0)),
        "infinite": dict(crs="EPSG:32721", origin=(float("inf"), 9310000.0)),
    }
    for name, spec in cases.items():
        path = _scene(tmp_path / f"{name.replace(' ', '_')}.tif", **spec)
        with pytest.raises(SceneError) as refused:
            check_scene_file(path)  # before any model is loaded
        _one_line(refused, str(path))
        with pytest.raises(SceneError):
            open_scene(path, LOOK, 768.0, 4.0)
    fine = open_scene(_scene(tmp_path / "fine.tif"), LOOK, 768.0, 4.0)
    assert fine.res_m[0] == pytest.approx(24.0, rel=0.01)


# --- 5. an empty scene writes next to nothing ------------------------------------------------------------

def test_an_all_nodata_scene_writes_a_few_bytes_not_a_block_file_per_block(tmp_path):
    scene = _scene(tmp_path / "empty.tif", size=160, nodata=0, data=False)
    out = tmp_path / "out"
    model = BrightnessModel()
    summary = _scan(tmp_path, [scene], out, "scan.block_tiles=1", model=model)
    assert summary.tiles == 0 and summary.nodata == 81 and model.scored == 0
    blocks = [p for p in (out / "blocks").iterdir()]
    assert len(blocks) == 1 and blocks[0].stat().st_size < 81 * 32  # one record per block, no file each
    again = _scan(tmp_path, [scene], out, "scan.block_tiles=1")
    assert again.resumed_blocks == 81 and again.nodata == 81


def test_empty_blocks_resume_like_scored_ones_and_give_the_same_outputs(tmp_path):
    import rasterio

    scene = _scene(tmp_path / "half.tif", size=160, nodata=0)
    with rasterio.open(scene, "r+") as dst:  # the left half is outside the footprint
        dst.write(np.zeros((3, 160, 80), np.uint8), window=rasterio.windows.Window(0, 0, 80, 160))
    whole = _scan(tmp_path, [scene], tmp_path / "whole", "scan.block_tiles=4")
    out = tmp_path / "resumed"
    _scan(tmp_path, [scene], out, "scan.block_tiles=4")
    scored = sorted((out / "blocks").glob("*.npz"))
    assert scored and len(scored) < 25  # blocks with tiles to score keep a file; the empty ones do not
    scored[0].unlink()  # as if the scan had been killed before that block
    model = BrightnessModel()
    again = _scan(tmp_path, [scene], out, "scan.block_tiles=4", model=model)
    assert again.resumed_blocks == 24 and 0 < model.scored < whole.tiles
    assert (again.tiles, again.nodata) == (whole.tiles, whole.nodata)
    for name in ("tiles.geojson", "sites.geojson"):
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


def test_a_16_bit_scene_with_no_valid_pixels_is_counted_as_nodata_not_refused(tmp_path):
    live = _scene(tmp_path / "live.tif", count=4, dtype="uint16", nodata=0)
    empty = _scene(tmp_path / "empty.tif", count=4, dtype="uint16", nodata=0, data=False)
    summary = _scan(tmp_path, [live, empty], tmp_path / "out")
    record = json.loads((tmp_path / "out" / "scan.json").read_text())
    counts = {c["scene"]: c for c in record["counts"]}
    assert counts["empty"]["nodata"] == counts["empty"]["tiles_in_grid"] == 25 and counts["empty"]["scored"] == 0
    assert counts["live"]["scored"] == 25 and summary.tiles == 25


# --- 7. long values are cut in error lines -----------------------------------------------------------------

def test_a_huge_name_is_cut_in_the_error_line(tmp_path):
    from amazonmine.stages.scan import list_scenes

    huge = "x" * 5_000_000
    with pytest.raises(AmazonmineError) as refused:
        list_scenes([tmp_path / (huge + ".tif")])
    assert "characters)..." in _one_line(refused)
    with pytest.raises(SceneError) as refused:
        check_scene_file("/vsimem/" + huge + ".tif")
    assert "(5000012 characters)" in _one_line(refused)
    with pytest.raises(AmazonmineError) as refused:
        _scan(tmp_path, [_scene(tmp_path / "scene.tif")], tmp_path / "out", scheduler="foo://" + huge)
    _one_line(refused, "--scheduler")
