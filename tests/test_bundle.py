"""Model bundles: a run exported and loaded back predicts the same probabilities; scan and predict take a bundle
instead of a run; every way a bundle can be broken (tampered, truncated, newer, foreign labels, not Keras,
linked out of its folder) is one line and nothing written."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from amazonmine.core.bundle import BUNDLE_FORMAT, MANIFEST, BundleError, open_bundle, sha256_of
from amazonmine.core.data import LABELS, read_image

TINY = ["dehaze.enabled=false", "data.chip_size=32", "split.folds=2", "split.rare_target=4", "split.holdout=0.25",
        "train.backbone=densenet_mini", "train.mini_blocks=[1]", "train.mini_growth=8", "train.image_size=32",
        "train.batch_size=16", "train.epochs=1", "train.steps_per_epoch=1", "train.verbose=0", "train.cache=true",
        "train.bn_recalibration_batches=0", "predict.tta=2", "predict.batch_size=64", "train.folds=[0, 1]",
        "tune.bootstrap=50"]

pytestmark = pytest.mark.xdist_group("bundle")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A two-fold tiny run with a lockbox, tuned, its lockbox predicted, evaluated, exported as a bundle."""
    from amazonmine.core.config import load_config
    from amazonmine.stages.evaluate import run_evaluate
    from amazonmine.stages.export import run_export
    from amazonmine.stages.predict import run_predict_lockbox
    from amazonmine.stages.split import run_split
    from amazonmine.stages.synth import paint_dataset
    from amazonmine.stages.train import run_train
    from amazonmine.stages.tune import run_tune

    base = tmp_path_factory.mktemp("bundle")
    paint_dataset(base / "data", n_train=48, n_test=0, size=32, seed=7, progress=False)
    sets = TINY + [f"data.root={base / 'data'}", f"run.dir={base / 'run'}"]
    cfg = load_config(None, sets)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_split(cfg)
        list(run_train(cfg, folds=[0, 1]))
        run_tune(cfg)
        run_predict_lockbox(cfg, progress=False)  # the set has no test chips for a full predict
        run_evaluate(cfg)
    notes = base / "notes.md"
    notes.write_text("## Data and licence\nPainted synthetic chips (amazonmine synth), no licence needed.\n")
    summary = run_export(cfg, base / "tiny-v1", name="tiny", version="1", card_notes=notes)
    return {"base": base, "sets": sets, "cfg": cfg, "bundle": summary.out, "summary": summary}


def _copy(exported, tmp_path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(exported["bundle"], target)
    return target


def _chips(exported) -> np.ndarray:
    folder = exported["base"] / "data" / "train-jpg"
    return np.stack([read_image(p) for p in sorted(folder.glob("*.jpg"))[:12]])


# --- a bundle predicts what its run predicts -----------------------------------------------------------------

@pytest.mark.slow
def test_export_then_load_gives_the_runs_probabilities_and_decisions(exported):
    from amazonmine.neural.predictor import Predictor

    run = Predictor.from_run(exported["cfg"])
    bundle = Predictor.from_bundle(exported["bundle"])
    chips = _chips(exported)
    np.testing.assert_allclose(bundle.predict(chips), run.predict(chips), atol=1e-6)
    assert (bundle.tta, bundle.image_size, bundle.channels) == (run.tta, run.image_size, run.channels) == (2, 32, 3)
    np.testing.assert_array_equal(np.asarray(bundle.thresholds), np.asarray(run.thresholds))
    probs = run.predict(chips)
    np.testing.assert_array_equal(bundle.decide(probs), run.decide(probs))
    assert [p.name for p in bundle.model_paths] == ["fold0.keras", "fold1.keras"]


def test_the_bundle_records_what_scan_and_the_card_need(exported):
    bundle = open_bundle(exported["bundle"])
    assert bundle.meta["format"] == BUNDLE_FORMAT and bundle.labels == list(LABELS)
    look = bundle.preprocessing["chip_look"]
    # Read from the run's own training chips (synth writes ordinary YCbCr JPEGs at quality 95), not assumed.
    assert look["encoding"] == "ycbcr" and look["quality"] == 95 and "measured from" in look["source"]
    headline = bundle.meta["headline"]
    assert "lockbox" in headline["measured_on"] and headline["chips"] == 12
    lo, hi = headline["interval"]
    assert lo <= headline["mean_f2"] <= hi
    card = bundle.card.read_text()
    assert f"{headline['mean_f2']:.4f}" in card and "Painted synthetic chips (amazonmine synth)" in card
    assert "Sites are unions of 768 m tiles" in card and "never on a GPU" in card
    points = bundle.decisions["operating_points"]
    assert set(points) == {"artisinal_mine", "conventional_mine"}
    for p in points.values():  # the monitoring point never raises the threshold above the shipped one
        assert p["monitoring"]["threshold"] <= p["f2_point"]["threshold"]


def test_the_card_figures_are_the_lockbox_scored_with_the_shipped_decisions(exported):
    from amazonmine.core.data import PlanetLayout, load_matrix_csv
    from amazonmine.core.decisions import decode
    from amazonmine.core.metrics import mean_f2
    from amazonmine.core.runfolder import RunFolder

    run = RunFolder.from_config(exported["cfg"])

    names, probs = load_matrix_csv(run.holdout_probabilities)
    frame, matrix = PlanetLayout.from_config(exported["cfg"].data).load_train(check_files=False)
    row = {n: i for i, n in enumerate(frame["image_name"])}
    y = matrix[[row[n] for n in names]].astype(bool)
    rule, _ = run.read_thresholds()
    expected = mean_f2(y, decode(probs, rule, rule.weather_decoding))
    assert open_bundle(exported["bundle"]).meta["headline"]["mean_f2"] == pytest.approx(expected, abs=5e-5)


# --- through the command line --------------------------------------------------------------------------------

@pytest.mark.slow
def test_predict_with_a_model_labels_a_folder_of_chips_without_a_run(exported, tmp_path):
    from amazonmine.cli import main

    chips = tmp_path / "chips"
    chips.mkdir()
    for p in sorted((exported["base"] / "data" / "train-jpg").glob("*.jpg"))[:5]:
        shutil.copy(p, chips / p.name)
    out = tmp_path / "labelled"
    result = CliRunner().invoke(main, ["predict", str(chips), "--model", str(exported["bundle"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    labels = (out / "labels.csv").read_text().splitlines()
    probs = (out / "probabilities.csv").read_text().splitlines()
    assert labels[0] == "image_name,tags" and len(labels) == len(probs) == 6
    assert probs[0].split(",") == ["image_name", *LABELS]


@pytest.mark.slow
def test_scan_with_the_bundle_writes_the_sites_of_scan_with_the_run(exported, tmp_path):
    from amazonmine.core.config import load_config
    from amazonmine.neural.predictor import Predictor
    from amazonmine.stages.scan import run_scan
    from amazonmine.stages.synth import make_synthetic_scene

    scene = make_synthetic_scene(tmp_path / "scene", cols=5, rows=4, size=32, seed=5)
    cfg = exported["cfg"]
    with_run = run_scan(cfg, [scene.tif], out=tmp_path / "run", progress=False)
    # The bundle alone: a config with no run and no data, as a user without the training data has.
    bare = load_config(None, ["data.root=/nonexistent", "run.dir=/nonexistent"])
    with_bundle = run_scan(bare, [scene.tif], out=tmp_path / "bundle", progress=False,
                           predictor=Predictor.from_bundle(exported["bundle"]))
    assert with_run.tiles == with_bundle.tiles > 0
    for name in ("sites.geojson", "tiles.geojson"):
        assert json.loads((tmp_path / "run" / name).read_text()) == json.loads((tmp_path / "bundle" / name).read_text())
    look = json.loads((tmp_path / "bundle" / "scan.json").read_text())["chip_look"]
    assert look["quality"] == 95 and "measured from" in look["source"]  # the run's look, carried by the bundle


def test_models_lists_bundles_in_the_search_path_and_names_a_broken_one(exported, tmp_path, monkeypatch):
    from amazonmine.cli import main

    shelf = tmp_path / "shelf"
    shutil.copytree(exported["bundle"], shelf / "tiny-v1")
    shutil.copytree(exported["bundle"], shelf / "broken-v1")
    (shelf / "broken-v1" / "decisions.json").write_text("{}")
    monkeypatch.setenv("AMAZONMINE_MODELS", str(shelf))
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    tiny = [line for line in result.output.splitlines() if line.startswith("tiny v1")]
    assert len(tiny) == 1 and "lockbox" in tiny[0] and "MB" in tiny[0]
    assert "broken-v1  UNUSABLE" in result.output and "decisions.json: changed" in result.output


# --- bad bundles: one line each, nothing loaded ---------------------------------------------------------------

def test_a_changed_missing_or_unlisted_file_is_refused_by_name(exported, tmp_path):
    bundle = _copy(exported, tmp_path)
    model = bundle / "fold1.keras"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"fold1\.keras: changed since the bundle was made"):
        open_bundle(bundle)
    model.unlink()
    with pytest.raises(BundleError, match=r"fold1\.keras: missing"):
        open_bundle(bundle)
    shutil.copy(exported["bundle"] / "fold1.keras", bundle / "fold1.keras")
    open_bundle(bundle)  # whole again
    shutil.copy(bundle / "fold0.keras", bundle / "fold9.keras")
    with pytest.raises(BundleError, match=r"fold9\.keras: not in SHA256SUMS"):
        open_bundle(bundle)


def test_a_newer_format_is_refused_with_advice_to_upgrade(exported, tmp_path):
    bundle = _copy(exported, tmp_path)
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["format"] = BUNDLE_FORMAT + 1
    (bundle / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"bundle format 2 is newer than this amazonmine reads \(1\); upgrade"):
        open_bundle(bundle)


def _rehash(bundle: Path) -> None:
    lines = [f"{sha256_of(p)}  {p.name}" for p in sorted(bundle.iterdir()) if p.name != MANIFEST]
    (bundle / MANIFEST).write_text("\n".join(lines) + "\n")


def test_other_labels_are_refused_even_with_a_consistent_manifest(exported, tmp_path):
    bundle = _copy(exported, tmp_path)
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["labels"] = [*LABELS[:-1], "airstrip"]
    (bundle / "bundle.json").write_text(json.dumps(meta))
    _rehash(bundle)
    with pytest.raises(BundleError, match=r"labels differ from this vocabulary's \(has airstrip"):
        open_bundle(bundle)


def test_a_model_file_that_is_not_keras_is_one_line(exported, tmp_path):
    from amazonmine.core.errors import AmazonmineError
    from amazonmine.neural.predictor import Predictor

    bundle = _copy(exported, tmp_path)
    (bundle / "fold1.keras").write_bytes(b"PK\x03\x04 not a keras archive")
    _rehash(bundle)
    with pytest.raises(AmazonmineError, match=r"fold1\.keras: cannot load model"):
        Predictor.from_bundle(bundle)


def test_a_file_or_a_link_is_not_a_bundle(exported, tmp_path):
    from amazonmine.cli import main

    bundle = _copy(exported, tmp_path)
    with pytest.raises(BundleError, match="a file, not a model bundle folder"):
        open_bundle(bundle / "bundle.json")
    outside = tmp_path / "elsewhere.keras"
    shutil.copy(bundle / "fold0.keras", outside)
    (bundle / "fold0.keras").unlink()
    os.symlink(outside, bundle / "fold0.keras")
    with pytest.raises(BundleError, match=r"fold0\.keras: a link"):
        open_bundle(bundle)
    link = tmp_path / "link-to-bundle"
    os.symlink(exported["bundle"], link)
    result = CliRunner().invoke(main, ["scan", str(tmp_path / "none.tif"), "--model", str(link)])
    assert result.exit_code != 0 and result.output.count("\n") == 1 and "a link" in result.output


def test_manifest_names_cannot_leave_the_folder(exported, tmp_path):
    bundle = _copy(exported, tmp_path)
    manifest = (bundle / MANIFEST).read_text()
    (bundle / MANIFEST).write_text(manifest + f"{'0' * 64}  ../outside.keras\n")
    with pytest.raises(BundleError, match="is not a plain file name inside the bundle"):
        open_bundle(bundle)


def test_export_refuses_to_overwrite_and_writes_nothing_on_failure(exported, tmp_path, monkeypatch):
    from amazonmine.core.errors import AmazonmineError
    from amazonmine.stages import export

    with pytest.raises(AmazonmineError, match="already exists; pass --overwrite"):
        export.run_export(exported["cfg"], exported["bundle"])
    before = {p.name: p.read_bytes() for p in exported["bundle"].iterdir()}

    def broken_card(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "model_card", broken_card)
    with pytest.raises(OSError):
        export.run_export(exported["cfg"], exported["bundle"], overwrite=True)
    assert {p.name: p.read_bytes() for p in exported["bundle"].iterdir()} == before
    assert not [p for p in exported["bundle"].parent.iterdir() if p.name.startswith(".tiny-v1")]


@pytest.mark.slow
def test_score_bundle_reproduces_the_cards_headline_from_the_bundle_and_an_archive(exported, tmp_path):
    """scripts/score_bundle.py: the held-out chips pulled from a Kaggle-layout archive, labelled by
    `amazonmine predict --model`, scored: the card's mean F2 again."""
    import subprocess
    import sys
    import tarfile

    data = exported["base"] / "data"
    archive = tmp_path / "planet_tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(data / "train_v2.csv", arcname="planet_tiny/train_v2.csv")
        tar.add(data / "train-jpg", arcname="planet_tiny/train-jpg")
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(repo / "scripts" / "score_bundle.py"), "--bundle",
                           str(exported["bundle"]), "--archive", str(archive), "--draws", "50"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    scored = json.loads(done.stdout.strip().splitlines()[-1])
    headline = open_bundle(exported["bundle"]).meta["headline"]
    assert scored["chips"] == headline["chips"] == 12
    assert scored["mean_f2"] == pytest.approx(headline["mean_f2"], abs=1e-4)
