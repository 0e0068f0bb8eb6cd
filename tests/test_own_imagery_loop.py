"""The whole "your imagery, your labels" loop, small: two scenes, labelled polygons over one, `chips` cut from it,
folds grouped by spatial block, a model trained on those chips, the other scene scanned with it, and the scan
scored against that scene's known mine sites. Each step is the command a user types (through click's runner).

The scenes are mosaics of freshly painted synthetic chips (``synth.make_synthetic_scene``: every chip's footprint
and labels are known), so the test can check what each step must give, not only that it ran: chips cut on the
scene's own grid and labelled from its footprints carry exactly the labels of the chips the scene was made of,
no spatial block is in two folds, and the site scores count the truth sites the scene holds.
scripts/finetune_real.py runs the same loop on real Planet chips with the released model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.slow

MINES = ("artisinal_mine", "conventional_mine")
TINY = ["dehaze.enabled=false", "data.chip_size=32", "split.folds=2", "split.rare_target=4", "split.group_by=block",
        "train.backbone=densenet_mini", "train.mini_blocks=[1]", "train.mini_growth=8", "train.image_size=32",
        "train.batch_size=16", "train.epochs=1", "train.verbose=0", "train.cache=true",
        "train.bn_recalibration_batches=0", "predict.tta=1", "predict.batch_size=64", "train.folds=[0]",
        "scan.stride=1.0", "split.holdout=0.2", "evaluate.gallery_size=2"]


def _polygons(chips_geojson: Path, out: Path, keep) -> int:
    features = [{"type": "Feature", "geometry": f["geometry"], "properties": {"label": tag}}
                for f in json.loads(chips_geojson.read_text())["features"]
                for tag in f["properties"]["tags"].split() if keep(tag)]
    out.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return len(features)


def _cli(*args: str) -> str:
    from amazonmine.cli import main

    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, f"amazonmine {' '.join(args[:1])}: {result.output}"
    return result.output


def test_chips_from_one_scene_train_a_model_that_scans_and_is_scored_on_another(tmp_path):
    from amazonmine.stages.synth import make_synthetic_scene

    scene_a = make_synthetic_scene(tmp_path / "a", cols=8, rows=6, size=32, seed=21, name="scene_a")
    scene_b = make_synthetic_scene(tmp_path / "b", cols=6, rows=5, size=32, seed=22, name="scene_b")
    labels_a, truth_b = tmp_path / "labels_a.geojson", tmp_path / "mines_b.geojson"
    assert _polygons(scene_a.chips_geojson, labels_a, lambda tag: True) > 46
    mine_chips_b = _polygons(scene_b.chips_geojson, truth_b, lambda tag: tag in MINES)
    assert mine_chips_b > 0, "the painted scene has no mine chip to find"

    data, run = tmp_path / "data_a", tmp_path / "run"
    sets = [x for s in TINY + [f"data.root={data}", f"run.dir={run}"] for x in ("--set", s)]
    # Blocks of two chip sides: 12 blocks over scene A, so two folds can each take whole blocks.
    _cli("chips", str(scene_a.tif), "--labels", str(labels_a), "--out", str(data), "--size", "32",
         "--block-size-m", "1536", *sets)

    # Cut on the scene's own grid and labelled from its footprints, every chip carries the labels of the chip
    # the scene was made of at that place.
    made = pd.read_csv(data / "chips.csv", dtype=str, keep_default_na=False)[["image_name", "row", "col", "block"]]
    made = made.merge(pd.read_csv(data / "train_v2.csv", dtype=str, keep_default_na=False), on="image_name")
    source = pd.read_csv(f"{scene_a.tif.with_suffix('')}_chips.csv", dtype=str, keep_default_na=False)
    source = source[source["image_name"] != ""].set_index(["cell_row", "cell_col"])["tags"]
    assert len(made) == len(source) == 46
    for _, chip in made.iterrows():  # ('?label': a label no polygon names, so never annotated)
        drawn = {t for t in chip["tags"].split() if not t.startswith("?")}
        assert drawn == set(source[(chip["row"], chip["col"])].split()), chip["image_name"]

    _cli("split", *sets)
    folds = pd.read_csv(run / "folds.csv", dtype=str).merge(made[["image_name", "block"]], on="image_name")
    assert folds.groupby("block")["fold"].nunique().max() == 1, "a spatial block is in two folds"
    _cli("train", *sets)
    _cli("tune", *sets)
    # Chips of one's own come without a test set: predict scores the lockbox (whole blocks) for evaluate.
    held = folds.loc[folds["fold"] == "-1", "image_name"]
    assert len(held) and folds.loc[folds["fold"] == "-1", "block"].isin(
        folds.loc[folds["fold"] != "-1", "block"]).sum() == 0, "the lockbox shares a block with the folds"
    predicted = _cli("predict", *sets)
    assert f"scored the {len(held)} held-out chips" in predicted and "no submission written" in predicted
    assert sorted(pd.read_csv(run / "holdout_probabilities.csv", dtype=str)["image_name"]) == sorted(held)
    _cli("evaluate", *sets)
    assert (run / "report" / "lockbox.json").is_file()

    scan_out = tmp_path / "scan_b"
    _cli("scan", str(scene_b.tif), "--out", str(scan_out), *sets)
    _cli("score-sites", str(scan_out), "--truth", str(truth_b), "--bootstrap", "50")
    scores = json.loads((scan_out / "site_scores.json").read_text())["targets"]["any"]
    # Touching mine chips make one truth site; each is found or not, and the rate is the count's.
    assert 1 <= scores["truth_sites"] <= mine_chips_b
    assert 0 <= scores["found"] <= scores["truth_sites"]
    assert scores["found_rate"] == pytest.approx(scores["found"] / scores["truth_sites"])
    assert scores["area_km2"] == pytest.approx(28 * 0.768 ** 2, rel=0.02)  # 30 cells, 2 of them nodata
    assert scores["false_sites_per_1000_km2"] == pytest.approx(1000 * scores["false_sites"] / scores["area_km2"])
