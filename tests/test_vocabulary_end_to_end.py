"""A run of its own label vocabulary, ``data.labels: [artisinal_mine, airstrip]``, from polygons to a scan with
its bundle: chips writes only the vocabulary's labels (``?label`` for the ones no polygon names, no weather
label), the config accepts the vocabulary's labels in scan and tune, and split, train, tune, evaluate, export and
scan carry the two labels through, with the never-annotated entries masked all the way.

The scene is a mosaic of freshly painted synthetic chips (``synth.make_synthetic_scene``); its chips' footprints
are the polygons, so which tiles take a label is known.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

OWN = ("artisinal_mine", "airstrip")
TINY = ["dehaze.enabled=false", "data.chip_size=32", "split.folds=2", "split.rare_target=4",
        "train.backbone=densenet_mini", "train.mini_blocks=[1]", "train.mini_growth=8", "train.image_size=32",
        "train.batch_size=16", "train.epochs=1", "train.verbose=0", "train.cache=true",
        "train.bn_recalibration_batches=0", "predict.tta=1", "predict.batch_size=64", "train.folds=[0]",
        "scan.stride=1.0", "tune.bootstrap=20", "evaluate.gallery_size=4", "data.labels=[artisinal_mine,airstrip]"]


def _cli(*args: str, ok: bool = True) -> str:
    from amazonmine.cli import main

    result = CliRunner().invoke(main, list(args))
    assert (result.exit_code == 0) == ok, f"amazonmine {' '.join(args[:1])}: {result.output}"
    return result.output


def _sets(*values: str) -> list[str]:
    return [x for s in values for x in ("--set", s)]


def _polygons(scene, out: Path, label_of) -> list[str]:
    """A labels file of the scene's chip footprints, each labelled ``label_of(tags)`` (None: no polygon); returns
    the labels written."""
    features = []
    for f in json.loads(scene.chips_geojson.read_text())["features"]:
        label = label_of(f["properties"]["tags"].split())
        if label is not None:
            features.append({"type": "Feature", "geometry": f["geometry"], "properties": {"label": label}})
    out.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return [f["properties"]["label"] for f in features]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from amazonmine.stages.synth import make_synthetic_scene

    return make_synthetic_scene(tmp_path_factory.mktemp("own_vocab") / "a", cols=6, rows=5, size=32, seed=21,
                                name="scene_a")


def _mine_polygons(scene, out: Path) -> list[str]:
    # Every chip of the scene that holds a mine of either kind is an artisinal_mine polygon; no airstrip is drawn.
    return _polygons(scene, out, lambda tags: "artisinal_mine" if {"artisinal_mine", "conventional_mine"} & set(tags)
                     else None)


# --- chips ---------------------------------------------------------------------------------------------------

def test_chips_write_the_vocabulary_only_and_mark_the_labels_no_polygon_names(scene, tmp_path):
    from amazonmine.core.config import load_config
    from amazonmine.core.data import UNKNOWN, PlanetLayout

    labels = tmp_path / "mines.geojson"
    assert _mine_polygons(scene, labels), "the painted scene has no mine chip"
    data = tmp_path / "data"
    output = _cli("chips", str(scene.tif), "--labels", str(labels), "--out", str(data), "--size", "32",
                  *_sets(*TINY, f"data.root={data}"))
    assert "names no polygon of airstrip" in output
    frame = pd.read_csv(data / "train_v2.csv", dtype=str, keep_default_na=False)
    tags = [set(t.split()) for t in frame["tags"]]
    # Not annotated is not negative: every chip says it was never looked at for airstrips; no weather label is
    # written for a vocabulary without the four weather labels.
    assert all("?airstrip" in t and t <= {"artisinal_mine", "?airstrip"} for t in tags)
    assert sum("artisinal_mine" in t for t in tags) >= 1 and sum("artisinal_mine" not in t for t in tags) >= 1
    record = json.loads((data / "chips.json").read_text())
    assert record["vocabulary"] == list(OWN) and record["unannotated"] == ["airstrip"]
    assert record["weather_labels"] == [] and record["label_counts"]["airstrip"] == 0
    table = pd.read_csv(data / "chips.csv", dtype=str, keep_default_na=False)
    assert table["tags"].tolist() == frame["tags"].tolist()
    _, matrix = PlanetLayout.from_config(load_config(None, [f"data.root={data}", *TINY]).data).load_train()
    assert matrix.shape == (len(frame), 2) and (matrix[:, 1] == UNKNOWN).all()
    assert set(np.unique(matrix[:, 0])) == {0, 1}


def test_a_polygon_label_outside_the_vocabulary_is_refused_naming_file_and_feature(scene, tmp_path):
    labels = tmp_path / "labels.geojson"
    drawn = _polygons(scene, labels, lambda tags: "conventional_mine" if "conventional_mine" in tags else "airstrip")
    assert "conventional_mine" in drawn
    out = tmp_path / "data"
    output = _cli("chips", str(scene.tif), "--labels", str(labels), "--out", str(out), "--size", "32",
                  *_sets(*TINY, f"data.root={out}"), ok=False)
    (line,) = [x for x in output.splitlines() if x.startswith("error:")]
    feature = drawn.index("conventional_mine")
    assert f"{labels}: feature {feature}: label 'conventional_mine' is not in the vocabulary" in line
    assert "known labels: artisinal_mine, airstrip" in line
    assert not out.exists()


def test_weather_labels_are_written_only_with_all_four_in_the_vocabulary():
    from amazonmine.scanning.polygon_labels import tile_tags

    shares = {"artisinal_mine": 0.4, "clear": 0.9}
    assert tile_tags(shares, ("artisinal_mine", "clear"), (), "clear") == ["artisinal_mine", "clear"]
    assert tile_tags({"artisinal_mine": 0.4}, ("artisinal_mine", "clear"), (), "clear") == ["artisinal_mine"]
    weather = ("clear", "cloudy", "haze", "partly_cloudy")
    assert tile_tags({"artisinal_mine": 0.4}, ("artisinal_mine", *weather), weather, "haze") == ["artisinal_mine",
                                                                                                 "haze"]


# --- config and scan settings ----------------------------------------------------------------------------------

def test_scan_and_tune_keys_take_the_run_vocabulary_and_refuse_others_in_one_line():
    from amazonmine.core.config import load_config
    from amazonmine.core.config_errors import ConfigError

    cfg = load_config(None, ["data.labels=[artisinal_mine,airstrip]", "scan.labels=[airstrip]",
                             "scan.min_probability={airstrip: 0.3}", "tune.objectives={airstrip: {recall: 0.8}}"])
    assert cfg.scan.labels == ["airstrip"] and cfg.tune.objectives == {"airstrip": {"recall": 0.8}}
    with pytest.raises(ConfigError, match=r"--set scan.labels: scan.labels must be one of data.labels "
                                          r"\(artisinal_mine, airstrip\), got 'airstrp'; did you mean 'airstrip'\?"):
        load_config(None, ["data.labels=[artisinal_mine,airstrip]", "scan.labels=[airstrp]"])
    with pytest.raises(ConfigError, match="tune.objectives keys must be one of data.labels .*got 'road'"):
        load_config(None, ["data.labels=[artisinal_mine,airstrip]", "tune.objectives={road: {recall: 0.8}}"])
    with pytest.raises(ConfigError, match="scan.labels must be one of data.labels .*got 'airstrip'"):
        load_config(None, ["scan.labels=[airstrip]"])  # the Planet vocabulary has no airstrip


def test_scan_maps_the_vocabulary_labels_by_default_and_refuses_labels_the_model_lacks():
    from amazonmine.core.errors import AmazonmineError
    from amazonmine.stages.scan import ScanSettings

    assert ScanSettings().for_model(OWN).labels == list(OWN)
    from amazonmine.core.data import LABELS

    assert ScanSettings().for_model(LABELS).labels == ["artisinal_mine", "conventional_mine"]
    assert ScanSettings(labels=["airstrip"]).for_model(OWN).labels == ["airstrip"]
    with pytest.raises(AmazonmineError, match=r"scan.labels: conventional_mine not among the model's labels "
                                              r"\(artisinal_mine, airstrip\)"):
        ScanSettings(labels=["conventional_mine"]).for_model(OWN)
    with pytest.raises(AmazonmineError, match="scan.min_probability: road not among"):
        ScanSettings(min_probability={"road": 0.5}).for_model(OWN)


# --- the whole run -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_own_vocabulary_from_polygons_to_a_scan_with_its_bundle(scene, tmp_path):
    from amazonmine.core.bundle import open_bundle

    labels = tmp_path / "mines.geojson"
    _mine_polygons(scene, labels)
    data, run, bundle, scan_out = tmp_path / "data", tmp_path / "run", tmp_path / "own-v1", tmp_path / "scan"
    sets = _sets(*TINY, f"data.root={data}", f"run.dir={run}")
    _cli("chips", str(scene.tif), "--labels", str(labels), "--out", str(data), "--size", "32", *sets)
    for stage in ("split", "train", "tune", "evaluate"):
        _cli(stage, *sets)
    oof = pd.read_csv(next(run.rglob("oof_fold*.csv")))
    assert list(oof.columns) == ["image_name", *OWN]
    saved = json.loads((run / "thresholds.json").read_text())
    assert saved["labels"] == list(OWN)
    report = (run / "report" / "index.html").read_text()
    assert "airstrip" in report and "conventional_mine" not in report and "cloudy" not in report

    _cli("export", "--out", str(bundle), *sets)
    opened = open_bundle(bundle, labels=list(OWN))
    assert json.loads((bundle / "bundle.json").read_text())["labels"] == list(OWN)
    assert json.loads((bundle / "decisions.json").read_text())["labels"] == list(OWN)
    card = opened.card.read_text()
    # airstrip was never annotated: the model's airstrip decisions count neither as hits nor as false alarms.
    threshold = saved["thresholds"]["airstrip"]
    assert (oof["airstrip"] >= threshold).any(), "no airstrip decision to mask: the check below would be empty"
    assert "| airstrip | 0 | - (none predicted) | - (no positives) |" in card
    assert "| artisinal_mine |" in card and "| clear |" not in card

    _cli("scan", str(scene.tif), "--model", str(bundle), "--out", str(scan_out), *sets)
    tiles = json.loads((scan_out / "tiles.geojson").read_text())["features"]
    props = tiles[0]["properties"]
    assert {k for k in props if k.startswith("prob_")} == {"prob_artisinal_mine", "prob_airstrip"}
    assert {k for k in props if k.startswith("has_")} == {"has_artisinal_mine", "has_airstrip"}
    record = json.loads((scan_out / "scan.json").read_text())
    assert record["labels"] == list(OWN) and record["mapped_labels"] == list(OWN)
    assert sorted((scan_out).glob("*_probability.tif")) == [scan_out / "airstrip_probability.tif",
                                                            scan_out / "artisinal_mine_probability.tif"]
