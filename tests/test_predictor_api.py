"""The Python API (``Predictor.from_run``, ``predict``, ``decide``) refuses what it cannot use with the project's own
one-line error, before any model runs: wrongly typed summaries, arrays that are not raw pixels, probabilities that
are not probabilities.

The run here is made without training: a tiny untrained model saved where a fold's model goes, beside the
summary.json a finished fold has. Its probabilities mean nothing; what is tested is what gets in.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from amazonmine.core.data import LABELS, DataError, read_image
from amazonmine.core.errors import AmazonmineError

pytestmark = pytest.mark.slow

SETTINGS = {"data.image_format": "jpg", "data.chip_size": 0, "dehaze.enabled": False, "train.image_size": 32}


@pytest.fixture(scope="module")
def untrained_run(tmp_path_factory) -> Path:
    from amazonmine.core.config import load_config
    from amazonmine.core.io import write_json_atomic
    from amazonmine.core.runfolder import RunFolder
    from amazonmine.neural.model import build_model

    root = tmp_path_factory.mktemp("api") / "run"
    cfg = load_config(None, ["train.backbone=densenet_mini", "train.mini_blocks=[1]", "train.image_size=32",
                             "train.weights=none", "dehaze.enabled=false", f"run.dir={root}"])
    run = RunFolder.from_config(cfg)
    run.prepare(cfg)
    fold = run.fold(0)
    fold.dir.mkdir()
    build_model(cfg.train).save(fold.model)
    write_json_atomic(fold.summary, {"settings": SETTINGS})
    return root


@pytest.fixture(scope="module")
def predictor(untrained_run):
    from amazonmine.neural.predictor import Predictor

    loaded = Predictor.from_run(untrained_run)
    loaded.thresholds = np.full(len(LABELS), 0.5)
    return loaded


@pytest.fixture(scope="module")
def chips(real256) -> np.ndarray:
    """Four real Planet chips (256 px, uint8 B, G, R) as read_image gives them."""
    return np.stack([read_image(real256 / "train-jpg" / f"train_{i}.jpg") for i in range(4)])


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and len(text) < 400, text
    return text


@pytest.mark.parametrize("settings, problem", [
    ("dehaze on", "'settings' is a string, expected an object"),
    ({**SETTINGS, "train.image_size": "32"}, "settings train.image_size is a string ('32'), expected a finite number"),
    ({**SETTINGS, "data.chip_size": {"px": 256}}, "settings data.chip_size is an object"),
    ({**SETTINGS, "dehaze.enabled": "yes"}, "settings dehaze.enabled is a string ('yes'), expected a boolean"),
    ({**SETTINGS, "dehaze.omega": "x" * 10_000}, "settings dehaze.omega is a string"),
    ({**SETTINGS, "train.image_size": 32.5}, "train.image_size is 32.5, expected a whole number of pixels"),
    ({**SETTINGS, "data.image_format": 3}, "settings data.image_format is a number (3), expected a string"),
])
def test_a_summary_with_wrongly_typed_settings_is_one_line_naming_the_file(untrained_run, tmp_path, settings,
                                                                           problem):
    from amazonmine.neural.predictor import Predictor

    run = shutil.copytree(untrained_run, tmp_path / "run")
    summary = run / "fold0" / "summary.json"
    summary.write_text(json.dumps({"settings": settings}))
    with pytest.raises(AmazonmineError) as err:
        Predictor.from_run(run)
    assert one_line(err).startswith(f"{summary}: ") and problem in str(err.value)


def test_raw_pixels_predict_and_other_integer_arrays_of_the_same_values_predict_the_same(predictor, chips):
    probs = predictor.predict(chips)
    assert probs.shape == (4, len(LABELS)) and probs.dtype == np.float32
    assert np.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1).all()
    np.testing.assert_array_equal(predictor.predict(chips.astype(np.int64)), probs)  # e.g. built from Python ints
    np.testing.assert_array_equal(predictor.predict(list(chips)), probs)
    assert predictor.predict([]).shape == (0, len(LABELS))
    assert predictor.decide(probs).shape == (4, len(LABELS))


@pytest.mark.parametrize("make, problem", [
    (lambda c: None, "chips: expected an (N, H, W, bands) array or a list of (H, W, bands) arrays, got NoneType"),
    (lambda c: "train_0.jpg", "got str"),
    (lambda c: c[0], "got shape (256, 256, 3); one chip alone is chip[None]"),
    (lambda c: c > 100, "chip 0: bool values are not what the model takes"),
    (lambda c: c / 255.0, "chip 0: float64 pixels; the model takes raw 8-bit pixels (uint8 0-255, B, G, R)"),
    (lambda c: c.astype(np.float32), "not floats (0-1 and 0-255 floats cannot be told apart)"),
    (lambda c: np.where(c > 100, np.nan, c / 255.0), "float64 pixels"),
    (lambda c: c.astype(np.int16) - 300, "chip 0: int16 values from -"),
    (lambda c: c.astype(np.uint16) + 256, "outside 0..255: the model takes raw 8-bit pixels"),
    (lambda c: c[:, :, :200], "chip 0: expected a square (H, W, bands) chip, got shape (256, 200, 3)"),
    (lambda c: np.concatenate([c, c[..., :1]], axis=-1), "chip 0: 4 bands, the model takes 3"),
    (lambda c: [c[0], None], "chip 1: expected a square (H, W, bands) chip, got shape ()"),
    (lambda c: [c[0], c[1][..., 0]], "chip 1: expected a square (H, W, bands) chip, got shape (256, 256)"),
])
def test_what_is_not_raw_pixels_is_refused_in_one_line_before_any_model_runs(predictor, chips, make, problem):
    # Floats are refused whatever their range: a 0-1 chip read as 0-255 gives probabilities off by up to 0.04
    # that look like any others, and NaN pixels give NaN probabilities.
    with pytest.raises(DataError) as err:
        predictor.predict(make(chips))
    assert problem in one_line(err)


def test_a_tif_model_takes_16_bit_counts_not_8_bit_pixels(predictor, chips):
    import dataclasses

    tif = dataclasses.replace(predictor, image_format="tif", channels=4, models=[], _infers=[])
    counts = np.concatenate([chips, chips[..., :1]], axis=-1).astype(np.uint16) * 40
    assert tif.prepare(counts[0]).dtype == np.uint16
    with pytest.raises(DataError, match="uint8 values are not what the model takes: raw 16-bit TIF counts"):
        tif.prepare(counts[0].astype(np.uint8))
    assert tif.prepare(counts[0].astype(np.int32)).dtype == np.uint16


@pytest.mark.parametrize("probs, problem", [
    (None, "probabilities: object values"),
    (np.full((2, 16), 0.5), "expected an (N, 17) array (one column per label, as predict returns), got shape (2, 16)"),
    (np.full(17, 0.5), "got shape (17,)"),
    (np.full((2, 17), np.nan), "NaN or infinite values"),
    (np.full((2, 17), 2.0), "values from 2 to 2, outside [0, 1]"),
    (np.full((2, 17), "0.5"), "<U3 values"),
])
def test_decide_refuses_what_is_not_probabilities_with_the_projects_error(predictor, probs, problem):
    with pytest.raises(DataError) as err:
        predictor.decide(probs)
    assert problem in one_line(err)


def test_decide_without_thresholds_says_to_tune(predictor, chips):
    import dataclasses

    untuned = dataclasses.replace(predictor, thresholds=None)
    with pytest.raises(DataError, match="no thresholds.json: run 'amazonmine tune' first"):
        untuned.decide(np.full((1, 17), 0.5))


@pytest.mark.parametrize("recorded, problem", [
    ({"dehaze.patch": 4}, "dehaze.patch = 4: Value error, must be odd"),
    ({"dehaze.omega": 5.0}, "dehaze.omega = 5.0: Input should be less than or equal to 1"),
    ({"dehaze.method": "sharpen"}, "dehaze.method = 'sharpen': Input should be 'dark_channel' or 'airlight_subtract'"),
    ({"dehaze.guided_radius": -3}, "dehaze.guided_radius = -3: Input should be greater than or equal to 1"),
])
def test_dehaze_settings_out_of_bounds_in_a_summary_are_one_line_before_any_model_loads(untrained_run, tmp_path,
                                                                                        monkeypatch, recorded,
                                                                                        problem):
    # Of the right type, so only the config's own bounds catch them; unchecked, an even patch or a negative
    # radius reaches OpenCV at the first chip.
    import amazonmine.neural.model
    from amazonmine.neural.predictor import Predictor

    run = shutil.copytree(untrained_run, tmp_path / "run")
    summary = run / "fold0" / "summary.json"
    summary.write_text(json.dumps({"settings": {**SETTINGS, "dehaze.enabled": True, **recorded}}))
    monkeypatch.setattr(amazonmine.neural.model, "load_trained", lambda path: pytest.fail("a model was loaded"))
    with pytest.raises(AmazonmineError) as err:
        Predictor.from_run(run)
    assert one_line(err).startswith(f"{summary}: ") and problem in str(err.value)


@pytest.mark.parametrize("arguments, problem", [
    ({"run": None}, "run: expected a run folder (a path) or a loaded Config, got NoneType"),
    ({"run": 3}, "got int"),
    ({"tta": 3}, "tta 3: choose 1, 2, 4 or 8 dihedral views"),
    ({"tta": True}, "tta True: choose"),
    ({"batch_size": 0}, "batch_size 0: a whole number of chips from 1 to 8192"),
    ({"batch_size": 2.5}, "batch_size 2.5: a whole number"),
    ({"overrides": "train.epochs=3"},
     "overrides: expected a list of 'section.key=value' strings, got 'train.epochs=3'"),
])
def test_from_run_refuses_arguments_it_cannot_use_in_one_line(untrained_run, arguments, problem):
    from amazonmine.neural.predictor import Predictor

    with pytest.raises(AmazonmineError) as err:
        Predictor.from_run(**{"run": untrained_run, **arguments})
    assert problem in one_line(err)


# --- a bundle made by hand: the same untrained model, with its manifest ----------------------------------------

@pytest.fixture(scope="module")
def untrained_bundle(untrained_run, tmp_path_factory) -> Path:
    from amazonmine.core.bundle import sha256_of
    from amazonmine.neural.model import load_trained

    bundle = tmp_path_factory.mktemp("bundle") / "untrained-v1"
    bundle.mkdir()
    load_trained(next((untrained_run / "fold0").glob("*.h5"))).save(bundle / "fold0.keras")
    (bundle / "bundle.json").write_text(json.dumps({"format": 1, "name": "untrained", "version": "1",
                                                    "labels": list(LABELS), "models": ["fold0.keras"]}))
    (bundle / "preprocessing.json").write_text(json.dumps(BUNDLE_PRE))
    (bundle / "decisions.json").write_text(json.dumps({"thresholds": {label: 0.5 for label in LABELS},
                                                       "weather_decoding": False}))
    (bundle / "SHA256SUMS").write_text("".join(f"{sha256_of(p)}  {p.name}\n" for p in sorted(bundle.iterdir())))
    return bundle


BUNDLE_PRE = {"image_size": 32, "channels": 3, "image_format": "jpg", "chip_size": 0, "chip_ground_m": 768.0,
              "dehaze": None, "tta": 1, "batch_size": 16}


def _bundle_with(untrained_bundle: Path, tmp_path: Path, **pre) -> Path:
    from amazonmine.core.bundle import sha256_of

    bundle = shutil.copytree(untrained_bundle, tmp_path / "untrained-v1")
    (bundle / "preprocessing.json").write_text(json.dumps({**BUNDLE_PRE, **pre}))
    (bundle / "SHA256SUMS").write_text("".join(f"{sha256_of(p)}  {p.name}\n" for p in sorted(bundle.iterdir())
                                               if p.name != "SHA256SUMS"))
    return bundle


def test_a_hand_made_bundle_of_the_untrained_model_predicts(untrained_bundle, chips):
    from amazonmine.neural.predictor import Predictor

    loaded = Predictor.from_bundle(untrained_bundle)
    assert loaded.batch_size == 16 and loaded.dehaze is None
    assert loaded.decide(loaded.predict(chips)).shape == (4, len(LABELS))


@pytest.mark.parametrize("pre, problem", [
    ({"batch_size": "256"}, "preprocessing.json: batch_size '256' is not a whole number from 1 to 8192"),
    ({"batch_size": 10**12}, "batch_size 1000000000000 is not a whole number"),
    ({"dehaze": {"patch": 4}}, "preprocessing.json: dehaze.patch = 4: Value error, must be odd"),
    ({"dehaze": {"omega": "lots"}}, "preprocessing.json: dehaze.omega = 'lots': expected a number"),
    ({"dehaze": {"sharpness": 2}}, "preprocessing.json: dehaze setting sharpness is unknown to this version"),
])
def test_a_bundle_with_wrongly_typed_preprocessing_is_one_line_before_any_model_loads(untrained_bundle, tmp_path,
                                                                                      monkeypatch, pre, problem):
    # Consistent with its manifest (made again after the edit): only the values themselves can refuse it.
    import amazonmine.neural.model
    from amazonmine.neural.predictor import Predictor

    bundle = _bundle_with(untrained_bundle, tmp_path, **pre)
    monkeypatch.setattr(amazonmine.neural.model, "load_trained", lambda path: pytest.fail("a model was loaded"))
    with pytest.raises(AmazonmineError) as err:
        Predictor.from_bundle(bundle)
    assert problem in one_line(err)
