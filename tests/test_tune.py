"""Threshold search and weather decoding: exact objective, held-out gain, the stage's files and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import fbeta_score

from amazonmine.core.data import (
    LABEL_INDEX,
    LABELS,
    LAND_INDEX,
    WEATHER_INDEX,
    DataError,
    matrix_to_tags,
    tags_to_matrix,
)
from amazonmine.core.decisions import decode, fit_thresholds, threshold_curve
from amazonmine.core.metrics import mean_f2
from amazonmine.core.runfolder import RunFolder
from amazonmine.stages.synth import load_label_combos
from amazonmine.stages.tune import run_tune
from amazonmine.testing import simulate_oof

CLOUDY = LABEL_INDEX["cloudy"]


def load_thresholds(run_dir):
    return RunFolder(Path(run_dir)).read_thresholds()


def combo_labels(n: int, seed: int = 0) -> np.ndarray:
    """(n, 17) bool labels drawn from the real competition's tag combinations (bundled with the package)."""
    combos, counts = load_label_combos()
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(combos), size=n, p=counts / counts.sum())
    return tags_to_matrix([combos[i] for i in picks]).astype(bool)


@pytest.fixture(scope="module")
def real_y(real_labels_csv) -> np.ndarray:
    from amazonmine.core.data import read_labels

    return tags_to_matrix(read_labels(real_labels_csv)["tags"]).astype(bool)


# --- the objective ---------------------------------------------------------------------------------------

def test_mean_f2_matches_sklearn_samples_average():
    rng = np.random.default_rng(3)
    y = rng.random((500, 17)) < 0.2
    pred = rng.random((500, 17)) < 0.25
    y[0] = pred[0] = False  # nothing to find and nothing claimed: both call it a perfect row
    y[1], pred[1] = False, True  # only false alarms: 0
    expected = fbeta_score(y, pred, beta=2, average="samples", zero_division=1.0)
    assert mean_f2(y, pred) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("weather_decoding", [True, False])
def test_vectorised_curve_equals_brute_force_decode(weather_decoding):
    y = combo_labels(1500, seed=1)
    p = np.round(simulate_oof(y, seed=1), 2)  # many probabilities sit exactly on a candidate: ">=" must hold
    t = np.random.default_rng(2).uniform(0.05, 0.6, 17)
    for j in (LABEL_INDEX["artisinal_mine"], LABEL_INDEX["primary"], LABEL_INDEX["haze"], CLOUDY):
        candidates, curve = threshold_curve(y, p, t, j, grid=21, weather_decoding=weather_decoding)
        brute = []
        for c in candidates:
            trial = t.copy()
            trial[j] = c
            brute.append(fbeta_score(y, decode(p, trial, weather_decoding), beta=2, average="samples",
                                     zero_division=1.0))
        np.testing.assert_allclose(curve, brute, atol=1e-12)


# --- the search ------------------------------------------------------------------------------------------

def test_fit_is_a_coordinate_wise_maximum():
    y = combo_labels(2000, seed=4)
    p = simulate_oof(y, seed=4)
    t = fit_thresholds(y, p, passes=5, grid=51, weather_decoding=False)
    best = mean_f2(y, decode(p, t, False))
    for j in range(17):
        for c in np.linspace(0, 1, 51)[1:-1]:
            trial = t.copy()
            trial[j] = c
            assert mean_f2(y, decode(p, trial, False)) <= best + 1e-12, (LABELS[j], c)


def test_thresholds_beat_flat_on_held_out_chips(real_y):
    p = simulate_oof(real_y, seed=7)
    fit = np.random.default_rng(7).permutation(len(real_y)) < len(real_y) // 2
    held_y, held_p = real_y[~fit], p[~fit]
    flat_f2 = mean_f2(held_y, held_p >= 0.2)
    for weather_decoding in (True, False):
        t = fit_thresholds(real_y[fit], p[fit], weather_decoding=weather_decoding)
        tuned_f2 = mean_f2(held_y, decode(held_p, t, weather_decoding))
        assert tuned_f2 > flat_f2 + 0.02, (weather_decoding, flat_f2, tuned_f2)
        # The simulated miscalibration pulls labels apart: tuning must have moved more than one of them.
        assert np.count_nonzero(np.abs(t - 0.2) > 0.05) >= 5


def test_weather_thresholds_untouched_under_decoding():
    y = combo_labels(1000, seed=5)
    t = fit_thresholds(y, simulate_oof(y, seed=5), start=0.3, weather_decoding=True)
    assert np.all(t[WEATHER_INDEX] == 0.3)
    assert np.any(t[LAND_INDEX] != 0.3)


def test_fit_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="must both be"):
        fit_thresholds(np.zeros((3, 17)), np.zeros((4, 17)))


# --- decoding --------------------------------------------------------------------------------------------

def test_decode_one_weather_and_cloudy_drops_land():
    rng = np.random.default_rng(0)
    p = rng.random((400, 17))
    p[:50, CLOUDY] = 0.99  # make sure plenty of chips decode as cloudy
    out = decode(p, np.full(17, 0.2), weather_decoding=True)
    assert np.all(out[:, WEATHER_INDEX].sum(axis=1) == 1)
    weather = WEATHER_INDEX[out[:, WEATHER_INDEX].argmax(axis=1)]
    np.testing.assert_array_equal(weather, WEATHER_INDEX[p[:, WEATHER_INDEX].argmax(axis=1)])
    cloudy = out[:, CLOUDY]
    assert cloudy.sum() >= 50
    assert not out[np.ix_(cloudy, LAND_INDEX)].any()
    assert out[np.ix_(~cloudy, LAND_INDEX)].any()  # land labels survive elsewhere


def test_decode_without_weather_decoding_still_gives_a_weather_label():
    p = np.full((3, 17), 0.05)
    p[0, LABEL_INDEX["haze"]] = 0.15  # below threshold, but the likeliest weather: the fallback picks it
    p[1, [LABEL_INDEX["clear"], LABEL_INDEX["cloudy"]]] = 0.9  # two above threshold: both kept
    p[1, LABEL_INDEX["primary"]] = 0.5  # not dropped without decoding
    p[2, LABEL_INDEX["clear"]] = 0.2  # exactly at threshold counts as on
    out = decode(p, np.full(17, 0.2), weather_decoding=False)
    assert matrix_to_tags(out) == ["haze", "clear cloudy primary", "clear"]


def test_decode_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="thresholds"):
        decode(np.zeros((2, 17)), np.zeros(16), True)
    with pytest.raises(ValueError, match="probabilities"):
        decode(np.zeros((2, 16)), np.zeros(17), True)


# --- the stage -------------------------------------------------------------------------------------------

def write_run(tmp_path, n=600, seed=0):
    """A data root with train_v2.csv and a run folder with two folds of simulated OOF probabilities."""
    y = combo_labels(n, seed)
    names = [f"train_{i}" for i in range(n)]
    root = tmp_path / "data"
    root.mkdir()
    pd.DataFrame({"image_name": names, "tags": matrix_to_tags(y)}).to_csv(root / "train_v2.csv", index=False)
    run = tmp_path / "run"
    run.mkdir()
    p = simulate_oof(y, seed)
    for fold in (0, 1):
        rows = slice(fold * n // 2, (fold + 1) * n // 2)
        frame = pd.DataFrame(p[rows], columns=list(LABELS))
        frame.insert(0, "image_name", names[rows])
        frame.to_csv(run / f"oof_fold{fold}.csv", index=False)
    return root, run, y, p


def test_run_tune_writes_thresholds_json(tmp_path, make_cfg):
    root, run, y, p = write_run(tmp_path)
    cfg = make_cfg(root, **{"tune.weather_decoding": "true"})
    result = run_tune(cfg)
    saved = json.loads((run / "thresholds.json").read_text())
    assert list(saved["thresholds"]) == list(LABELS)
    assert saved["weather_decoding"] is True
    assert saved["oof_chips"] == 600 and saved["oof_folds"] == [0, 1]
    assert saved["oof_f2_flat"] == pytest.approx(mean_f2(y, p >= 0.2))
    assert saved["oof_f2_tuned"] == saved["oof_f2_tuned_with_weather"] > saved["oof_f2_flat"]
    # Each fold's chips (the first and second half of the rows) under the pooled decisions.
    assert [(f["fold"], f["chips"]) for f in saved["per_fold"]] == [(0, 300), (1, 300)]
    for f, rows in zip(saved["per_fold"], (slice(0, 300), slice(300, 600))):
        assert f["f2_flat"] == pytest.approx(mean_f2(y[rows], p[rows] >= 0.2))
        assert f["f2_tuned"] == pytest.approx(mean_f2(y[rows], result.rule.decide(p[rows])))
    assert np.mean([f["f2_tuned"] for f in saved["per_fold"]]) == pytest.approx(saved["oof_f2_tuned"])
    assert "oof_f2_tuned_without" in saved
    assert set(saved["per_label"]["artisinal_mine"]) >= {"precision", "recall", "f2", "support", "threshold"}
    assert saved["per_label"]["primary"]["support"] == int(y[:, LABEL_INDEX["primary"]].sum())

    thresholds, weather_decoding = load_thresholds(run)
    assert weather_decoding is True
    np.testing.assert_allclose(thresholds, result.thresholds, atol=1e-6)
    assert mean_f2(y, decode(p, thresholds, weather_decoding)) == pytest.approx(saved["oof_f2_tuned"])
    assert "->" in result.headline() and "thresholds.json" in result.headline()


def test_run_tune_keeps_the_configured_decoding(tmp_path, make_cfg):
    root, run, _, _ = write_run(tmp_path, n=300)
    run_tune(make_cfg(root))  # the default: each label on its own (measured better on real OOF)
    saved = json.loads((run / "thresholds.json").read_text())
    assert saved["weather_decoding"] is False
    assert saved["oof_f2_tuned"] == saved["oof_f2_tuned_without"]
    assert load_thresholds(run)[1] is False


def test_run_tune_without_oof_says_run_train(tmp_path, make_cfg):
    root, run, _, _ = write_run(tmp_path, n=50)
    for f in run.glob("oof_fold*.csv"):
        f.unlink()
    with pytest.raises(DataError, match=r"no out-of-fold predictions in .*run.*amazonmine train"):
        run_tune(make_cfg(root))


def test_run_tune_names_chips_missing_from_labels(tmp_path, make_cfg):
    root, run, _, _ = write_run(tmp_path, n=50)
    frame = pd.read_csv(run / "oof_fold1.csv")
    frame.loc[0, "image_name"] = "train_999999"
    frame.to_csv(run / "oof_fold1.csv", index=False)
    with pytest.raises(DataError, match=r"not in .*train_v2.csv: 1 \(train_999999\)"):
        run_tune(make_cfg(root))


def test_run_tune_rejects_bad_probabilities(tmp_path, make_cfg):
    root, run, _, _ = write_run(tmp_path, n=50)
    frame = pd.read_csv(run / "oof_fold0.csv")
    frame.loc[2, "haze"] = np.nan
    frame.to_csv(run / "oof_fold0.csv", index=False)
    with pytest.raises(DataError, match=r"oof_fold0.csv: probabilities missing or outside \[0, 1\] for 1 \(train_2\)"):
        run_tune(make_cfg(root))


def test_load_thresholds_errors(tmp_path):
    with pytest.raises(DataError, match=r"thresholds.json: thresholds not found: run 'amazonmine tune' first"):
        load_thresholds(tmp_path)
    (tmp_path / "thresholds.json").write_text(json.dumps({"thresholds": {"primary": 0.2}, "weather_decoding": True}))
    with pytest.raises(DataError, match="no threshold for 16"):
        load_thresholds(tmp_path)
    (tmp_path / "thresholds.json").write_text("{not json")
    with pytest.raises(DataError, match="not a thresholds file"):
        load_thresholds(tmp_path)


def test_cli_tune(tmp_path):
    from click.testing import CliRunner

    from amazonmine.cli import main

    root, run, _, _ = write_run(tmp_path, n=200)
    sets = ["--set", f"data.root={root}", "--set", f"run.dir={run}"]
    ok = CliRunner().invoke(main, ["tune", *sets])
    assert ok.exit_code == 0, ok.output
    assert "OOF mean F2" in ok.output and (run / "thresholds.json").is_file()
    empty = CliRunner().invoke(main, ["tune", "--set", f"data.root={root}", "--set", f"run.dir={tmp_path / 'none'}"])
    assert empty.exit_code == 1
    assert "error: no out-of-fold predictions" in empty.output


# --- decoders, operating points, intervals ---------------------------------------------------------------

def test_a_recall_floor_is_met_on_the_oof_it_was_fitted_on(tmp_path, make_cfg):
    root, run, y, p = write_run(tmp_path, n=1500, seed=2)
    cfg = make_cfg(root)
    cfg.tune.objectives = {"artisinal_mine": {"recall": 0.9}, "blow_down": {"recall": 0.5},
                           "road": {"precision": 0.8}}
    result = run_tune(cfg)
    saved = json.loads((run / "thresholds.json").read_text())
    assert saved["objectives"] == cfg.tune.objectives
    rule, weather = load_thresholds(run)
    pred = decode(p, rule, weather)  # what predict decides from the file
    for name, floor in (("artisinal_mine", 0.9), ("blow_down", 0.5)):
        j = LABEL_INDEX[name]
        recall = (pred[:, j] & y[:, j]).sum() / y[:, j].sum()
        assert recall >= floor, (name, recall)
        entry = saved["per_label"][name]
        assert entry["objective"] == {"recall": floor} and entry["floor_met"] is True
        assert entry["recall"] == pytest.approx(recall)
        assert entry["recall_interval"][0] <= recall <= entry["recall_interval"][1]
        assert f"operating point {name} recall >= {floor:g}" in result.headline()
    road = LABEL_INDEX["road"]
    assert (pred[:, road] & y[:, road]).sum() / pred[:, road].sum() >= 0.8
    assert saved["per_label"]["primary"]["objective"] == "mean F2"


def test_every_label_recall_is_listed_and_the_switched_off_ones_flagged(tmp_path, make_cfg):
    root, run, y, p = write_run(tmp_path, n=800, seed=3)
    result = run_tune(make_cfg(root))
    saved = json.loads((run / "thresholds.json").read_text())
    recall = {name: saved["per_label"][name]["recall"] for name in LABELS}
    low = [name for name in LABELS if recall[name] < 0.1]
    assert saved["low_recall"] == low == result.low_recall
    assert low, "the simulated run should leave some rare label near recall 0"
    headline = result.headline()
    assert "recall at the decision rule: " + ", ".join(f"{k} {v:.2f}" for k, v in recall.items()) in headline
    assert "warning: recall below 0.1" in headline and all(name in headline.split("warning:")[1] for name in low)


def test_intervals_and_crossfit_are_written(tmp_path, make_cfg):
    root, run, _, _ = write_run(tmp_path, n=600)
    run_tune(make_cfg(root))
    saved = json.loads((run / "thresholds.json").read_text())
    lo, hi = saved["oof_f2_interval"]
    assert lo < saved["oof_f2_tuned"] < hi and hi - lo < 0.1
    assert saved["bootstrap"]["draws"] == 1000
    assert set(saved["crossfit_f2"]) == {"thresholds", "expected_f2"}
    # Fitted on half and scored on the other half: below the in-sample figure it is fitted on.
    assert saved["crossfit_f2"]["thresholds"] < saved["oof_f2_tuned"]
    assert saved["decoder"] == "thresholds" and saved["calibration"] == {"kind": "none"}


@pytest.mark.parametrize("calibration", ["none", "platt", "isotonic"])
def test_expected_f2_decoder_is_written_and_followed_by_decode(tmp_path, make_cfg, calibration):
    root, run, y, p = write_run(tmp_path, n=600, seed=4)
    cfg = make_cfg(root, **{"tune.weather_decoding": "true"})
    cfg.tune.decoder, cfg.tune.calibration = "expected_f2", calibration
    cfg.tune.objectives = {"artisinal_mine": {"recall": 0.8}}
    result = run_tune(cfg)
    saved = json.loads((run / "thresholds.json").read_text())
    assert saved["decoder"] == "expected_f2" and saved["calibration"]["kind"] == calibration
    rule, weather = load_thresholds(run)
    assert rule.decoder == "expected_f2" and rule.calibration.kind == calibration and weather is True
    pred = decode(p, rule, weather)
    assert mean_f2(y, pred) == pytest.approx(saved["oof_f2_tuned"], abs=2e-3)  # parameters rounded in the file
    assert mean_f2(y, pred) == pytest.approx(result.f2_tuned, abs=2e-3)
    mine = LABEL_INDEX["artisinal_mine"]
    assert (pred[:, mine] & y[:, mine]).sum() / y[:, mine].sum() >= 0.8  # held at its point under this decoder too
    assert "expected-F2 decoding" in result.headline()


def test_bad_tune_settings_are_one_line_config_errors(tmp_path, make_cfg):
    from amazonmine.core.config import ConfigError

    root, run, _, _ = write_run(tmp_path, n=50)
    cfg = make_cfg(root)
    cfg.tune.decoder = "oracle"
    with pytest.raises(ConfigError, match="tune.decoder must be one of thresholds, expected_f2"):
        run_tune(cfg)
    cfg.tune.decoder = "thresholds"
    cfg.tune.objectives = {"artisanal_mine": {"recall": 0.9}}
    with pytest.raises(ConfigError, match="tune.objectives: unknown label 'artisanal_mine'"):
        run_tune(cfg)
    assert not (run / "thresholds.json").exists()


def test_a_thresholds_file_with_a_bad_decoder_is_refused(tmp_path):
    (tmp_path / "thresholds.json").write_text(json.dumps({
        "thresholds": dict.fromkeys(LABELS, 0.2), "weather_decoding": False, "decoder": "oracle"}))
    with pytest.raises(DataError, match="thresholds.json: decoder must be one of"):
        load_thresholds(tmp_path)
