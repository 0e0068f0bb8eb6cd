"""The released model that ships with the package: it is installed, it passes its own checks, it is small enough
to ship, and with nothing else (no run, no data, no config) `amazonmine scan` maps a real-pixel scene and
`amazonmine predict` labels real chips, scoring on chips the model never trained or tuned on about what its
card says."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from amazonmine.core.bundle import RELEASED, open_bundle, packaged_dir

REAL256 = Path(__file__).resolve().parents[2] / "shared" / "data" / "planet_real_256"
MAX_WEIGHT_BYTES = 64 * 1024 * 1024

# Until the released model's training run has finished and been exported, the package has no bundle to test.
pytestmark = [pytest.mark.xdist_group("released"),
              pytest.mark.skipif(not (packaged_dir() / RELEASED / "bundle.json").is_file(),
                                 reason=f"no released model in this checkout (amazonmine/models/{RELEASED} not "
                                        f"exported yet)")]


@pytest.fixture(scope="module")
def released():
    return open_bundle(packaged_dir() / RELEASED)


def test_the_released_model_ships_checked_and_within_its_size_budget(released):
    assert released.name == "planet32" and released.labels[:2] == ["agriculture", "artisinal_mine"]
    weights = sum(p.stat().st_size for p in released.models)
    assert weights <= MAX_WEIGHT_BYTES, f"{weights / 1e6:.1f} MB of .keras files"
    headline = released.meta["headline"]
    assert "lockbox" in headline["measured_on"] and headline["chips"] > 3000
    assert headline["interval"][0] <= headline["mean_f2"] <= headline["interval"][1]
    card = released.card.read_text()
    for needed in ("CC BY-SA 4.0", "No geographic hold-out", "Sentinel-2", "false alarms per 1,000 tiles",
                   f"{headline['mean_f2']:.4f}"):
        assert needed in card


def test_models_lists_the_released_model_with_its_lockbox_score(released):
    from amazonmine.cli import main

    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("planet32 v1"))
    assert f"mean F2 {released.meta['headline']['mean_f2']:.4f}" in line and "lockbox" in line


def _unseen_real_chips(released) -> list[str]:
    """The real 256-px chips that are on the released model's held-out list: never trained or tuned on."""
    from amazonmine.core.data import read_labels

    held = set((released.root / "held_out_chips.txt").read_text().split())
    return [n for n in read_labels(REAL256 / "train_v2.csv")["image_name"] if n in held]


@pytest.mark.slow
@pytest.mark.skipif(not (REAL256 / "train_v2.csv").is_file(), reason="needs ../shared/data/planet_real_256")
def test_scan_with_nothing_else_maps_a_real_pixel_scene(released, tmp_path, monkeypatch):
    """A 3 m UTM scene of real Planet chips the model never saw; aligned tiles are decided about as well as the
    card's chips (its lockbox scored ~0.90 mean F2; 40-odd chips are noisy, so the bar is lower)."""
    from amazonmine.cli import main
    from amazonmine.core.data import LABELS, read_labels, tags_to_matrix
    from amazonmine.core.metrics import mean_f2
    from amazonmine.scanning.mosaic import mosaic_folder

    names = _unseen_real_chips(released)
    assert len(names) >= 40
    scene = mosaic_folder(REAL256 / "train-jpg", REAL256 / "train_v2.csv", tmp_path / "real.tif",
                          cols=10, rows=(len(names) + 9) // 10, names=names)
    monkeypatch.chdir(tmp_path)  # no config, no run folder, no data: only the package
    result = CliRunner().invoke(main, ["scan", str(scene.tif), "--set", "scan.stride=1.0"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "scans" / "real"
    record = json.loads((out / "scan.json").read_text())
    assert (out / "sites.geojson").is_file() and (out / "scan_report.html").is_file()
    tiles = {(f["properties"]["row"], f["properties"]["col"]): f["properties"]
             for f in json.loads((out / "tiles.geojson").read_text())["features"]}
    chips = __import__("pandas").read_csv(f"{scene.tif.with_suffix('')}_chips.csv", dtype=str, keep_default_na=False)
    chips = chips[chips["image_name"] != ""]
    truth = read_labels(REAL256 / "train_v2.csv").set_index("image_name").loc[chips["image_name"], "tags"]
    decided = np.array([[bool(tiles[(int(r), int(c))][f"has_{lab}"]) for lab in LABELS]
                        for r, c in zip(chips["cell_row"], chips["cell_col"])])
    f2 = mean_f2(tags_to_matrix(truth).astype(bool), decided)
    assert f2 >= 0.75, f"mean F2 {f2:.3f} on {len(chips)} unseen real chips"
    assert "planet32" in json.dumps(record)
    report = (out / "scan_report.html").read_text()
    assert f"<b>planet32 v1</b> (model bundle), {released.headline}" in report  # the card's headline


@pytest.mark.slow
@pytest.mark.skipif(not (REAL256 / "train_v2.csv").is_file(), reason="needs ../shared/data/planet_real_256")
def test_predict_with_nothing_else_labels_real_chips(released, tmp_path, monkeypatch):
    import shutil

    from amazonmine.cli import main

    chips = tmp_path / "chips"
    chips.mkdir()
    for name in _unseen_real_chips(released)[:8]:
        shutil.copy(REAL256 / "train-jpg" / f"{name}.jpg", chips)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["predict", "chips", "--out", "labelled"])
    assert result.exit_code == 0, result.output
    rows = (tmp_path / "labelled" / "labels.csv").read_text().splitlines()
    assert len(rows) == 9 and all(len(r.split(",")[1]) > 0 for r in rows[1:])
