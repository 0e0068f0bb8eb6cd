"""The evaluate stage: an offline HTML report whose tables, plots and thumbnails exist and say the truth.

The out-of-fold probabilities here are fabricated (amazonmine.stages.tune.simulate_oof, no model): the report's job is
to present whatever the run holds, so any plausible probabilities exercise it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import unquote

import cv2
import numpy as np
import pandas as pd
import pytest

from amazonmine.core.data import LABEL_INDEX, LABELS, DataError, PlanetLayout, matrix_to_tags, read_image
from amazonmine.core.decisions import decode
from amazonmine.core.errors import AmazonmineError
from amazonmine.core.metrics import mean_f2
from amazonmine.stages.evaluate import run_evaluate
from amazonmine.stages.tune import run_tune
from amazonmine.testing import simulate_oof

MINE = LABEL_INDEX["artisinal_mine"]


def write_oof(cfg, seed: int = 0, folds: int = 2):
    """Fabricated OOF probabilities for every labelled chip, split over ``folds`` files."""
    frame, matrix = PlanetLayout.from_config(cfg.data).load_train(check_files=False)
    probs = simulate_oof(matrix, seed)
    run = Path(cfg.run.dir)
    run.mkdir(parents=True, exist_ok=True)
    for fold in range(folds):
        rows = np.arange(len(frame)) % folds == fold
        block = pd.DataFrame(probs[rows], columns=list(LABELS))
        block.insert(0, "image_name", frame["image_name"][rows].to_numpy())
        block.to_csv(run / f"oof_fold{fold}.csv", index=False, float_format="%.6f")
    return frame, matrix.astype(bool), np.round(probs, 6)


def image_sources(index: Path) -> list[Path]:
    return [index.parent / unquote(src) for src in re.findall(r'<img src="([^"]+)"', index.read_text())]


def assert_valid_image(path: Path, min_side: int = 16) -> np.ndarray:
    assert path.is_file(), path
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, f"{path} does not decode"
    assert min(img.shape[:2]) >= min_side, (path, img.shape)
    return img


def colour_error(thumbnail: np.ndarray, chip: np.ndarray) -> tuple[float, float]:
    """Mean absolute pixel error of a thumbnail against its chip as stored and with R and B swapped."""
    expected = cv2.resize(chip, thumbnail.shape[:2][::-1], interpolation=cv2.INTER_AREA).astype(float)
    thumb = thumbnail.astype(float)
    return float(np.abs(thumb - expected).mean()), float(np.abs(thumb - expected[..., ::-1]).mean())


@pytest.fixture
def synth_cfg(synth_root, make_cfg):
    return make_cfg(synth_root, **{"dehaze.enabled": "false", "evaluate.gallery_size": 6, "evaluate.thumbnail": 48})


def test_report_on_synthetic_run(synth_cfg):
    _, y, p = write_oof(synth_cfg)
    result = run_evaluate(synth_cfg)
    index = Path(synth_cfg.run.dir) / "report" / "index.html"
    assert result.path == index and index.is_file()
    text = index.read_text()

    for label in LABELS:
        assert re.search(rf"<tr><td>{label}</td><td[^>]*>0\.20</td>", text) or (
            re.search(rf"<tr><td>{label}</td><td[^>]*>argmax</td>", text)), label
    expected_f2 = mean_f2(y, decode(p, np.full(17, 0.2), synth_cfg.tune.weather_decoding))
    assert result.oof_f2 == pytest.approx(expected_f2)
    assert f"{expected_f2:.4f}" in text and f"{expected_f2:.4f}" in result.headline()
    assert str(index) in result.headline()

    # Offline: no scripts, nothing fetched from elsewhere, every picture a file beside the page.
    assert "<script" not in text and "http://" not in text and "https://" not in text
    sources = image_sources(index)
    assert {"curves.png", "cooccurrence.png"} <= {s.name for s in sources}
    for src in sources:
        assert src.resolve().is_relative_to(index.parent.resolve())
        assert_valid_image(src)
    assert_valid_image(index.parent / "curves.png", min_side=500)
    assert (index.parent / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    frame = PlanetLayout.from_config(synth_cfg.data).load_train(check_files=False)[0]
    names = frame["image_name"].to_numpy()
    gallery = [s for s in sources if s.parent.name == "gallery"]
    n_true = [min(6, int(y[:, LABELS.index(label)].sum())) for label in ("artisinal_mine", "conventional_mine")]
    assert sum(n_true) > 0
    assert len(gallery) == 2 * 6 + sum(n_true)
    top = re.findall(r"gallery/artisinal_mine_\d\d_(train_\d+)\.jpg", text)
    order = np.argsort(-p[:, MINE], kind="stable")[:6]
    assert top == names[order].tolist()
    # Every true mine chip, least confident first, each marked found or missed by the decision rule.
    pred = decode(p, np.full(17, 0.2), synth_cfg.tune.weather_decoding)
    true_rows = np.flatnonzero(y[:, MINE])
    true_rows = true_rows[np.argsort(p[true_rows, MINE], kind="stable")][:6]
    shown = re.findall(r"gallery/artisinal_mine_true_\d\d_(train_\d+)\.jpg", text)
    assert shown == names[true_rows].tolist()
    for i in true_rows:
        verdict = "found" if pred[i, MINE] else "missed"
        assert f"{names[i]}<br>p={p[i, MINE]:.3f}: {verdict}" in text
    assert f"{int(pred[y[:, MINE].astype(bool), MINE].sum())} of {int(y[:, MINE].sum())} found" in text

    # Sections whose inputs do not exist say so.
    assert "no dehazed chips at" in text
    assert "no submission.csv or test_probabilities.csv" in text
    assert "dehaze pairs" in result.headline() and "submission" in result.headline()


def test_report_uses_tuned_thresholds_and_predict_outputs(synth_cfg):
    write_oof(synth_cfg, seed=3)
    tuned = run_tune(synth_cfg)
    run = Path(synth_cfg.run.dir)
    n_test = 12
    probs = np.random.default_rng(0).random((n_test, 17))
    names = [f"test_{i}" for i in range(n_test)]
    frame = pd.DataFrame(probs, columns=list(LABELS))
    frame.insert(0, "image_name", names)
    frame.to_csv(run / "test_probabilities.csv", index=False)
    tags = matrix_to_tags(decode(probs, tuned.thresholds, True))
    pd.DataFrame({"image_name": names, "tags": tags}).to_csv(run / "submission.csv", index=False)

    result = run_evaluate(synth_cfg)
    text = result.path.read_text()
    assert result.thresholds_source == "tuned thresholds"
    assert result.oof_f2 == pytest.approx(tuned.f2_tuned)
    assert f'<td class="n">{tuned.thresholds[MINE]:.2f}</td>' in text
    assert "submission.csv: 12 chips" in text and "test_probabilities.csv: 12 chips" in text
    cloudy_share = np.mean(["cloudy" in t.split() for t in tags])
    assert re.search(rf"<tr><td>cloudy</td><td[^>]*>[\d.]+%</td><td[^>]*>{100 * cloudy_share:.2f}%</td>", text)
    assert "submission" not in result.headline()


def test_gallery_thumbnails_keep_colours(synth_cfg, synth_root):
    write_oof(synth_cfg)
    index = run_evaluate(synth_cfg).path
    checked = 0
    for thumb_path in (index.parent / "gallery").glob("*.jpg"):
        name = re.match(r".*_mine_(?:true_)?\d\d_(.+)\.jpg$", thumb_path.name).group(1)
        chip = read_image(synth_root / "train-jpg" / f"{name}.jpg")
        if np.abs(chip[..., 0].astype(int) - chip[..., 2]).mean() > 8:  # only then can a swap show
            same, swapped = colour_error(cv2.imread(str(thumb_path)), chip)
            assert same < swapped / 2, (thumb_path.name, same, swapped)
            checked += 1
    assert checked >= 3


def test_unreadable_gallery_chips_are_reported_not_fatal(synth_root, make_cfg):
    cfg = make_cfg(synth_root, **{"dehaze.enabled": "false", "data.train_dir": "no-such-jpg",
                                  "evaluate.gallery_size": 3})
    _, y, p = write_oof(cfg)
    result = run_evaluate(cfg)
    text = result.path.read_text()
    # The 3 most confident of each mine label and its 3 least confident true chips, each chip counted once.
    shown = set()
    for label in ("artisinal_mine", "conventional_mine"):
        j = LABELS.index(label)
        true_rows = np.flatnonzero(y[:, j])
        shown |= set(np.argsort(-p[:, j], kind="stable")[:3])
        shown |= set(true_rows[np.argsort(p[true_rows, j], kind="stable")][:3])
    assert f"{len(shown)} gallery chips could not be read" in text
    assert "no-such-jpg" in text and "some gallery chips" in result.headline()


def test_missing_oof_is_a_clear_error(synth_cfg):
    with pytest.raises(DataError, match=r"no out-of-fold predictions in .*: run 'amazonmine train' first"):
        run_evaluate(synth_cfg)


def test_report_on_real_chips(real256, tmp_path, make_cfg):
    """Real Planet chips (4-component JPEGs) in the gallery, and raw/dehazed pairs of real hazy chips."""
    cfg = make_cfg(real256, **{"dehaze.enabled": "false", "dehaze.out_dir": str(tmp_path / "dehazed"),
                               "evaluate.gallery_size": 8, "evaluate.thumbnail": 64})
    frame, y, p = write_oof(cfg, seed=5, folds=1)
    # Fabricated OOF (no model): the real mines are given high mine probabilities so they must be shown.
    p[y[:, MINE], MINE] = 0.95
    block = pd.DataFrame(p, columns=list(LABELS))
    block.insert(0, "image_name", frame["image_name"])
    block.to_csv(Path(cfg.run.dir) / "oof_fold0.csv", index=False)
    mines = frame["image_name"][y[:, MINE]].tolist()
    assert len(mines) == 3  # per ../shared/README.md

    # A stand-in "dehazed" copy of three hazy chips (a contrast stretch, not the dehaze stage).
    hazy = frame["image_name"][y[:, LABEL_INDEX["haze"]]].tolist()[:3]
    (tmp_path / "dehazed" / "train-jpg").mkdir(parents=True)
    for name in hazy:
        chip = cv2.imread(str(real256 / "train-jpg" / f"{name}.jpg"), cv2.IMREAD_COLOR)
        stretched = cv2.normalize(chip, None, 0, 255, cv2.NORM_MINMAX)
        cv2.imwrite(str(tmp_path / "dehazed" / "train-jpg" / f"{name}.jpg"), stretched)

    result = run_evaluate(cfg)
    text = result.path.read_text()
    report = result.path.parent
    try:
        read_image(real256 / "train-jpg" / f"{mines[0]}.jpg")
    except DataError as exc:
        # The report must survive chips the data layer refuses, and say so; the gallery itself cannot be
        # checked until data.read_image accepts Kaggle's JPEGs (they carry a few bytes after end-of-image).
        assert "gallery chips could not be read" in text and "some gallery chips" in result.headline()
        pytest.xfail(f"data.read_image rejects the real chips: {exc}")
    for name in mines:
        assert len(list((report / "gallery").glob(f"artisinal_mine_true_??_{name}.jpg"))) == 1, name
        thumbs = list((report / "gallery").glob(f"artisinal_mine_??_{name}.jpg"))
        assert len(thumbs) == 1, name
        assert f"gallery/{thumbs[0].name}" in text
        same, swapped = colour_error(assert_valid_image(thumbs[0]), read_image(real256 / "train-jpg" / f"{name}.jpg"))
        assert same < 6 and same < swapped, (name, same, swapped)
    assert "artisinal_mine: the 8 most confident, 3 truly artisinal_mine" in text
    assert "artisinal_mine: every true chip, 3 of 3 found" in text
    for name in hazy:
        pair = assert_valid_image(report / "dehaze" / f"{name}.jpg")
        assert pair.shape[1] > 2 * pair.shape[0]  # raw and dehazed side by side
        assert f"dehaze/{name}.jpg" in text
    assert "dehaze pairs" not in result.headline()


# --- intervals, operating points, the lockbox --------------------------------------------------------------

def test_report_shows_intervals_operating_points_and_pr_curves(synth_cfg):
    write_oof(synth_cfg, seed=4)
    synth_cfg.tune.objectives = {"artisinal_mine": {"recall": 0.9}}  # set directly: the field may be new
    tuned = run_tune(synth_cfg)
    result = run_evaluate(synth_cfg)
    text = result.path.read_text()
    lo, hi = result.oof_interval
    assert lo < result.oof_f2 < hi
    assert f"(95% interval {lo:.4f}-{hi:.4f})" in text and f"(95% {lo:.4f}-{hi:.4f})" in result.headline()
    assert "precision 95%" in text and "recall 95%" in text
    assert re.search(r"<tr><td>artisinal_mine</td>.*?<td[^>]*>recall &gt;= 0.9</td></tr>", text)
    assert "cross-fitted" in text and "thresholds" in text
    pr = result.path.parent / "pr_curves.png"
    assert "pr_curves.png" in {s.name for s in image_sources(result.path)}
    assert_valid_image(pr, min_side=300)
    # No hold-out in this split: the section says so, and nothing is missing for it.
    assert "No hold-out in this run" in text and "lockbox" not in result.headline()
    assert tuned.points["artisinal_mine"][1].met


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::amazonmine.stages.split.SplitWarning")  # the synthetic set has labels on < k chips
def test_lockbox_is_scored_once_by_the_fold_models_and_reported_apart(synth_root, make_cfg):
    """split with a hold-out -> train one tiny fold -> tune -> predict -> evaluate: predict gives the held-out
    chips probabilities from the fold model; evaluate scores them with the tuned decisions and reports them
    beside (not inside) the OOF scores."""
    import os

    from amazonmine.stages.predict import run_predict
    from amazonmine.stages.split import run_split
    from amazonmine.stages.train import run_train

    cfg = make_cfg(synth_root, **{
        "dehaze.enabled": "false", "split.folds": 2, "split.rare_target": 4, "train.backbone": "densenet_mini",
        "train.mini_blocks": "[2]", "train.image_size": 32, "train.batch_size": 16, "train.epochs": 1,
        "train.steps_per_epoch": 2, "train.verbose": 0, "predict.tta": 2, "predict.batch_size": 16,
        "evaluate.gallery_size": 2, "evaluate.thumbnail": 32})
    cfg.split.holdout = 0.2
    run_split(cfg)
    list(run_train(cfg, folds=[0]))
    run_tune(cfg)
    run = Path(cfg.run.dir)
    folds = pd.read_csv(run / "folds.csv", dtype={"image_name": str})
    held = folds.loc[folds["fold"] == -1, "image_name"].tolist()
    assert len(held) == 12

    predicted = run_predict(cfg, progress=False)
    assert "lockbox: scored the 12 held-out chips with each of the 1 fold model(s)" in predicted.headline()
    result = run_evaluate(cfg)
    probs_csv = run / "holdout_probabilities.csv"
    written = pd.read_csv(probs_csv, dtype={"image_name": str})
    assert sorted(written["image_name"]) == sorted(held)
    box = result.lockbox
    assert box is not None and box.n == 12
    frame, matrix = PlanetLayout.from_config(cfg.data).load_train(check_files=False)
    row = {n: i for i, n in enumerate(frame["image_name"])}
    y = matrix[[row[n] for n in written["image_name"]]].astype(bool)
    from amazonmine.core.runfolder import RunFolder

    rule, weather = RunFolder(run).read_thresholds()
    expected = mean_f2(y, decode(written[list(LABELS)].to_numpy(), rule, weather))
    assert box.f2 == pytest.approx(expected)
    assert box.interval[0] <= box.f2 <= box.interval[1]
    text = result.path.read_text()
    assert "Lockbox: the held-out chips" in text and "12 chips that <code>split</code> set aside" in text
    assert f"lockbox mean F2 {box.f2:.4f}" in result.headline()
    assert not set(held) & set(pd.read_csv(run / "oof_fold0.csv", dtype={"image_name": str})["image_name"])
    # Both decoders on the same chips: the run's own is the lockbox figure; the other is fitted on OOF.
    layout = PlanetLayout.from_config(cfg.data)
    oof = RunFolder(run).read_oof(layout)
    other = rule.with_decoder("expected_f2", cfg.tune.calibration, oof.y_true, oof.probs)
    held_probs = written[list(LABELS)].to_numpy()
    assert box.decoders["thresholds"][0] == pytest.approx(box.f2)
    assert box.decoders["expected_f2"][0] == pytest.approx(mean_f2(y, other.decide(held_probs)))
    assert box.decoder_difference[0] == pytest.approx(box.decoders["expected_f2"][0] - box.f2)
    assert box.decoder_difference[1] <= box.decoder_difference[0] <= box.decoder_difference[2]
    assert "expected-F2 decoding minus thresholds" in text
    record = json.loads((run / "report" / "lockbox.json").read_text())
    assert record["decoders"]["expected_f2"]["mean_f2"] == pytest.approx(box.decoders["expected_f2"][0])
    assert record["looks"] == 1 and record["first_look"]["mean_f2"] == pytest.approx(box.f2, abs=1e-6)
    assert "look 1" not in text and "This is look" not in text

    # Scored once: a second report and a second predict reuse the probabilities; a fold trained since makes
    # them stale, which evaluate reports (naming the command) and predict, not evaluate, puts right.
    stamp = probs_csv.stat().st_mtime_ns
    run_evaluate(cfg)
    assert run_predict(cfg, progress=False).lockbox == ""  # current: nothing predicted again
    assert probs_csv.stat().st_mtime_ns == stamp
    trained = (run / "fold0" / "summary.json").stat().st_mtime - 1  # as if the fold was retrained since
    for path in (probs_csv, run / "fold0" / "holdout_probabilities.csv"):
        os.utime(path, (trained, trained))
    stamp = probs_csv.stat().st_mtime_ns
    stale = run_evaluate(cfg)
    assert stale.lockbox is None and probs_csv.stat().st_mtime_ns == stamp
    assert "holdout_probabilities.csv is older than" in stale.headline()
    assert f"run 'amazonmine predict --run {run}'" in stale.headline()
    assert "lockbox: scored the 12 held-out chips" in run_predict(cfg, progress=False).headline()
    assert probs_csv.stat().st_mtime_ns != stamp
    again = run_evaluate(cfg)
    # The same model and decisions again: the same look, not a second one.
    assert len(again.lockbox.looks) == 1 and "look 2" not in again.headline()


@pytest.mark.filterwarnings("ignore::amazonmine.stages.split.SplitWarning")
def test_lockbox_scores_each_fold_alone_and_the_ensemble_gain(synth_root, make_cfg):
    """Two folds: predict writes each model alone on the lockbox and the ensemble file, their mean (predicting
    the user's own chips does not); evaluate reports the gain, the ensemble's per-chip F2 minus the average
    fold's."""
    from amazonmine.core.metrics import per_image_f2
    from amazonmine.core.runfolder import RunFolder
    from amazonmine.stages.predict import run_predict
    from amazonmine.stages.split import run_split
    from amazonmine.stages.train import run_train

    cfg = make_cfg(synth_root, **{
        "dehaze.enabled": "false", "split.folds": 2, "split.rare_target": 4, "train.backbone": "densenet_mini",
        "train.mini_blocks": "[2]", "train.image_size": 32, "train.batch_size": 16, "train.epochs": 1,
        "train.steps_per_epoch": 2, "train.verbose": 0, "predict.tta": 1, "predict.batch_size": 16,
        "evaluate.gallery_size": 2, "evaluate.thumbnail": 32, "train.bn_recalibration_batches": 0})
    cfg.split.holdout = 0.2
    run_split(cfg)
    list(run_train(cfg, folds=[0, 1]))
    run_tune(cfg)
    run = RunFolder(Path(cfg.run.dir))
    own = run_predict(cfg, inputs=[synth_root / "test-jpg"], progress=False)
    assert not own.lockbox and not run.holdout_probabilities.exists() and not run.fold(0).holdout.exists()
    predicted = run_predict(cfg, progress=False)
    assert predicted.lockbox.startswith("scored the 12 held-out chips with each of the 2 fold model(s)")
    result = run_evaluate(cfg)
    ensemble = pd.read_csv(run.holdout_probabilities, dtype={"image_name": str})
    alone = [pd.read_csv(run.fold(k).holdout, dtype={"image_name": str}) for k in (0, 1)]
    assert all(a["image_name"].equals(ensemble["image_name"]) for a in alone)
    np.testing.assert_allclose(ensemble[list(LABELS)].to_numpy(),
                               (alone[0][list(LABELS)].to_numpy() + alone[1][list(LABELS)].to_numpy()) / 2,
                               atol=2e-6)
    box = result.lockbox
    frame, matrix = PlanetLayout.from_config(cfg.data).load_train(check_files=False)
    row = {n: i for i, n in enumerate(frame["image_name"])}
    y = matrix[[row[n] for n in ensemble["image_name"]]].astype(bool)
    rule, weather = run.read_thresholds()
    singles = [per_image_f2(y, decode(a[list(LABELS)].to_numpy(), rule, weather)) for a in alone]
    assert [k for k, _, _ in box.single] == [0, 1]
    for (_, f2, (lo, hi)), chip in zip(box.single, singles):
        assert f2 == pytest.approx(chip.mean()) and lo <= f2 <= hi
    ensemble_chip = per_image_f2(y, decode(ensemble[list(LABELS)].to_numpy(), rule, weather))
    assert box.gain[0] == pytest.approx(ensemble_chip.mean() - np.mean(singles, axis=0).mean())
    assert box.gain[1] <= box.gain[0] <= box.gain[2]
    assert "each fold alone" in result.headline() and "fold 1 alone" in result.path.read_text()
    oof = run.read_oof(PlanetLayout.from_config(cfg.data))
    fold1 = oof.fold_of_row == 1
    assert (f"fold 1 {mean_f2(oof.y_true[fold1], decode(oof.probs[fold1], rule, weather)):.4f}"
            in result.path.read_text())
    record = json.loads((run.report_dir / "lockbox.json").read_text())
    assert record["mean_f2"] == pytest.approx(box.f2) and [s["fold"] for s in record["single"]] == [0, 1]
    assert record["gain"]["mean"] == pytest.approx(box.gain[0]) and record["chips"] == box.n


@pytest.mark.filterwarnings("ignore::amazonmine.stages.split.SplitWarning")
def test_evaluate_only_reads_the_lockbox_and_names_the_command_when_it_is_missing_or_stale(synth_root, make_cfg,
                                                                                          monkeypatch):
    """No lockbox probabilities, or older than the split: the report says so and names predict, and writes
    nothing (the model code cannot even be imported here); current ones, predict's, are scored as they are."""
    import html
    import os
    import sys

    from amazonmine.core.runfolder import RunFolder
    from amazonmine.stages.split import run_split

    for blocked in ("tensorflow", "keras", "amazonmine.neural", "amazonmine.neural.predictor"):
        monkeypatch.setitem(sys.modules, blocked, None)  # an import of it now fails
    cfg = make_cfg(synth_root, **{"dehaze.enabled": "false", "split.folds": 2, "evaluate.gallery_size": 2,
                                  "evaluate.thumbnail": 32, "tune.bootstrap": 100})
    cfg.split.holdout = 0.2
    run_split(cfg)
    _, _, probs = write_oof(cfg)
    run = RunFolder.from_config(cfg)
    command = f"run 'amazonmine predict --run {run.root}'"
    result = run_evaluate(cfg)
    text = html.unescape(result.path.read_text())
    assert result.lockbox is None and not run.holdout_probabilities.exists()
    assert "12 chips are held out, but their probabilities are not current: holdout_probabilities.csv has not " \
           "been written" in text and command in text
    assert "not shown: lockbox (holdout_probabilities.csv has not been written: " + command in result.headline()

    held = run.held_out_chips()
    frame = pd.DataFrame(probs[:len(held)], columns=list(LABELS))
    frame.insert(0, "image_name", held)
    frame.to_csv(run.holdout_probabilities, index=False, float_format="%.6f")
    split_time = run.folds_csv.stat().st_mtime
    os.utime(run.holdout_probabilities, (split_time + 10, split_time + 10))
    scored = run_evaluate(cfg)
    assert scored.lockbox is not None and scored.lockbox.n == 12 and "lockbox mean F2" in scored.headline()

    written = run.holdout_probabilities.read_bytes()
    os.utime(run.folds_csv, (split_time + 20, split_time + 20))  # split again since
    stale = run_evaluate(cfg)
    assert stale.lockbox is None and run.holdout_probabilities.read_bytes() == written
    assert f"holdout_probabilities.csv is older than folds.csv: {command}" in stale.headline()
    assert not (run.report_dir / "lockbox.json").exists()  # the scored look's figures are not passed off as current


def test_report_follows_the_expected_f2_decoder(synth_cfg):
    write_oof(synth_cfg, seed=6)
    synth_cfg.tune.decoder, synth_cfg.tune.calibration = "expected_f2", "platt"  # the fields may be new
    tuned = run_tune(synth_cfg)
    result = run_evaluate(synth_cfg)
    assert result.thresholds_source.startswith("tuned expected-F2 decoding, platt calibration")
    assert result.oof_f2 == pytest.approx(tuned.f2_tuned, abs=2e-3)  # calibration rounded in the file
    assert "dot may lie off the curve" in result.path.read_text()


def test_each_new_set_of_lockbox_predictions_is_a_new_look(tmp_path):
    """A hold-out scored with other decisions or models is a second look, which the report must admit; the
    same predictions scored again are not."""
    from amazonmine.core.runfolder import RunFolder
    from amazonmine.stages.evaluate import _looks_html, _record_look

    run = RunFolder(tmp_path / "run")
    run.root.mkdir()
    names = [f"train_{i}" for i in range(6)]
    pred = np.zeros((6, len(LABELS)), dtype=bool)
    pred[:, 0] = True
    assert len(_record_look(run, names, pred, 0.81)) == 1
    assert len(_record_look(run, names, pred.copy(), 0.81)) == 1
    assert _looks_html(_record_look(run, names, pred, 0.81)) == ""
    other = pred.copy()
    other[2, 5] = True
    looks = _record_look(run, names, other, 0.86)
    assert [look["mean_f2"] for look in looks] == [0.81, 0.86]
    warning = _looks_html(looks)
    assert "look 2 at the lockbox" in warning and "0.8100" in warning and "first look" in warning
    # The same predictions for other chips are another look too.
    assert len(_record_look(run, [n + "x" for n in names], pred, 0.81)) == 3
    assert json.loads(run.lockbox_looks.read_text())["looks"][0]["folds"] == []

    for broken in ('{"looks": 3}', '{"looks": [{"scored_utc": "2026'):  # wrong shape; cut short
        run.lockbox_looks.write_text(broken)
        with pytest.raises(AmazonmineError, match="lockbox_looks.json.*delete the file"):
            _record_look(run, names, pred, 0.81)
